//! DAARION.city's agents (CONTRACT.md section 9): what their events say
//! (`agent.created/updated/deleted`, `agent.message`, `presence.changed`),
//! what DAARION.city wants of an agent (last writer wins per field, as for
//! people and rooms), and how an agent's message looks in Matrix: markdown
//! rendered to sanitised HTML, a reply as a Matrix reply, dated and marked
//! with its DAARION message id.

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::event::{clean_display_name, patch, unacceptable, valid_id, EventError, Patch};
use super::person::set;

/// Longest slug: it becomes the puppet's localpart.
const MAX_SLUG_BYTES: usize = 100;
/// Longest message body (a Matrix event must stay under 64 KiB with its
/// HTML rendering).
pub const MAX_BODY_BYTES: usize = 24 * 1024;
const MAX_STATUS_CHARS: usize = 256;
/// The content field that carries the DAARION message id into Matrix: it
/// lets the service find a message it sent but did not record (a crash
/// between Synapse's answer and the database).
pub const MESSAGE_ID_FIELD: &str = "city.daarion.message_id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Online,
    Unavailable,
    Offline,
}

column_words!(Presence {
    Online => "online",
    Unavailable => "unavailable",
    Offline => "offline",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Plain,
    Markdown,
}

column_words!(Format { Plain => "plain", Markdown => "markdown" });

/// `agent.created` / `agent.updated`: absent fields unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFields {
    pub slug: Option<String>,
    pub display_name: Patch<String>,
    pub avatar_url: Patch<String>,
}

/// A validated `agent.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMessage {
    pub message_id: String,
    pub agent_id: String,
    pub room_id: String,
    pub body: String,
    pub format: Format,
    pub reply_to: Option<String>,
}

/// What an agent event changes (see `city::Change`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChange {
    Fields(AgentFields),
    Deleted,
    Presence {
        presence: Presence,
        status_msg: Option<String>,
    },
}

/// What DAARION.city wants of an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentWanted {
    pub slug: Option<String>,
    pub slug_at: i64,
    pub display_name: Option<String>,
    pub display_name_at: i64,
    pub avatar_url: Option<String>,
    pub avatar_url_at: i64,
    pub deleted: bool,
    pub lifecycle_at: i64,
    pub presence: Option<Presence>,
    pub status_msg: Option<String>,
    pub presence_at: i64,
}

impl AgentWanted {
    /// Applies an event of `created_at` `t`; returns whether anything changed.
    pub fn apply(&mut self, created: bool, change: &AgentChange, t: i64) -> bool {
        let before = self.clone();
        match change {
            AgentChange::Fields(f) => {
                // Only a newer creation brings a deleted agent back.
                if created && (t > self.lifecycle_at || self.lifecycle_at == 0) {
                    self.deleted = false;
                    self.lifecycle_at = t;
                }
                if let Some(slug) = &f.slug {
                    set(&mut self.slug, &mut self.slug_at, Patch::Set(slug), t);
                }
                set(
                    &mut self.display_name,
                    &mut self.display_name_at,
                    f.display_name.as_ref(),
                    t,
                );
                set(
                    &mut self.avatar_url,
                    &mut self.avatar_url_at,
                    f.avatar_url.as_ref(),
                    t,
                );
            }
            AgentChange::Deleted => {
                if t >= self.lifecycle_at {
                    self.deleted = true;
                    self.lifecycle_at = t;
                }
            }
            AgentChange::Presence {
                presence,
                status_msg,
            } => {
                if t >= self.presence_at {
                    self.presence = Some(*presence);
                    self.status_msg = status_msg.clone();
                    self.presence_at = t;
                }
            }
        }
        *self != before
    }
}

#[derive(Debug, Deserialize)]
struct RawAgent {
    agent_id: String,
    #[serde(default)]
    slug: Option<String>,
    #[serde(default, deserialize_with = "patch")]
    display_name: Patch<String>,
    #[serde(default, deserialize_with = "patch")]
    avatar_url: Patch<String>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    message_id: String,
    agent_id: String,
    room_id: String,
    body: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawPresence {
    member_id: String,
    presence: String,
    #[serde(default)]
    status_msg: Option<String>,
}

fn id_field(value: String, field: &str) -> Result<String, EventError> {
    if valid_id(&value) {
        Ok(value)
    } else {
        Err(EventError::Unacceptable(format!(
            "data.{field} must be 1 to 255 printable characters"
        )))
    }
}

/// `agent.created` / `agent.updated` / `agent.deleted` data: the agent id
/// and what changes.
pub(super) fn parse_agent(kind: &str, data: Value) -> Result<(String, AgentChange), EventError> {
    let raw: RawAgent = serde_json::from_value(data)
        .map_err(|e| EventError::Malformed(format!("data does not fit {kind}: {e}")))?;
    let agent_id = id_field(raw.agent_id, "agent_id")?;
    if kind == "agent.deleted" {
        return Ok((agent_id, AgentChange::Deleted));
    }
    let slug = match raw.slug {
        Some(slug) => Some(localpart_slug(&slug)?),
        None if kind == "agent.created" => {
            return Err(unacceptable("agent.created needs data.slug"))
        }
        None => None,
    };
    if let Patch::Set(url) = &raw.avatar_url {
        if url.len() > super::event::MAX_URL_BYTES {
            return Err(unacceptable("data.avatar_url is longer than 2048 bytes"));
        }
    }
    let empty_is_clear = |p: Patch<String>| match p {
        Patch::Set(v) if v.trim().is_empty() => Patch::Clear,
        Patch::Set(v) => Patch::Set(v.trim().to_string()),
        other => other,
    };
    Ok((
        agent_id,
        AgentChange::Fields(AgentFields {
            slug,
            display_name: empty_is_clear(raw.display_name.map(clean_display_name)),
            avatar_url: empty_is_clear(raw.avatar_url),
        }),
    ))
}

/// A slug as the puppet's localpart: lower case, and only characters a
/// Matrix localpart may hold (refused otherwise: a renamed puppet would be
/// a different Matrix user).
fn localpart_slug(slug: &str) -> Result<String, EventError> {
    let slug = slug.trim().to_lowercase();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._=-/".contains(c);
    if slug.is_empty() || slug.len() > MAX_SLUG_BYTES || !slug.chars().all(allowed) {
        return Err(unacceptable(
            "data.slug must be 1 to 100 of a-z, 0-9, '.', '_', '=', '-', '/'",
        ));
    }
    Ok(slug)
}

pub(super) fn parse_message(data: Value) -> Result<AgentMessage, EventError> {
    let raw: RawMessage = serde_json::from_value(data)
        .map_err(|e| EventError::Malformed(format!("data does not fit agent.message: {e}")))?;
    let format = match raw.format.as_deref() {
        None => Format::Plain,
        Some(f) => f
            .parse::<Format>()
            .map_err(|()| unacceptable("data.format must be plain or markdown"))?,
    };
    if raw.body.trim().is_empty() {
        return Err(unacceptable("data.body must not be empty"));
    }
    if raw.body.len() > MAX_BODY_BYTES {
        return Err(unacceptable("data.body is longer than 24 KiB"));
    }
    let reply_to = raw.reply_to.map(|r| id_field(r, "reply_to")).transpose()?;
    Ok(AgentMessage {
        message_id: id_field(raw.message_id, "message_id")?,
        agent_id: id_field(raw.agent_id, "agent_id")?,
        room_id: id_field(raw.room_id, "room_id")?,
        body: raw.body,
        format,
        reply_to,
    })
}

pub(super) fn parse_presence(data: Value) -> Result<(String, AgentChange), EventError> {
    let raw: RawPresence = serde_json::from_value(data)
        .map_err(|e| EventError::Malformed(format!("data does not fit presence.changed: {e}")))?;
    let presence = raw
        .presence
        .parse::<Presence>()
        .map_err(|()| unacceptable("data.presence must be online, unavailable or offline"))?;
    let status_msg = raw
        .status_msg
        .map(|s| {
            clean_display_name(s)
                .chars()
                .take(MAX_STATUS_CHARS)
                .collect()
        })
        .filter(|s: &String| !s.is_empty());
    Ok((
        id_field(raw.member_id, "member_id")?,
        AgentChange::Presence {
            presence,
            status_msg,
        },
    ))
}

/// The transaction id of a message's send: the same for every attempt
/// (Synapse then answers a repeat with the first event), distinct for
/// every message whichever puppet sends it (Synapse's dedupe is not keyed
/// by user, SYNAPSE.md), and URL-safe whatever DAARION's id holds.
pub fn txn_id(message_id: &str) -> String {
    let digest = Sha256::digest(message_id.as_bytes());
    format!("mp-{}", hex::encode(&digest[..16]))
}

/// The `m.room.message` content of an agent's message; `reply_event` is the
/// Matrix event it answers, if known.
pub fn message_content(message: &AgentMessage, reply_event: Option<&str>) -> Value {
    let mut content = json!({
        "msgtype": "m.text",
        "body": message.body,
        MESSAGE_ID_FIELD: message.message_id,
    });
    if message.format == Format::Markdown {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(render_markdown(&message.body));
    }
    if let Some(event_id) = reply_event {
        content["m.relates_to"] = json!({"m.in_reply_to": {"event_id": event_id}});
    }
    content
}

/// Markdown as the HTML Matrix clients show, sanitised with the service's
/// one HTML policy ([`super::html::sanitise`]).
pub fn render_markdown(markdown: &str) -> String {
    use pulldown_cmark::{html, Options, Parser};
    let options = Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES;
    let mut raw = String::with_capacity(markdown.len() * 2);
    html::push_html(&mut raw, Parser::new_ext(markdown, options));
    super::html::sanitise(&raw).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_sanitised_html() {
        let html = render_markdown("**bold** and `code`\n\n- one\n- two");
        assert!(html.contains("<strong>bold</strong>"), "{html}");
        assert!(html.contains("<code>code</code>"), "{html}");
        assert!(html.contains("<li>one</li>"), "{html}");
        let html = render_markdown(
            "[ok](https://daarion.city) [bad](javascript:alert(1)) \
             ![x](https://evil.test/x.png) <b onclick=\"x()\">b</b>\n\n\
             <script>alert(1)</script>",
        );
        assert!(!html.contains("script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("evil.test"), "{html}");
        assert!(!html.contains("javascript"), "{html}");
        assert!(!html.contains("onclick"), "{html}");
        assert!(html.contains("href=\"https://daarion.city\""), "{html}");
    }

    #[test]
    fn a_message_is_dated_marked_and_replies() {
        let message = parse_message(json!({
            "message_id": "m1", "agent_id": "a_helper", "room_id": "r_kyiv",
            "body": "*hi*", "format": "markdown", "reply_to": "m0"
        }))
        .unwrap();
        let content = message_content(&message, Some("$earlier"));
        assert_eq!(content["body"], "*hi*");
        assert_eq!(content["formatted_body"], "<p><em>hi</em></p>");
        assert_eq!(content[MESSAGE_ID_FIELD], "m1");
        assert_eq!(
            content["m.relates_to"]["m.in_reply_to"]["event_id"],
            "$earlier"
        );
        let plain = parse_message(json!({
            "message_id": "m2", "agent_id": "a", "room_id": "r", "body": "hi"
        }))
        .unwrap();
        assert!(message_content(&plain, None)
            .get("formatted_body")
            .is_none());
    }

    #[test]
    fn bad_agent_events_are_refused() {
        let refused = |r: Result<AgentMessage, EventError>| {
            assert!(matches!(r, Err(EventError::Unacceptable(_))), "{r:?}")
        };
        refused(parse_message(
            json!({"message_id": "m", "agent_id": "a", "room_id": "r", "body": " "}),
        ));
        refused(parse_message(
            json!({"message_id": "m", "agent_id": "a", "room_id": "r", "body": "x", "format": "html"}),
        ));
        assert!(parse_agent("agent.created", json!({"agent_id": "a"})).is_err());
        assert!(parse_agent(
            "agent.created",
            json!({"agent_id": "a", "slug": "Helper Bot"})
        )
        .is_err());
        let (_, change) =
            parse_agent("agent.created", json!({"agent_id": "a", "slug": "Helper"})).unwrap();
        assert!(matches!(change, AgentChange::Fields(f) if f.slug.as_deref() == Some("helper")));
        assert!(parse_presence(json!({"member_id": "a", "presence": "away"})).is_err());
    }

    #[test]
    fn txn_ids_are_stable_distinct_and_url_safe() {
        assert_eq!(txn_id("m/1 ?"), txn_id("m/1 ?"));
        assert_ne!(txn_id("m1"), txn_id("m2"));
        assert!(txn_id("m/1 ?")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn newer_presence_and_fields_win() {
        let mut w = AgentWanted::default();
        let online = AgentChange::Presence {
            presence: Presence::Online,
            status_msg: None,
        };
        let offline = AgentChange::Presence {
            presence: Presence::Offline,
            status_msg: None,
        };
        assert!(w.apply(false, &online, 20));
        assert!(!w.apply(false, &offline, 10));
        assert_eq!(w.presence, Some(Presence::Online));
        assert!(w.apply(false, &AgentChange::Deleted, 30));
        let created = AgentChange::Fields(AgentFields {
            slug: Some("h".into()),
            ..Default::default()
        });
        assert!(w.apply(true, &created, 25));
        assert!(w.deleted, "an older creation does not undo a deletion");
        w.apply(true, &created, 40);
        assert!(!w.deleted);
    }
}
