//! The part of the Synapse client that jobs decide on, as a trait (like
//! matrix-authentication-service's `HomeserverConnection`): [`Synapse`]
//! implements it, and a job's decision logic (the room job's "the alias is
//! taken: adopt the room behind it") is unit-tested against a small
//! in-memory fake, without a server. Only what such tests need is here;
//! the rest of the client stays plain methods of [`Synapse`].

use std::future::Future;

use super::{Result, RoomSpec, Synapse};

pub trait Homeserver: Sync {
    /// `#<localpart>:<server>`.
    fn alias(&self, localpart: &str) -> String;

    /// The room an alias points to, if any.
    fn lookup_alias(&self, alias: &str) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Creates a room as the bot; returns its id. A taken alias is refused
    /// as [`super::Refusal::InUse`].
    fn create_room(&self, spec: &RoomSpec) -> impl Future<Output = Result<String>> + Send;
}

impl Homeserver for Synapse {
    fn alias(&self, localpart: &str) -> String {
        Synapse::alias(self, localpart)
    }

    async fn lookup_alias(&self, alias: &str) -> Result<Option<String>> {
        Synapse::lookup_alias(self, alias).await
    }

    async fn create_room(&self, spec: &RoomSpec) -> Result<String> {
        Synapse::create_room(self, spec).await
    }
}
