-- Profiles follow DAARION (issue 4): how an account is created, avatar
-- uploads not yet confirmed on the profile, a flag to re-read the profile
-- from Synapse before writing, and the sync pass's watermark and lease.

-- 'register' (shared-secret registration: webhooks, SSO) or 'admin' (admin
-- API creation without a password hash: people backfilled by a sync pass).
ALTER TABLE people ADD COLUMN create_via TEXT NOT NULL DEFAULT 'register';
-- 1: compare with what Synapse really holds before writing (drift found, or
-- an earlier write's outcome is unknown).
ALTER TABLE people ADD COLUMN profile_verify BIGINT NOT NULL DEFAULT 0;
-- The last image uploaded for the person, before the profile points at it;
-- a retry reuses it instead of uploading the same bytes again.
ALTER TABLE people ADD COLUMN upload_mxc TEXT;
ALTER TABLE people ADD COLUMN upload_sha256 TEXT;

-- One row per kind of pass. `watermark`: start (ms) of the last pass that
-- read DAARION's changes completely. `leased_until`/`lease_owner`: the pass
-- running now, so two cron hosts or replicas never run one at once.
CREATE TABLE sync_state (
    name         TEXT PRIMARY KEY,
    watermark    BIGINT,
    lease_owner  TEXT,
    leased_until BIGINT NOT NULL DEFAULT 0
);
INSERT INTO sync_state (name) VALUES ('profiles');
