-- The queue and the event log become general (issue 12): a job is keyed by
-- the kind of subject it works on and the subject's key (a person's
-- user_id, a City Room's room_id, …), and carries its own attempts and last
-- error; event ids are unique per source (DAARION Auth, DAARION.city).
-- SQLite cannot change a primary key in place: both tables are rebuilt.
CREATE TABLE jobs_new (
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    generation   BIGINT NOT NULL DEFAULT 1,
    run_at       BIGINT NOT NULL,
    leased_until BIGINT NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    failed       BIGINT NOT NULL DEFAULT 0,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT,
    PRIMARY KEY (kind, subject)
);
INSERT INTO jobs_new (kind, subject, generation, run_at, leased_until, lease_owner, failed,
    attempts, last_error)
SELECT 'person', j.user_id, j.generation, j.run_at, j.leased_until, j.lease_owner, j.failed,
    p.attempts, p.last_error
FROM jobs j JOIN people p ON p.user_id = j.user_id;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_due ON jobs (run_at) WHERE failed = 0;

-- Attempts and errors now live on the job (none once it is done).
ALTER TABLE people DROP COLUMN attempts;
ALTER TABLE people DROP COLUMN last_error;

CREATE TABLE events_new (
    source      TEXT NOT NULL,
    id          TEXT NOT NULL,
    subject     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (source, id)
);
INSERT INTO events_new (source, id, subject, kind, created_at, received_at)
SELECT 'auth', id, user_id, kind, created_at, received_at FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_received_at ON events (received_at);
