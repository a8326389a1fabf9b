-- The service's own Synapse admin access token, shared by every process of
-- the deployment (replicas and cron runs), so that they log in once rather
-- than once each, and again only when Synapse refuses it. `version` makes
-- a replacement conditional: of two processes replacing at once, one wins
-- and the other logs its surplus token out. An operator's
-- SYNAPSE_ADMIN_TOKEN is never written here.
CREATE TABLE service_tokens (
    name       TEXT PRIMARY KEY,
    token      TEXT,
    version    BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL DEFAULT 0
);
INSERT INTO service_tokens (name) VALUES ('synapse_admin');
