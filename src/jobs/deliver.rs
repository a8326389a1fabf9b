//! An outbox stream to DAARION.city (a City Room's people's messages, or
//! people's presence), delivered in order: each event is POSTed to
//! `CITY_EVENTS_URL`, signed as section 2 of CONTRACT.md says, and removed
//! once DAARION.city answers `2xx`. Anything else stops the stream there
//! and retries it with backoff, for as long as it takes: nothing is
//! dropped and nothing overtakes.

use super::outcome::Outcome;
use super::Drained;
use crate::clock::Clock;
use crate::daarion::CityEvents;
use crate::metrics;
use crate::store::Store;

/// Events read at once.
const BATCH: i64 = 50;

pub async fn drain(
    store: &Store,
    events: Option<&CityEvents>,
    stream: &str,
    clock: &Clock,
) -> Outcome<Drained> {
    let Some(events) = events else {
        // CITY_EVENTS_URL was unset after these were queued: they stay.
        return Outcome::Failed("CITY_EVENTS_URL is not set".into());
    };
    loop {
        let batch = match store.outbox(stream, BATCH).await {
            Ok(batch) => batch,
            Err(e) => return e.into(),
        };
        if batch.is_empty() {
            return Outcome::Done(Drained);
        }
        for entry in batch {
            if let Err(e) = events.deliver(&entry.body).await {
                metrics::message("to_city", "retried");
                return Outcome::retry(format!("event {} not delivered: {e}", entry.id));
            }
            metrics::city_delivery_delay(clock.now_ms() - entry.received_at);
            metrics::message("to_city", "delivered");
            if let Err(e) = store.delivered(entry.seq).await {
                return e.into();
            }
        }
    }
}
