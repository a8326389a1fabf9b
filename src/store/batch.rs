//! Group commit for webhook intake. Each accepted webhook must be on disk
//! before its `202`, and a disk flush per webhook caps intake at the flush
//! rate. Handlers hand their event to a writer task instead; it takes
//! everything that queued up meanwhile (up to [`MAX_BATCH`]) and stores it in
//! one transaction, so one flush serves many requests. If a batch fails, its
//! events are retried one by one, so one bad event cannot fail its neighbours.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::{Accepted, Result, Store, StoreError};
use crate::domain::event::Event;
use crate::now_ms;

pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Accepted>>;

#[derive(Clone)]
pub struct Intake {
    queue: mpsc::Sender<(Event, Reply)>,
}

impl Intake {
    /// Starts `writers` writer tasks (one suits SQLite, whose writes are
    /// serial anyway; PostgreSQL profits from a few).
    pub fn start(store: Store, writers: usize) -> Intake {
        let (queue, receiver) = mpsc::channel(4 * MAX_BATCH);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(store.clone(), Arc::clone(&receiver)));
        }
        Intake { queue }
    }

    /// Stores the event durably (see [`Store::accept_event`]).
    pub async fn accept(&self, event: Event) -> Result<Accepted> {
        let closed = || StoreError(sqlx::Error::PoolClosed);
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((event, reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn write_batches(store: Store, receiver: Arc<Mutex<mpsc::Receiver<(Event, Reply)>>>) {
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
        let (events, replies): (Vec<Event>, Vec<Reply>) = batch.into_iter().unzip();
        match store.accept_events(&events, now_ms()).await {
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
                    let _ = reply.send(store.accept_event(event, now_ms()).await);
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
