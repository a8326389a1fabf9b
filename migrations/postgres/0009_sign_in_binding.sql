-- Issue 24: DAARION's answer finishes a sign-in only in the browser that
-- started it. The answer's browser gets a one-time proof (kept here as its
-- SHA-256) that must come back together with the starting browser's cookie;
-- and sign-ins under way are counted per client address, so nobody can fill
-- the table from one address.
ALTER TABLE oidc_pending ADD COLUMN proof_hash TEXT;
ALTER TABLE oidc_pending ADD COLUMN client_addr TEXT NOT NULL DEFAULT '';
CREATE INDEX oidc_pending_client_addr ON oidc_pending (client_addr, expires_at);
