//! The application service's puppets (SYNAPSE.md "Application services"):
//! agents' accounts, registered through the application service, and what
//! the service does as one of them (`?user_id=`): send a message or a
//! reaction dated by `?ts=`, redact, join and leave a direct chat, type,
//! mark read, set presence. Requests carry the application service's token.

use serde_json::{json, Value};

use super::{encode, Auth, Body, Endpoint, Result, Synapse, SynapseError};

/// One `m.room.message` event of a room's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomMessage {
    pub event_id: String,
    pub sender: String,
    /// The event's content as sent (for the fields a sender put in).
    pub content: Value,
}

impl RoomMessage {
    /// None for an event without its id or sender.
    fn from_event(event: &Value) -> Option<RoomMessage> {
        Some(RoomMessage {
            event_id: event["event_id"].as_str()?.to_string(),
            sender: event["sender"].as_str()?.to_string(),
            content: event["content"].clone(),
        })
    }
}

/// The room events a puppet sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PuppetEvent {
    /// `m.room.message`: a message, or an edit of one.
    Message,
    /// `m.reaction`.
    Reaction,
}

impl PuppetEvent {
    fn event_type(self) -> &'static str {
        match self {
            PuppetEvent::Message => "m.room.message",
            PuppetEvent::Reaction => "m.reaction",
        }
    }

    fn endpoint(self) -> Endpoint {
        match self {
            PuppetEvent::Message => Endpoint::MessageSend,
            PuppetEvent::Reaction => Endpoint::ReactionSend,
        }
    }
}

impl Synapse {
    /// Registers `@localpart` through the application service (works with
    /// registration off); an account that exists already counts as done.
    /// Returns whether it was created now.
    pub async fn register_puppet(&self, localpart: &str) -> Result<bool> {
        let body = json!({
            "type": "m.login.application_service",
            "username": localpart,
            "inhibit_login": true,
        });
        match self
            .call(
                Endpoint::AsRegister,
                "/_matrix/client/v3/register",
                Body::Json(&body),
                Auth::AppService,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends `content` as a `kind` event from `user_id` (a puppet),
    /// dated `ts` (ms); returns the event id. `txn_id` makes a repeat of
    /// the same send return the first event (while Synapse remembers it).
    pub async fn send_as(
        &self,
        kind: PuppetEvent,
        room_id: &str,
        user_id: &str,
        txn_id: &str,
        ts: i64,
        content: &Value,
    ) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/{}/{}?user_id={}&ts={ts}",
            encode(room_id),
            kind.event_type(),
            encode(txn_id),
            encode(user_id),
        );
        let answer = self
            .call(
                kind.endpoint(),
                &path,
                Body::Json(content),
                Auth::AppService,
            )
            .await?;
        answer["event_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| SynapseError::unreadable("the send returned no event_id"))
    }

    /// Redacts `event_id` as `user_id` (its sender, or a moderator).
    pub async fn redact(
        &self,
        room_id: &str,
        user_id: &str,
        event_id: &str,
        txn_id: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/{}?user_id={}",
            encode(room_id),
            encode(event_id),
            encode(txn_id),
            encode(user_id)
        );
        let body = match reason {
            Some(reason) => json!({"reason": reason}),
            None => json!({}),
        };
        self.call(Endpoint::Redact, &path, Body::Json(&body), Auth::AppService)
            .await
            .map(drop)
    }

    /// The puppet `user_id` accepts an invitation into `room_id`.
    pub async fn join_as(&self, room_id: &str, user_id: &str) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/join?user_id={}",
            encode(room_id),
            encode(user_id)
        );
        self.call(
            Endpoint::PuppetJoin,
            &path,
            Body::Json(&json!({})),
            Auth::AppService,
        )
        .await
        .map(drop)
    }

    /// The puppet leaves `room_id` (or turns its invitation down).
    pub async fn leave_as(&self, room_id: &str, user_id: &str, reason: Option<&str>) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/leave?user_id={}",
            encode(room_id),
            encode(user_id)
        );
        let body = match reason {
            Some(reason) => json!({"reason": reason}),
            None => json!({}),
        };
        self.call(
            Endpoint::PuppetLeave,
            &path,
            Body::Json(&body),
            Auth::AppService,
        )
        .await
        .map(drop)
    }

    /// Adds `room_id` to the puppet's direct chats with `other` (its
    /// `m.direct` account data), unless there already.
    pub async fn mark_direct(&self, user_id: &str, other: &str, room_id: &str) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/user/{}/account_data/m.direct?user_id={}",
            encode(user_id),
            encode(user_id)
        );
        let mut direct = match self
            .call(
                Endpoint::AccountDataGet,
                &path,
                Body::Empty,
                Auth::AppService,
            )
            .await
        {
            Ok(direct) if direct.is_object() => direct,
            Ok(_) => json!({}),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => json!({}),
            Err(e) => return Err(e),
        };
        let rooms = direct[other].as_array().cloned().unwrap_or_default();
        if rooms.iter().any(|r| r == room_id) {
            return Ok(());
        }
        let mut rooms = rooms;
        rooms.push(json!(room_id));
        direct[other] = json!(rooms);
        self.call(
            Endpoint::AccountDataPut,
            &path,
            Body::Json(&direct),
            Auth::AppService,
        )
        .await
        .map(drop)
    }

    /// Shows (or stops showing) the puppet typing in `room_id`.
    pub async fn typing(
        &self,
        room_id: &str,
        user_id: &str,
        typing: bool,
        timeout_ms: i64,
    ) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/typing/{}?user_id={}",
            encode(room_id),
            encode(user_id),
            encode(user_id)
        );
        let body = if typing {
            json!({"typing": true, "timeout": timeout_ms})
        } else {
            json!({"typing": false})
        };
        self.call(Endpoint::Typing, &path, Body::Json(&body), Auth::AppService)
            .await
            .map(drop)
    }

    /// The puppet has read `room_id` up to `event_id`.
    pub async fn read_receipt(&self, room_id: &str, user_id: &str, event_id: &str) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}?user_id={}",
            encode(room_id),
            encode(event_id),
            encode(user_id)
        );
        self.call(
            Endpoint::Receipt,
            &path,
            Body::Json(&json!({})),
            Auth::AppService,
        )
        .await
        .map(drop)
    }

    /// The room's latest messages and reactions (newest first), as the
    /// application service sees them (events without an id or sender are
    /// left out).
    /// `viewer`: a puppet in the room, when the bot is not (a direct chat).
    pub async fn recent_messages(
        &self,
        room_id: &str,
        viewer: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RoomMessage>> {
        let filter = json!({"types": ["m.room.message", "m.reaction"]}).to_string();
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}&filter={}",
            encode(room_id),
            encode(&filter)
        );
        if let Some(user_id) = viewer {
            path.push_str(&format!("&user_id={}", encode(user_id)));
        }
        let answer = self
            .call(Endpoint::RoomMessages, &path, Body::Empty, Auth::AppService)
            .await?;
        let events = answer["chunk"]
            .as_array()
            .ok_or_else(|| SynapseError::unreadable("the room's messages are not a list"))?;
        Ok(events.iter().filter_map(RoomMessage::from_event).collect())
    }

    /// Sets a puppet's presence (and status message).
    pub async fn set_presence(
        &self,
        user_id: &str,
        presence: &str,
        status_msg: Option<&str>,
    ) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/presence/{}/status?user_id={}",
            encode(user_id),
            encode(user_id)
        );
        let mut body = json!({"presence": presence});
        if let Some(status) = status_msg {
            body["status_msg"] = json!(status);
        }
        self.call(
            Endpoint::PresencePut,
            &path,
            Body::Json(&body),
            Auth::AppService,
        )
        .await
        .map(drop)
    }
}
