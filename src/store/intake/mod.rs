//! The intake: events stored all or nothing before a webhook's `202` (or a
//! sync pass's page is counted), with the subjects they change and the work
//! for Synapse, in one transaction. `people.rs` is DAARION Auth's events,
//! `city.rs` DAARION.city's (rooms, agents, their messages); Synapse's
//! transactions (`messages.rs`) share the event log and the retry.
//!
//! It is set-based, because intake throughput is bounded by statements per
//! transaction, not by rows: a chunk of events is applied to its subjects
//! in memory, in arrival order, with the same rules as one by one, and
//! written with multi-row statements.

pub mod city;
pub mod people;

use std::collections::HashSet;

use sqlx::{Any, Row, Transaction};

use super::{Backend, Result, Store, StoreError};

/// Events per set of statements: keeps bound values (13 per new person)
/// well under both back ends' limits.
pub(super) const CHUNK: usize = 500;

/// A kind of event the intake stores, a chunk at a time.
pub(super) trait Chunked: Sized + Sync {
    /// What the intake says of each event.
    type Accepted: Send;
    /// What the caller decides for the whole batch.
    type Context: Copy + Send + Sync;

    /// Stores one chunk in `tx`; None when another replica stored one of
    /// its new subjects meanwhile (the transaction then starts again and
    /// finds them).
    fn accept_chunk(
        store: &Store,
        tx: &mut Transaction<'static, Any>,
        chunk: &[Self],
        now: i64,
        context: Self::Context,
    ) -> impl std::future::Future<Output = Result<Option<Vec<Self::Accepted>>>> + Send;
}

impl Store {
    /// Stores `events` in one transaction, a chunk at a time (see
    /// [`retry_conflicts`] for when it starts again).
    pub(super) async fn intake<E: Chunked>(
        &self,
        what: &str,
        events: &[E],
        now: i64,
        context: E::Context,
    ) -> Result<Vec<E::Accepted>> {
        retry_conflicts(what, || async {
            let mut tx = self.pool.begin().await?;
            let mut accepted = Vec::with_capacity(events.len());
            for chunk in events.chunks(CHUNK) {
                match E::accept_chunk(self, &mut tx, chunk, now, context).await? {
                    Some(done) => accepted.extend(done),
                    None => {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                }
            }
            tx.commit().await?;
            Ok(Some(accepted))
        })
        .await
    }

    /// Forgets at most `limit` event ids received before `before`; returns
    /// how many. Their redelivery is then taken as new, which changes
    /// nothing: each field keeps the value with the newest `created_at`.
    pub async fn forget_events(&self, before: i64, limit: i64) -> Result<u64> {
        let forgotten = sqlx::query(
            "DELETE FROM events WHERE (source, id) IN \
             (SELECT source, id FROM events WHERE received_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(forgotten)
    }
}

/// Per event: whether it is new, by the ids the event log had not seen
/// (`stored`). An id repeated within the batch is new only at its first
/// occurrence.
pub(super) fn fresh_ones<'a>(
    ids: impl Iterator<Item = &'a str>,
    stored: &HashSet<String>,
) -> Vec<bool> {
    let mut seen = HashSet::new();
    ids.map(|id| stored.contains(id) && seen.insert(id))
        .collect()
}

/// Runs an intake transaction until it stores: again when `attempt` says
/// another replica stored one of its new subjects first (`Ok(None)`: it
/// starts again and finds them), and up to three times when PostgreSQL
/// chose it as a deadlock's victim or could not serialise it (nothing was
/// stored, so storing it again is safe; only a lasting conflict fails).
pub(super) async fn retry_conflicts<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let mut conflicts = 0;
    loop {
        match attempt().await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => continue,
            Err(StoreError(sqlx::Error::Database(e)))
                if matches!(e.code().as_deref(), Some("40P01" | "40001")) && conflicts < 3 =>
            {
                conflicts += 1;
                tracing::warn!("{what} transaction conflicted ({e}); storing it again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// An event as the event log keeps it.
pub(super) struct Logged<'a> {
    pub id: &'a str,
    pub subject: &'a str,
    pub kind: &'a str,
    pub created_at: i64,
}

/// Stores event ids of `source`; returns those that were not stored before
/// (the idempotency of every intake).
pub(super) async fn log_events(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    source: &str,
    events: &[Logged<'_>],
    now: i64,
) -> Result<HashSet<String>> {
    let sql = format!(
        "INSERT INTO events (source, id, subject, kind, created_at, received_at) VALUES {} \
         ON CONFLICT (source, id) DO NOTHING RETURNING id",
        backend.rows(events.len(), 6)
    );
    let mut query = sqlx::query(&sql);
    for event in events {
        query = query
            .bind(source)
            .bind(event.id)
            .bind(event.subject)
            .bind(event.kind)
            .bind(event.created_at)
            .bind(now);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
}
