//! The durable queue: one job per person with outstanding Synapse work.
//! Workers lease a job (so a crashed worker's job comes back when the lease
//! runs out), and `generation` tells them whether a newer change arrived
//! while they worked, in which case the job stays queued.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::people::State;
use super::{Backend, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub user_id: String,
    pub generation: i64,
}

/// The outcome of [`Store::claim_job_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimFor {
    Claimed(Job),
    /// Another worker holds the lease right now.
    Leased,
    /// Failed permanently, waiting for an operator or a new event.
    Parked,
    /// The person has no job (nothing was outstanding).
    Missing,
}

/// Jobs by state, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Due now and not leased.
    pub ready: i64,
    /// Waiting for a retry time.
    pub scheduled: i64,
    /// Leased by a worker.
    pub running: i64,
    /// Failed permanently, waiting for an operator or a new event.
    pub failed: i64,
}

impl Store {
    /// Queues work for these people (and shows them as pending), or tells
    /// a queued or running job that there is newer work (run it now, even if
    /// it was waiting to retry). Ids must be distinct.
    pub(super) async fn enqueue(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_ids: &[&str],
        now: i64,
    ) -> Result<()> {
        if user_ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO jobs (user_id, run_at) VALUES {} \
             ON CONFLICT (user_id) DO UPDATE SET generation = jobs.generation + 1, \
             run_at = excluded.run_at, failed = 0",
            self.backend.rows(user_ids.len(), 2)
        );
        let mut query = sqlx::query(&sql);
        for id in user_ids {
            query = query.bind(*id).bind(now);
        }
        query.execute(&mut **tx).await?;
        let sql = format!(
            "UPDATE people SET state = 'pending' WHERE user_id IN ({}) AND state <> 'pending'",
            self.backend.placeholders(user_ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in user_ids {
            query = query.bind(*id);
        }
        query.execute(&mut **tx).await?;
        Ok(())
    }

    /// On PostgreSQL, locks the person's row first: every transaction that
    /// writes both a person and their job takes the person before the job
    /// (as the intake does), so a worker finishing a job and the intake of
    /// that person's next event cannot deadlock. SQLite has one writer.
    async fn lock_person(&self, tx: &mut Transaction<'static, Any>, user_id: &str) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM people WHERE user_id = $1 FOR UPDATE")
                .bind(user_id)
                .fetch_optional(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Queues the person again by hand (operators' retry); false if unknown.
    pub async fn requeue(&self, user_id: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let known = sqlx::query(
            "UPDATE people SET attempts = 0, state = 'pending', updated_at = $2 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if known {
            self.enqueue(&mut tx, &[user_id], now).await?;
        }
        tx.commit().await?;
        Ok(known)
    }

    /// Leases the oldest due job to `owner` until `leased_until`.
    pub async fn claim_job(&self, owner: &str, now: i64, leased_until: i64) -> Result<Option<Job>> {
        // PostgreSQL: SKIP LOCKED lets replicas claim different jobs without
        // waiting on each other. SQLite has one writer, so no lock is needed.
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET leased_until = $1, lease_owner = $2 WHERE user_id = (\
                SELECT user_id FROM jobs WHERE failed = 0 AND run_at <= $3 AND leased_until <= $3 \
                ORDER BY run_at LIMIT 1{skip_locked}) \
             AND leased_until <= $3 \
             RETURNING user_id, generation"
        );
        let row = sqlx::query(&sql)
            .bind(leased_until)
            .bind(owner)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        job_from(row)
    }

    /// Hands back every job `owner` holds (leased, not finished), runnable
    /// at once; returns how many.
    pub async fn release_leases(&self, owner: &str) -> Result<u64> {
        let released = sqlx::query(
            "UPDATE jobs SET leased_until = 0, lease_owner = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(released)
    }

    /// Leases this person's job to `owner`, whether or not it is due yet
    /// (someone is waiting for it: an SSO login), unless another worker
    /// holds it or it failed permanently.
    pub async fn claim_job_for(
        &self,
        user_id: &str,
        owner: &str,
        now: i64,
        leased_until: i64,
    ) -> Result<ClaimFor> {
        if let Some(job) = self
            .lease_person_job(user_id, owner, now, leased_until, false)
            .await?
        {
            return Ok(ClaimFor::Claimed(job));
        }
        let failed: Option<i64> = sqlx::query_scalar("SELECT failed FROM jobs WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match failed {
            None => ClaimFor::Missing,
            Some(0) => ClaimFor::Leased,
            Some(_) => ClaimFor::Parked,
        })
    }

    /// Leases this person's job to `owner` unless another worker holds it
    /// or it failed permanently; with `due_only`, only once it is due. The
    /// one per-person claim behind SSO's [`Store::claim_job_for`] and the
    /// sync pass's [`Store::claim_job_of`].
    pub(super) async fn lease_person_job(
        &self,
        user_id: &str,
        owner: &str,
        now: i64,
        leased_until: i64,
        due_only: bool,
    ) -> Result<Option<Job>> {
        let due = if due_only { " AND run_at <= $4" } else { "" };
        let sql = format!(
            "UPDATE jobs SET leased_until = $1, lease_owner = $2 \
             WHERE user_id = $3 AND failed = 0 AND leased_until <= $4{due} \
             RETURNING user_id, generation"
        );
        let row = sqlx::query(&sql)
            .bind(leased_until)
            .bind(owner)
            .bind(user_id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        job_from(row)
    }

    /// When the next job is due, if any is waiting (lets idle workers sleep
    /// exactly as long as needed).
    pub async fn next_due(&self) -> Result<Option<i64>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN leased_until > run_at THEN leased_until ELSE run_at END) \
             FROM jobs WHERE failed = 0",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next)
    }

    /// The job's work is done: record the person's new state and drop the
    /// job, unless a newer change arrived meanwhile (then it runs again).
    pub async fn finish_done(&self, job: &Job, owner: &str, state: State, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.lock_person(&mut tx, &job.user_id).await?;
        let deleted = sqlx::query(
            "DELETE FROM jobs WHERE user_id = $1 AND generation = $2 AND lease_owner = $3",
        )
        .bind(&job.user_id)
        .bind(job.generation)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if deleted {
            sqlx::query(
                "UPDATE people SET state = $2, attempts = 0, last_error = NULL, updated_at = $3 \
                 WHERE user_id = $1",
            )
            .bind(&job.user_id)
            .bind(state.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        } else {
            release(&mut tx, job, owner, None).await?;
            sqlx::query("UPDATE people SET attempts = 0, last_error = NULL WHERE user_id = $1")
                .bind(&job.user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A retryable failure: try again at `run_at`.
    pub async fn finish_retry(
        &self,
        job: &Job,
        owner: &str,
        error: &str,
        run_at: i64,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.lock_person(&mut tx, &job.user_id).await?;
        release(&mut tx, job, owner, Some(run_at)).await?;
        sqlx::query(
            "UPDATE people SET attempts = attempts + 1, last_error = $2, updated_at = $3 \
             WHERE user_id = $1",
        )
        .bind(&job.user_id)
        .bind(error)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Nothing to do before `run_at`: the job sleeps till then (no attempt
    /// counted, no error shown), unless newer work arrived meanwhile.
    pub async fn finish_later(&self, job: &Job, owner: &str, run_at: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        release(&mut tx, job, owner, Some(run_at)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A permanent failure: park the job until an operator retries or a new
    /// event arrives; the reason is kept for operators.
    pub async fn finish_failed(&self, job: &Job, owner: &str, error: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.lock_person(&mut tx, &job.user_id).await?;
        let parked = sqlx::query(
            "UPDATE jobs SET failed = 1, leased_until = 0, lease_owner = NULL \
             WHERE user_id = $1 AND generation = $2 AND lease_owner = $3",
        )
        .bind(&job.user_id)
        .bind(job.generation)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !parked {
            // Newer data arrived; it may not fail the same way.
            release(&mut tx, job, owner, None).await?;
        }
        sqlx::query(
            "UPDATE people SET state = CASE WHEN $4 = 1 THEN 'failed' ELSE state END, \
             attempts = attempts + 1, last_error = $2, updated_at = $3 WHERE user_id = $1",
        )
        .bind(&job.user_id)
        .bind(error)
        .bind(now)
        .bind(parked as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn queue_depth(&self, now: i64) -> Result<QueueDepth> {
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN failed = 0 AND leased_until <= $1 AND run_at <= $1 THEN 1 ELSE 0 END), 0) AS ready, \
               COALESCE(SUM(CASE WHEN failed = 0 AND leased_until <= $1 AND run_at > $1 THEN 1 ELSE 0 END), 0) AS scheduled, \
               COALESCE(SUM(CASE WHEN failed = 0 AND leased_until > $1 THEN 1 ELSE 0 END), 0) AS running, \
               COALESCE(SUM(CASE WHEN failed = 1 THEN 1 ELSE 0 END), 0) AS failed \
             FROM jobs",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueDepth {
            ready: row.try_get("ready")?,
            scheduled: row.try_get("scheduled")?,
            running: row.try_get("running")?,
            failed: row.try_get("failed")?,
        })
    }

    /// People by state, for `/metrics`.
    pub async fn people_by_state(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM people GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }
}

/// A `RETURNING user_id, generation` row as a job.
fn job_from(row: Option<AnyRow>) -> Result<Option<Job>> {
    row.map(|row| {
        Ok(Job {
            user_id: row.try_get("user_id")?,
            generation: row.try_get("generation")?,
        })
    })
    .transpose()
}

/// Gives the job back: immediately runnable, or at `run_at`. Work that
/// arrived while it ran (a newer generation, queued to run at once) is not
/// put off until `run_at`.
async fn release(
    tx: &mut Transaction<'static, Any>,
    job: &Job,
    owner: &str,
    run_at: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET leased_until = 0, lease_owner = NULL, \
         run_at = CASE WHEN generation = $4 THEN COALESCE($3, run_at) ELSE run_at END \
         WHERE user_id = $1 AND lease_owner = $2",
    )
    .bind(&job.user_id)
    .bind(owner)
    .bind(run_at)
    .bind(job.generation)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
