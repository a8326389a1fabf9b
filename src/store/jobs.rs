//! The durable queue: one job per subject (a person, a City Room, …) with
//! outstanding Synapse work, keyed by the kind of subject and its key.
//! Workers lease a job (so a crashed worker's job comes back when the lease
//! runs out), and `generation` tells them whether a newer change arrived
//! while they worked, in which case the job stays queued. The job carries
//! its failed attempts and last error; the subject's row carries its state
//! (`pending` while queued, what the handler reports when done, `failed`
//! when parked).
//!
//! Every transaction that writes both a subject and its job locks the
//! subject's row first (as the intake does), so they cannot deadlock.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{Backend, Result, Store};

/// What a job works on. Each kind has its table of subjects, whose `state`
/// column the queue keeps, and its handler in `jobs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// A DAARION person: their account and profile (`people.user_id`).
    Person,
    /// A City Room: its Matrix room, members and roles (`rooms.room_id`).
    Room,
    /// An agent's puppet: account, profile, presence (`agents.agent_id`).
    Agent,
    /// A City Room's outbox of agents' messages, sent into its Matrix room
    /// in order (subject: the `room_id`).
    Send,
    /// An outbox stream to DAARION.city (`city_outbox.stream`: a room's
    /// people's messages, or presence), delivered in order.
    Deliver,
}

column_words!(JobKind {
    Person => "person",
    Room => "room",
    Agent => "agent",
    Send => "send",
    Deliver => "deliver",
});

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::Person,
        JobKind::Room,
        JobKind::Agent,
        JobKind::Send,
        JobKind::Deliver,
    ];

    /// The table of this kind's subjects and its key column, for kinds
    /// whose subjects have a `state` the queue keeps. Outboxes have none:
    /// each of their rows carries its own.
    fn table(self) -> Option<(&'static str, &'static str)> {
        match self {
            JobKind::Person => Some(("people", "user_id")),
            JobKind::Room => Some(("rooms", "room_id")),
            JobKind::Agent => Some(("agents", "agent_id")),
            JobKind::Send | JobKind::Deliver => None,
        }
    }
}

/// What is recorded of an image shown for DAARION's `avatar_url`: the URL
/// it shows, the upload and its hash, and why it is not shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedAvatar {
    pub url: Option<String>,
    pub mxc: Option<String>,
    pub sha256: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub kind: JobKind,
    /// The subject's key: a person's user_id, a City Room's room_id.
    pub subject: String,
    pub generation: i64,
    /// Failed attempts since the job last succeeded.
    pub attempts: i64,
}

/// The outcome of [`Store::claim_subject_now`].
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

/// Where a subject's job stands, seen from outside the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// No job: the work is done (or there was none).
    None,
    /// Parked after a permanent failure.
    Failed,
    /// Waiting to run at this time (ms), or leased by a worker until then.
    Waiting(i64),
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
    /// Queues work for these subjects (and shows them as pending), or tells
    /// a queued or running job that there is newer work (run it now, even if
    /// it was waiting to retry). Keys must be distinct.
    pub(super) async fn enqueue(
        &self,
        tx: &mut Transaction<'static, Any>,
        kind: JobKind,
        keys: &[&str],
        now: i64,
    ) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO jobs (kind, subject, run_at) VALUES {} \
             ON CONFLICT (kind, subject) DO UPDATE SET generation = jobs.generation + 1, \
             run_at = excluded.run_at, failed = 0",
            self.backend.rows(keys.len(), 3)
        );
        let mut query = sqlx::query(&sql);
        for key in keys {
            query = query.bind(kind.as_str()).bind(*key).bind(now);
        }
        query.execute(&mut **tx).await?;
        let Some((table, key_column)) = kind.table() else {
            return Ok(());
        };
        let sql = format!(
            "UPDATE {table} SET state = 'pending' WHERE {key_column} IN ({}) AND state <> 'pending'",
            self.backend.placeholders(keys.len())
        );
        let mut query = sqlx::query(&sql);
        for key in keys {
            query = query.bind(*key);
        }
        query.execute(&mut **tx).await?;
        Ok(())
    }

    /// On PostgreSQL, locks the subject's row first: every transaction that
    /// writes both a subject and its job takes the subject before the job
    /// (as the intake does), so a worker finishing a job and the intake of
    /// the subject's next event cannot deadlock. SQLite has one writer.
    async fn lock_subject(&self, tx: &mut Transaction<'static, Any>, job: &Job) -> Result<()> {
        if let (Backend::Postgres, Some((table, key_column))) = (self.backend, job.kind.table()) {
            let sql = format!("SELECT 1 FROM {table} WHERE {key_column} = $1 FOR UPDATE");
            sqlx::query(&sql)
                .bind(&job.subject)
                .fetch_optional(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Sets the subject's state.
    async fn set_subject_state(
        &self,
        tx: &mut Transaction<'static, Any>,
        job: &Job,
        state: &str,
        now: i64,
    ) -> Result<()> {
        let Some((table, key_column)) = job.kind.table() else {
            return Ok(());
        };
        let sql = format!("UPDATE {table} SET state = $2, updated_at = $3 WHERE {key_column} = $1");
        sqlx::query(&sql)
            .bind(&job.subject)
            .bind(state)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Records the avatar a person, a City Room or an agent now shows (see
    /// `jobs::avatar`); the subject's table has the four avatar columns.
    pub async fn record_avatar_of(
        &self,
        kind: JobKind,
        key: &str,
        avatar: &AppliedAvatar,
    ) -> Result<()> {
        let Some((table, key_column)) = kind.table() else {
            return Ok(());
        };
        let sql = format!(
            "UPDATE {table} SET applied_avatar_url = $2, avatar_mxc = $3, avatar_sha256 = $4, \
             avatar_error = $5 WHERE {key_column} = $1"
        );
        sqlx::query(&sql)
            .bind(key)
            .bind(&avatar.url)
            .bind(&avatar.mxc)
            .bind(&avatar.sha256)
            .bind(&avatar.error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Queues the subject again by hand (operators' retry), its attempts
    /// forgotten; false if unknown.
    pub async fn requeue(&self, kind: JobKind, key: &str, now: i64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // An outbox's stream is known while it has rows; its job looks.
        let known = match kind.table() {
            Some((table, key_column)) => {
                let sql = format!("UPDATE {table} SET updated_at = $2 WHERE {key_column} = $1");
                sqlx::query(&sql)
                    .bind(key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1
            }
            None => true,
        };
        if known {
            self.enqueue(&mut tx, kind, &[key], now).await?;
            sqlx::query("UPDATE jobs SET attempts = 0 WHERE kind = $1 AND subject = $2")
                .bind(kind.as_str())
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(known)
    }

    /// Leases the oldest due job to `owner` until `leased_until`.
    pub async fn claim_next_job(
        &self,
        owner: &str,
        now: i64,
        leased_until: i64,
    ) -> Result<Option<Job>> {
        // PostgreSQL: SKIP LOCKED lets replicas claim different jobs without
        // waiting on each other. SQLite has one writer, so no lock is needed.
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET leased_until = $1, lease_owner = $2 WHERE (kind, subject) = (\
                SELECT kind, subject FROM jobs WHERE failed = 0 AND run_at <= $3 AND leased_until <= $3 \
                ORDER BY run_at LIMIT 1{skip_locked}) \
             AND leased_until <= $3 \
             RETURNING {JOB_COLUMNS}"
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

    /// Leases this subject's job to `owner`, whether or not it is due yet
    /// (someone is waiting for it: an SSO login), unless another worker
    /// holds it or it failed permanently.
    pub async fn claim_subject_now(
        &self,
        kind: JobKind,
        key: &str,
        owner: &str,
        now: i64,
        leased_until: i64,
    ) -> Result<ClaimFor> {
        if let Some(job) = self
            .lease_job(kind, key, owner, now, leased_until, false)
            .await?
        {
            return Ok(ClaimFor::Claimed(job));
        }
        let failed: Option<i64> =
            sqlx::query_scalar("SELECT failed FROM jobs WHERE kind = $1 AND subject = $2")
                .bind(kind.as_str())
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match failed {
            None => ClaimFor::Missing,
            Some(0) => ClaimFor::Leased,
            Some(_) => ClaimFor::Parked,
        })
    }

    /// Leases this subject's job to `owner` unless another worker holds it
    /// or it failed permanently; with `due_only`, only once it is due. The
    /// one per-subject claim behind SSO's [`Store::claim_subject_now`] and the
    /// sync passes' [`Store::claim_subject_if_due`].
    pub(super) async fn lease_job(
        &self,
        kind: JobKind,
        key: &str,
        owner: &str,
        now: i64,
        leased_until: i64,
        due_only: bool,
    ) -> Result<Option<Job>> {
        let due = if due_only { " AND run_at <= $5" } else { "" };
        let sql = format!(
            "UPDATE jobs SET leased_until = $1, lease_owner = $2 \
             WHERE kind = $3 AND subject = $4 AND failed = 0 AND leased_until <= $5{due} \
             RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(leased_until)
            .bind(owner)
            .bind(kind.as_str())
            .bind(key)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        job_from(row)
    }

    /// Leases this subject's job if it is due and free (a sync pass runs
    /// the work it caused itself, next to the background workers).
    pub async fn claim_subject_if_due(
        &self,
        kind: JobKind,
        key: &str,
        owner: &str,
        now: i64,
        leased_until: i64,
    ) -> Result<Option<Job>> {
        self.lease_job(kind, key, owner, now, leased_until, true)
            .await
    }

    /// Whether this subject's job is outstanding, and from when it can run.
    pub async fn job_state(&self, kind: JobKind, key: &str) -> Result<JobState> {
        let row = sqlx::query(
            "SELECT run_at, leased_until, failed FROM jobs WHERE kind = $1 AND subject = $2",
        )
        .bind(kind.as_str())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(JobState::None);
        };
        if row.try_get::<i64, _>("failed")? != 0 {
            return Ok(JobState::Failed);
        }
        let run_at: i64 = row.try_get("run_at")?;
        let leased_until: i64 = row.try_get("leased_until")?;
        Ok(JobState::Waiting(run_at.max(leased_until)))
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

    /// The job's work is done: record the subject's new state and drop
    /// the job, unless a newer change arrived meanwhile (then it runs
    /// again, its attempts forgotten).
    pub async fn finish_done(&self, job: &Job, owner: &str, state: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.lock_subject(&mut tx, job).await?;
        let deleted = sqlx::query(
            "DELETE FROM jobs WHERE kind = $1 AND subject = $2 AND generation = $3 \
             AND lease_owner = $4",
        )
        .bind(job.kind.as_str())
        .bind(&job.subject)
        .bind(job.generation)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if deleted {
            self.set_subject_state(&mut tx, job, state, now).await?;
        } else {
            release(&mut tx, job, owner, None).await?;
            sqlx::query(
                "UPDATE jobs SET attempts = 0, last_error = NULL WHERE kind = $1 AND subject = $2",
            )
            .bind(job.kind.as_str())
            .bind(&job.subject)
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
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.lock_subject(&mut tx, job).await?;
        release(&mut tx, job, owner, Some(run_at)).await?;
        count_attempt(&mut tx, job, error).await?;
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
        self.lock_subject(&mut tx, job).await?;
        let parked = sqlx::query(
            "UPDATE jobs SET failed = 1, leased_until = 0, lease_owner = NULL \
             WHERE kind = $1 AND subject = $2 AND generation = $3 AND lease_owner = $4",
        )
        .bind(job.kind.as_str())
        .bind(&job.subject)
        .bind(job.generation)
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if parked {
            self.set_subject_state(&mut tx, job, "failed", now).await?;
        } else {
            // Newer data arrived; it may not fail the same way.
            release(&mut tx, job, owner, None).await?;
        }
        count_attempt(&mut tx, job, error).await?;
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
        self.subjects_by_state(JobKind::Person).await
    }

    /// Subjects of a kind by state.
    pub(super) async fn subjects_by_state(&self, kind: JobKind) -> Result<Vec<(String, i64)>> {
        let Some((table, _)) = kind.table() else {
            return Ok(Vec::new());
        };
        let sql = format!("SELECT state, COUNT(*) AS n FROM {table} GROUP BY state");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }
}

const JOB_COLUMNS: &str = "kind, subject, generation, attempts";

/// A `RETURNING {JOB_COLUMNS}` row as a job.
fn job_from(row: Option<AnyRow>) -> Result<Option<Job>> {
    row.map(|row| {
        Ok(Job {
            kind: super::parse_column(&row, "kind")?,
            subject: row.try_get("subject")?,
            generation: row.try_get("generation")?,
            attempts: row.try_get("attempts")?,
        })
    })
    .transpose()
}

/// One more failed attempt of the job, and why.
async fn count_attempt(tx: &mut Transaction<'static, Any>, job: &Job, error: &str) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET attempts = attempts + 1, last_error = $3 WHERE kind = $1 AND subject = $2",
    )
    .bind(job.kind.as_str())
    .bind(&job.subject)
    .bind(error)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
         run_at = CASE WHEN generation = $5 THEN COALESCE($4, run_at) ELSE run_at END \
         WHERE kind = $1 AND subject = $2 AND lease_owner = $3",
    )
    .bind(job.kind.as_str())
    .bind(&job.subject)
    .bind(owner)
    .bind(run_at)
    .bind(job.generation)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
