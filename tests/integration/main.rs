//! Black-box tests against a real Synapse and both databases. Run them with
//! `scripts/test.sh`, which starts Synapse and PostgreSQL first.

mod provisioning;
mod resilience;
mod sso;
mod support;
mod webhooks;
