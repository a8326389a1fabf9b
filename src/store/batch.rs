//! Group commit for webhook intake. Each accepted webhook must be on disk
//! before its `202`, and a disk flush per webhook caps intake at the flush
//! rate. Handlers hand their event to a writer task instead; it takes
//! everything that queued up meanwhile (up to [`MAX_BATCH`]) and stores it in
//! one transaction, so one flush serves many requests. If a batch fails, its
//! events are retried one by one, so one bad event cannot fail its neighbours.
//!
//! It is generic over what a batch writes ([`Batched`]): DAARION Auth's
//! person events and DAARION.city's events each have their intake.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::{Accepted, Result, Store, StoreError};
use crate::clock::Clock;
use crate::domain::event::Event;

pub const MAX_BATCH: usize = 256;

/// Something the intake stores in batches: one transaction for the whole
/// batch, answering for each item in order.
pub trait Batched: Send + Sync + Sized + 'static {
    type Accepted: Send + 'static;

    fn store_batch(
        store: &Store,
        items: &[Self],
        now: i64,
    ) -> impl Future<Output = Result<Vec<Self::Accepted>>> + Send;
}

impl Batched for Event {
    type Accepted = Accepted;

    fn store_batch(
        store: &Store,
        items: &[Self],
        now: i64,
    ) -> impl Future<Output = Result<Vec<Accepted>>> + Send {
        store.accept_events(items, now)
    }
}

type Reply<T> = oneshot::Sender<Result<<T as Batched>::Accepted>>;
/// The writers' shared end of the queue.
type Receiver<T> = Arc<Mutex<mpsc::Receiver<(T, Reply<T>)>>>;

pub struct Intake<T: Batched = Event> {
    queue: mpsc::Sender<(T, Reply<T>)>,
}

impl<T: Batched> Clone for Intake<T> {
    fn clone(&self) -> Self {
        Intake {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Batched> Intake<T> {
    /// Starts `writers` writer tasks (one suits SQLite, whose writes are
    /// serial anyway; PostgreSQL profits from a few).
    /// Events are stored as received at `clock`'s time.
    pub fn start(store: Store, writers: usize, clock: Clock) -> Intake<T> {
        let (queue, receiver) = mpsc::channel(4 * MAX_BATCH);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(
                store.clone(),
                Arc::clone(&receiver),
                clock.clone(),
            ));
        }
        Intake { queue }
    }

    /// Stores the item durably (for a person's event, see
    /// [`Store::accept_event`]).
    pub async fn accept(&self, event: T) -> Result<T::Accepted> {
        self.submit(event).await?.await
    }

    /// Queues the item now and returns its answer, to await later: items
    /// submitted one after another (a JetStream consumer's messages) are
    /// batched in that order, while their answers are awaited together.
    pub async fn submit(
        &self,
        event: T,
    ) -> Result<impl Future<Output = Result<T::Accepted>> + Send + 'static> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((event, reply))
            .await
            .map_err(|_| closed())?;
        Ok(async move { answer.await.map_err(|_| closed())? })
    }
}

/// What the intake answers once its writers are gone (shutting down).
fn closed() -> StoreError {
    StoreError(sqlx::Error::PoolClosed)
}

async fn write_batches<T: Batched>(store: Store, receiver: Receiver<T>, clock: Clock) {
    loop {
        let mut batch = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            match receiver.recv().await {
                Some(item) => batch.push(item),
                None => return, // every handler is gone: shutting down
            }
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        let (events, replies): (Vec<T>, Vec<Reply<T>>) = batch.into_iter().unzip();
        match T::store_batch(&store, &events, clock.now_ms()).await {
            Ok(accepted) => {
                for (reply, accepted) in replies.into_iter().zip(accepted) {
                    let _ = reply.send(Ok(accepted));
                }
            }
            Err(e) if events.len() > 1 => {
                tracing::warn!(
                    size = events.len(),
                    "intake batch failed ({e}); storing its events one by one"
                );
                for (event, reply) in events.iter().zip(replies) {
                    let one =
                        T::store_batch(&store, std::slice::from_ref(event), clock.now_ms()).await;
                    let _ = reply.send(one.map(|mut a| a.remove(0)));
                }
            }
            Err(e) => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}
