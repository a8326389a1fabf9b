-- A person's localpart is settled by the worker just before their account
-- is first created, from the best name known then (issue 10): until then
-- it is NULL. SQLite cannot drop NOT NULL in place, so `people` is rebuilt;
-- `jobs`, which references it, is set aside and rebuilt too, so that no
-- foreign key ever points at a missing table.
CREATE TABLE jobs_saved AS SELECT * FROM jobs;
DROP TABLE jobs;

CREATE TABLE people_new (
    user_id              TEXT PRIMARY KEY,
    localpart            TEXT UNIQUE,
    state                TEXT NOT NULL DEFAULT 'pending',
    username             TEXT,
    username_at          BIGINT NOT NULL DEFAULT 0,
    display_name         TEXT,
    display_name_at      BIGINT NOT NULL DEFAULT 0,
    avatar_url           TEXT,
    avatar_url_at        BIGINT NOT NULL DEFAULT 0,
    deleted              BIGINT NOT NULL DEFAULT 0,
    lifecycle_at         BIGINT NOT NULL DEFAULT 0,
    account              TEXT NOT NULL DEFAULT 'none',
    register_started_at  BIGINT,
    applied_display_name TEXT,
    applied_avatar_url   TEXT,
    avatar_mxc           TEXT,
    avatar_sha256        TEXT,
    avatar_error         TEXT,
    attempts             BIGINT NOT NULL DEFAULT 0,
    last_error           TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    create_via           TEXT NOT NULL DEFAULT 'register',
    profile_verify       BIGINT NOT NULL DEFAULT 0,
    upload_mxc           TEXT,
    upload_sha256        TEXT
);
INSERT INTO people_new (user_id, localpart, state, username, username_at, display_name,
    display_name_at, avatar_url, avatar_url_at, deleted, lifecycle_at, account,
    register_started_at, applied_display_name, applied_avatar_url, avatar_mxc, avatar_sha256,
    avatar_error, attempts, last_error, created_at, updated_at, create_via, profile_verify,
    upload_mxc, upload_sha256)
SELECT user_id, localpart, state, username, username_at, display_name,
    display_name_at, avatar_url, avatar_url_at, deleted, lifecycle_at, account,
    register_started_at, applied_display_name, applied_avatar_url, avatar_mxc, avatar_sha256,
    avatar_error, attempts, last_error, created_at, updated_at, create_via, profile_verify,
    upload_mxc, upload_sha256
FROM people;
DROP TABLE people;
ALTER TABLE people_new RENAME TO people;

CREATE TABLE jobs (
    user_id      TEXT PRIMARY KEY REFERENCES people (user_id),
    generation   BIGINT NOT NULL DEFAULT 1,
    run_at       BIGINT NOT NULL,
    leased_until BIGINT NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    failed       BIGINT NOT NULL DEFAULT 0
);
INSERT INTO jobs (user_id, generation, run_at, leased_until, lease_owner, failed)
SELECT user_id, generation, run_at, leased_until, lease_owner, failed FROM jobs_saved;
DROP TABLE jobs_saved;
CREATE INDEX jobs_due ON jobs (run_at) WHERE failed = 0;
