//! What agents do in Matrix, as an ordered outbox per place (a City Room or
//! a direct chat, see [`Place`]): their messages (whole, or streamed in
//! parts, edited, deleted, with a file), reactions, typing and read
//! receipts. Each row is a subject: DAARION.city's events set what it
//! should be (the newest word wins), the place's `send` job brings Matrix
//! to it, and the row records what Matrix shows (its event, the text shown,
//! edits made, whether it is redacted). `state` is `pending` while the two
//! differ, `sent` once they agree, `failed` when they never can.
//!
//! A message's row also keeps the message id → event id record that makes
//! it exactly one Matrix event, its edits and reactions too.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{JobKind, Result, Store};
use crate::domain::agent::{
    action_row_id, ActionKind, AgentAction, AgentMessage, Attachment, Format, Place,
};
use crate::domain::city::CityEvent;

/// An agent's action as stored (see the module documentation).
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub kind: ActionKind,
    /// For a reaction: `body` is its key; for typing `on`/`off`.
    pub message: AgentMessage,
    /// A reaction's target; a read receipt's event.
    pub target: Option<String>,
    /// DAARION.city's `created_at`, ms.
    pub created_at: i64,
    pub received_at: i64,
    /// `pending`, `sent` or `failed`.
    pub state: String,
    /// When a send was first tried (it may be in Matrix already).
    pub attempted_at: Option<i64>,
    pub event_id: Option<String>,
    pub last_error: Option<String>,
    /// The text and format Matrix shows (once sent).
    pub shown: Option<(String, Format)>,
    /// Edits sent (a reaction: how many times it was sent).
    pub edits: i64,
    pub edited_at: Option<i64>,
    pub deleted: bool,
    pub delete_reason: Option<String>,
    pub redacted: bool,
    pub timeout_ms: Option<i64>,
    /// The file's Matrix content, once uploaded.
    pub attachment_content: Option<Value>,
}

impl StoredMessage {
    /// Matrix shows the message, and not the text it should.
    pub fn needs_edit(&self) -> bool {
        self.event_id.is_some()
            && !self.deleted
            && self.shown.as_ref().map(|(b, f)| (b.as_str(), *f))
                != Some((self.message.body.as_str(), self.message.format))
    }
}

const MESSAGE_COLUMNS: &str = "message_id, kind, place, agent_id, body, format, reply_to, \
    thread_of, final, attachment, target, created_at, received_at, state, attempted_at, \
    event_id, last_error, shown_body, shown_format, edits, edited_at, deleted, delete_reason, \
    redacted, timeout_ms, attachment_content";

/// Whether Matrix shows what the row wants (after the Matrix-side columns
/// were written): typing and receipts are done once applied; a deleted
/// row once redacted (or never sent); any other once sent, not redacted,
/// with the wanted text.
const SETTLED: &str = "CASE \
    WHEN state = 'failed' THEN 'failed' \
    WHEN kind IN ('typing', 'read') THEN 'sent' \
    WHEN deleted = 1 THEN CASE WHEN redacted = 1 OR event_id IS NULL THEN 'sent' ELSE 'pending' END \
    WHEN event_id IS NULL OR redacted = 1 THEN 'pending' \
    WHEN kind = 'reaction' THEN 'sent' \
    WHEN body = shown_body AND format = shown_format THEN 'sent' \
    ELSE 'pending' END";

/// `state` after DAARION.city changed what a row wants.
const WANTED_AGAIN: &str = "CASE WHEN state = 'failed' THEN 'failed' ELSE 'pending' END";
/// The same in an upsert (where `excluded` has a `state` too).
const WANTED_AGAIN_UPSERT: &str =
    "CASE WHEN agent_messages.state = 'failed' THEN 'failed' ELSE 'pending' END";

fn message_from(row: &AnyRow) -> Result<StoredMessage> {
    let format: String = row.try_get("format")?;
    let place: String = row.try_get("place")?;
    let attachment: Option<String> = row.try_get("attachment")?;
    let content: Option<String> = row.try_get("attachment_content")?;
    let shown_body: Option<String> = row.try_get("shown_body")?;
    let shown_format: Option<String> = row.try_get("shown_format")?;
    let kind: String = row.try_get("kind")?;
    Ok(StoredMessage {
        kind: kind.parse().unwrap_or(ActionKind::Message),
        message: AgentMessage {
            message_id: row.try_get("message_id")?,
            agent_id: row.try_get("agent_id")?,
            place: Place::from_key(&place).unwrap_or(Place::Room(place)),
            body: row.try_get("body")?,
            format: format.parse().unwrap_or(Format::Plain),
            reply_to: row.try_get("reply_to")?,
            thread_of: row.try_get("thread_of")?,
            final_part: row.try_get::<i64, _>("final")? != 0,
            attachment: attachment.and_then(|a| serde_json::from_str::<Attachment>(&a).ok()),
        },
        target: row.try_get("target")?,
        created_at: row.try_get("created_at")?,
        received_at: row.try_get("received_at")?,
        state: row.try_get("state")?,
        attempted_at: row.try_get("attempted_at")?,
        event_id: row.try_get("event_id")?,
        last_error: row.try_get("last_error")?,
        shown: shown_body.map(|b| {
            let f = shown_format.and_then(|f| f.parse().ok());
            (b, f.unwrap_or(Format::Plain))
        }),
        edits: row.try_get("edits")?,
        edited_at: row.try_get("edited_at")?,
        deleted: row.try_get::<i64, _>("deleted")? != 0,
        delete_reason: row.try_get("delete_reason")?,
        redacted: row.try_get::<i64, _>("redacted")? != 0,
        timeout_ms: row.try_get("timeout_ms")?,
        attachment_content: content.and_then(|c| serde_json::from_str(&c).ok()),
    })
}

/// A first send of this run, to record: the event and the text it shows.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub event_id: String,
    pub body: String,
    pub format: Format,
}

impl Store {
    /// Stores agents' actions inside the city intake's transaction: a new
    /// message, a newer part of a streamed one, an edit or a deletion, a
    /// reaction, typing, a read receipt. Marks in `work` those that change
    /// something, and queues the `send` job of their places.
    pub(super) async fn accept_actions(
        &self,
        tx: &mut Transaction<'static, Any>,
        actions: &[(usize, &CityEvent, &AgentAction)],
        work: &mut [bool],
        now: i64,
    ) -> Result<()> {
        let mut places: Vec<String> = Vec::new();
        for (i, event, action) in actions {
            let t = event.created_at_ms;
            let place = match action {
                AgentAction::Message(m) => upsert_message(tx, m, t, now).await?,
                AgentAction::Edit {
                    message_id,
                    body,
                    format,
                } => {
                    let sql = format!(
                        "UPDATE agent_messages SET body = $2, format = $3, body_at = $4, \
                         final = 1, received_at = $5, state = {WANTED_AGAIN} \
                         WHERE message_id = $1 AND kind = 'message' AND deleted = 0 \
                         AND body_at < $4 RETURNING place"
                    );
                    sqlx::query_scalar(&sql)
                        .bind(message_id)
                        .bind(body)
                        .bind(format.as_str())
                        .bind(t)
                        .bind(now)
                        .fetch_optional(&mut **tx)
                        .await?
                }
                AgentAction::Delete { message_id, reason } => {
                    let sql = format!(
                        "UPDATE agent_messages SET deleted = 1, delete_reason = $2, \
                         received_at = $3, state = {WANTED_AGAIN} \
                         WHERE message_id = $1 AND kind = 'message' AND deleted = 0 RETURNING place"
                    );
                    sqlx::query_scalar(&sql)
                        .bind(message_id)
                        .bind(reason)
                        .bind(now)
                        .fetch_optional(&mut **tx)
                        .await?
                }
                AgentAction::React {
                    agent_id,
                    target,
                    key,
                    removed,
                } => upsert_reaction(tx, agent_id, target, key, *removed, t, now).await?,
                AgentAction::Typing {
                    agent_id,
                    place,
                    typing,
                    timeout_ms,
                } => {
                    let row = Signal {
                        kind: ActionKind::Typing,
                        agent_id,
                        place,
                        body: if *typing { "on" } else { "off" },
                        target: None,
                        timeout_ms: Some(*timeout_ms),
                    };
                    upsert_signal(tx, &row, t, now).await?
                }
                AgentAction::Read {
                    agent_id,
                    place,
                    up_to,
                } => {
                    let row = Signal {
                        kind: ActionKind::Read,
                        agent_id,
                        place,
                        body: "",
                        target: Some(up_to),
                        timeout_ms: None,
                    };
                    upsert_signal(tx, &row, t, now).await?
                }
            };
            if let Some(place) = place {
                work[*i] = true;
                if !places.contains(&place) {
                    places.push(place);
                }
            }
        }
        places.sort();
        let keys: Vec<&str> = places.iter().map(String::as_str).collect();
        self.enqueue(tx, JobKind::Send, &keys, now).await
    }

    /// The place's rows that Matrix does not show yet, in the order they
    /// go: DAARION.city's `created_at`, then arrival, then id.
    pub async fn pending_messages(&self, place: &str, limit: i64) -> Result<Vec<StoredMessage>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM agent_messages WHERE place = $1 AND state = 'pending' \
             ORDER BY created_at, received_at, message_id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(place)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(message_from).collect()
    }

    pub async fn message(&self, message_id: &str) -> Result<Option<StoredMessage>> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM agent_messages WHERE message_id = $1");
        let row = sqlx::query(&sql)
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(message_from).transpose()
    }

    /// Notes that these messages are about to be sent (one statement for a
    /// batch), unless noted before.
    pub async fn mark_attempted(&self, message_ids: &[&str], now: i64) -> Result<()> {
        if message_ids.is_empty() {
            return Ok(());
        }
        // `now` is written in (an integer of ours): SQLite's anonymous `?`
        // do not mix with a numbered parameter before them.
        let sql = format!(
            "UPDATE agent_messages SET attempted_at = {now} WHERE attempted_at IS NULL \
             AND message_id IN ({})",
            self.backend.placeholders(message_ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in message_ids {
            query = query.bind(*id);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// These messages are in Matrix as these events, showing this text:
    /// one commit for all of them (a commit per message costs a disk flush
    /// each). A message whose text changed meanwhile stays pending.
    pub async fn record_sent(&self, sent: &[Sent], now: i64) -> Result<()> {
        if sent.is_empty() {
            return Ok(());
        }
        let b = self.backend;
        let n = sent.len();
        // Three `CASE message_id WHEN id THEN value` lists, then the ids:
        // every value bound in the order it appears (see `placeholder`).
        let case = |list: usize| -> String {
            (0..n)
                .map(|i| {
                    let at = 2 * n * list + 2 * i;
                    format!(
                        " WHEN {} THEN {}",
                        b.placeholder(at + 1),
                        b.placeholder(at + 2)
                    )
                })
                .collect()
        };
        let ids = b.values(6 * n, n);
        // `now` is written in (an integer of ours), see `mark_attempted`.
        let sql = format!(
            "UPDATE agent_messages SET last_error = NULL, sent_at = {now}, redacted = 0, \
             event_id = CASE message_id{} END, shown_body = CASE message_id{} END, \
             shown_format = CASE message_id{} END WHERE message_id IN ({ids})",
            case(0),
            case(1),
            case(2),
        );
        let mut query = sqlx::query(&sql);
        for s in sent {
            query = query.bind(&s.message_id).bind(&s.event_id);
        }
        for s in sent {
            query = query.bind(&s.message_id).bind(&s.body);
        }
        for s in sent {
            query = query.bind(&s.message_id).bind(s.format.as_str());
        }
        for s in sent {
            query = query.bind(&s.message_id);
        }
        let mut tx = self.pool.begin().await?;
        query.execute(&mut *tx).await?;
        let ids: Vec<&str> = sent.iter().map(|s| s.message_id.as_str()).collect();
        self.settle(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An edit of the message went out: Matrix shows this text now.
    pub async fn record_edit(
        &self,
        message_id: &str,
        body: &str,
        format: Format,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE agent_messages SET shown_body = $2, shown_format = $3, edits = edits + 1, \
             edited_at = $4, last_error = NULL WHERE message_id = $1",
        )
        .bind(message_id)
        .bind(body)
        .bind(format.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.settle(&mut tx, &[message_id]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A reaction went out as `event_id` (its `edits`-th send).
    pub async fn record_reaction(&self, row_id: &str, event_id: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE agent_messages SET event_id = $2, redacted = 0, edits = edits + 1, \
             sent_at = $3, last_error = NULL WHERE message_id = $1",
        )
        .bind(row_id)
        .bind(event_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.settle(&mut tx, &[row_id]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The row's event was redacted (a deleted message, a removed reaction).
    pub async fn record_redacted(&self, message_id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE agent_messages SET redacted = 1 WHERE message_id = $1")
            .bind(message_id)
            .execute(&mut *tx)
            .await?;
        self.settle(&mut tx, &[message_id]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Typing or a receipt was applied as it was asked at `body_at`
    /// (unless asked anew since), or a row needs nothing more.
    pub async fn record_done(&self, message_id: &str, body_at: Option<i64>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if let Some(at) = body_at {
            // A newer word arrived meanwhile: the row stays pending.
            let sql = format!(
                "UPDATE agent_messages SET state = {SETTLED}, last_error = NULL \
                 WHERE message_id = $1 AND created_at = $2"
            );
            sqlx::query(&sql)
                .bind(message_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        } else {
            self.settle(&mut tx, &[message_id]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The file's Matrix content, once uploaded (kept for a retry).
    pub async fn record_attachment(&self, message_id: &str, content: &Value) -> Result<()> {
        sqlx::query("UPDATE agent_messages SET attachment_content = $2 WHERE message_id = $1")
            .bind(message_id)
            .bind(content.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A file of this content uploaded before (by its SHA-256).
    pub async fn uploaded_media(&self, sha256: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT mxc FROM media_uploads WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn remember_upload(&self, sha256: &str, mxc: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO media_uploads (sha256, mxc, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(sha256)
        .bind(mxc)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn settle(&self, tx: &mut Transaction<'static, Any>, ids: &[&str]) -> Result<()> {
        let sql = format!(
            "UPDATE agent_messages SET state = {SETTLED} WHERE message_id IN ({})",
            self.backend.placeholders(ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        query.execute(&mut **tx).await?;
        Ok(())
    }

    /// The message can never be sent: failed, with the reason.
    pub async fn fail_message(&self, message_id: &str, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE agent_messages SET state = 'failed', last_error = $2 WHERE message_id = $1",
        )
        .bind(message_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Why the room's next message waits (shown to operators; not failed).
    pub async fn note_message_wait(&self, message_id: &str, reason: &str) -> Result<()> {
        sqlx::query("UPDATE agent_messages SET last_error = $2 WHERE message_id = $1")
            .bind(message_id)
            .bind(reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The Matrix event of an agent's message, for a reply to it.
    pub async fn message_event(&self, message_id: &str) -> Result<Option<String>> {
        let event: Option<Option<String>> = sqlx::query_scalar(
            "SELECT event_id FROM agent_messages WHERE message_id = $1 AND kind = 'message'",
        )
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(event.flatten())
    }

    /// An operator's retry of a failed message: pending again, its place's
    /// outbox queued; false if unknown or not failed.
    pub async fn retry_message(&self, message_id: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let place: Option<String> = sqlx::query_scalar(
            "UPDATE agent_messages SET state = 'pending', last_error = NULL, received_at = $2 \
             WHERE message_id = $1 AND state = 'failed' RETURNING place",
        )
        .bind(message_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(place) = &place {
            self.enqueue(&mut tx, JobKind::Send, &[place.as_str()], now)
                .await?;
        }
        tx.commit().await?;
        Ok(place.is_some())
    }

    /// Queues the `send` job of every place with pending rows of this
    /// agent, or of this City Room (`agent` false): what waited for it can go.
    pub async fn queue_sends_of(&self, key: &str, agent: bool, now: i64) -> Result<usize> {
        let (sql, key) = if agent {
            (
                "SELECT DISTINCT place FROM agent_messages WHERE agent_id = $1 AND state = 'pending'",
                key.to_string(),
            )
        } else {
            (
                "SELECT DISTINCT place FROM agent_messages WHERE place = $1 AND state = 'pending'",
                Place::Room(key.to_string()).key(),
            )
        };
        let places: Vec<String> = sqlx::query_scalar(sql)
            .bind(key)
            .fetch_all(&self.pool)
            .await?;
        if !places.is_empty() {
            let mut tx = self.pool.begin().await?;
            let keys: Vec<&str> = places.iter().map(String::as_str).collect();
            self.enqueue(&mut tx, JobKind::Send, &keys, now).await?;
            tx.commit().await?;
        }
        Ok(places.len())
    }
}

/// A new message, or a newer part of a streamed one (a final part ends
/// it); its place, if anything changed.
async fn upsert_message(
    tx: &mut Transaction<'static, Any>,
    m: &AgentMessage,
    t: i64,
    now: i64,
) -> Result<Option<String>> {
    let place = m.place.key();
    let attachment = m
        .attachment
        .as_ref()
        .map(|a| serde_json::to_string(a).unwrap_or_default());
    let sql = format!(
        "INSERT INTO agent_messages (message_id, kind, place, room_id, agent_id, body, format, \
         reply_to, thread_of, final, attachment, created_at, body_at, received_at, state) \
         VALUES ($1, 'message', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, 'pending') \
         ON CONFLICT (message_id) DO UPDATE SET body = excluded.body, format = excluded.format, \
         final = excluded.final, body_at = excluded.body_at, received_at = excluded.received_at, \
         state = {WANTED_AGAIN_UPSERT} \
         WHERE agent_messages.kind = 'message' AND agent_messages.final = 0 \
         AND agent_messages.deleted = 0 AND agent_messages.place = excluded.place \
         AND (agent_messages.body_at < excluded.body_at \
              OR (agent_messages.body_at = excluded.body_at AND excluded.final = 1)) \
         RETURNING place"
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(&m.message_id)
        .bind(&place)
        .bind(m.place.id())
        .bind(&m.agent_id)
        .bind(&m.body)
        .bind(m.format.as_str())
        .bind(&m.reply_to)
        .bind(&m.thread_of)
        .bind(i64::from(m.final_part))
        .bind(attachment)
        .bind(t)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?)
}

/// An agent's reaction on a message of a place the service knows (an
/// agent's message, or a person's it told DAARION.city of); added or
/// removed, the newest word wins.
async fn upsert_reaction(
    tx: &mut Transaction<'static, Any>,
    agent_id: &str,
    target: &str,
    key: &str,
    removed: bool,
    t: i64,
    now: i64,
) -> Result<Option<String>> {
    let place: Option<String> = sqlx::query_scalar(
        "SELECT place FROM agent_messages WHERE message_id = $1 AND kind = 'message' \
         UNION ALL SELECT place FROM matrix_events WHERE event_id = $1",
    )
    .bind(target)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(place) = place else {
        tracing::info!(%agent_id, %target, "a reaction to a message not known here is left out");
        return Ok(None);
    };
    let id = action_row_id(ActionKind::Reaction, agent_id, target, key);
    let sql = format!(
        "INSERT INTO agent_messages (message_id, kind, place, room_id, agent_id, body, format, \
         target, deleted, created_at, body_at, received_at, state) \
         VALUES ($1, 'reaction', $2, $3, $4, $5, 'plain', $6, $7, $8, $8, $9, 'pending') \
         ON CONFLICT (message_id) DO UPDATE SET deleted = excluded.deleted, \
         body_at = excluded.body_at, received_at = excluded.received_at, \
         state = {WANTED_AGAIN_UPSERT} WHERE agent_messages.body_at < excluded.body_at \
         AND agent_messages.deleted <> excluded.deleted RETURNING place"
    );
    let place_id = Place::from_key(&place).map(|p| p.id().to_string());
    Ok(sqlx::query_scalar(&sql)
        .bind(&id)
        .bind(&place)
        .bind(place_id.unwrap_or_default())
        .bind(agent_id)
        .bind(key)
        .bind(target)
        .bind(i64::from(removed))
        .bind(t)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?)
}

/// Typing or a read receipt: one row per agent and place, the newest word.
struct Signal<'a> {
    kind: ActionKind,
    agent_id: &'a str,
    place: &'a Place,
    body: &'a str,
    target: Option<&'a str>,
    timeout_ms: Option<i64>,
}

async fn upsert_signal(
    tx: &mut Transaction<'static, Any>,
    s: &Signal<'_>,
    t: i64,
    now: i64,
) -> Result<Option<String>> {
    let place = s.place.key();
    let id = action_row_id(s.kind, s.agent_id, &place, "");
    // The row moves to its newest word's time: after what was said before it.
    let sql = format!(
        "INSERT INTO agent_messages (message_id, kind, place, room_id, agent_id, body, format, \
         target, timeout_ms, created_at, body_at, received_at, state) \
         VALUES ($1, $2, $3, $4, $5, $6, 'plain', $7, $8, $9, $9, $10, 'pending') \
         ON CONFLICT (message_id) DO UPDATE SET body = excluded.body, target = excluded.target, \
         timeout_ms = excluded.timeout_ms, created_at = excluded.created_at, \
         body_at = excluded.body_at, received_at = excluded.received_at, \
         state = {WANTED_AGAIN_UPSERT} WHERE agent_messages.body_at < excluded.body_at \
         RETURNING place"
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(&id)
        .bind(s.kind.as_str())
        .bind(&place)
        .bind(s.place.id())
        .bind(s.agent_id)
        .bind(s.body)
        .bind(s.target)
        .bind(s.timeout_ms)
        .bind(t)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?)
}
