//! The reconcile passes, for cron and operators: `profiles` (the people of
//! DAARION Auth's user API) and `rooms` (the rooms of DAARION.city's API).
//! Both are one idea: read the listing changed since the last complete pass
//! (everything on a full pass), feed it through the same intake as the
//! webhooks, run the jobs it caused to completion, and say what happened.
//! What they share lives here: the lease that keeps one pass of a kind
//! running across replicas, the overlap of incremental reads, and the error
//! a pass can end with.

pub mod profiles;
pub mod rooms;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::store::{Pass, Store, StoreError};

/// How long a pass holds its lease without renewing it; a crashed pass
/// blocks the next one at most this long.
const LEASE: Duration = Duration::from_secs(60);
/// An incremental pass reads from this long before the last pass started,
/// so clock differences with DAARION and changes committed late are not
/// missed; re-reading an unchanged listing costs nothing.
const OVERLAP_MS: i64 = 5 * 60 * 1000;

/// Why a pass did not run.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The listing API is not configured (what to set).
    #[error("{0}")]
    NotConfigured(&'static str),
    /// Another pass of the same kind holds the lease.
    #[error("another {pass} pass is running{}", .owner.as_deref().map(|o| format!(" ({o})")).unwrap_or_default())]
    InProgress {
        pass: &'static str,
        owner: Option<String>,
    },
    #[error(transparent)]
    Database(#[from] StoreError),
}

/// A pass's hold on its lease: taken at the start, renewed in the
/// background while the pass runs, given back with the new watermark.
struct Lease {
    store: Store,
    pass: Pass,
    owner: String,
    started_ms: i64,
    lost: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Takes the lease of `pass` (called `name` in messages), unless
    /// another process holds it.
    async fn take(
        store: &Store,
        pass: Pass,
        name: &'static str,
        clock: &Clock,
    ) -> Result<Lease, PassError> {
        let owner = crate::store::lease_owner();
        let started_ms = clock.now_ms();
        let until = started_ms + LEASE.as_millis() as i64;
        if let Err(holder) = store.lease_sync(pass, &owner, started_ms, until).await? {
            return Err(PassError::InProgress {
                pass: name,
                owner: holder.owner,
            });
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn(renew(
            store.clone(),
            pass,
            owner.clone(),
            Arc::clone(&lost),
            clock.clone(),
        ));
        Ok(Lease {
            store: store.clone(),
            pass,
            owner,
            started_ms,
            lost,
            renewal,
        })
    }

    /// Set once the lease was lost (another pass may be running now).
    fn lost_flag(&self) -> &AtomicBool {
        &self.lost
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Gives the lease back; with `complete`, the next incremental pass
    /// reads from this pass's start. A failure to record that is added to
    /// `errors`: the lease then runs out by itself, and the next pass reads
    /// from the old watermark.
    async fn release(self, complete: bool, errors: &mut Vec<String>) {
        self.renewal.abort();
        let watermark = complete.then_some(self.started_ms);
        if let Err(e) = self
            .store
            .release_sync(self.pass, &self.owner, watermark)
            .await
        {
            errors.push(format!("cannot record the end of the pass: {e}"));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// Keeps a pass's lease alive while it runs; flags its loss.
async fn renew(store: Store, pass: Pass, owner: String, lost: Arc<AtomicBool>, clock: Clock) {
    let mut tick = tokio::time::interval(LEASE / 4);
    tick.tick().await;
    loop {
        tick.tick().await;
        let until = clock.now_ms() + LEASE.as_millis() as i64;
        match store.renew_sync(pass, &owner, until).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(?pass, "the sync pass lost its lease");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::warn!(?pass, "cannot renew the sync pass's lease: {e}"),
        }
    }
}
