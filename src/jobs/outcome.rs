//! How a job's run ended, for every kind of job, and how the errors of
//! its steps become one: Synapse unavailable or the database failing is
//! retried, Synapse refusing fails the job.

use std::time::Duration;

use crate::store::{State, StoreError};
use crate::synapse::SynapseError;

/// How a job's run ended. `S` is the state its subject reached (a person's
/// [`State`], a room's `RoomState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<S = State> {
    Done(S),
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Failed(String),
    /// Nothing to do before `until` (ms): the job sleeps till then, or
    /// until new data arrives; not a failure.
    Wait {
        until: i64,
        reason: String,
    },
}

impl<S> Outcome<S> {
    pub fn retry(reason: impl Into<String>) -> Outcome<S> {
        Outcome::Retry {
            reason: reason.into(),
            after: None,
        }
    }
}

impl<S> From<SynapseError> for Outcome<S> {
    fn from(e: SynapseError) -> Outcome<S> {
        match e {
            SynapseError::Unavailable { retry_after, .. } => Outcome::Retry {
                reason: e.to_string(),
                after: retry_after,
            },
            SynapseError::Refused { .. } => Outcome::Failed(e.to_string()),
        }
    }
}

impl<S> From<StoreError> for Outcome<S> {
    fn from(e: StoreError) -> Outcome<S> {
        Outcome::retry(e.to_string())
    }
}
