//! Counts of the requests sent to Synapse, by endpoint: a sync pass reports
//! how many it caused, tests check that a pass without changes writes
//! nothing, and `/metrics` can export them. Plain atomics, no locks.

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::Method;

/// Every Synapse endpoint the service calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    RegisterNonce,
    Register,
    Login,
    Logout,
    UserGet,
    UserPut,
    UserList,
    ExternalIdLookup,
    Deactivate,
    MediaUpload,
    BackchannelLogout,
    AsRegister,
    AsPing,
    RoomCreate,
    AliasLookup,
    AliasDelete,
    AliasPut,
    RoomState,
    MemberGet,
    StatePut,
    PowerLevelsPut,
    AdminJoin,
    Kick,
    DirectoryPut,
    MessageSend,
    RoomMessages,
    PresencePut,
    PuppetJoin,
    PuppetLeave,
    Redact,
    ReactionSend,
    Typing,
    Receipt,
    AccountDataGet,
    AccountDataPut,
    MediaDownload,
}

impl Endpoint {
    pub const ALL: [Endpoint; 37] = [
        Endpoint::Health,
        Endpoint::RegisterNonce,
        Endpoint::Register,
        Endpoint::Login,
        Endpoint::Logout,
        Endpoint::UserGet,
        Endpoint::UserPut,
        Endpoint::UserList,
        Endpoint::ExternalIdLookup,
        Endpoint::Deactivate,
        Endpoint::MediaUpload,
        Endpoint::BackchannelLogout,
        Endpoint::AsRegister,
        Endpoint::AsPing,
        Endpoint::RoomCreate,
        Endpoint::AliasLookup,
        Endpoint::AliasDelete,
        Endpoint::AliasPut,
        Endpoint::RoomState,
        Endpoint::MemberGet,
        Endpoint::StatePut,
        Endpoint::PowerLevelsPut,
        Endpoint::AdminJoin,
        Endpoint::Kick,
        Endpoint::DirectoryPut,
        Endpoint::MessageSend,
        Endpoint::RoomMessages,
        Endpoint::PresencePut,
        Endpoint::PuppetJoin,
        Endpoint::PuppetLeave,
        Endpoint::Redact,
        Endpoint::ReactionSend,
        Endpoint::Typing,
        Endpoint::Receipt,
        Endpoint::AccountDataGet,
        Endpoint::AccountDataPut,
        Endpoint::MediaDownload,
    ];

    /// A stable snake_case label (for metrics and summaries).
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Health => "health",
            Endpoint::RegisterNonce => "register_nonce",
            Endpoint::Register => "register",
            Endpoint::Login => "login",
            Endpoint::Logout => "logout",
            Endpoint::UserGet => "user_get",
            Endpoint::UserPut => "user_put",
            Endpoint::UserList => "user_list",
            Endpoint::ExternalIdLookup => "external_id_lookup",
            Endpoint::Deactivate => "deactivate",
            Endpoint::MediaUpload => "media_upload",
            Endpoint::BackchannelLogout => "backchannel_logout",
            Endpoint::AsRegister => "appservice_register",
            Endpoint::AsPing => "appservice_ping",
            Endpoint::RoomCreate => "room_create",
            Endpoint::AliasLookup => "alias_lookup",
            Endpoint::AliasDelete => "alias_delete",
            Endpoint::AliasPut => "alias_put",
            Endpoint::RoomState => "room_state",
            Endpoint::MemberGet => "room_member_get",
            Endpoint::StatePut => "room_state_put",
            Endpoint::PowerLevelsPut => "room_power_levels_put",
            Endpoint::AdminJoin => "room_join",
            Endpoint::Kick => "room_kick",
            Endpoint::DirectoryPut => "room_directory_put",
            Endpoint::MessageSend => "room_message_send",
            Endpoint::RoomMessages => "room_messages",
            Endpoint::PresencePut => "presence_put",
            Endpoint::PuppetJoin => "puppet_join",
            Endpoint::PuppetLeave => "puppet_leave",
            Endpoint::Redact => "room_redact",
            Endpoint::ReactionSend => "room_reaction_send",
            Endpoint::Typing => "room_typing",
            Endpoint::Receipt => "room_receipt",
            Endpoint::AccountDataGet => "account_data_get",
            Endpoint::AccountDataPut => "account_data_put",
            Endpoint::MediaDownload => "media_download",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Endpoint::Health
            | Endpoint::RegisterNonce
            | Endpoint::UserGet
            | Endpoint::UserList
            | Endpoint::ExternalIdLookup
            | Endpoint::AliasLookup
            | Endpoint::RoomState
            | Endpoint::MemberGet
            | Endpoint::RoomMessages
            | Endpoint::AccountDataGet
            | Endpoint::MediaDownload => Method::GET,
            Endpoint::Register
            | Endpoint::Login
            | Endpoint::Logout
            | Endpoint::Deactivate
            | Endpoint::MediaUpload
            | Endpoint::BackchannelLogout
            | Endpoint::AsRegister
            | Endpoint::AsPing
            | Endpoint::RoomCreate
            | Endpoint::AdminJoin
            | Endpoint::Kick
            | Endpoint::PuppetJoin
            | Endpoint::PuppetLeave
            | Endpoint::Receipt => Method::POST,
            Endpoint::UserPut
            | Endpoint::StatePut
            | Endpoint::PowerLevelsPut
            | Endpoint::AliasPut
            | Endpoint::DirectoryPut
            | Endpoint::MessageSend
            | Endpoint::PresencePut
            | Endpoint::Redact
            | Endpoint::ReactionSend
            | Endpoint::Typing
            | Endpoint::AccountDataPut => Method::PUT,
            Endpoint::AliasDelete => Method::DELETE,
        }
    }

    /// Whether the call changes something in Synapse (a login creates an
    /// access token, so it counts).
    pub fn is_write(self) -> bool {
        self.method() != Method::GET
    }

    fn index(self) -> usize {
        Endpoint::ALL
            .iter()
            .position(|e| *e == self)
            .expect("ALL lists every endpoint")
    }
}

/// Requests sent (whatever their outcome), per endpoint, since start.
#[derive(Debug)]
pub struct CallCounts {
    counts: [AtomicU64; Endpoint::ALL.len()],
}

impl Default for CallCounts {
    fn default() -> CallCounts {
        CallCounts {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl CallCounts {
    pub(super) fn record(&self, endpoint: Endpoint) {
        self.counts[endpoint.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, endpoint: Endpoint) -> u64 {
        self.counts[endpoint.index()].load(Ordering::Relaxed)
    }

    /// All counts at once, to subtract two snapshots.
    pub fn snapshot(&self) -> CallSnapshot {
        CallSnapshot(Endpoint::ALL.map(|e| self.get(e)))
    }
}

/// Counts at one moment; `later - earlier` gives what happened in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSnapshot([u64; Endpoint::ALL.len()]);

impl Default for CallSnapshot {
    fn default() -> CallSnapshot {
        CallSnapshot([0; Endpoint::ALL.len()])
    }
}

impl CallSnapshot {
    pub fn get(&self, endpoint: Endpoint) -> u64 {
        self.0[endpoint.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn writes(&self) -> u64 {
        Endpoint::ALL
            .iter()
            .filter(|e| e.is_write())
            .map(|e| self.get(*e))
            .sum()
    }

    /// `(name, count)` for the endpoints that were called.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        Endpoint::ALL
            .iter()
            .map(|e| (e.name(), self.get(*e)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn since(&self, earlier: &CallSnapshot) -> CallSnapshot {
        let mut out = *self;
        for (o, e) in out.0.iter_mut().zip(earlier.0) {
            *o = o.saturating_sub(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_split_reads_and_writes() {
        let counts = CallCounts::default();
        let before = counts.snapshot();
        counts.record(Endpoint::UserGet);
        counts.record(Endpoint::UserPut);
        counts.record(Endpoint::UserPut);
        let delta = counts.snapshot().since(&before);
        assert_eq!(delta.total(), 3);
        assert_eq!(delta.writes(), 2);
        assert_eq!(delta.nonzero(), vec![("user_get", 1), ("user_put", 2)]);
    }
}
