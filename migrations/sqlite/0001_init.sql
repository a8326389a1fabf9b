-- One row per DAARION person: what DAARION wants (the *_at columns hold the
-- created_at, in ms, of the event that set the field: last writer wins) and
-- what we have applied to Synapse.
CREATE TABLE people (
    user_id              TEXT PRIMARY KEY,
    localpart            TEXT NOT NULL UNIQUE,
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
    updated_at           BIGINT NOT NULL
);

-- Webhook event ids seen, for idempotent delivery.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX events_received_at ON events (received_at);

-- The durable work queue: at most one job per person (changes coalesce);
-- `generation` tells a worker whether a change arrived while it worked.
CREATE TABLE jobs (
    user_id      TEXT PRIMARY KEY REFERENCES people (user_id),
    generation   BIGINT NOT NULL DEFAULT 1,
    run_at       BIGINT NOT NULL,
    leased_until BIGINT NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    failed       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_due ON jobs (run_at) WHERE failed = 0;
