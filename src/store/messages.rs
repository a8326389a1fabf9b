//! Messages both ways, each an ordered outbox drained by a job per stream:
//!
//! - agents' messages into Matrix (`agent_messages`): stored by the city
//!   intake, sent by the room's `send` job in `created_at` order; the row
//!   keeps the message id → event id record that makes each message one
//!   Matrix event;
//! - what goes back to DAARION.city (`city_outbox`): stored by the intake
//!   of Synapse's transactions, before Synapse gets its `200`, and
//!   delivered by the stream's `deliver` job in arrival order.
//!
//! Unlike a subject's job, whose repeats fold into one run, every row here
//! is its own delivery; the job only says "this stream has rows".

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::intake::{fresh_ones, log_events, retry_conflicts, Logged};
use super::{JobKind, Result, Store};
use crate::domain::agent::{AgentMessage, Format};
use crate::domain::city::CityEvent;
use crate::domain::matrix::{self, Names};

/// The event log's sources for Synapse's transactions and events.
const MATRIX_TXN: &str = "matrix-txn";
const MATRIX_EVENT: &str = "matrix";
/// The `city_outbox` stream of people's presence.
pub const PRESENCE_STREAM: &str = "presence";

/// DAARION people by their localpart (the senders of Matrix events).
const PEOPLE_BY_LOCALPART: &str =
    "SELECT localpart AS k, user_id AS v FROM people WHERE localpart IN ({})";

/// The `city_outbox` stream of a City Room's messages.
pub fn room_stream(room_id: &str) -> String {
    format!("room:{room_id}")
}

/// An agent's message as stored.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub message: AgentMessage,
    /// DAARION.city's `created_at`, ms.
    pub created_at: i64,
    pub received_at: i64,
    /// `pending`, `sent` or `failed`.
    pub state: String,
    /// When a send was first tried (it may be in Matrix already).
    pub attempted_at: Option<i64>,
    pub event_id: Option<String>,
    pub last_error: Option<String>,
}

const MESSAGE_COLUMNS: &str = "message_id, room_id, agent_id, body, format, reply_to, \
    created_at, received_at, state, attempted_at, event_id, last_error";

fn message_from(row: &AnyRow) -> Result<StoredMessage> {
    let format: String = row.try_get("format")?;
    Ok(StoredMessage {
        message: AgentMessage {
            message_id: row.try_get("message_id")?,
            agent_id: row.try_get("agent_id")?,
            room_id: row.try_get("room_id")?,
            body: row.try_get("body")?,
            format: format.parse().unwrap_or(Format::Plain),
            reply_to: row.try_get("reply_to")?,
        },
        created_at: row.try_get("created_at")?,
        received_at: row.try_get("received_at")?,
        state: row.try_get("state")?,
        attempted_at: row.try_get("attempted_at")?,
        event_id: row.try_get("event_id")?,
        last_error: row.try_get("last_error")?,
    })
}

/// One undelivered event for DAARION.city.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    /// The envelope, as sent.
    pub body: String,
    pub received_at: i64,
}

/// What operators see of both outboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxSummary {
    /// Agents' messages not in Matrix yet.
    pub to_matrix_pending: i64,
    pub to_matrix_failed: i64,
    /// `received_at` of the oldest pending one.
    pub to_matrix_oldest: Option<i64>,
    /// Events DAARION.city has not acknowledged yet.
    pub to_city_pending: i64,
    pub to_city_oldest: Option<i64>,
    /// The last error of a stream still being retried, either way.
    pub to_matrix_last_error: Option<String>,
    pub to_city_last_error: Option<String>,
}

/// What DAARION.city knows of the people, agents' messages and agents a
/// transaction's messages name (localpart or event id → DAARION id).
struct KnownToCity {
    people: HashMap<String, String>,
    replied: HashMap<String, String>,
    agents: HashMap<String, String>,
}

impl KnownToCity {
    /// A person's message as `matrix.message` for DAARION.city: the sender's
    /// DAARION id, the agent's message it answers (else the event id) and
    /// the agents it mentions.
    fn envelope(
        &self,
        m: &matrix::InboundMessage,
        room_id: &str,
        mentioned: &BTreeSet<String>,
        names: &Names<'_>,
    ) -> serde_json::Value {
        let sender_id = names
            .local(&m.sender)
            .and_then(|lp| self.people.get(lp))
            .map(String::as_str);
        let reply_to = m
            .reply_event()
            .map(|e| self.replied.get(e).map_or(e, String::as_str));
        let mentions: Vec<String> = mentioned
            .iter()
            .filter_map(|u| names.agent(u).and_then(|lp| self.agents.get(lp)).cloned())
            .collect();
        m.envelope(room_id, sender_id, reply_to, &mentions)
    }
}

/// The outcome of [`Store::accept_transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnAccepted {
    /// The same transaction was applied before.
    pub duplicate: bool,
    /// Events queued for DAARION.city.
    pub queued: usize,
}

impl Store {
    /// Stores agents' messages inside the city intake's transaction (a
    /// message id seen before is a repeat); marks in `work` those queued,
    /// and queues the `send` job of their rooms.
    pub(super) async fn accept_messages(
        &self,
        tx: &mut Transaction<'static, Any>,
        messages: &[(usize, &CityEvent, &AgentMessage)],
        work: &mut [bool],
        now: i64,
    ) -> Result<()> {
        let mut rooms: BTreeSet<&str> = BTreeSet::new();
        for (i, event, m) in messages {
            let inserted = sqlx::query(
                "INSERT INTO agent_messages (message_id, room_id, agent_id, body, format, \
                 reply_to, created_at, received_at, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending') ON CONFLICT DO NOTHING",
            )
            .bind(&m.message_id)
            .bind(&m.room_id)
            .bind(&m.agent_id)
            .bind(&m.body)
            .bind(m.format.as_str())
            .bind(&m.reply_to)
            .bind(event.created_at_ms)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                rooms.insert(m.room_id.as_str());
                work[*i] = true;
            }
        }
        let keys: Vec<&str> = rooms.into_iter().collect();
        self.enqueue(tx, JobKind::Send, &keys, now).await
    }

    /// The room's next pending messages, in the order they are sent:
    /// DAARION.city's `created_at`, then arrival, then id.
    pub async fn pending_messages(&self, room_id: &str, limit: i64) -> Result<Vec<StoredMessage>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM agent_messages WHERE room_id = $1 AND state = 'pending' \
             ORDER BY created_at, received_at, message_id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(room_id)
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

    /// These messages are in Matrix as these events: one statement for
    /// all of them (a commit per message costs a disk flush each).
    pub async fn record_sent(&self, sent: &[(String, String)], now: i64) -> Result<()> {
        if sent.is_empty() {
            return Ok(());
        }
        let b = self.backend;
        let cases: String = (0..sent.len())
            .map(|i| {
                format!(
                    " WHEN {} THEN {}",
                    b.placeholder(2 * i + 1),
                    b.placeholder(2 * i + 2)
                )
            })
            .collect();
        let ids: Vec<String> = (0..sent.len())
            .map(|i| b.placeholder(2 * sent.len() + i + 1))
            .collect();
        // `now` is written in (an integer of ours), see `mark_attempted`.
        let sql = format!(
            "UPDATE agent_messages SET state = 'sent', last_error = NULL, sent_at = {now}, \
             event_id = CASE message_id{cases} END WHERE message_id IN ({})",
            ids.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (message_id, event_id) in sent {
            query = query.bind(message_id).bind(event_id);
        }
        for (message_id, _) in sent {
            query = query.bind(message_id);
        }
        query.execute(&self.pool).await?;
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
        let event: Option<Option<String>> =
            sqlx::query_scalar("SELECT event_id FROM agent_messages WHERE message_id = $1")
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(event.flatten())
    }

    /// An operator's retry of a failed message: pending again, its room's
    /// outbox queued; false if unknown or not failed.
    pub async fn retry_message(&self, message_id: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let room: Option<String> = sqlx::query_scalar(
            "UPDATE agent_messages SET state = 'pending', last_error = NULL \
             WHERE message_id = $1 AND state = 'failed' RETURNING room_id",
        )
        .bind(message_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(room) = &room {
            self.enqueue(&mut tx, JobKind::Send, &[room.as_str()], now)
                .await?;
        }
        tx.commit().await?;
        Ok(room.is_some())
    }

    /// Queues the `send` job of every room with pending messages of this
    /// agent, or in this room (`agent` false): what waited for it can go.
    pub async fn queue_sends_of(&self, key: &str, agent: bool, now: i64) -> Result<usize> {
        let column = if agent { "agent_id" } else { "room_id" };
        let sql = format!(
            "SELECT DISTINCT room_id FROM agent_messages WHERE {column} = $1 AND state = 'pending'"
        );
        let rooms: Vec<String> = sqlx::query_scalar(&sql)
            .bind(key)
            .fetch_all(&self.pool)
            .await?;
        if !rooms.is_empty() {
            let mut tx = self.pool.begin().await?;
            let keys: Vec<&str> = rooms.iter().map(String::as_str).collect();
            self.enqueue(&mut tx, JobKind::Send, &keys, now).await?;
            tx.commit().await?;
        }
        Ok(rooms.len())
    }

    /// The stream's next undelivered events, oldest first.
    pub async fn outbox(&self, stream: &str, limit: i64) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "SELECT seq, id, kind, body, received_at FROM city_outbox WHERE stream = $1 \
             ORDER BY seq LIMIT $2",
        )
        .bind(stream)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxEntry {
                    seq: r.try_get("seq")?,
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    body: r.try_get("body")?,
                    received_at: r.try_get("received_at")?,
                })
            })
            .collect()
    }

    /// DAARION.city acknowledged it.
    pub async fn delivered(&self, seq: i64) -> Result<()> {
        sqlx::query("DELETE FROM city_outbox WHERE seq = $1")
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn outbox_summary(&self) -> Result<OutboxSummary> {
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM agent_messages WHERE state = 'pending') AS mp, \
               (SELECT COUNT(*) FROM agent_messages WHERE state = 'failed') AS mf, \
               (SELECT MIN(received_at) FROM agent_messages WHERE state = 'pending') AS mo, \
               (SELECT COUNT(*) FROM city_outbox) AS cp, \
               (SELECT MIN(received_at) FROM city_outbox) AS co, \
               (SELECT last_error FROM jobs WHERE kind = 'send' AND last_error IS NOT NULL \
                ORDER BY run_at DESC LIMIT 1) AS me, \
               (SELECT last_error FROM jobs WHERE kind = 'deliver' AND last_error IS NOT NULL \
                ORDER BY run_at DESC LIMIT 1) AS ce",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxSummary {
            to_matrix_pending: row.try_get("mp")?,
            to_matrix_failed: row.try_get("mf")?,
            to_matrix_oldest: row.try_get("mo")?,
            to_city_pending: row.try_get("cp")?,
            to_city_oldest: row.try_get("co")?,
            to_matrix_last_error: row.try_get("me")?,
            to_city_last_error: row.try_get("ce")?,
        })
    }

    /// Stores what a transaction from Synapse means for DAARION.city, in one
    /// database transaction, before Synapse is answered: the transaction's
    /// key and its events' ids (each applied once, whatever Synapse
    /// resends), and, with `outbox` on (`CITY_EVENTS_URL` set), a
    /// `matrix.message` per person's message in a City Room and a
    /// `matrix.presence` per change of a DAARION person's presence.
    pub async fn accept_transaction(
        &self,
        txn_key: &str,
        txn: &matrix::Transaction,
        names: &Names<'_>,
        outbox: bool,
        now: i64,
    ) -> Result<TxnAccepted> {
        // Most transactions carry nothing for DAARION.city (the agents' own
        // messages coming back, typing, receipts): no write for them.
        if !outbox || (txn.messages.is_empty() && txn.presence.is_empty()) {
            return Ok(TxnAccepted {
                duplicate: false,
                queued: 0,
            });
        }
        retry_conflicts("transaction intake", || {
            self.try_accept_transaction(txn_key, txn, names, now)
        })
        .await
    }

    async fn try_accept_transaction(
        &self,
        txn_key: &str,
        txn: &matrix::Transaction,
        names: &Names<'_>,
        now: i64,
    ) -> Result<Option<TxnAccepted>> {
        let mut tx = self.pool.begin().await?;
        let first = log_events(
            &mut tx,
            self.backend,
            MATRIX_TXN,
            &[Logged {
                id: txn_key,
                subject: "",
                kind: "transaction",
                created_at: now,
            }],
            now,
        )
        .await?;
        if first.is_empty() {
            return Ok(Some(TxnAccepted {
                duplicate: true,
                queued: 0,
            }));
        }
        let queued = self.queue_messages(&mut tx, txn, names, now).await?
            + self.queue_presence(&mut tx, txn, names, now).await?;
        tx.commit().await?;
        Ok(Some(TxnAccepted {
            duplicate: false,
            queued,
        }))
    }

    /// People's messages in City Rooms, each once, into their room's stream.
    async fn queue_messages(
        &self,
        tx: &mut Transaction<'static, Any>,
        txn: &matrix::Transaction,
        names: &Names<'_>,
        now: i64,
    ) -> Result<usize> {
        let (rooms, messages) = self.new_city_messages(tx, txn, now).await?;
        if messages.is_empty() {
            return Ok(0);
        }
        let mentioned: Vec<BTreeSet<String>> =
            messages.iter().map(|m| m.mentioned_users()).collect();
        let known = self.known_to_city(tx, &messages, &mentioned, names).await?;
        let mut streams: BTreeSet<String> = BTreeSet::new();
        for (m, mentioned) in messages.iter().zip(&mentioned) {
            let room_id = &rooms[&m.room_id];
            let envelope = known.envelope(m, room_id, mentioned, names);
            let stream = room_stream(room_id);
            insert_outbox(tx, &stream, &m.event_id, "matrix.message", &envelope, now).await?;
            streams.insert(stream);
        }
        let keys: Vec<&str> = streams.iter().map(String::as_str).collect();
        self.enqueue(tx, JobKind::Deliver, &keys, now).await?;
        Ok(messages.len())
    }

    /// The transaction's messages in City Rooms that were not seen before
    /// (logged now), and the City Room id of each Matrix room among them.
    async fn new_city_messages<'t>(
        &self,
        tx: &mut Transaction<'static, Any>,
        txn: &'t matrix::Transaction,
        now: i64,
    ) -> Result<(HashMap<String, String>, Vec<&'t matrix::InboundMessage>)> {
        if txn.messages.is_empty() {
            return Ok((HashMap::new(), Vec::new()));
        }
        let matrix_rooms: BTreeSet<&str> =
            txn.messages.iter().map(|m| m.room_id.as_str()).collect();
        let rooms = self
            .pairs(
                tx,
                "SELECT matrix_room_id AS k, room_id AS v FROM rooms WHERE matrix_room_id IN ({})",
                &matrix_rooms,
            )
            .await?;
        let messages: Vec<&matrix::InboundMessage> = txn
            .messages
            .iter()
            .filter(|m| rooms.contains_key(&m.room_id))
            .collect();
        if messages.is_empty() {
            return Ok((rooms, messages));
        }
        let logged: Vec<Logged> = messages
            .iter()
            .map(|m| Logged {
                id: &m.event_id,
                subject: &m.room_id,
                kind: "m.room.message",
                created_at: m.origin_server_ts,
            })
            .collect();
        let stored = log_events(tx, self.backend, MATRIX_EVENT, &logged, now).await?;
        let fresh = fresh_ones(messages.iter().map(|m| m.event_id.as_str()), &stored);
        let messages = messages
            .into_iter()
            .zip(fresh)
            .filter_map(|(m, fresh)| fresh.then_some(m))
            .collect();
        Ok((rooms, messages))
    }

    /// Who sent the messages, what they answer and which agents they
    /// mention, as DAARION.city knows them.
    async fn known_to_city(
        &self,
        tx: &mut Transaction<'static, Any>,
        messages: &[&matrix::InboundMessage],
        mentioned: &[BTreeSet<String>],
        names: &Names<'_>,
    ) -> Result<KnownToCity> {
        let localparts: BTreeSet<&str> = messages
            .iter()
            .filter_map(|m| names.local(&m.sender))
            .collect();
        let people = self.pairs(tx, PEOPLE_BY_LOCALPART, &localparts).await?;
        let replies: BTreeSet<&str> = messages.iter().filter_map(|m| m.reply_event()).collect();
        let replied = self
            .pairs(
                tx,
                "SELECT event_id AS k, message_id AS v FROM agent_messages WHERE event_id IN ({})",
                &replies,
            )
            .await?;
        let agent_localparts: BTreeSet<&str> = mentioned
            .iter()
            .flatten()
            .filter_map(|u| names.agent(u))
            .collect();
        let agents = self
            .pairs(
                tx,
                "SELECT localpart AS k, agent_id AS v FROM agents WHERE localpart IN ({})",
                &agent_localparts,
            )
            .await?;
        Ok(KnownToCity {
            people,
            replied,
            agents,
        })
    }

    /// DAARION people's presence, when it changed since last told: the
    /// last word per person in the transaction, written in `user_id` order
    /// (every writer locks people in that order, so none deadlocks another).
    async fn queue_presence(
        &self,
        tx: &mut Transaction<'static, Any>,
        txn: &matrix::Transaction,
        names: &Names<'_>,
        now: i64,
    ) -> Result<usize> {
        let localparts: BTreeSet<&str> = txn
            .presence
            .iter()
            .filter_map(|p| names.local(&p.user_id))
            .collect();
        let people = self.pairs(tx, PEOPLE_BY_LOCALPART, &localparts).await?;
        let mut latest: BTreeMap<&str, &matrix::InboundPresence> = BTreeMap::new();
        for p in &txn.presence {
            if let Some(user_id) = names.local(&p.user_id).and_then(|lp| people.get(lp)) {
                latest.insert(user_id, p);
            }
        }
        let mut queued = 0;
        for (user_id, p) in latest {
            // Changes only: the row is updated only when the word differs.
            let changed = sqlx::query(
                "UPDATE people SET matrix_presence = $2 WHERE user_id = $1 \
                 AND COALESCE(matrix_presence, '') <> $2",
            )
            .bind(user_id)
            .bind(&p.presence)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if changed == 0 {
                continue;
            }
            let id = format!("presence:{user_id}:{now}");
            let envelope = matrix::presence_envelope(&id, user_id, p, now);
            insert_outbox(tx, PRESENCE_STREAM, &id, "matrix.presence", &envelope, now).await?;
            queued += 1;
        }
        if queued > 0 {
            self.enqueue(tx, JobKind::Deliver, &[PRESENCE_STREAM], now)
                .await?;
        }
        Ok(queued)
    }

    /// `k → v` for the rows of `select` (a query of two columns, `k` and
    /// `v`, with `{}` where the keys' placeholders go) whose key is among
    /// `keys`: how the intake of a transaction resolves ids in bulk.
    pub(super) async fn pairs(
        &self,
        tx: &mut Transaction<'static, Any>,
        select: &str,
        keys: &BTreeSet<&str>,
    ) -> Result<HashMap<String, String>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = select.replace("{}", &self.backend.placeholders(keys.len()));
        let mut query = sqlx::query(&sql);
        for key in keys {
            query = query.bind(*key);
        }
        let rows = query.fetch_all(&mut **tx).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("k")?, r.try_get("v")?)))
            .collect()
    }
}

async fn insert_outbox(
    tx: &mut Transaction<'static, Any>,
    stream: &str,
    id: &str,
    kind: &str,
    envelope: &serde_json::Value,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO city_outbox (stream, id, kind, body, received_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(stream)
    .bind(id)
    .bind(kind)
    .bind(envelope.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
