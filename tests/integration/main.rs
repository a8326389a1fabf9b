//! Black-box tests against a real Synapse and both databases. Run them with
//! `scripts/test.sh`, which starts Synapse and PostgreSQL first.

mod admin_token;
mod agents;
mod conversations;
mod daarion;
mod fakes;
mod files;
mod intake;
mod logs;
mod names;
mod nats;
mod nats_auth;
mod oidc;
mod operability;
mod profiles;
mod provisioning;
mod resilience;
mod rooms;
mod shutdown;
mod sso;
mod support;
mod sync;
mod webhooks;
