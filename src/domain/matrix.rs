//! What Synapse sends the application service (`PUT
//! /_matrix/app/v1/transactions/{txnId}`, SYNAPSE.md) as far as the service
//! acts on it, and what goes back to DAARION.city (CONTRACT.md section 9):
//! people's messages in City Rooms and direct chats with agents
//! (`matrix.message`), their edits, deletions and reactions, the direct
//! chats' start and end (section 13), and people's presence
//! (`matrix.presence`).
//!
//! Only messages from people count: the bot's and the agents' own events
//! (the service sent them) are left out here.

use std::collections::BTreeSet;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};

use super::agent::Place;

/// Whose Matrix ids are the service's own: the bot and the agents' puppets.
#[derive(Debug, Clone)]
pub struct Names<'a> {
    pub server_name: &'a str,
    pub bot: &'a str,
    pub agent_prefix: &'a str,
}

impl Names<'_> {
    /// The localpart of a user of this server.
    pub fn local<'u>(&self, user_id: &'u str) -> Option<&'u str> {
        let (localpart, server) = user_id.strip_prefix('@')?.split_once(':')?;
        (server == self.server_name).then_some(localpart)
    }

    /// The localpart of an agent's puppet.
    pub fn agent<'u>(&self, user_id: &'u str) -> Option<&'u str> {
        self.local(user_id)
            .filter(|lp| lp.starts_with(self.agent_prefix))
    }

    pub fn is_service(&self, user_id: &str) -> bool {
        self.local(user_id)
            .is_some_and(|lp| lp == self.bot || lp.starts_with(self.agent_prefix))
    }
}

/// A person's `m.room.message`.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    pub event_id: String,
    /// The Matrix room id.
    pub room_id: String,
    pub sender: String,
    pub content: Value,
    pub origin_server_ts: i64,
}

/// A user's presence, from an ephemeral `m.presence` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPresence {
    pub user_id: String,
    pub presence: String,
    pub last_active_ago: Option<i64>,
}

/// A person's edit (`m.replace`) of their message.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEdit {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    /// The edited event.
    pub original: String,
    /// `m.new_content`.
    pub content: Value,
    pub origin_server_ts: i64,
}

/// A person's reaction (`m.reaction`, an `m.annotation`).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundReaction {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub target: String,
    pub key: String,
    pub origin_server_ts: i64,
}

/// A redaction by a person (of their message or reaction, or, as a
/// moderator, of someone else's).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRedaction {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub redacts: String,
    pub reason: Option<String>,
    pub origin_server_ts: i64,
}

/// A membership change that may start or end a direct chat: an agent's
/// puppet invited, or someone leaving (or made to leave).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMember {
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    /// Whose membership (the state key).
    pub user_id: String,
    /// `invite`, `leave` or `ban`.
    pub membership: String,
    pub origin_server_ts: i64,
}

/// A person's read receipt (`m.read`), from an ephemeral `m.receipt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundReceipt {
    /// `read:<user>:<event>`: once per reader and event, whatever Synapse resends.
    pub id: String,
    pub room_id: String,
    pub user_id: String,
    /// The event read up to.
    pub event_id: String,
    pub ts: i64,
}

/// A person's event in a room, as the event log keeps it (each applied once).
pub trait RoomEvent {
    /// The event log's `kind`.
    const KIND: &'static str;
    fn id(&self) -> &str;
    fn room(&self) -> &str;
    fn ts(&self) -> i64;
}

macro_rules! room_event {
    ($type:ty, $kind:literal, $id:ident, $ts:ident) => {
        impl RoomEvent for $type {
            const KIND: &'static str = $kind;
            fn id(&self) -> &str {
                &self.$id
            }
            fn room(&self) -> &str {
                &self.room_id
            }
            fn ts(&self) -> i64 {
                self.$ts
            }
        }
    };
}

room_event!(InboundMessage, "m.room.message", event_id, origin_server_ts);
room_event!(InboundEdit, "m.replace", event_id, origin_server_ts);
room_event!(InboundReaction, "m.reaction", event_id, origin_server_ts);
room_event!(
    InboundRedaction,
    "m.room.redaction",
    event_id,
    origin_server_ts
);
room_event!(InboundReceipt, "m.receipt", id, ts);

/// The part of a transaction the service acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transaction {
    pub messages: Vec<InboundMessage>,
    pub edits: Vec<InboundEdit>,
    pub reactions: Vec<InboundReaction>,
    pub redactions: Vec<InboundRedaction>,
    pub members: Vec<InboundMember>,
    pub presence: Vec<InboundPresence>,
    /// Kept only when asked for (`CITY_READ_RECEIPTS`).
    pub receipts: Vec<InboundReceipt>,
    /// Events in the transaction, all kinds (for logs).
    pub events: usize,
}

impl Transaction {
    /// Reads a transaction body. Events of other kinds, or whose shape is
    /// not a Matrix event's, are skipped (Synapse is the only sender, after
    /// the token check); a body that is not a transaction is an error.
    pub fn parse(body: &[u8], names: &Names) -> Result<Transaction, String> {
        let raw: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let events = raw
            .get("events")
            .and_then(Value::as_array)
            .ok_or("the body has no events list")?;
        let mut txn = Transaction {
            events: events.len(),
            ..Transaction::default()
        };
        for event in events {
            txn.read_event(event, names);
        }
        let ephemeral = raw
            .get("ephemeral")
            .or_else(|| raw.get("de.sorunome.msc2409.ephemeral"))
            .and_then(Value::as_array);
        for event in ephemeral.into_iter().flatten() {
            if event["type"] == "m.receipt" {
                txn.read_receipts(event, names);
                continue;
            }
            if event["type"] != "m.presence" {
                continue;
            }
            let (Some(user_id), Some(presence)) = (
                event["sender"].as_str(),
                event["content"]["presence"].as_str(),
            ) else {
                continue;
            };
            if names.is_service(user_id) || names.local(user_id).is_none() {
                continue;
            }
            txn.presence.push(InboundPresence {
                user_id: user_id.to_string(),
                presence: presence.to_string(),
                last_active_ago: event["content"]["last_active_ago"].as_i64(),
            });
        }
        txn.events += ephemeral.map_or(0, Vec::len);
        Ok(txn)
    }
}

impl Transaction {
    /// Whether anything in it may concern DAARION.city.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.edits.is_empty()
            && self.reactions.is_empty()
            && self.redactions.is_empty()
            && self.members.is_empty()
            && self.presence.is_empty()
            && self.receipts.is_empty()
    }

    /// People's `m.read` receipts in an `m.receipt` event:
    /// `{"$event": {"m.read": {"@user": {"ts": …}}}}`.
    fn read_receipts(&mut self, event: &Value, names: &Names) {
        let (Some(room_id), Some(content)) =
            (event["room_id"].as_str(), event["content"].as_object())
        else {
            return;
        };
        for (event_id, kinds) in content {
            let Some(readers) = kinds["m.read"].as_object() else {
                continue;
            };
            for (user_id, receipt) in readers {
                if names.is_service(user_id) || names.local(user_id).is_none() {
                    continue;
                }
                self.receipts.push(InboundReceipt {
                    id: format!("read:{user_id}:{event_id}"),
                    room_id: room_id.to_string(),
                    user_id: user_id.clone(),
                    event_id: event_id.clone(),
                    ts: receipt["ts"].as_i64().unwrap_or(0),
                });
            }
        }
    }

    /// Keeps a timeline event if the service acts on it.
    fn read_event(&mut self, event: &Value, names: &Names) {
        let text = |field: &str| event[field].as_str().map(str::to_string);
        let (Some(event_id), Some(room_id), Some(sender)) =
            (text("event_id"), text("room_id"), text("sender"))
        else {
            return;
        };
        if !event["content"].is_object() || names.is_service(&sender) {
            return;
        }
        let content = &event["content"];
        let relation = &content["m.relates_to"];
        let origin_server_ts = event["origin_server_ts"].as_i64().unwrap_or(0);
        match event["type"].as_str() {
            Some("m.room.message") if relation["rel_type"] == "m.replace" => {
                let (Some(original), true) = (
                    relation["event_id"].as_str(),
                    content["m.new_content"].is_object(),
                ) else {
                    return;
                };
                self.edits.push(InboundEdit {
                    event_id,
                    room_id,
                    sender,
                    original: original.to_string(),
                    content: content["m.new_content"].clone(),
                    origin_server_ts,
                });
            }
            Some("m.room.message") => self.messages.push(InboundMessage {
                event_id,
                room_id,
                sender,
                content: content.clone(),
                origin_server_ts,
            }),
            Some("m.reaction") if relation["rel_type"] == "m.annotation" => {
                let (Some(target), Some(key)) =
                    (relation["event_id"].as_str(), relation["key"].as_str())
                else {
                    return;
                };
                self.reactions.push(InboundReaction {
                    event_id,
                    room_id,
                    sender,
                    target: target.to_string(),
                    key: key.to_string(),
                    origin_server_ts,
                });
            }
            Some("m.room.redaction") => {
                // Room versions up to 10 carry it at the top, 11 in the content.
                let Some(redacts) = event["redacts"].as_str().or(content["redacts"].as_str())
                else {
                    return;
                };
                self.redactions.push(InboundRedaction {
                    event_id,
                    room_id,
                    sender,
                    redacts: redacts.to_string(),
                    reason: content["reason"].as_str().map(str::to_string),
                    origin_server_ts,
                });
            }
            Some("m.room.member") => {
                let (Some(user_id), Some(membership)) =
                    (event["state_key"].as_str(), content["membership"].as_str())
                else {
                    return;
                };
                let invite = membership == "invite" && names.agent(user_id).is_some();
                if invite || membership == "leave" || membership == "ban" {
                    self.members.push(InboundMember {
                        event_id,
                        room_id,
                        sender,
                        user_id: user_id.to_string(),
                        membership: membership.to_string(),
                        origin_server_ts,
                    });
                }
            }
            _ => {}
        }
    }
}

/// A person's file in Matrix as DAARION.city gets it, with a link that
/// serves it without a Matrix token until `expires_at` (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct FileLink {
    pub url: String,
    pub expires_at: i64,
}

/// What a person's message links to, as DAARION.city knows it.
#[derive(Debug, Clone, Default)]
pub struct Links<'a> {
    pub sender_id: Option<&'a str>,
    /// The agent's `message_id` (else the event id) it replies to.
    pub reply_to: Option<&'a str>,
    /// The thread's root, the same way.
    pub thread_of: Option<&'a str>,
    pub mentions: Vec<String>,
    pub file: Option<FileLink>,
}

/// `room_id` and `conversation_id` into an event's `data`.
fn place_fields(data: &mut Value, place: &Place) {
    let (room_id, conversation_id) = place.fields();
    data["room_id"] = json!(room_id);
    if conversation_id.is_some() {
        data["conversation_id"] = json!(conversation_id);
    }
}

/// A message content's text as DAARION.city gets it: the body, and the
/// HTML sanitised with the one policy of `domain::html`.
fn text_fields(content: &Value) -> (String, Option<String>) {
    let formatted = content["formatted_body"]
        .as_str()
        .map(super::html::sanitise);
    (
        content["body"].as_str().unwrap_or("").to_string(),
        formatted,
    )
}

/// The `matrix.message_edited` event: `message_id` is the edited
/// `matrix.message`'s id.
pub fn edit_envelope(edit: &InboundEdit, place: &Place, sender_id: Option<&str>) -> Value {
    let (body, formatted) = text_fields(&edit.content);
    let mut data = json!({
        "message_id": edit.original,
        "sender_id": sender_id,
        "body": body,
        "format": if formatted.is_some() { "html" } else { "plain" },
        "formatted_body": formatted,
    });
    place_fields(&mut data, place);
    json!({
        "id": edit.event_id,
        "type": "matrix.message_edited",
        "created_at": rfc3339(edit.origin_server_ts),
        "data": data,
    })
}

/// The `matrix.message_deleted` event: `message_id` names the deleted
/// message (an agent's `message_id`, or a `matrix.message` id), `sender_id`
/// who deleted it.
pub fn deletion_envelope(
    redaction: &InboundRedaction,
    place: &Place,
    message_id: &str,
    sender_id: Option<&str>,
    by_moderator: bool,
) -> Value {
    let mut data = json!({
        "message_id": message_id,
        "sender_id": sender_id,
        "by_moderator": by_moderator,
        "reason": redaction.reason,
    });
    place_fields(&mut data, place);
    json!({
        "id": redaction.event_id,
        "type": "matrix.message_deleted",
        "created_at": rfc3339(redaction.origin_server_ts),
        "data": data,
    })
}

/// A reaction for DAARION.city: `matrix.reaction`, added (`id` the
/// reaction's event) or removed (`id` the redaction's event).
pub struct ReactionTold<'a> {
    pub id: &'a str,
    pub ts: i64,
    pub target: &'a str,
    pub key: &'a str,
    pub sender_id: Option<&'a str>,
    pub removed: bool,
}

pub fn reaction_envelope(r: &ReactionTold<'_>, place: &Place) -> Value {
    let mut data = json!({
        "target": r.target,
        "key": r.key,
        "sender_id": r.sender_id,
        "removed": r.removed,
    });
    place_fields(&mut data, place);
    json!({
        "id": r.id,
        "type": "matrix.reaction",
        "created_at": rfc3339(r.ts),
        "data": data,
    })
}

/// `matrix.read`: a person read up to `up_to` (an agent's `message_id`, or
/// a `matrix.message` id), sent only with `CITY_READ_RECEIPTS=on`.
pub fn read_envelope(r: &InboundReceipt, place: &Place, sender_id: &str, up_to: &str) -> Value {
    let mut data = json!({"sender_id": sender_id, "up_to": up_to});
    place_fields(&mut data, place);
    json!({
        "id": r.id,
        "type": "matrix.read",
        "created_at": rfc3339(r.ts),
        "data": data,
    })
}

/// `matrix.conversation_started` / `matrix.conversation_ended`.
pub fn conversation_envelope(
    id: &str,
    kind: &str,
    conversation_id: &str,
    agent_id: &str,
    sender_id: Option<&str>,
    matrix_room_id: &str,
    ts: i64,
) -> Value {
    json!({
        "id": id,
        "type": kind,
        "created_at": rfc3339(ts),
        "data": {
            "conversation_id": conversation_id,
            "agent_id": agent_id,
            "sender_id": sender_id,
            "matrix_room_id": matrix_room_id,
        },
    })
}

impl InboundMessage {
    /// The root of the thread this message is in, if any.
    pub fn thread_root(&self) -> Option<&str> {
        let relation = &self.content["m.relates_to"];
        (relation["rel_type"] == "m.thread")
            .then(|| relation["event_id"].as_str())
            .flatten()
    }

    /// The `mxc://` URI of the file this message carries, if it is one.
    pub fn file(&self) -> Option<&str> {
        let kind = self.content["msgtype"].as_str()?;
        if !matches!(kind, "m.image" | "m.file" | "m.audio" | "m.video") {
            return None;
        }
        self.content["url"]
            .as_str()
            .filter(|u| u.starts_with("mxc://"))
    }

    /// The event this message replies to, if it is a reply (a thread's
    /// fallback reply is not one).
    pub fn reply_event(&self) -> Option<&str> {
        let relation = &self.content["m.relates_to"];
        if relation["rel_type"] == "m.thread" && relation["is_falling_back"] == true {
            return None;
        }
        relation["m.in_reply_to"]["event_id"].as_str()
    }

    /// Users the message mentions: its `m.mentions`, and the Matrix ids in
    /// its links (`https://matrix.to/#/@…`, how clients write a mention)
    /// and in its text.
    pub fn mentioned_users(&self) -> BTreeSet<String> {
        let mut users: BTreeSet<String> = self.content["m.mentions"]["user_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        for field in ["body", "formatted_body"] {
            if let Some(text) = self.content[field].as_str() {
                users.extend(user_ids_in(text));
            }
        }
        users
    }

    /// The `matrix.message` event for DAARION.city. The HTML is anyone's
    /// (a person's client, another server's), and DAARION.city shows it in
    /// a browser: it goes out sanitised, with the policy agents' HTML
    /// comes in with.
    pub fn envelope(&self, place: &Place, links: &Links<'_>) -> Value {
        let (body, formatted) = text_fields(&self.content);
        let mut data = json!({
            "sender_id": links.sender_id,
            "matrix_user_id": self.sender,
            "body": body,
            "format": if formatted.is_some() { "html" } else { "plain" },
            "formatted_body": formatted,
            "reply_to": links.reply_to,
            "thread_of": links.thread_of,
            "mentions": links.mentions,
        });
        place_fields(&mut data, place);
        // Without a link (no PUBLIC_URL) DAARION.city still learns of the
        // file, with `download_url` null.
        if let Some(mxc) = self.file() {
            let info = &self.content["info"];
            let link = links.file.as_ref();
            data["attachment"] = json!({
                "mxc": mxc,
                "mimetype": info["mimetype"].as_str(),
                "name": self.content["filename"].as_str().or(self.content["body"].as_str()),
                "size": info["size"].as_u64(),
                "download_url": link.map(|l| l.url.as_str()),
                "download_expires_at": link.map(|l| rfc3339(l.expires_at)),
            });
        }
        json!({
            "id": self.event_id,
            "type": "matrix.message",
            "created_at": rfc3339(self.origin_server_ts),
            "data": data,
        })
    }
}

/// The `matrix.presence` event for DAARION.city.
pub fn presence_envelope(
    id: &str,
    sender_id: &str,
    presence: &InboundPresence,
    now_ms: i64,
) -> Value {
    json!({
        "id": id,
        "type": "matrix.presence",
        "created_at": rfc3339(now_ms),
        "data": {
            "sender_id": sender_id,
            "presence": presence.presence,
            "last_active_ago": presence.last_active_ago,
        },
    })
}

pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Matrix user ids (`@localpart:server`) written in a text or a link
/// (percent-encoded `%40`/`%3A` included).
fn user_ids_in(text: &str) -> Vec<String> {
    let decoded = text
        .replace("%40", "@")
        .replace("%3A", ":")
        .replace("%3a", ":");
    let mut found = Vec::new();
    for (start, _) in decoded.match_indices('@') {
        let rest = &decoded[start + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "._=-/+:[]".contains(c)))
            .unwrap_or(rest.len());
        let candidate = rest[..end].trim_end_matches(['.', ':']);
        if let Some((lp, server)) = candidate.split_once(':') {
            if !lp.is_empty() && !server.is_empty() {
                found.push(format!("@{candidate}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: Names = Names {
        server_name: "daarion.space",
        bot: "daarion",
        agent_prefix: "agent-",
    };

    #[test]
    fn people_s_messages_and_presence_are_kept_the_service_s_own_are_not() {
        let body = json!({
            "events": [
                {"type": "m.room.message", "event_id": "$1", "room_id": "!r:daarion.space",
                 "sender": "@olena:daarion.space", "origin_server_ts": 1_700_000_000_000i64,
                 "content": {"msgtype": "m.text", "body": "hi"}},
                {"type": "m.room.message", "event_id": "$2", "room_id": "!r:daarion.space",
                 "sender": "@agent-helper:daarion.space", "content": {"body": "echo"}},
                {"type": "m.room.message", "event_id": "$3", "room_id": "!r:daarion.space",
                 "sender": "@daarion:daarion.space", "content": {"body": "bot"}},
                {"type": "m.room.member", "event_id": "$4", "room_id": "!r:daarion.space",
                 "sender": "@olena:daarion.space", "state_key": "@olena:daarion.space",
                 "content": {"membership": "join"}},
            ],
            "ephemeral": [
                {"type": "m.presence", "sender": "@olena:daarion.space",
                 "content": {"presence": "online", "last_active_ago": 5}},
                {"type": "m.presence", "sender": "@agent-helper:daarion.space",
                 "content": {"presence": "online"}},
                {"type": "m.typing", "room_id": "!r:daarion.space", "content": {"user_ids": []}},
            ]
        });
        let txn = Transaction::parse(body.to_string().as_bytes(), &NAMES).unwrap();
        assert_eq!(txn.events, 7);
        assert_eq!(txn.messages.len(), 1);
        assert_eq!(txn.messages[0].event_id, "$1");
        assert_eq!(
            txn.presence,
            vec![InboundPresence {
                user_id: "@olena:daarion.space".into(),
                presence: "online".into(),
                last_active_ago: Some(5),
            }]
        );
        assert!(Transaction::parse(b"[]", &NAMES).is_err());
        assert!(Transaction::parse(b"{", &NAMES).is_err());
    }

    /// Section 13's events: edits, reactions, redactions, invitations of
    /// puppets, departures, receipts; the service's own are left out.
    #[test]
    fn edits_reactions_redactions_members_and_receipts_are_read() {
        let olena = "@olena:daarion.space";
        let body = json!({
            "events": [
                {"type": "m.room.message", "event_id": "$e", "room_id": "!r:x", "sender": olena,
                 "content": {"body": "* new", "m.new_content": {"body": "new"},
                             "m.relates_to": {"rel_type": "m.replace", "event_id": "$1"}}},
                {"type": "m.reaction", "event_id": "$r", "room_id": "!r:x", "sender": olena,
                 "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$1", "key": "👍"}}},
                {"type": "m.reaction", "event_id": "$r2", "room_id": "!r:x",
                 "sender": "@agent-helper:daarion.space",
                 "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$1", "key": "👀"}}},
                {"type": "m.room.redaction", "event_id": "$d", "room_id": "!r:x", "sender": olena,
                 "redacts": "$r", "content": {"reason": "oops"}},
                {"type": "m.room.redaction", "event_id": "$d11", "room_id": "!r:x", "sender": olena,
                 "content": {"redacts": "$1"}},
                {"type": "m.room.member", "event_id": "$i", "room_id": "!dm:x", "sender": olena,
                 "state_key": "@agent-helper:daarion.space", "content": {"membership": "invite"}},
                {"type": "m.room.member", "event_id": "$i2", "room_id": "!dm:x", "sender": olena,
                 "state_key": "@someone:daarion.space", "content": {"membership": "invite"}},
                {"type": "m.room.member", "event_id": "$l", "room_id": "!dm:x", "sender": olena,
                 "state_key": olena, "content": {"membership": "leave"}},
            ],
            "ephemeral": [
                {"type": "m.receipt", "room_id": "!r:x", "content": {"$1": {"m.read": {
                    olena: {"ts": 5}, "@agent-helper:daarion.space": {"ts": 6}}}}},
            ]
        });
        let txn = Transaction::parse(body.to_string().as_bytes(), &NAMES).unwrap();
        assert!(txn.messages.is_empty(), "an edit is not a new message");
        assert_eq!(txn.edits.len(), 1);
        assert_eq!(txn.edits[0].original, "$1");
        assert_eq!(txn.edits[0].content["body"], "new");
        assert_eq!(txn.reactions.len(), 1);
        assert_eq!(txn.reactions[0].key, "👍");
        let redacted: Vec<&str> = txn.redactions.iter().map(|r| r.redacts.as_str()).collect();
        assert_eq!(redacted, ["$r", "$1"], "room versions before and after 11");
        assert_eq!(txn.redactions[0].reason.as_deref(), Some("oops"));
        let members: Vec<(&str, &str)> = txn
            .members
            .iter()
            .map(|m| (m.user_id.as_str(), m.membership.as_str()))
            .collect();
        assert_eq!(
            members,
            [("@agent-helper:daarion.space", "invite"), (olena, "leave")]
        );
        assert_eq!(txn.receipts.len(), 1);
        assert_eq!(txn.receipts[0].user_id, olena);
        assert_eq!(txn.receipts[0].event_id, "$1");
        let thread = InboundMessage {
            event_id: "$t".into(),
            room_id: "!r:x".into(),
            sender: olena.into(),
            content: json!({"body": "x", "m.relates_to": {"rel_type": "m.thread", "event_id": "$root",
                "is_falling_back": true, "m.in_reply_to": {"event_id": "$root"}}}),
            origin_server_ts: 0,
        };
        assert_eq!(thread.thread_root(), Some("$root"));
        assert_eq!(
            thread.reply_event(),
            None,
            "a thread's fallback is no reply"
        );
    }

    #[test]
    fn mentions_come_from_m_mentions_links_and_text() {
        let message = InboundMessage {
            event_id: "$1".into(),
            room_id: "!r:x".into(),
            sender: "@olena:daarion.space".into(),
            content: json!({
                "body": "hey @agent-a:daarion.space, and agent-b",
                "formatted_body": "<a href=\"https://matrix.to/#/%40agent-b%3Adaarion.space\">b</a>",
                "m.mentions": {"user_ids": ["@agent-c:daarion.space"]},
                "m.relates_to": {"m.in_reply_to": {"event_id": "$0"}},
            }),
            origin_server_ts: 0,
        };
        let users: Vec<String> = message.mentioned_users().into_iter().collect();
        assert_eq!(
            users,
            [
                "@agent-a:daarion.space",
                "@agent-b:daarion.space",
                "@agent-c:daarion.space"
            ]
        );
        assert_eq!(message.reply_event(), Some("$0"));
        let links = Links {
            sender_id: Some("u_1"),
            reply_to: Some("m0"),
            mentions: vec!["a_a".into()],
            ..Links::default()
        };
        let envelope = message.envelope(&Place::Room("r_kyiv".into()), &links);
        assert_eq!(envelope["data"]["room_id"], "r_kyiv");
        assert!(envelope["data"].get("conversation_id").is_none());
        assert_eq!(envelope["type"], "matrix.message");
        assert_eq!(envelope["id"], "$1");
        assert_eq!(envelope["data"]["format"], "html");
        assert_eq!(envelope["data"]["reply_to"], "m0");
        assert_eq!(envelope["data"]["mentions"], json!(["a_a"]));
        assert_eq!(envelope["created_at"], "1970-01-01T00:00:00.000Z");
    }

    /// A person's HTML (from any server) reaches DAARION.city as clean as
    /// an agent's: the one policy of `domain::html`.
    #[test]
    fn people_s_html_is_sanitised_for_daarion_city() {
        let message = InboundMessage {
            event_id: "$1".into(),
            room_id: "!r:x".into(),
            sender: "@mallory:evil.example".into(),
            content: json!({
                "body": "hi",
                "format": "org.matrix.custom.html",
                "formatted_body": "<b>bold</b> <a href=\"https://daarion.city/x\">ok</a> \
                    <code>x = 1</code><script>alert(1)</script>\
                    <img src=\"http://tracker.example/p.png\" onerror=\"alert(2)\">\
                    <a href=\"javascript:alert(3)\">bad</a>\
                    <style>body { display: none }</style>\
                    <i onclick=\"alert(4)\">i</i>",
            }),
            origin_server_ts: 0,
        };
        let envelope = message.envelope(&Place::Conversation("c_1".into()), &Links::default());
        assert_eq!(envelope["data"]["conversation_id"], "c_1");
        assert!(envelope["data"]["room_id"].is_null());
        assert_eq!(envelope["data"]["format"], "html");
        let html = envelope["data"]["formatted_body"].as_str().unwrap();
        for gone in [
            "script",
            "alert",
            "onerror",
            "onclick",
            "<img",
            "tracker",
            "javascript",
            "<style",
            "display",
        ] {
            assert!(!html.contains(gone), "{gone:?} in {html}");
        }
        for kept in [
            "<b>bold</b>",
            "<a href=\"https://daarion.city/x\" rel=\"noopener noreferrer\">ok</a>",
            "<code>x = 1</code>",
            "<i>i</i>",
        ] {
            assert!(html.contains(kept), "{kept:?} not in {html}");
        }
        // The plain body is text, and is left as it was.
        assert_eq!(envelope["data"]["body"], "hi");
    }
}
