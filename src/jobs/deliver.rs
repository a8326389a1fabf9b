//! An outbox stream to DAARION.city (a City Room's people's messages, or
//! people's presence), delivered in order by each transport configured:
//! POSTed to `CITY_EVENTS_URL`, signed as section 2 of CONTRACT.md says,
//! and published to JetStream (`NATS_OUT`, section 12), with `Nats-Msg-Id`
//! so that publishing it again is a no-op. An event leaves the outbox once
//! every transport took it (a `2xx`; JetStream's ack).
//!
//! Each transport goes through the stream in order and stops at its first
//! failure, to try again with backoff, for as long as it takes: nothing is
//! dropped and nothing overtakes. The transports do not wait for each
//! other: while NATS is down, DAARION.city's HTTP receiver still gets
//! events, and what one transport took is marked on the row, so a retry
//! sends it only to the other.

use super::outcome::Outcome;
use super::Drained;
use crate::bus::{Bus, Published};
use crate::clock::Clock;
use crate::daarion::CityEvents;
use crate::metrics;
use crate::store::{OutboxEntry, Store, Transport};

/// Events read at once.
const BATCH: i64 = 50;

/// The ways out configured (at least one, for events to be queued).
pub struct Transports<'a> {
    /// `CITY_EVENTS_URL`.
    pub http: Option<&'a CityEvents>,
    /// `NATS_OUT=true`.
    pub nats: Option<&'a Bus>,
}

/// How far one transport got through the stream in this run.
#[derive(Default)]
struct Progress {
    /// Why it stopped (its first failure); it sends nothing after that.
    failed: Option<String>,
}

pub async fn drain(
    store: &Store,
    to: &Transports<'_>,
    stream: &str,
    clock: &Clock,
) -> Outcome<Drained> {
    if to.http.is_none() && to.nats.is_none() {
        // Both were unset after these were queued: they stay.
        return Outcome::Failed("neither CITY_EVENTS_URL nor NATS_OUT is set".into());
    }
    let (mut http, mut nats) = (Progress::default(), Progress::default());
    let mut after = 0;
    'stream: loop {
        let batch = match store.outbox(stream, after, BATCH).await {
            Ok(batch) => batch,
            Err(e) => return e.into(),
        };
        if batch.is_empty() {
            break;
        }
        for entry in batch {
            after = entry.seq;
            let http_done = entry.http_done
                || match to.http {
                    None => true,
                    Some(_) if http.failed.is_some() => false,
                    Some(events) => post(events, &entry, &mut http).await,
                };
            let nats_done = entry.nats_done
                || match to.nats {
                    None => true,
                    Some(_) if nats.failed.is_some() => false,
                    Some(bus) => publish(bus, &entry, &mut nats).await,
                };
            let recorded = if http_done && nats_done {
                metrics::city_delivery_delay(clock.now_ms() - entry.received_at);
                metrics::message("to_city", "delivered");
                store.delivered(entry.seq).await
            } else if http_done && !entry.http_done && to.http.is_some() {
                store.taken_by(entry.seq, Transport::Http).await
            } else if nats_done && !entry.nats_done && to.nats.is_some() {
                store.taken_by(entry.seq, Transport::Nats).await
            } else {
                Ok(())
            };
            if let Err(e) = recorded {
                return e.into();
            }
            let http_stopped = to.http.is_none() || http.failed.is_some();
            let nats_stopped = to.nats.is_none() || nats.failed.is_some();
            if http_stopped && nats_stopped {
                break 'stream;
            }
        }
    }
    let failures: Vec<String> = [http.failed, nats.failed].into_iter().flatten().collect();
    if failures.is_empty() {
        Outcome::Done(Drained)
    } else {
        Outcome::retry(failures.join("; "))
    }
}

/// POSTs one event; false (and the transport stopped) when not taken.
async fn post(events: &CityEvents, entry: &OutboxEntry, progress: &mut Progress) -> bool {
    match events.deliver(&entry.body).await {
        Ok(()) => {
            metrics::city_delivery("http", "delivered");
            true
        }
        Err(e) => {
            metrics::city_delivery("http", "retried");
            metrics::message("to_city", "retried");
            progress.failed = Some(format!("event {} not delivered: {e}", entry.id));
            false
        }
    }
}

/// Publishes one event to JetStream; false (and the transport stopped)
/// when JetStream did not store it.
async fn publish(bus: &Bus, entry: &OutboxEntry, progress: &mut Progress) -> bool {
    match bus.publish_event(&entry.kind, &entry.id, &entry.body).await {
        Ok(Published::Stored) => {
            metrics::city_delivery("nats", "delivered");
            true
        }
        // Published before (the row's mark was lost with a crash).
        Ok(Published::Duplicate) => {
            metrics::city_delivery("nats", "duplicate");
            true
        }
        Err(e) => {
            metrics::city_delivery("nats", "retried");
            metrics::message("to_city", "retried");
            progress.failed = Some(format!("event {} not published to NATS: {e}", entry.id));
            false
        }
    }
}
