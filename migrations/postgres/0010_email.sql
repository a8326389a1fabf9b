-- Issue 20: DAARION Auth as it runs signs people in by email address and has
-- no usernames. The address (lower case) is kept so that a password sign-in
-- by Matrix id can ask DAARION with the person's address, a sign-in by
-- address finds the person, and LOCALPART_SOURCES may name people after it.
ALTER TABLE people ADD COLUMN email TEXT;
ALTER TABLE people ADD COLUMN email_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX people_email ON people (email);
-- A sign-in under way keeps the address its token named, like the names.
ALTER TABLE oidc_pending ADD COLUMN email TEXT;
-- Failed password sign-ins, counted per account (`account:<email>`) and per
-- client address (`address:<ip>`) in a fixed window, shared by replicas.
CREATE TABLE sign_in_failures (
    key          TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    window_start BIGINT NOT NULL
);
CREATE INDEX sign_in_failures_window ON sign_in_failures (window_start);
