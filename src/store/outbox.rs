//! What goes back to DAARION.city (`city_outbox`): the intake of Synapse's
//! transactions stores, before Synapse gets its `200`, an event per thing a
//! person did that DAARION.city hears of (CONTRACT.md sections 9 and 13):
//! messages in City Rooms and direct chats, their edits and deletions,
//! reactions, a direct chat's end, presence. Each goes into its place's
//! stream (`room:<id>`, `conversation:<id>`, or `presence`), delivered in
//! order by the stream's `deliver` job.
//!
//! Unlike a subject's job, whose repeats fold into one run, every row here
//! is its own delivery; the job only says "this stream has rows".

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{Any, Row, Transaction};

use super::intake::{fresh_ones, log_events, retry_conflicts, Logged};
use super::{JobKind, Result, Store};
use crate::domain::agent::Place;
use crate::domain::matrix::{self, FileLink, Links, Names, ReactionTold, RoomEvent};

/// The event log's sources for Synapse's transactions and events.
const MATRIX_TXN: &str = "matrix-txn";
pub(super) const MATRIX_EVENT: &str = "matrix";
/// The `city_outbox` stream of people's presence.
pub const PRESENCE_STREAM: &str = "presence";

/// DAARION people by their localpart (the senders of Matrix events).
pub(super) const PEOPLE_BY_LOCALPART: &str =
    "SELECT localpart AS k, user_id AS v FROM people WHERE localpart IN ({})";

/// The `city_outbox` stream of a City Room's messages.
pub fn room_stream(room_id: &str) -> String {
    Place::Room(room_id.to_string()).key()
}

/// How the intake of a transaction makes a download link for a person's
/// file (its `mxc://` URI), if it can.
pub type FileLinker<'a> = &'a (dyn Fn(&str) -> Option<FileLink> + Sync);

/// One undelivered event for DAARION.city.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub seq: i64,
    pub id: String,
    pub kind: String,
    /// The envelope, as sent.
    pub body: String,
    pub received_at: i64,
    /// `CITY_EVENTS_URL` answered `2xx` for it.
    pub http_done: bool,
    /// JetStream stored it (`NATS_OUT`).
    pub nats_done: bool,
}

/// A way an event leaves for DAARION.city.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// POSTed to `CITY_EVENTS_URL`.
    Http,
    /// Published to JetStream (`NATS_OUT`).
    Nats,
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

/// The outcome of [`Store::accept_transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnAccepted {
    /// The same transaction was applied before.
    pub duplicate: bool,
    /// Events queued for DAARION.city.
    pub queued: usize,
}

impl Store {
    /// The stream's undelivered events after `after` (a `seq`; 0: from
    /// the first), oldest first.
    pub async fn outbox(&self, stream: &str, after: i64, limit: i64) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "SELECT seq, id, kind, body, received_at, http_done, nats_done FROM city_outbox \
             WHERE stream = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(stream)
        .bind(after)
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
                    http_done: r.try_get::<i64, _>("http_done")? != 0,
                    nats_done: r.try_get::<i64, _>("nats_done")? != 0,
                })
            })
            .collect()
    }

    /// One transport took the event while another has yet to: it is not
    /// sent that way again.
    pub async fn taken_by(&self, seq: i64, transport: Transport) -> Result<()> {
        let sql = match transport {
            Transport::Http => "UPDATE city_outbox SET http_done = 1 WHERE seq = $1",
            Transport::Nats => "UPDATE city_outbox SET nats_done = 1 WHERE seq = $1",
        };
        sqlx::query(sql).bind(seq).execute(&self.pool).await?;
        Ok(())
    }

    /// Every transport took it (DAARION.city acknowledged it).
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
    /// resends); the direct chats its invitations start and its departures
    /// end; and, with `outbox` on (`CITY_EVENTS_URL` or `NATS_OUT` set), an event per
    /// person's message, edit, deletion and reaction in a City Room or a
    /// direct chat, and per change of a DAARION person's presence.
    pub async fn accept_transaction(
        &self,
        txn_key: &str,
        txn: &matrix::Transaction,
        names: &Names<'_>,
        outbox: bool,
        files: FileLinker<'_>,
        now: i64,
    ) -> Result<TxnAccepted> {
        // Most transactions carry nothing for DAARION.city (the agents' own
        // messages coming back, typing, receipts): no write for them.
        if txn.is_empty() || (!outbox && txn.members.is_empty()) {
            return Ok(TxnAccepted {
                duplicate: false,
                queued: 0,
            });
        }
        retry_conflicts("transaction intake", || {
            self.try_accept_transaction(txn_key, txn, names, outbox, files, now)
        })
        .await
    }

    async fn try_accept_transaction(
        &self,
        txn_key: &str,
        txn: &matrix::Transaction,
        names: &Names<'_>,
        outbox: bool,
        files: FileLinker<'_>,
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
        let mut intake = TxnIntake {
            names,
            outbox,
            now,
            queued: 0,
            streams: BTreeSet::new(),
        };
        self.accept_members(&mut tx, txn, &mut intake).await?;
        if outbox {
            let known = self.known_to_city(&mut tx, txn, names, now).await?;
            for m in &known.messages {
                let envelope = known.message_envelope(m, names, files);
                intake
                    .insert(
                        &mut tx,
                        &known.places[&m.room_id],
                        &m.event_id,
                        "matrix.message",
                        &envelope,
                    )
                    .await?;
            }
            self.remember_told(&mut tx, &known, now).await?;
            for e in &known.edits {
                let Some(told) = known.told.get(&e.original) else {
                    continue;
                };
                // Only the author's edits count (as in every client).
                if told.sender != e.sender || told.kind != "message" {
                    continue;
                }
                let place = &known.places[&e.room_id];
                let envelope = matrix::edit_envelope(e, place, known.person(&e.sender, names));
                intake
                    .insert(
                        &mut tx,
                        place,
                        &e.event_id,
                        "matrix.message_edited",
                        &envelope,
                    )
                    .await?;
            }
            for r in &known.reactions {
                let place = &known.places[&r.room_id];
                let told = ReactionTold {
                    id: &r.event_id,
                    ts: r.origin_server_ts,
                    target: known.as_told(&r.target),
                    key: &r.key,
                    sender_id: known.person(&r.sender, names),
                    removed: false,
                };
                let envelope = matrix::reaction_envelope(&told, place);
                intake
                    .insert(&mut tx, place, &r.event_id, "matrix.reaction", &envelope)
                    .await?;
            }
            for r in &known.redactions {
                let place = &known.places[&r.room_id];
                let by = known.person(&r.sender, names);
                let envelope = if let Some(message_id) = known.agents_messages.get(&r.redacts) {
                    // An agent's message, taken down by a moderator.
                    matrix::deletion_envelope(r, place, message_id, by, true)
                } else if let Some(told) = known.told.get(&r.redacts) {
                    if told.kind == "reaction" {
                        let removed = ReactionTold {
                            id: &r.event_id,
                            ts: r.origin_server_ts,
                            target: told.target.as_deref().unwrap_or(""),
                            key: told.key.as_deref().unwrap_or(""),
                            sender_id: known.person(&told.sender, names),
                            removed: true,
                        };
                        matrix::reaction_envelope(&removed, place)
                    } else {
                        let by_moderator = told.sender != r.sender;
                        matrix::deletion_envelope(r, place, &r.redacts, by, by_moderator)
                    }
                } else {
                    continue;
                };
                let kind = envelope["type"].as_str().unwrap_or("").to_string();
                intake
                    .insert(&mut tx, place, &r.event_id, &kind, &envelope)
                    .await?;
            }
            for r in &known.receipts {
                // DAARION people's only: others' receipts mean nothing there.
                let Some(sender_id) = known.person(&r.user_id, names) else {
                    continue;
                };
                let place = &known.places[&r.room_id];
                let envelope =
                    matrix::read_envelope(r, place, sender_id, known.as_told(&r.event_id));
                let id = envelope["id"].as_str().unwrap_or_default().to_string();
                intake
                    .insert(&mut tx, place, &id, "matrix.read", &envelope)
                    .await?;
            }
            intake.queued += self.queue_presence(&mut tx, txn, names, now).await?;
        }
        let keys: Vec<&str> = intake.streams.iter().map(String::as_str).collect();
        self.enqueue(&mut tx, JobKind::Deliver, &keys, now).await?;
        tx.commit().await?;
        Ok(Some(TxnAccepted {
            duplicate: false,
            queued: intake.queued,
        }))
    }

    /// What DAARION.city knows of the transaction's events in its places:
    /// the places (City Rooms and direct chats) of their Matrix rooms, the
    /// ones not seen before (logged now), their senders, and the agents'
    /// messages and people's events they name.
    async fn known_to_city<'t>(
        &self,
        tx: &mut Transaction<'static, Any>,
        txn: &'t matrix::Transaction,
        names: &Names<'_>,
        now: i64,
    ) -> Result<KnownToCity<'t>> {
        let matrix_rooms: BTreeSet<&str> = rooms(&txn.messages)
            .chain(rooms(&txn.edits))
            .chain(rooms(&txn.reactions))
            .chain(rooms(&txn.redactions))
            .chain(rooms(&txn.receipts))
            .collect();
        let places = self.places_of(tx, &matrix_rooms).await?;
        let here = |room: &str| places.contains_key(room);
        let mut logged: Vec<Logged> = Vec::new();
        log_in(&txn.messages, here, &mut logged);
        log_in(&txn.edits, here, &mut logged);
        log_in(&txn.reactions, here, &mut logged);
        log_in(&txn.redactions, here, &mut logged);
        log_in(&txn.receipts, here, &mut logged);
        let stored = if logged.is_empty() {
            Default::default()
        } else {
            log_events(tx, self.backend, MATRIX_EVENT, &logged, now).await?
        };
        let fresh = |id: &str, room: &str| here(room) && stored.contains(id);
        let messages = fresh_in(&txn.messages, fresh);
        // A message a transaction carries twice is told once.
        let once = fresh_ones(messages.iter().map(|m| m.event_id.as_str()), &stored);
        let messages: Vec<_> = messages
            .into_iter()
            .zip(once)
            .filter_map(|(m, once)| once.then_some(m))
            .collect();
        let edits = fresh_in(&txn.edits, fresh);
        let reactions = fresh_in(&txn.reactions, fresh);
        let redactions = fresh_in(&txn.redactions, fresh);
        let receipts = fresh_in(&txn.receipts, fresh);

        let localparts: BTreeSet<&str> = messages
            .iter()
            .map(|m| m.sender.as_str())
            .chain(edits.iter().map(|e| e.sender.as_str()))
            .chain(reactions.iter().map(|r| r.sender.as_str()))
            .chain(redactions.iter().map(|r| r.sender.as_str()))
            .chain(receipts.iter().map(|r| r.user_id.as_str()))
            .filter_map(|u| names.local(u))
            .collect();
        let mut people = self.pairs(tx, PEOPLE_BY_LOCALPART, &localparts).await?;
        // Events people's events name: replies, threads, edits, reactions,
        // redactions.
        let named: BTreeSet<&str> = messages
            .iter()
            .flat_map(|m| [m.reply_event(), m.thread_root()])
            .flatten()
            .chain(edits.iter().map(|e| e.original.as_str()))
            .chain(reactions.iter().map(|r| r.target.as_str()))
            .chain(redactions.iter().map(|r| r.redacts.as_str()))
            .chain(receipts.iter().map(|r| r.event_id.as_str()))
            .collect();
        let agents_messages = self
            .pairs(
                tx,
                "SELECT event_id AS k, message_id AS v FROM agent_messages                  WHERE kind = 'message' AND event_id IN ({})",
                &named,
            )
            .await?;
        let told = self.told_events(tx, &named).await?;
        // The authors of redacted events, as DAARION.city knows them.
        let authors: BTreeSet<&str> = told
            .values()
            .filter_map(|t| names.local(&t.sender))
            .filter(|lp| !people.contains_key(*lp))
            .collect();
        people.extend(self.pairs(tx, PEOPLE_BY_LOCALPART, &authors).await?);
        let mentioned: BTreeSet<String> =
            messages.iter().flat_map(|m| m.mentioned_users()).collect();
        let agent_localparts: BTreeSet<&str> =
            mentioned.iter().filter_map(|u| names.agent(u)).collect();
        let agents = self
            .pairs(
                tx,
                "SELECT localpart AS k, agent_id AS v FROM agents WHERE localpart IN ({})",
                &agent_localparts,
            )
            .await?;
        Ok(KnownToCity {
            places,
            messages,
            edits,
            reactions,
            redactions,
            receipts,
            people,
            agents_messages,
            told,
            agents,
        })
    }

    /// Matrix room id → the place it is: a City Room, or a direct chat
    /// with an agent (joined, or still being joined).
    pub(super) async fn places_of(
        &self,
        tx: &mut Transaction<'static, Any>,
        matrix_rooms: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Place>> {
        let rooms = self
            .pairs(
                tx,
                "SELECT matrix_room_id AS k, room_id AS v FROM rooms WHERE matrix_room_id IN ({})",
                matrix_rooms,
            )
            .await?;
        let conversations = self
            .pairs(
                tx,
                "SELECT matrix_room_id AS k, conversation_id AS v FROM conversations \
                 WHERE state IN ('invited', 'joined') AND matrix_room_id IN ({})",
                matrix_rooms,
            )
            .await?;
        Ok(rooms
            .into_iter()
            .map(|(k, v)| (k, Place::Room(v)))
            .chain(
                conversations
                    .into_iter()
                    .map(|(k, v)| (k, Place::Conversation(v))),
            )
            .collect())
    }

    /// People's events told to DAARION.city, by event id.
    async fn told_events(
        &self,
        tx: &mut Transaction<'static, Any>,
        ids: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Told>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT event_id, sender, kind, target, reaction_key FROM matrix_events \
             WHERE event_id IN ({})",
            self.backend.placeholders(ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(*id);
        }
        let mut told = HashMap::new();
        for row in query.fetch_all(&mut **tx).await? {
            told.insert(
                row.try_get("event_id")?,
                Told {
                    sender: row.try_get("sender")?,
                    kind: row.try_get("kind")?,
                    target: row.try_get("target")?,
                    key: row.try_get("reaction_key")?,
                },
            );
        }
        Ok(told)
    }

    /// Notes the messages and reactions told now: a later edit, redaction,
    /// reaction or agent's reaction names them.
    async fn remember_told(
        &self,
        tx: &mut Transaction<'static, Any>,
        known: &KnownToCity<'_>,
        now: i64,
    ) -> Result<()> {
        let insert = "INSERT INTO matrix_events (event_id, place, sender, kind, target, \
                      reaction_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                      ON CONFLICT DO NOTHING";
        for m in &known.messages {
            sqlx::query(insert)
                .bind(&m.event_id)
                .bind(known.places[&m.room_id].key())
                .bind(&m.sender)
                .bind("message")
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        for r in &known.reactions {
            sqlx::query(insert)
                .bind(&r.event_id)
                .bind(known.places[&r.room_id].key())
                .bind(&r.sender)
                .bind("reaction")
                .bind(known.as_told(&r.target))
                .bind(&r.key)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
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

pub(super) async fn insert_outbox(
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

/// The Matrix rooms of a transaction's events.
fn rooms<T: RoomEvent>(events: &[T]) -> impl Iterator<Item = &str> {
    events.iter().map(RoomEvent::room)
}

/// Logs the events that are in a place (City Room or direct chat).
fn log_in<'t, T: RoomEvent>(
    events: &'t [T],
    here: impl Fn(&str) -> bool,
    logged: &mut Vec<Logged<'t>>,
) {
    for e in events.iter().filter(|e| here(e.room())) {
        logged.push(Logged {
            id: e.id(),
            subject: e.room(),
            kind: T::KIND,
            created_at: e.ts(),
        });
    }
}

/// The events logged now for the first time.
fn fresh_in<T: RoomEvent>(events: &[T], fresh: impl Fn(&str, &str) -> bool) -> Vec<&T> {
    events.iter().filter(|e| fresh(e.id(), e.room())).collect()
}

/// The intake of one transaction: where its events go.
pub(super) struct TxnIntake<'a> {
    pub(super) names: &'a Names<'a>,
    pub(super) outbox: bool,
    pub(super) now: i64,
    queued: usize,
    streams: BTreeSet<String>,
}

impl TxnIntake<'_> {
    /// One event for DAARION.city, into its place's stream.
    pub(super) async fn insert(
        &mut self,
        tx: &mut Transaction<'static, Any>,
        place: &Place,
        id: &str,
        kind: &str,
        envelope: &serde_json::Value,
    ) -> Result<()> {
        let stream = place.key();
        insert_outbox(tx, &stream, id, kind, envelope, self.now).await?;
        self.streams.insert(stream);
        self.queued += 1;
        Ok(())
    }
}

/// A person's event told to DAARION.city before.
struct Told {
    sender: String,
    kind: String,
    target: Option<String>,
    key: Option<String>,
}

/// What DAARION.city knows of a transaction's events (see
/// [`Store::known_to_city`]).
struct KnownToCity<'t> {
    places: HashMap<String, Place>,
    messages: Vec<&'t matrix::InboundMessage>,
    edits: Vec<&'t matrix::InboundEdit>,
    reactions: Vec<&'t matrix::InboundReaction>,
    redactions: Vec<&'t matrix::InboundRedaction>,
    receipts: Vec<&'t matrix::InboundReceipt>,
    /// localpart → DAARION user id
    people: HashMap<String, String>,
    /// event id → an agent's message_id
    agents_messages: HashMap<String, String>,
    told: HashMap<String, Told>,
    /// localpart → agent id
    agents: HashMap<String, String>,
}

impl KnownToCity<'_> {
    fn person(&self, user_id: &str, names: &Names<'_>) -> Option<&str> {
        names
            .local(user_id)
            .and_then(|lp| self.people.get(lp))
            .map(String::as_str)
    }

    /// An event as DAARION.city names it: an agent's `message_id`, else
    /// the event id.
    fn as_told<'e>(&'e self, event_id: &'e str) -> &'e str {
        self.agents_messages
            .get(event_id)
            .map_or(event_id, String::as_str)
    }

    /// A person's message as `matrix.message`: the sender's DAARION id, the
    /// agent's message it answers or the thread it is in, the agents it
    /// mentions, and a download link for its file.
    fn message_envelope(
        &self,
        m: &matrix::InboundMessage,
        names: &Names<'_>,
        files: FileLinker<'_>,
    ) -> serde_json::Value {
        let mentions: Vec<String> = m
            .mentioned_users()
            .iter()
            .filter_map(|u| names.agent(u).and_then(|lp| self.agents.get(lp)).cloned())
            .collect();
        let links = Links {
            sender_id: self.person(&m.sender, names),
            reply_to: m.reply_event().map(|e| self.as_told(e)),
            thread_of: m.thread_root().map(|e| self.as_told(e)),
            mentions,
            file: m.file().and_then(files),
        };
        m.envelope(&self.places[&m.room_id], &links)
    }
}
