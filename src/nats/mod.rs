//! The NATS edge (CONTRACT.md section 12): DAARION's events taken from
//! JetStream go through what the webhooks go through (size, signature when
//! `NATS_REQUIRE_SIGNATURE=true`, the same parsers) into the same intake,
//! event log and queue. NATS is another edge, not another path.
//!
//! A message is acknowledged only once the intake stored its event, and the
//! consumer keeps many messages in flight, so a burst rides the intake's
//! group commit (one transaction for hundreds of messages). One that can
//! never be accepted is copied to the dead-letter subject with its reason,
//! then terminated (never redelivered); one that could not be stored now (the
//! database) is handed back with a delay and comes again. A redelivery is a
//! duplicate by event id, as a webhook's is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{watch, Notify};

use crate::accounts::Accounts;
use crate::bus::{Bus, AUTH_STREAM, CITY_STREAM};
use crate::domain::city::{CityEvent, ParsedCity};
use crate::domain::event::{Event, EventError, Parsed};
use crate::domain::signature::{self, SignatureError};
use crate::metrics;
use crate::secret::Secret;
use crate::store::Intake;

/// The webhooks' limit (CONTRACT.md section 2), for the same envelope.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Messages asked of JetStream at once: the intake's largest batch.
const PULL_BATCH: usize = crate::store::MAX_BATCH;
/// Messages taken and not answered yet, per stream: enough for every one of
/// the intake's writers (8 on PostgreSQL) to hold a full batch while the
/// next ones fill; as many as JetStream lets one consumer have unacked.
/// `PARTS=nats scripts/bench.sh`: 4 batches gave 21,265/s on PostgreSQL,
/// 16 gave 27,699/s; SQLite (one writer) the same either way.
const IN_FLIGHT: usize = 16 * PULL_BATCH;
/// How long a message whose event could not be stored waits before
/// JetStream hands it out again.
const RETRY_DELAY: Duration = Duration::from_secs(5);
/// How often the consumer lag is read when no message comes.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between two attempts to bind a consumer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One of the inbound streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// DAARION Auth's events (section 2).
    Auth,
    /// DAARION.city's (sections 8, 9 and 13).
    City,
}

impl Source {
    fn stream(self) -> &'static str {
        match self {
            Source::Auth => AUTH_STREAM,
            Source::City => CITY_STREAM,
        }
    }
}

/// Why a message can never be accepted: a code (the webhooks' error code
/// for the same refusal) and a sentence.
struct Refusal {
    code: &'static str,
    message: String,
}

impl From<EventError> for Refusal {
    fn from(e: EventError) -> Refusal {
        match e {
            EventError::Malformed(message) => Refusal {
                code: "bad_request",
                message,
            },
            EventError::Unacceptable(message) => Refusal {
                code: "unacceptable_value",
                message,
            },
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The consumers of both inbound streams, with what storing an event needs.
pub struct Edge {
    bus: Arc<Bus>,
    intake: Intake,
    city_intake: Intake<CityEvent>,
    accounts: Arc<Accounts>,
    wake: Arc<Notify>,
    auth_secrets: Vec<Secret>,
    city_secrets: Vec<Secret>,
}

impl Edge {
    pub fn new(
        bus: Arc<Bus>,
        intake: Intake,
        city_intake: Intake<CityEvent>,
        accounts: Arc<Accounts>,
        wake: Arc<Notify>,
        auth_secrets: Vec<Secret>,
        city_secrets: Vec<Secret>,
    ) -> Edge {
        Edge {
            bus,
            intake,
            city_intake,
            accounts,
            wake,
            auth_secrets,
            city_secrets,
        }
    }

    /// Consumes both inbound streams until `shutdown` turns true, then
    /// finishes the messages in hand (stored and acknowledged, or handed
    /// back) and returns. Creates the streams first when
    /// `NATS_CREATE_STREAMS=true`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        if self.bus.settings().create_streams && !self.create_streams(shutdown.clone()).await {
            return;
        }
        tokio::join!(
            Arc::clone(&self).consume(Source::Auth, shutdown.clone()),
            Arc::clone(&self).consume(Source::City, shutdown),
        );
        self.bus.flush().await;
    }

    /// Creates the streams, trying again while NATS cannot; false when
    /// shut down meanwhile.
    async fn create_streams(&self, mut shutdown: watch::Receiver<bool>) -> bool {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.bus.create_streams().await {
                Ok(()) => return true,
                Err(e) => tracing::warn!(
                    "NATS: cannot create the streams ({e}); again in {} s",
                    backoff.as_secs()
                ),
            }
            if wait_or_stop(&mut shutdown, backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Binds the durable consumer of `source`'s stream and takes its
    /// messages, binding it again whenever it goes away, until shutdown.
    async fn consume(self: Arc<Self>, source: Source, mut shutdown: watch::Receiver<bool>) {
        let stream = source.stream();
        let mut backoff = Duration::from_secs(1);
        while !*shutdown.borrow() {
            match self.bus.consumer(stream).await {
                Ok(consumer) => {
                    tracing::info!(stream, "NATS: consuming");
                    backoff = Duration::from_secs(1);
                    match self.take_messages(source, consumer, &mut shutdown).await {
                        Ok(()) => return,
                        Err(why) => {
                            tracing::warn!(stream, "NATS: consumer lost ({why}); binding it again")
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    stream,
                    "NATS: cannot bind the consumer ({e}); again in {} s",
                    backoff.as_secs()
                ),
            }
            if wait_or_stop(&mut shutdown, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Takes messages until shutdown (Ok) or until the consumer is gone
    /// (Err: why). Either way, the messages in hand are finished first.
    async fn take_messages(
        self: &Arc<Self>,
        source: Source,
        consumer: PullConsumer,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let stream = source.stream();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut in_flight: FuturesUnordered<Answer> = FuturesUnordered::new();
        let mut lag = tokio::time::interval(LAG_EVERY);
        let outcome = loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break Ok(());
                    }
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                item = messages.next(), if in_flight.len() < IN_FLIGHT => match item {
                    Some(Ok(message)) => {
                        if let Some(answer) = self.take(source, message).await {
                            in_flight.push(answer);
                        }
                    }
                    Some(Err(e)) => match e.kind() {
                        MessagesErrorKind::ConsumerDeleted
                        | MessagesErrorKind::PushBasedConsumer => break Err(e.to_string()),
                        // Missed heartbeats, a pull refused while NATS
                        // reconnects: the stream asks again by itself.
                        _ => tracing::debug!(stream, "NATS: {e}"),
                    },
                    None => break Err("its messages ended".to_string()),
                },
                _ = lag.tick() => {
                    if let Ok(info) = consumer.get_info().await {
                        self.bus.set_pending(stream, info.num_pending);
                    }
                }
            }
        };
        while in_flight.next().await.is_some() {}
        outcome
    }

    /// Checks and parses one message and hands its event to the intake (in
    /// the order messages come); returns what remains: awaiting the
    /// intake's answer, then acknowledging. None when already answered
    /// (ignored, dead-lettered, or handed back).
    async fn take(self: &Arc<Self>, source: Source, message: Message) -> Option<Answer> {
        let stream = source.stream();
        let published = match message.info() {
            Ok(info) => {
                self.bus.set_pending(stream, info.pending);
                info.published.unix_timestamp()
            }
            Err(_) => chrono::Utc::now().timestamp(),
        };
        if let Err(refusal) = self.check(source, &message, published) {
            self.refuse(source, message, refusal).await;
            return None;
        }
        let edge = Arc::clone(self);
        match source {
            Source::Auth => {
                let event = match Event::parse(&message.payload) {
                    Ok(Parsed::Event(event)) => event,
                    Ok(Parsed::Ignored { id }) => return ignored(stream, &message, &id).await,
                    Err(e) => {
                        self.refuse(source, message, e.into()).await;
                        return None;
                    }
                };
                let answer = match self.intake.submit(event.clone()).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        retry(stream, &message, &e.to_string()).await;
                        return None;
                    }
                };
                let answer = answer.map(|a| a.map(|a| Stored::new(a.duplicate, a.queued)));
                Some(ack_when_stored(stream, message, answer, move |stored| {
                    if stored.queued {
                        // As for a webhook: a deletion must stop token
                        // exchanges now.
                        edge.accounts.forget(&event.user_id);
                        edge.wake.notify_one();
                    }
                    tracing::debug!(
                        stream, event_id = %event.id, kind = event.kind.as_str(),
                        user_id = %event.user_id, duplicate = stored.duplicate,
                        "NATS event stored"
                    );
                }))
            }
            Source::City => {
                let event = match CityEvent::parse(&message.payload) {
                    Ok(ParsedCity::Event(event)) => event,
                    Ok(ParsedCity::Ignored { id }) => return ignored(stream, &message, &id).await,
                    Err(e) => {
                        self.refuse(source, message, e.into()).await;
                        return None;
                    }
                };
                let (id, kind, subject) = (event.id.clone(), event.kind, event.subject.clone());
                let answer = match self.city_intake.submit(event).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        retry(stream, &message, &e.to_string()).await;
                        return None;
                    }
                };
                let answer = answer.map(|a| a.map(|a| Stored::new(a.duplicate, a.queued)));
                Some(ack_when_stored(stream, message, answer, move |stored| {
                    if stored.queued {
                        edge.wake.notify_one();
                    }
                    tracing::debug!(
                        stream, event_id = %id, kind, subject = %subject,
                        duplicate = stored.duplicate, "NATS event stored"
                    );
                }))
            }
        }
    }

    /// The webhook's checks before parsing: the size, and the signature
    /// when required. The signature's time is compared with when JetStream
    /// took the message, not with now: a message redelivered an hour later
    /// (the service was down) is as fresh as when it was published.
    fn check(&self, source: Source, message: &Message, published: i64) -> Result<(), Refusal> {
        if message.payload.len() > MAX_BODY_BYTES {
            return Err(Refusal {
                code: "payload_too_large",
                message: format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024),
            });
        }
        if !self.bus.settings().require_signature {
            return Ok(());
        }
        let secrets = match source {
            Source::Auth => &self.auth_secrets,
            Source::City => &self.city_secrets,
        };
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get(signature::HEADER))
            .map(|v| v.as_str());
        signature::verify(header, &message.payload, secrets, published).map_err(|e| Refusal {
            code: match e {
                SignatureError::Stale => "stale_signature",
                SignatureError::Missing => "missing_signature",
                _ => "invalid_signature",
            },
            message: e.message().to_string(),
        })
    }

    /// A message that can never be accepted: copied to the dead-letter
    /// subject, then terminated. If the copy cannot be made now, the
    /// message is handed back instead, to be refused again later: it is
    /// never dropped unseen.
    async fn refuse(&self, source: Source, message: Message, refusal: Refusal) {
        let stream = source.stream();
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        match self
            .bus
            .dead_letter(stream, &message, refusal.code, &refusal.message)
            .await
        {
            Ok(()) => {
                tracing::warn!(
                    stream, subject = %message.subject, sequence, code = refusal.code,
                    "NATS message refused and dead-lettered: {}", refusal.message
                );
                ack(stream, &message, AckKind::Term, "dead", refusal.code).await;
            }
            Err(e) => {
                tracing::warn!(
                    stream, subject = %message.subject, sequence, code = refusal.code,
                    "NATS message refused ({}) but not dead-lettered: {e}", refusal.message
                );
                retry(stream, &message, "cannot dead-letter").await;
            }
        }
    }
}

/// Answers a message and counts it. A lost answer means a redelivery,
/// which is a duplicate.
async fn ack(stream: &'static str, message: &Message, kind: AckKind, outcome: &str, code: &str) {
    metrics::nats_message(stream, outcome, code);
    if let Err(e) = message.ack_with(kind).await {
        tracing::debug!(
            stream,
            "NATS: cannot answer a message ({e}); it will come again"
        );
    }
}

/// What either intake answered for one event.
struct Stored {
    duplicate: bool,
    /// Whether work for Synapse was queued.
    queued: bool,
}

impl Stored {
    fn new(duplicate: bool, queued: bool) -> Stored {
        Stored { duplicate, queued }
    }
}

/// Acknowledges `message` once the intake stored its event (`answer`),
/// after `then` (waking the worker, logging); hands it back when the
/// event could not be stored.
fn ack_when_stored<E: std::fmt::Display + Send>(
    stream: &'static str,
    message: Message,
    answer: impl Future<Output = Result<Stored, E>> + Send + 'static,
    then: impl FnOnce(&Stored) + Send + 'static,
) -> Answer {
    Box::pin(async move {
        match answer.await {
            Ok(stored) => {
                then(&stored);
                let outcome = if stored.duplicate {
                    "duplicate"
                } else {
                    "accepted"
                };
                ack(stream, &message, AckKind::Ack, outcome, "").await;
            }
            Err(e) => retry(stream, &message, &e.to_string()).await,
        }
    })
}

/// A message of a type the service does not act on: acknowledged, never
/// seen again. (None: nothing left to await.)
async fn ignored(stream: &'static str, message: &Message, id: &str) -> Option<Answer> {
    tracing::info!(stream, event_id = %id, "NATS: event type ignored");
    ack(stream, message, AckKind::Ack, "ignored", "").await;
    None
}

/// Hands a message back, to come again after [`RETRY_DELAY`].
async fn retry(stream: &'static str, message: &Message, why: &str) {
    tracing::warn!(
        stream, subject = %message.subject,
        "NATS message not stored ({why}); handed back for {} s",
        RETRY_DELAY.as_secs()
    );
    ack(
        stream,
        message,
        AckKind::Nak(Some(RETRY_DELAY)),
        "retried",
        "",
    )
    .await;
}

/// Waits `delay`; true when shutdown came first.
async fn wait_or_stop(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => *shutdown.borrow(),
        changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
    }
}
