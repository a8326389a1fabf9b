//! Black-box tests against a real Synapse and both databases. Run them with
//! `scripts/test.sh`, which starts Synapse and PostgreSQL first.

mod logs;
mod operability;
mod provisioning;
mod resilience;
mod shutdown;
mod sso;
mod support;
mod webhooks;
