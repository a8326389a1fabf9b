-- The OpenID Connect provider for Synapse's single sign-on (issue 11).

-- Signing keys: the one in use (retired_at NULL) and those replaced, kept
-- in the JWKS until tokens signed with them have expired. A generated key's
-- private half is kept in service_tokens ('oidc_signing_key'), shared by
-- every replica; a configured key's never leaves OIDC_SIGNING_KEY.
CREATE TABLE oidc_keys (
    kid        TEXT PRIMARY KEY,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
INSERT INTO service_tokens (name) VALUES ('oidc_signing_key');

-- Sign-ins under way: created at the authorization endpoint, bound to the
-- browser that started them (the hash of a cookie's value), filled in with
-- the verified DAARION person when DAARION hands back, consumed once.
CREATE TABLE oidc_pending (
    state_hash         TEXT PRIMARY KEY,
    binding_hash       TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    redirect_uri       TEXT NOT NULL,
    client_state       TEXT,
    nonce              TEXT,
    code_challenge     TEXT,
    user_id            TEXT,
    preferred_username TEXT,
    name               TEXT,
    picture            TEXT,
    daarion_sid        TEXT,
    expires_at         BIGINT NOT NULL
);
CREATE INDEX oidc_pending_expires ON oidc_pending (expires_at);

-- Authorization codes (by hash): single use, short-lived, bound to the
-- client, redirect URI, PKCE challenge and nonce.
CREATE TABLE oidc_codes (
    code_hash      TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT,
    nonce          TEXT,
    user_id        TEXT NOT NULL,
    localpart      TEXT NOT NULL,
    name           TEXT,
    sid            TEXT NOT NULL,
    auth_time      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL
);
CREATE INDEX oidc_codes_expires ON oidc_codes (expires_at);

-- Access tokens (by hash), for userinfo.
CREATE TABLE oidc_access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    localpart  TEXT NOT NULL,
    name       TEXT,
    expires_at BIGINT NOT NULL
);
CREATE INDEX oidc_access_tokens_expires ON oidc_access_tokens (expires_at);

-- Matrix sessions opened through this provider: our `sid` (in the ID
-- token, which Synapse keeps with the device) and the DAARION session it
-- came from, so that DAARION's sign-out can end exactly those.
CREATE TABLE oidc_sessions (
    sid         TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    daarion_sid TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX oidc_sessions_user ON oidc_sessions (user_id);

-- Back-channel logouts to send to Synapse: the person's job sends them,
-- so they are retried while Synapse is down and never lost.
CREATE TABLE oidc_logouts (
    sid          TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
CREATE INDEX oidc_logouts_user ON oidc_logouts (user_id);

-- 1 once the account is known to carry the oidc-<idp> external id beside
-- daarion (accounts linked before this change get it at their next job).
ALTER TABLE people ADD COLUMN oidc_linked BIGINT NOT NULL DEFAULT 0;
