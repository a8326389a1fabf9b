//! The application service's puppets (SYNAPSE.md "Application services"):
//! agents' accounts, registered through the application service, and what
//! the service does as one of them (`?user_id=`): send a message dated by
//! `?ts=`, set presence. Requests carry the application service's token.

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

    /// Sends `content` as an `m.room.message` from `user_id` (a puppet),
    /// dated `ts` (ms); returns the event id. `txn_id` makes a repeat of
    /// the same send return the first event (while Synapse remembers it).
    pub async fn send_message(
        &self,
        room_id: &str,
        user_id: &str,
        txn_id: &str,
        ts: i64,
        content: &Value,
    ) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}?user_id={}&ts={ts}",
            encode(room_id),
            encode(txn_id),
            encode(user_id)
        );
        let answer = self
            .call(
                Endpoint::MessageSend,
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

    /// The room's latest `m.room.message` events (newest first), as the bot
    /// sees them (events without an id or sender are left out).
    pub async fn recent_messages(&self, room_id: &str, limit: u32) -> Result<Vec<RoomMessage>> {
        let filter = json!({"types": ["m.room.message"]}).to_string();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}&filter={}",
            encode(room_id),
            encode(&filter)
        );
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
