//! What Synapse sends the application service (`PUT
//! /_matrix/app/v1/transactions/{txnId}`, SYNAPSE.md) as far as the service
//! acts on it, and what goes back to DAARION.city (CONTRACT.md section 9):
//! people's messages in City Rooms (`matrix.message`) and their presence
//! (`matrix.presence`).
//!
//! Only messages from people count: the bot's and the agents' own events
//! (the service sent them) are left out here.

use std::collections::BTreeSet;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};

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

    fn is_service(&self, user_id: &str) -> bool {
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

/// The part of a transaction the service acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transaction {
    pub messages: Vec<InboundMessage>,
    pub presence: Vec<InboundPresence>,
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
            let text = |field: &str| event[field].as_str().map(str::to_string);
            if event["type"] != "m.room.message" || !event["content"].is_object() {
                continue;
            }
            let (Some(event_id), Some(room_id), Some(sender)) =
                (text("event_id"), text("room_id"), text("sender"))
            else {
                continue;
            };
            if names.is_service(&sender) {
                continue;
            }
            txn.messages.push(InboundMessage {
                event_id,
                room_id,
                sender,
                content: event["content"].clone(),
                origin_server_ts: event["origin_server_ts"].as_i64().unwrap_or(0),
            });
        }
        let ephemeral = raw
            .get("ephemeral")
            .or_else(|| raw.get("de.sorunome.msc2409.ephemeral"))
            .and_then(Value::as_array);
        for event in ephemeral.into_iter().flatten() {
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

impl InboundMessage {
    /// The event this message replies to, if it is a reply.
    pub fn reply_event(&self) -> Option<&str> {
        self.content["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()
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
    pub fn envelope(
        &self,
        room_id: &str,
        sender_id: Option<&str>,
        reply_to: Option<&str>,
        mentions: &[String],
    ) -> Value {
        let formatted = self.content["formatted_body"]
            .as_str()
            .map(super::html::sanitise);
        json!({
            "id": self.event_id,
            "type": "matrix.message",
            "created_at": rfc3339(self.origin_server_ts),
            "data": {
                "room_id": room_id,
                "sender_id": sender_id,
                "matrix_user_id": self.sender,
                "body": self.content["body"].as_str().unwrap_or(""),
                "format": if formatted.is_some() { "html" } else { "plain" },
                "formatted_body": formatted,
                "reply_to": reply_to,
                "mentions": mentions,
            },
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

fn rfc3339(ms: i64) -> String {
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
        let envelope = message.envelope("r_kyiv", Some("u_1"), Some("m0"), &["a_a".into()]);
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
        let envelope = message.envelope("r_kyiv", None, None, &[]);
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
