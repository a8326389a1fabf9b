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
    /// Whether people may open direct chats with it (section 13).
    pub accepts_direct_chats: Option<bool>,
}

/// Where an agent acts (CONTRACT.md section 13): a City Room, or a direct
/// chat with a person. Its key (`room:<id>`, `conversation:<id>`) names the
/// place's outbox into Matrix, its `send` job and its stream back to
/// DAARION.city.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    Room(String),
    Conversation(String),
}

impl Place {
    pub fn key(&self) -> String {
        match self {
            Place::Room(id) => format!("room:{id}"),
            Place::Conversation(id) => format!("conversation:{id}"),
        }
    }

    pub fn from_key(key: &str) -> Option<Place> {
        if let Some(id) = key.strip_prefix("room:") {
            return Some(Place::Room(id.to_string()));
        }
        key.strip_prefix("conversation:")
            .map(|id| Place::Conversation(id.to_string()))
    }

    /// The DAARION id: the City Room's or the conversation's.
    pub fn id(&self) -> &str {
        match self {
            Place::Room(id) | Place::Conversation(id) => id,
        }
    }

    /// `room_id` and `conversation_id` as the contract's events carry them
    /// (one of them null).
    pub fn fields(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Place::Room(id) => (Some(id), None),
            Place::Conversation(id) => (None, Some(id)),
        }
    }
}

/// A file an agent sends (`agent.message`'s `attachment`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Attachment {
    pub url: String,
    #[serde(default)]
    pub mimetype: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

/// A validated `agent.message` (a whole message, or one part of a
/// streamed answer: `final` false).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMessage {
    pub message_id: String,
    pub agent_id: String,
    pub place: Place,
    pub body: String,
    pub format: Format,
    pub reply_to: Option<String>,
    pub thread_of: Option<String>,
    pub final_part: bool,
    pub attachment: Option<Attachment>,
}

/// What DAARION.city asks an agent to do in Matrix (section 9's
/// `agent.message` and section 13's additions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    Message(AgentMessage),
    Edit {
        message_id: String,
        body: String,
        format: Format,
    },
    Delete {
        message_id: String,
        reason: Option<String>,
    },
    React {
        agent_id: String,
        target: String,
        key: String,
        removed: bool,
    },
    Typing {
        agent_id: String,
        place: Place,
        typing: bool,
        timeout_ms: i64,
    },
    Read {
        agent_id: String,
        place: Place,
        up_to: String,
    },
}

/// The kinds of row in a place's outbox into Matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Message,
    Reaction,
    Typing,
    Read,
}

column_words!(ActionKind {
    Message => "message",
    Reaction => "reaction",
    Typing => "typing",
    Read => "read",
});

impl AgentAction {
    /// What the event log files it under: its place, or its message.
    pub fn subject(&self) -> String {
        match self {
            AgentAction::Message(m) => m.place.key(),
            AgentAction::Edit { message_id, .. } | AgentAction::Delete { message_id, .. } => {
                message_id.clone()
            }
            AgentAction::React { agent_id, .. } => agent_id.clone(),
            AgentAction::Typing { place, .. } | AgentAction::Read { place, .. } => place.key(),
        }
    }
}

/// The outbox row of an agent's reaction, typing or read receipt: one per
/// agent and target or place, updated in place (the newest word wins).
pub fn action_row_id(kind: ActionKind, agent_id: &str, on: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{agent_id}\n{on}\n{key}").as_bytes());
    format!("~{}:{}", kind.as_str(), hex::encode(&digest[..16]))
}

/// A direct chat's id: stable for a Matrix room and an agent.
pub fn conversation_id(matrix_room_id: &str, agent_id: &str) -> String {
    let digest = Sha256::digest(format!("{matrix_room_id}\n{agent_id}").as_bytes());
    format!("c_{}", hex::encode(&digest[..12]))
}

/// Longest typing notice asked for.
const MAX_TYPING_MS: i64 = 120_000;
/// Longest reaction key.
const MAX_KEY_BYTES: usize = 64;

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
    pub accepts_direct_chats: bool,
    pub accepts_direct_chats_at: i64,
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
                if let Some(accepts) = f.accepts_direct_chats {
                    if t >= self.accepts_direct_chats_at {
                        self.accepts_direct_chats = accepts;
                        self.accepts_direct_chats_at = t;
                    }
                }
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
    #[serde(default)]
    accepts_direct_chats: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    message_id: String,
    agent_id: String,
    #[serde(default)]
    room_id: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    /// Required, but may be empty with an attachment (its caption).
    body: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    thread_of: Option<String>,
    #[serde(default, rename = "final")]
    final_part: Option<bool>,
    #[serde(default)]
    attachment: Option<Attachment>,
}

#[derive(Debug, Deserialize)]
struct RawEdit {
    message_id: String,
    body: String,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawDelete {
    message_id: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawReaction {
    agent_id: String,
    target: String,
    key: String,
    #[serde(default)]
    removed: bool,
}

#[derive(Debug, Deserialize)]
struct RawTyping {
    agent_id: String,
    #[serde(default)]
    room_id: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    typing: bool,
    #[serde(default)]
    timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawRead {
    agent_id: String,
    #[serde(default)]
    room_id: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    up_to: String,
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
            accepts_direct_chats: raw.accepts_direct_chats,
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

fn malformed(kind: &str) -> impl Fn(serde_json::Error) -> EventError + '_ {
    move |e| EventError::Malformed(format!("data does not fit {kind}: {e}"))
}

/// Exactly one of `room_id` and `conversation_id`.
fn place(room_id: Option<String>, conversation_id: Option<String>) -> Result<Place, EventError> {
    match (room_id, conversation_id) {
        (Some(room), None) => Ok(Place::Room(id_field(room, "room_id")?)),
        (None, Some(c)) => Ok(Place::Conversation(id_field(c, "conversation_id")?)),
        _ => Err(unacceptable(
            "data must name exactly one of room_id and conversation_id",
        )),
    }
}

fn format_field(format: Option<&str>) -> Result<Format, EventError> {
    match format {
        None => Ok(Format::Plain),
        Some(f) => f
            .parse::<Format>()
            .map_err(|()| unacceptable("data.format must be plain or markdown")),
    }
}

fn body_field(body: &str, may_be_empty: bool) -> Result<(), EventError> {
    if body.trim().is_empty() && !may_be_empty {
        return Err(unacceptable("data.body must not be empty"));
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(unacceptable("data.body is longer than 24 KiB"));
    }
    Ok(())
}

pub(super) fn parse_message(data: Value) -> Result<AgentMessage, EventError> {
    let raw: RawMessage = serde_json::from_value(data).map_err(malformed("agent.message"))?;
    let format = format_field(raw.format.as_deref())?;
    body_field(&raw.body, raw.attachment.is_some())?;
    if let Some(a) = &raw.attachment {
        let url = url::Url::parse(&a.url)
            .map_err(|_| unacceptable("data.attachment.url must be an http(s) URL"))?;
        if !matches!(url.scheme(), "http" | "https") || a.url.len() > super::event::MAX_URL_BYTES {
            return Err(unacceptable(
                "data.attachment.url must be an http(s) URL of at most 2048 bytes",
            ));
        }
        let short = |v: &Option<String>| v.as_ref().is_none_or(|v| v.len() <= 255);
        if !short(&a.mimetype) || !short(&a.name) {
            return Err(unacceptable(
                "data.attachment.mimetype and name must be at most 255 bytes",
            ));
        }
    }
    let optional_id = |v: Option<String>, field| v.map(|r| id_field(r, field)).transpose();
    Ok(AgentMessage {
        message_id: id_field(raw.message_id, "message_id")?,
        agent_id: id_field(raw.agent_id, "agent_id")?,
        place: place(raw.room_id, raw.conversation_id)?,
        body: raw.body,
        format,
        reply_to: optional_id(raw.reply_to, "reply_to")?,
        thread_of: optional_id(raw.thread_of, "thread_of")?,
        final_part: raw.final_part.unwrap_or(true),
        attachment: raw.attachment,
    })
}

/// `agent.message_edited`, `agent.message_deleted`, `agent.reaction`,
/// `agent.typing`, `agent.read` (section 13).
pub(super) fn parse_action(kind: &str, data: Value) -> Result<AgentAction, EventError> {
    let bad = malformed(kind);
    Ok(match kind {
        "agent.message_edited" => {
            let raw: RawEdit = serde_json::from_value(data).map_err(bad)?;
            body_field(&raw.body, false)?;
            AgentAction::Edit {
                message_id: id_field(raw.message_id, "message_id")?,
                format: format_field(raw.format.as_deref())?,
                body: raw.body,
            }
        }
        "agent.message_deleted" => {
            let raw: RawDelete = serde_json::from_value(data).map_err(bad)?;
            AgentAction::Delete {
                message_id: id_field(raw.message_id, "message_id")?,
                reason: raw
                    .reason
                    .map(|r| {
                        clean_display_name(r)
                            .chars()
                            .take(MAX_STATUS_CHARS)
                            .collect()
                    })
                    .filter(|r: &String| !r.is_empty()),
            }
        }
        "agent.reaction" => {
            let raw: RawReaction = serde_json::from_value(data).map_err(bad)?;
            if raw.key.trim().is_empty() || raw.key.len() > MAX_KEY_BYTES {
                return Err(unacceptable("data.key must be 1 to 64 bytes"));
            }
            AgentAction::React {
                agent_id: id_field(raw.agent_id, "agent_id")?,
                target: id_field(raw.target, "target")?,
                key: raw.key,
                removed: raw.removed,
            }
        }
        "agent.typing" => {
            let raw: RawTyping = serde_json::from_value(data).map_err(bad)?;
            AgentAction::Typing {
                agent_id: id_field(raw.agent_id, "agent_id")?,
                place: place(raw.room_id, raw.conversation_id)?,
                typing: raw.typing,
                timeout_ms: raw.timeout_ms.unwrap_or(30_000).clamp(1000, MAX_TYPING_MS),
            }
        }
        _ => {
            let raw: RawRead = serde_json::from_value(data).map_err(bad)?;
            if !raw.up_to.starts_with('$') {
                return Err(unacceptable("data.up_to must be a matrix.message id"));
            }
            AgentAction::Read {
                agent_id: id_field(raw.agent_id, "agent_id")?,
                place: place(raw.room_id, raw.conversation_id)?,
                up_to: id_field(raw.up_to, "up_to")?,
            }
        }
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

/// The Matrix events an agent's message relates to, where known.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relations<'a> {
    /// The event it answers.
    pub reply: Option<&'a str>,
    /// The root of the thread it is in.
    pub thread_root: Option<&'a str>,
}

/// The `m.room.message` content of an agent's message as it stands (body,
/// format and, once uploaded, its attachment's content), without
/// relations: what an edit's `m.new_content` holds.
pub fn new_content(message: &AgentMessage, attachment: Option<&Value>) -> Value {
    let mut content = match attachment {
        Some(a) => {
            let mut c = a.clone();
            if message.body.trim().is_empty() {
                c["body"] = c["filename"].clone();
            } else {
                c["body"] = json!(message.body);
            }
            c
        }
        None => json!({"msgtype": "m.text", "body": message.body}),
    };
    if message.format == Format::Markdown && !message.body.trim().is_empty() {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(render_markdown(&message.body));
    }
    content
}

/// The `m.room.message` content of an agent's message, marked with its
/// DAARION message id, as a reply or in a thread where asked.
pub fn message_content(
    message: &AgentMessage,
    relations: Relations<'_>,
    attachment: Option<&Value>,
) -> Value {
    let mut content = new_content(message, attachment);
    content[MESSAGE_ID_FIELD] = json!(message.message_id);
    match (relations.thread_root, relations.reply) {
        (Some(root), reply) => {
            content["m.relates_to"] = json!({
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": reply.is_none(),
                "m.in_reply_to": {"event_id": reply.unwrap_or(root)},
            });
        }
        (None, Some(event_id)) => {
            content["m.relates_to"] = json!({"m.in_reply_to": {"event_id": event_id}});
        }
        (None, None) => {}
    }
    content
}

/// An edit (`m.replace`) of `original` to `new` (see [`new_content`]):
/// clients show the new content in place of the old, and those that do not
/// know edits show the fallback, the new text marked with `*`.
pub fn edit_content(original: &str, new: &Value) -> Value {
    let mut content = new.clone();
    for field in ["body", "formatted_body"] {
        if let Some(text) = new[field].as_str() {
            content[field] = json!(format!("* {text}"));
        }
    }
    content["m.new_content"] = new.clone();
    content["m.relates_to"] = json!({"rel_type": "m.replace", "event_id": original});
    content
}

/// An agent's reaction (`m.reaction`) to `target`, marked with its row id
/// (a crash between the send and the record finds it in the room).
pub fn reaction_content(row_id: &str, target: &str, key: &str) -> Value {
    json!({
        "m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key},
        MESSAGE_ID_FIELD: row_id,
    })
}

/// The `msgtype` of a file of this media type.
pub fn file_msgtype(mimetype: &str) -> &'static str {
    match mimetype.split('/').next() {
        Some("image") => "m.image",
        Some("audio") => "m.audio",
        Some("video") => "m.video",
        _ => "m.file",
    }
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
        let relations = Relations {
            reply: Some("$earlier"),
            thread_root: None,
        };
        let content = message_content(&message, relations, None);
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
        assert!(message_content(&plain, Relations::default(), None)
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

    #[test]
    fn section_13_actions_are_read_and_checked() {
        let m = parse_message(json!({
            "message_id": "m", "agent_id": "a", "conversation_id": "c_1", "body": "part",
            "final": false, "thread_of": "$root"
        }))
        .unwrap();
        assert_eq!(m.place, Place::Conversation("c_1".into()));
        assert_eq!(m.place.key(), "conversation:c_1");
        assert_eq!(Place::from_key("room:r_1"), Some(Place::Room("r_1".into())));
        assert!(!m.final_part);
        let both = json!({"message_id": "m", "agent_id": "a", "room_id": "r",
                          "conversation_id": "c", "body": "x"});
        assert!(matches!(
            parse_message(both),
            Err(EventError::Unacceptable(_))
        ));
        let caption_only = json!({"message_id": "m", "agent_id": "a", "room_id": "r", "body": "",
                                  "attachment": {"url": "https://cdn.example/x.png"}});
        assert!(parse_message(caption_only).is_ok());
        let not_http = json!({"message_id": "m", "agent_id": "a", "room_id": "r", "body": "",
                              "attachment": {"url": "file:///etc/passwd"}});
        assert!(parse_message(not_http).is_err());
        let typing = parse_action(
            "agent.typing",
            json!({"agent_id": "a", "room_id": "r", "typing": true, "timeout_ms": 999_999}),
        )
        .unwrap();
        assert!(matches!(
            typing,
            AgentAction::Typing {
                timeout_ms: 120_000,
                ..
            }
        ));
        assert!(parse_action(
            "agent.reaction",
            json!({"agent_id": "a", "target": "m", "key": ""})
        )
        .is_err());
        assert!(parse_action(
            "agent.read",
            json!({"agent_id": "a", "room_id": "r", "up_to": "m1"})
        )
        .is_err());
        let edit = parse_action(
            "agent.message_edited",
            json!({"message_id": "m", "body": "new"}),
        )
        .unwrap();
        assert_eq!(edit.subject(), "m");
    }

    #[test]
    fn edits_threads_and_reactions_look_as_matrix_expects() {
        let m = parse_message(json!({
            "message_id": "m", "agent_id": "a", "room_id": "r", "body": "*new*", "format": "markdown"
        }))
        .unwrap();
        let new = new_content(&m, None);
        let edit = edit_content("$orig", &new);
        assert_eq!(edit["body"], "* *new*");
        assert_eq!(edit["m.new_content"]["body"], "*new*");
        assert_eq!(
            edit["m.relates_to"],
            json!({"rel_type": "m.replace", "event_id": "$orig"})
        );
        assert!(
            edit.get(MESSAGE_ID_FIELD).is_none(),
            "an edit is not the message"
        );
        let threaded = message_content(
            &m,
            Relations {
                reply: None,
                thread_root: Some("$root"),
            },
            None,
        );
        assert_eq!(threaded["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(threaded["m.relates_to"]["is_falling_back"], true);
        let reaction = reaction_content("~reaction:1", "$t", "👍");
        assert_eq!(reaction["m.relates_to"]["key"], "👍");
        let file = json!({"msgtype": "m.image", "url": "mxc://x/y", "filename": "cat.png"});
        assert_eq!(
            new_content(
                &parse_message(json!({"message_id": "m", "agent_id": "a",
            "room_id": "r", "body": "", "attachment": {"url": "https://cdn.example/cat.png"}}))
                .unwrap(),
                Some(&file)
            )["body"],
            "cat.png"
        );
        assert_eq!(file_msgtype("audio/ogg"), "m.audio");
        assert_eq!(conversation_id("!r:x", "a"), conversation_id("!r:x", "a"));
        assert_ne!(conversation_id("!r:x", "a"), conversation_id("!r:x", "b"));
    }
}
