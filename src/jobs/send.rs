//! A place's outbox into Matrix (a City Room, or a direct chat with an
//! agent): what agents do there, in order (DAARION.city's `created_at`),
//! each exactly once:
//!
//! - a message's send has a transaction id derived from the message id, so
//!   a repeat within Synapse's memory returns the first event; before a
//!   batch is sent its messages are marked as tried, and a run that finds
//!   tried-but-unrecorded ones (the service died between Synapse's answer
//!   and the database, or the answer was lost) first reads the room's
//!   latest events for their `city.daarion.message_id`, so not even a
//!   Synapse restart makes a second event (reactions the same way);
//! - a message whose text changed after it went out (a streamed answer's
//!   next part, an edit) gets an `m.replace` edit with the whole text, at
//!   most one per `EDIT_GAP_MS` per message, however fast the parts come:
//!   later parts fold into the next edit, so the last edit is the final
//!   text; the place's other rows do not wait for it;
//! - a deleted message or removed reaction is redacted; typing and read
//!   receipts are applied as last asked.
//!
//! A direct chat is first joined (or its invitation turned down) here, and
//! left once the person left. A row whose room or agent is not in Matrix
//! yet waits for it (and holds the place's later rows back, to keep the
//! order), up to `MESSAGE_WAIT_SECONDS`; one that can never be applied
//! (agent or room deleted, the agent not a member, Synapse refusing it) is
//! failed with the reason, and the place's next rows go on.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::attachment::{self, Attach};
use super::outcome::Outcome;
use super::Drained;
use crate::avatar::AvatarFetcher;
use crate::clock::Clock;
use crate::domain::agent::{
    edit_content, message_content, new_content, reaction_content, txn_id, ActionKind, Place,
    Relations, MESSAGE_ID_FIELD,
};
use crate::domain::matrix::Names;
use crate::metrics;
use crate::store::{Agent, Conversation, JobKind, Sent, Store, StoredMessage};
use crate::synapse::{PuppetEvent, Refusal, Synapse, SynapseError};

/// Rows read (and marked as tried) at once.
const BATCH: i64 = 50;
/// How far back a run looks for messages that were sent but not recorded.
const SCAN: u32 = 100;
/// How soon a waiting place looks again (new data wakes it sooner).
const WAIT_STEP_MS: i64 = 2000;
/// The least time between two edits of one message: a streamed answer
/// shows at most four edits a second.
pub const EDIT_GAP_MS: i64 = 250;

pub struct SendDeps<'a> {
    pub store: &'a Store,
    pub synapse: &'a Synapse,
    pub files: &'a AvatarFetcher,
    pub names: Names<'a>,
    /// How long a row may wait for its room or agent.
    pub max_wait: Duration,
    /// Whether DAARION.city hears of direct chats (`CITY_EVENTS_URL` or `NATS_OUT` set).
    pub outbox: bool,
    pub clock: &'a Clock,
}

type StepResult<T> = Result<T, Outcome<Drained>>;

pub async fn drain(deps: &SendDeps<'_>, key: &str) -> Outcome<Drained> {
    let Some(place) = Place::from_key(key) else {
        return Outcome::Failed(format!("{key:?} is not a place"));
    };
    let mut recorder = Recorder::default();
    let outcome = run(deps, &place, key, &mut recorder).await;
    // What went out is recorded whatever stopped the run (a row that
    // waits, Synapse down).
    if let Err(e) = recorder.flush(deps.store, deps.clock.now_ms()).await {
        return e.into();
    }
    match outcome {
        Ok(()) => Outcome::Done(Drained),
        Err(outcome) => outcome,
    }
}

/// The messages sent in this run: recorded a few at a time (a commit per
/// message would cost a disk flush each); until then, a crash is covered by
/// the batch's "tried" mark and the read of the room.
#[derive(Default)]
struct Recorder {
    unrecorded: Vec<Sent>,
    /// message id → event id, for replies to a message of this run.
    events: HashMap<String, String>,
}

/// Sent messages recorded at once.
const RECORD_EVERY: usize = 10;

impl Recorder {
    fn sent(&mut self, sent: Sent) {
        self.events
            .insert(sent.message_id.clone(), sent.event_id.clone());
        self.unrecorded.push(sent);
    }

    async fn flush(&mut self, store: &Store, now: i64) -> Result<(), crate::store::StoreError> {
        store.record_sent(&self.unrecorded, now).await?;
        self.unrecorded.clear();
        Ok(())
    }
}

/// Where the place is in Matrix.
struct Target {
    matrix_room: String,
    /// Who reads the room's timeline: the bot in a City Room, the agent's
    /// puppet in a direct chat.
    viewer: Option<String>,
    /// The conversation's agent (a direct chat holds only its own).
    agent_id: Option<String>,
}

async fn run(
    deps: &SendDeps<'_>,
    place: &Place,
    key: &str,
    recorder: &mut Recorder,
) -> StepResult<()> {
    let store = deps.store;
    let Some(target) = target(deps, place, key).await? else {
        return Ok(());
    };
    let mut agents: HashMap<String, Option<Agent>> = HashMap::new();
    // Messages whose next edit must wait: message id → when it may go.
    let mut throttled: HashMap<String, i64> = HashMap::new();
    let mut sent_before: Option<HashMap<String, Found>> = None;
    loop {
        // What this run sent is recorded before the next read, which would
        // otherwise find it pending.
        recorder.flush(store, deps.clock.now_ms()).await?;
        let batch: Vec<StoredMessage> = store
            .pending_messages(key, BATCH + throttled.len() as i64)
            .await?
            .into_iter()
            .filter(|m| !throttled.contains_key(&m.message.message_id))
            .collect();
        let Some(first) = batch.first() else {
            return match throttled.values().min() {
                Some(until) => Err(Outcome::Wait {
                    until: *until,
                    reason: "a streamed answer's next edit".into(),
                }),
                None => Ok(()),
            };
        };
        let Some(target) = &target else {
            wait(deps, first, "its City Room is not in Matrix yet").await?;
            continue;
        };
        // Tried before and not recorded: perhaps in Matrix already.
        let unrecorded = |m: &StoredMessage| m.attempted_at.is_some() && m.event_id.is_none();
        if sent_before.is_none() && batch.iter().any(unrecorded) {
            let found = sent_events(deps.synapse, target).await?;
            sent_before = Some(found);
        }
        let untried: Vec<&str> = batch
            .iter()
            .filter(|m| m.attempted_at.is_none() && m.event_id.is_none() && !m.deleted)
            .filter(|m| matches!(m.kind, ActionKind::Message | ActionKind::Reaction))
            .map(|m| m.message.message_id.as_str())
            .collect();
        store.mark_attempted(&untried, deps.clock.now_ms()).await?;
        for m in &batch {
            if !agents.contains_key(&m.message.agent_id) {
                let agent = store.agent(&m.message.agent_id).await?;
                agents.insert(m.message.agent_id.clone(), agent);
            }
            let agent = agents[&m.message.agent_id].as_ref();
            let Some(puppet) = puppet(deps, m, agent, target).await? else {
                break;
            };
            let row = Row {
                target,
                m,
                puppet: &puppet,
                sent_before: sent_before.as_ref(),
            };
            let step = match m.kind {
                ActionKind::Message => message(deps, &row, recorder, &mut throttled).await?,
                ActionKind::Reaction => reaction(deps, &row, recorder).await?,
                ActionKind::Typing | ActionKind::Read => signal(deps, &row).await?,
            };
            if step == Step::Reread {
                break;
            }
            if recorder.unrecorded.len() >= RECORD_EVERY {
                recorder.flush(store, deps.clock.now_ms()).await?;
            }
        }
    }
}

/// One pending row, where it goes and as whom.
struct Row<'a> {
    target: &'a Target,
    m: &'a StoredMessage,
    puppet: &'a str,
    sent_before: Option<&'a HashMap<String, Found>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Next,
    /// The row failed, and so the order changed: read the batch again.
    Reread,
}

/// An event found in the room that carries a DAARION id.
struct Found {
    sender: String,
    event_id: String,
    body: String,
}

/// The place in Matrix: a City Room's Matrix room (None while it is not
/// created yet), or a direct chat's room once the puppet is in it. None
/// (outer) when the place has nothing more to do: a City Room that was
/// deleted, a conversation that was turned down or ended (its rows are
/// failed).
async fn target(
    deps: &SendDeps<'_>,
    place: &Place,
    key: &str,
) -> StepResult<Option<Option<Target>>> {
    let store = deps.store;
    match place {
        Place::Room(room_id) => {
            let room = store.room(room_id).await?;
            if room.as_ref().is_some_and(|r| r.wanted.deleted) {
                fail_all(deps, key, "the City Room was deleted").await?;
                return Ok(None);
            }
            Ok(Some(room.and_then(|r| r.matrix_room_id).map(
                |matrix_room| Target {
                    matrix_room,
                    viewer: None,
                    agent_id: None,
                },
            )))
        }
        Place::Conversation(id) => {
            let Some(c) = store.conversation(id).await? else {
                fail_all(deps, key, "no such conversation").await?;
                return Ok(None);
            };
            let c = match c.state.as_str() {
                "invited" => admit(deps, c).await?,
                "ended" => {
                    leave(deps, &c).await?;
                    None
                }
                "joined" => Some(c),
                _ => None,
            };
            let Some(c) = c else {
                fail_all(deps, key, "the conversation is over").await?;
                return Ok(None);
            };
            let puppet = match store.agent(&c.agent_id).await? {
                Some(Agent {
                    localpart: Some(localpart),
                    ..
                }) => deps.synapse.user_id(&localpart),
                _ => return Err(Outcome::Failed("the conversation's agent is gone".into())),
            };
            Ok(Some(Some(Target {
                matrix_room: c.matrix_room_id,
                viewer: Some(puppet),
                agent_id: Some(c.agent_id),
            })))
        }
    }
}

/// An invitation of an agent's puppet: joined when the agent takes direct
/// chats and the inviter is a DAARION person; turned down otherwise.
async fn admit(deps: &SendDeps<'_>, c: Conversation) -> StepResult<Option<Conversation>> {
    let store = deps.store;
    let now = deps.clock.now_ms();
    let agent = store.agent(&c.agent_id).await?;
    let person = store.person_by_mxid(&deps.names, &c.person_mxid).await?;
    let puppet = match &agent {
        Some(Agent {
            localpart: Some(localpart),
            registered: true,
            ..
        }) => deps.synapse.user_id(localpart),
        // No puppet to answer with: nothing to join or turn down.
        _ => {
            store
                .conversation_moved(
                    &c.conversation_id,
                    "invited",
                    "refused",
                    Some("no such agent"),
                    now,
                )
                .await?;
            return Ok(None);
        }
    };
    let agent = agent.as_ref().expect("matched above");
    let refusal = if agent.wanted.deleted {
        Some("the agent was deleted")
    } else if !agent.wanted.accepts_direct_chats {
        Some("this agent does not take direct chats")
    } else if person.is_none() {
        Some("only DAARION people can chat with agents")
    } else {
        None
    };
    if let Some(reason) = refusal {
        match deps
            .synapse
            .leave_as(&c.matrix_room_id, &puppet, Some(reason))
            .await
        {
            Ok(()) | Err(SynapseError::Refused { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(conversation_id = %c.conversation_id, "turned a direct chat down: {reason}");
        store
            .conversation_moved(&c.conversation_id, "invited", "refused", Some(reason), now)
            .await?;
        return Ok(None);
    }
    match deps.synapse.join_as(&c.matrix_room_id, &puppet).await {
        Ok(()) => {}
        Err(e @ SynapseError::Refused { .. }) => {
            let reason = format!("cannot join: {e}");
            store
                .conversation_moved(&c.conversation_id, "invited", "refused", Some(&reason), now)
                .await?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    deps.synapse
        .mark_direct(&puppet, &c.person_mxid, &c.matrix_room_id)
        .await?;
    store
        .conversation_joined(&c, person.as_deref(), deps.outbox, now)
        .await?;
    metrics::message("to_matrix", "conversation_joined");
    tracing::info!(conversation_id = %c.conversation_id, "joined a direct chat");
    Ok(Some(c))
}

/// The person left: the puppet leaves too.
async fn leave(deps: &SendDeps<'_>, c: &Conversation) -> StepResult<()> {
    if let Some(Agent {
        localpart: Some(localpart),
        ..
    }) = deps.store.agent(&c.agent_id).await?
    {
        let puppet = deps.synapse.user_id(&localpart);
        match deps
            .synapse
            .leave_as(&c.matrix_room_id, &puppet, None)
            .await
        {
            Ok(()) | Err(SynapseError::Refused { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    deps.store
        .conversation_moved(
            &c.conversation_id,
            "ended",
            "closed",
            None,
            deps.clock.now_ms(),
        )
        .await?;
    Ok(())
}

/// The puppet that acts for the row, or None when the row waits or failed.
async fn puppet(
    deps: &SendDeps<'_>,
    m: &StoredMessage,
    agent: Option<&Agent>,
    target: &Target,
) -> StepResult<Option<String>> {
    if target
        .agent_id
        .as_ref()
        .is_some_and(|a| *a != m.message.agent_id)
    {
        fail(deps, m, "another agent's direct chat").await?;
        return Ok(None);
    }
    match agent {
        Some(a) if a.wanted.deleted => {
            fail(deps, m, "the agent was deleted").await?;
            Ok(None)
        }
        Some(Agent {
            localpart: Some(localpart),
            registered: true,
            ..
        }) => Ok(Some(deps.synapse.user_id(localpart))),
        _ => {
            wait(deps, m, "its agent has no Matrix user yet").await?;
            Ok(None)
        }
    }
}

/// A Matrix event DAARION.city names: a `matrix.message` id is one, an
/// agent's `message_id` is looked up (this run's first).
async fn event_of(
    deps: &SendDeps<'_>,
    recorder: &Recorder,
    id: &str,
) -> StepResult<Option<String>> {
    if id.starts_with('$') {
        return Ok(Some(id.to_string()));
    }
    if let Some(event_id) = recorder.events.get(id) {
        return Ok(Some(event_id.clone()));
    }
    Ok(deps.store.message_event(id).await?)
}

async fn message(
    deps: &SendDeps<'_>,
    row: &Row<'_>,
    recorder: &mut Recorder,
    throttled: &mut HashMap<String, i64>,
) -> StepResult<Step> {
    let (m, synapse) = (row.m, deps.synapse);
    let room = &row.target.matrix_room;
    let message_id = &m.message.message_id;
    let Some(event_id) = &m.event_id else {
        let found = row
            .sent_before
            .and_then(|s| s.get(message_id))
            .filter(|f| f.sender == row.puppet);
        if let Some(found) = found {
            tracing::info!(%message_id, event_id = %found.event_id, "found the message in Matrix already");
            recorder.sent(Sent {
                message_id: message_id.clone(),
                event_id: found.event_id.clone(),
                body: found.body.clone(),
                format: m.message.format,
            });
            return Ok(Step::Next);
        }
        if m.deleted {
            // Deleted before it ever showed.
            deps.store.record_done(message_id, None).await?;
            return Ok(Step::Next);
        }
        let attachment = match attachment(deps, m).await? {
            Ok(content) => content,
            Err(reason) => {
                fail(deps, m, &reason).await?;
                return Ok(Step::Reread);
            }
        };
        let reply = match &m.message.reply_to {
            Some(r) => event_of(deps, recorder, r).await?,
            None => None,
        };
        let thread_root = match &m.message.thread_of {
            Some(t) => event_of(deps, recorder, t).await?,
            None => None,
        };
        let relations = Relations {
            reply: reply.as_deref(),
            thread_root: thread_root.as_deref(),
        };
        let content = message_content(&m.message, relations, attachment.as_ref());
        let sent = synapse
            .send_as(
                PuppetEvent::Message,
                room,
                row.puppet,
                &txn_id(message_id),
                m.created_at,
                &content,
            )
            .await;
        return match sent {
            Ok(event_id) => {
                metrics::message("to_matrix", "sent");
                recorder.sent(Sent {
                    message_id: message_id.clone(),
                    event_id,
                    body: m.message.body.clone(),
                    format: m.message.format,
                });
                Ok(Step::Next)
            }
            Err(e) => refused(deps, row, e).await,
        };
    };
    if m.deleted {
        if !m.redacted {
            let txn = txn_id(&format!("{message_id}\nredact"));
            match synapse
                .redact(room, row.puppet, event_id, &txn, m.delete_reason.as_deref())
                .await
            {
                Ok(()) => metrics::message("to_matrix", "redacted"),
                Err(e) => return refused(deps, row, e).await,
            }
        }
        deps.store.record_redacted(message_id).await?;
        return Ok(Step::Next);
    }
    if !m.needs_edit() {
        deps.store.record_done(message_id, None).await?;
        return Ok(Step::Next);
    }
    let now = deps.clock.now_ms();
    if let Some(last) = m.edited_at {
        if now < last + EDIT_GAP_MS {
            throttled.insert(message_id.clone(), last + EDIT_GAP_MS);
            return Ok(Step::Next);
        }
    }
    let new = new_content(&m.message, m.attachment_content.as_ref());
    let content = edit_content(event_id, &new);
    // The edit's number and text: a repeat of this very edit is deduped by
    // Synapse, while an edit that went out unrecorded before a crash (with
    // other text) does not swallow this one.
    let txn = txn_id(&format!(
        "{message_id}\nedit\n{}\n{}\n{}",
        m.edits + 1,
        m.message.format.as_str(),
        m.message.body
    ));
    match synapse
        .send_as(PuppetEvent::Message, room, row.puppet, &txn, now, &content)
        .await
    {
        Ok(_) => metrics::message("to_matrix", "edited"),
        Err(e) => return refused(deps, row, e).await,
    }
    deps.store
        .record_edit(message_id, &m.message.body, m.message.format, now)
        .await?;
    throttled.insert(message_id.clone(), now + EDIT_GAP_MS);
    Ok(Step::Next)
}

/// The file's Matrix content: uploaded now (once per content), or before.
/// `Err` with the reason when the file cannot be had.
async fn attachment(
    deps: &SendDeps<'_>,
    m: &StoredMessage,
) -> StepResult<Result<Option<Value>, String>> {
    let Some(file) = &m.message.attachment else {
        return Ok(Ok(None));
    };
    if let Some(content) = &m.attachment_content {
        return Ok(Ok(Some(content.clone())));
    }
    let now = deps.clock.now_ms();
    let content =
        match attachment::content_for(deps.files, file, deps.store, deps.synapse, now).await {
            Ok(content) => content,
            Err(Attach::Refused(reason)) => return Ok(Err(reason)),
            Err(Attach::Retry(outcome)) => return Err(outcome),
        };
    deps.store
        .record_attachment(&m.message.message_id, &content)
        .await?;
    Ok(Ok(Some(content)))
}

async fn reaction(deps: &SendDeps<'_>, row: &Row<'_>, recorder: &Recorder) -> StepResult<Step> {
    let (m, synapse) = (row.m, deps.synapse);
    let room = &row.target.matrix_room;
    let id = &m.message.message_id;
    let shows = m.event_id.is_some() && !m.redacted;
    if m.deleted {
        if let (true, Some(event_id)) = (shows, &m.event_id) {
            let txn = txn_id(&format!("{id}\nredact\n{}", m.edits));
            if let Err(e) = synapse.redact(room, row.puppet, event_id, &txn, None).await {
                return refused(deps, row, e).await;
            }
            metrics::message("to_matrix", "reaction_removed");
            deps.store.record_redacted(id).await?;
        } else {
            deps.store.record_done(id, None).await?;
        }
        return Ok(Step::Next);
    }
    if shows {
        deps.store.record_done(id, None).await?;
        return Ok(Step::Next);
    }
    if let Some(found) = row.sent_before.and_then(|s| s.get(id)) {
        if m.event_id.is_none() && found.sender == row.puppet {
            deps.store
                .record_reaction(id, &found.event_id, deps.clock.now_ms())
                .await?;
            return Ok(Step::Next);
        }
    }
    let target = m.target.as_deref().unwrap_or_default();
    let Some(target_event) = event_of(deps, recorder, target).await? else {
        wait(deps, m, "the message it reacts to is not in Matrix yet").await?;
        return Ok(Step::Reread);
    };
    let content = reaction_content(id, &target_event, &m.message.body);
    let txn = txn_id(&format!("{id}\n{}", m.edits));
    match synapse
        .send_as(
            PuppetEvent::Reaction,
            room,
            row.puppet,
            &txn,
            m.created_at,
            &content,
        )
        .await
    {
        Ok(event_id) => {
            metrics::message("to_matrix", "reacted");
            deps.store
                .record_reaction(id, &event_id, deps.clock.now_ms())
                .await?;
            Ok(Step::Next)
        }
        Err(e) => refused(deps, row, e).await,
    }
}

/// Typing or a read receipt, as last asked. Neither is worth failing
/// over: a refusal is logged and the row is done.
async fn signal(deps: &SendDeps<'_>, row: &Row<'_>) -> StepResult<Step> {
    let m = row.m;
    let room = &row.target.matrix_room;
    // Whether Synapse was told (a typing notice that already ran out is not).
    let result = if m.kind == ActionKind::Typing {
        let on = m.message.body == "on";
        let elapsed = deps.clock.now_ms() - m.received_at;
        let remaining = m.timeout_ms.unwrap_or(30_000) - elapsed;
        if on && remaining <= 0 {
            Ok(false)
        } else {
            deps.synapse
                .typing(room, row.puppet, on, remaining.max(1000))
                .await
                .map(|()| true)
        }
    } else {
        let up_to = m.target.as_deref().unwrap_or_default();
        deps.synapse
            .read_receipt(room, row.puppet, up_to)
            .await
            .map(|()| true)
    };
    match result {
        // Counted once Synapse took it, as messages are.
        Ok(told) => {
            if told {
                metrics::message("to_matrix", m.kind.as_str());
            }
        }
        Err(e @ SynapseError::Refused { .. }) => {
            tracing::info!(message_id = %m.message.message_id, "Synapse refused {}: {e}", m.kind.as_str());
        }
        Err(e) => return Err(e.into()),
    }
    deps.store
        .record_done(&m.message.message_id, Some(m.created_at))
        .await?;
    Ok(Step::Next)
}

/// Synapse refused a row's send: not in the room (yet), or for good.
async fn refused(deps: &SendDeps<'_>, row: &Row<'_>, e: SynapseError) -> StepResult<Step> {
    let m = row.m;
    // Not in the room (yet): the room's job joins its members. (A `403`
    // either way; a deactivated puppet is not in the room either.)
    if matches!(e.refusal(), Some(Refusal::Forbidden | Refusal::Deactivated)) {
        if let Place::Room(room_id) = &m.message.place {
            let member = deps
                .store
                .room_members(room_id)
                .await?
                .iter()
                .any(|w| w.member_id == m.message.agent_id && w.present);
            if member {
                deps.store
                    .requeue(JobKind::Room, room_id, deps.clock.now_ms())
                    .await?;
                wait(deps, m, "its agent is not joined to the room yet").await?;
                return Ok(Step::Reread);
            }
            let reason = format!("the agent is not a member of this City Room ({e})");
            fail(deps, m, &reason).await?;
            return Ok(Step::Reread);
        }
    }
    match e {
        SynapseError::Refused { .. } => {
            fail(deps, m, &e.to_string()).await?;
            Ok(Step::Reread)
        }
        e => Err(e.into()),
    }
}

/// The room's latest events that carry a DAARION id (messages, not their
/// edits, and reactions): id → who sent it, its event and text.
async fn sent_events(synapse: &Synapse, target: &Target) -> StepResult<HashMap<String, Found>> {
    let events = synapse
        .recent_messages(&target.matrix_room, target.viewer.as_deref(), SCAN)
        .await?;
    Ok(events
        .into_iter()
        .filter(|e| e.content["m.relates_to"]["rel_type"] != "m.replace")
        .filter_map(|e| {
            let id = e.content[MESSAGE_ID_FIELD].as_str()?.to_string();
            let body = e.content["body"].as_str().unwrap_or_default().to_string();
            Some((
                id,
                Found {
                    sender: e.sender,
                    event_id: e.event_id,
                    body,
                },
            ))
        })
        .collect())
}

async fn fail(deps: &SendDeps<'_>, m: &StoredMessage, reason: &str) -> StepResult<()> {
    tracing::warn!(message_id = %m.message.message_id, "agent's {} failed: {reason}", m.kind.as_str());
    deps.store
        .fail_message(&m.message.message_id, reason)
        .await?;
    metrics::message("to_matrix", "failed");
    Ok(())
}

/// Every pending row of the place fails (its conversation is over).
async fn fail_all(deps: &SendDeps<'_>, key: &str, reason: &str) -> StepResult<()> {
    loop {
        let batch = deps.store.pending_messages(key, BATCH).await?;
        if batch.is_empty() {
            return Ok(());
        }
        for m in &batch {
            fail(deps, m, reason).await?;
        }
    }
}

/// The place waits for `m`'s room or agent, unless it has waited too long:
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
