//! A City Room's outbox of agents' messages, sent into its Matrix room in
//! order (DAARION.city's `created_at`), each exactly once:
//!
//! - the send's transaction id is derived from the message id, so a repeat
//!   within Synapse's memory returns the first event;
//! - before a batch is sent its messages are marked as tried, and a run
//!   that finds tried-but-unrecorded messages (the service died between
//!   Synapse's answer and the database, or the answer was lost) first reads
//!   the room's latest messages for their `city.daarion.message_id`, so not
//!   even a Synapse restart makes a second event;
//! - the event id is recorded per message (the message → event table), a
//!   few messages at a time.
//!
//! A message whose room or agent is not in Matrix yet waits for it (and
//! holds the room's later messages back, to keep the order), up to
//! `MESSAGE_WAIT_SECONDS`; one that can never be sent (agent or room
//! deleted, the agent not a member, Synapse refusing it) is failed with the
//! reason, and the room's next messages go on.

use std::collections::HashMap;
use std::time::Duration;

use super::outcome::Outcome;
use super::Drained;
use crate::clock::Clock;
use crate::domain::agent::{message_content, txn_id, MESSAGE_ID_FIELD};
use crate::metrics;
use crate::store::{Agent, JobKind, Store, StoredMessage};
use crate::synapse::{Refusal, Synapse, SynapseError};

/// Messages read (and marked as tried) at once.
const BATCH: i64 = 50;
/// How far back a run looks for messages that were sent but not recorded.
const SCAN: u32 = 100;
/// How soon a waiting room looks again (new data wakes it sooner).
const WAIT_STEP_MS: i64 = 2000;

pub struct SendDeps<'a> {
    pub store: &'a Store,
    pub synapse: &'a Synapse,
    /// How long a message may wait for its room or agent.
    pub max_wait: Duration,
    pub clock: &'a Clock,
}

type StepResult<T> = Result<T, Outcome<Drained>>;

pub async fn drain(deps: &SendDeps<'_>, room_id: &str) -> Outcome<Drained> {
    let mut recorder = Recorder::default();
    let outcome = run(deps, room_id, &mut recorder).await;
    // What went out is recorded whatever stopped the run (a message that
    // waits, Synapse down).
    if let Err(e) = recorder.flush(deps.store, deps.clock.now_ms()).await {
        return e.into();
    }
    match outcome {
        Ok(()) => Outcome::Done(Drained),
        Err(outcome) => outcome,
    }
}

/// The events sent in this run: recorded a few at a time (a commit per
/// message would cost a disk flush each); until then, a crash is covered by
/// the batch's "tried" mark and the read of the room.
#[derive(Default)]
struct Recorder {
    unrecorded: Vec<(String, String)>,
    /// message id → event id, for replies to a message of this run.
    events: HashMap<String, String>,
}

/// Sent messages recorded at once.
const RECORD_EVERY: usize = 10;

impl Recorder {
    fn sent(&mut self, message_id: &str, event_id: &str) {
        self.unrecorded
            .push((message_id.to_string(), event_id.to_string()));
        self.events
            .insert(message_id.to_string(), event_id.to_string());
    }

    async fn flush(&mut self, store: &Store, now: i64) -> Result<(), crate::store::StoreError> {
        store.record_sent(&self.unrecorded, now).await?;
        self.unrecorded.clear();
        Ok(())
    }
}

async fn run(deps: &SendDeps<'_>, room_id: &str, recorder: &mut Recorder) -> StepResult<()> {
    let store = deps.store;
    let room = store.room(room_id).await?;
    let mut agents: HashMap<String, Option<Agent>> = HashMap::new();
    loop {
        // What this run sent is recorded before the next read, which would
        // otherwise find it pending.
        recorder.flush(store, deps.clock.now_ms()).await?;
        let batch = store.pending_messages(room_id, BATCH).await?;
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let matrix_room = match &room {
            Some(r) if r.wanted.deleted => {
                for m in &batch {
                    fail(deps, m, "the City Room was deleted").await?;
                }
                continue;
            }
            Some(r) => r.matrix_room_id.clone(),
            None => None,
        };
        let Some(matrix_room) = matrix_room else {
            wait(deps, first, "its City Room is not in Matrix yet").await?;
            continue;
        };
        // Tried before and not recorded: perhaps in Matrix already.
        let sent_before = if batch.iter().any(|m| m.attempted_at.is_some()) {
            sent_messages(deps.synapse, &matrix_room).await?
        } else {
            HashMap::new()
        };
        let untried: Vec<&str> = batch
            .iter()
            .filter(|m| m.attempted_at.is_none())
            .map(|m| m.message.message_id.as_str())
            .collect();
        store.mark_attempted(&untried, deps.clock.now_ms()).await?;
        for m in &batch {
            if !agents.contains_key(&m.message.agent_id) {
                let agent = store.agent(&m.message.agent_id).await?;
                agents.insert(m.message.agent_id.clone(), agent);
            }
            let agent = agents[&m.message.agent_id].as_ref();
            match send_one(deps, &matrix_room, m, agent, &sent_before, recorder).await? {
                Some(event_id) => recorder.sent(&m.message.message_id, &event_id),
                // It failed and changed the order: read the batch again.
                None => break,
            }
            if recorder.unrecorded.len() >= RECORD_EVERY {
                recorder.flush(store, deps.clock.now_ms()).await?;
            }
        }
    }
}

/// Sends one message (or finds it sent before): its event. None when the
/// message was failed instead.
async fn send_one(
    deps: &SendDeps<'_>,
    matrix_room: &str,
    m: &StoredMessage,
    agent: Option<&Agent>,
    sent_before: &HashMap<String, (String, String)>,
    recorder: &Recorder,
) -> StepResult<Option<String>> {
    let synapse = deps.synapse;
    let puppet = match agent {
        Some(a) if a.wanted.deleted => {
            fail(deps, m, "the agent was deleted").await?;
            return Ok(None);
        }
        Some(Agent {
            localpart: Some(localpart),
            registered: true,
            ..
        }) => synapse.user_id(localpart),
        _ => {
            wait(deps, m, "its agent has no Matrix user yet").await?;
            return Ok(None);
        }
    };
    let message_id = &m.message.message_id;
    if let Some((sender, event_id)) = sent_before.get(message_id) {
        if *sender == puppet {
            tracing::info!(%message_id, %event_id, "found the message in Matrix already");
            return Ok(Some(event_id.clone()));
        }
    }
    let reply = match &m.message.reply_to {
        // The `id` of a `matrix.message` is its Matrix event id.
        Some(r) if r.starts_with('$') => Some(r.clone()),
        Some(r) => match recorder.events.get(r) {
            Some(event_id) => Some(event_id.clone()),
            None => deps.store.message_event(r).await?,
        },
        None => None,
    };
    let content = message_content(&m.message, reply.as_deref());
    match synapse
        .send_message(
            matrix_room,
            &puppet,
            &txn_id(message_id),
            m.created_at,
            &content,
        )
        .await
    {
        Ok(event_id) => {
            metrics::message("to_matrix", "sent");
            Ok(Some(event_id))
        }
        // Not in the room (yet): the room's job joins its members. (A `403`
        // either way; a deactivated puppet is not in the room either.)
        Err(e) if matches!(e.refusal(), Some(Refusal::Forbidden | Refusal::Deactivated)) => {
            let member = deps
                .store
                .room_members(&m.message.room_id)
                .await?
                .iter()
                .any(|w| w.member_id == m.message.agent_id && w.present);
            if member {
                deps.store
                    .requeue(JobKind::Room, &m.message.room_id, deps.clock.now_ms())
                    .await?;
                wait(deps, m, "its agent is not joined to the room yet").await?;
            } else {
                let reason = format!("the agent is not a member of this City Room ({e})");
                fail(deps, m, &reason).await?;
            }
            Ok(None)
        }
        Err(e @ SynapseError::Refused { .. }) => {
            fail(deps, m, &e.to_string()).await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The room's latest messages that carry a DAARION message id:
/// message id → (sender, event id).
async fn sent_messages(
    synapse: &Synapse,
    matrix_room: &str,
) -> StepResult<HashMap<String, (String, String)>> {
    let messages = synapse.recent_messages(matrix_room, SCAN).await?;
    Ok(messages
        .into_iter()
        .filter_map(|m| {
            let message_id = m.content[MESSAGE_ID_FIELD].as_str()?.to_string();
            Some((message_id, (m.sender, m.event_id)))
        })
        .collect())
}

async fn fail(deps: &SendDeps<'_>, m: &StoredMessage, reason: &str) -> StepResult<()> {
    tracing::warn!(message_id = %m.message.message_id, "agent message failed: {reason}");
    deps.store
        .fail_message(&m.message.message_id, reason)
        .await?;
    metrics::message("to_matrix", "failed");
    Ok(())
}

/// The room waits for `m`'s room or agent, unless it has waited too long:
/// then `m` fails and the caller goes on (`Ok`).
async fn wait(deps: &SendDeps<'_>, m: &StoredMessage, reason: &str) -> StepResult<()> {
    let now = deps.clock.now_ms();
    if now - m.received_at > deps.max_wait.as_millis() as i64 {
        let reason = format!(
            "{reason} after {} s (MESSAGE_WAIT_SECONDS)",
            deps.max_wait.as_secs()
        );
        return fail(deps, m, &reason).await;
    }
    // Written once per reason, not on every look while it waits.
    if m.last_error.as_deref() != Some(reason) {
        deps.store
            .note_message_wait(&m.message.message_id, reason)
            .await?;
    }
    Err(Outcome::Wait {
        until: now + WAIT_STEP_MS,
        reason: format!("message {}: {reason}", m.message.message_id),
    })
}
