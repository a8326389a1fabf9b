//! How many requests each kind of work may have in flight to Synapse at
//! once, so one kind cannot starve another: a backfill of thousands (a sync
//! pass) cannot take the slots that the queue's work needs, and neither can
//! hold up a person signing in. The purpose is task-local: the worker's
//! loops run as [`Purpose::Queue`], the passes as [`Purpose::Pass`], and
//! everything else (requests someone waits for) as [`Purpose::Interactive`].

use std::future::Future;

use tokio::sync::{Semaphore, SemaphorePermit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Someone is waiting: a sign-in, a token exchange, an operator.
    Interactive,
    /// The durable queue's jobs, run by the background workers.
    Queue,
    /// Sync and reconcile passes, and the jobs they drive themselves.
    Pass,
}

tokio::task_local! {
    static PURPOSE: Purpose;
}

/// Runs `future` with its Synapse requests counted as `purpose`.
pub async fn with_purpose<F: Future>(purpose: Purpose, future: F) -> F::Output {
    PURPOSE.scope(purpose, future).await
}

fn current() -> Purpose {
    PURPOSE.try_with(|p| *p).unwrap_or(Purpose::Interactive)
}

/// One limit per purpose: `SYNAPSE_MAX_CONCURRENCY` for interactive work and
/// for the queue each, half of it for passes.
#[derive(Debug)]
pub(super) struct Budget {
    interactive: Semaphore,
    queue: Semaphore,
    pass: Semaphore,
}

impl Budget {
    pub(super) fn new(max: usize) -> Budget {
        let max = max.max(1);
        Budget {
            interactive: Semaphore::new(max),
            queue: Semaphore::new(max),
            pass: Semaphore::new(max.div_ceil(2)),
        }
    }

    /// A slot for the current task's purpose.
    pub(super) async fn acquire(&self) -> SemaphorePermit<'_> {
        let semaphore = match current() {
            Purpose::Interactive => &self.interactive,
            Purpose::Queue => &self.queue,
            Purpose::Pass => &self.pass,
        };
        semaphore
            .acquire()
            .await
            .expect("the semaphores are never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_purpose_has_its_own_slots() {
        let budget = Budget::new(2);
        // A pass holding its one slot does not stop the queue or a sign-in.
        let pass = with_purpose(Purpose::Pass, budget.acquire()).await;
        assert_eq!(budget.pass.available_permits(), 0);
        let queue = with_purpose(Purpose::Queue, budget.acquire()).await;
        let interactive = budget.acquire().await;
        assert_eq!(budget.queue.available_permits(), 1);
        assert_eq!(budget.interactive.available_permits(), 1);
        drop((pass, queue, interactive));
        assert_eq!(budget.pass.available_permits(), 1);
    }
}
