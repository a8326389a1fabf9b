//! The worker: claims due jobs from the durable queue, runs the handler of
//! the job's kind (a person: `person`; a City Room: `room`; an agent:
//! `agent`; a room's agents' messages: `send`; events for DAARION.city:
//! `deliver`), and records the outcome (`outcome`): done, retry with
//! exponential backoff and jitter, or failed for an operator to look at.
//! [`Worker::run_one`] is the single step, so tests can drain the queue;
//! [`Worker::provision_now`] runs one person's job at once, for an SSO login
//! that cannot wait for the queue.

mod agent;
mod attachment;
mod avatar;
mod deliver;
mod outcome;
mod person;
mod room;
mod send;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::avatar::AvatarFetcher;
use crate::bus::Bus;
use crate::clock::Clock;
use crate::config::Settings;
use crate::daarion::CityEvents;
use crate::domain::matrix::Names;
use crate::signing::Signer;
use crate::store::{
    Account, AgentState, ClaimFor, Job, JobKind, JobState, LocalpartPolicy, Pass, Person,
    RoomState, State, Store,
};
use crate::synapse::{with_purpose, Purpose, Synapse, TakenLocalparts};
use crate::{metrics, telemetry};

pub use outcome::Outcome;

/// How a job of any kind ended (what [`Worker::run_one`] reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Person(Outcome<State>),
    Room(Outcome<RoomState>),
    Agent(Outcome<AgentState>),
    Send(Outcome<Drained>),
    Deliver(Outcome<Drained>),
}

/// An outbox's job ran out of rows (outboxes have no state of their own;
/// each row has its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained;

impl SubjectState for Drained {
    fn word(self) -> &'static str {
        "done"
    }
}

impl SubjectState for AgentState {
    fn word(self) -> &'static str {
        self.as_str()
    }
}

/// A subject's state as its table stores it.
pub trait SubjectState: Copy {
    fn word(self) -> &'static str;
}

impl SubjectState for State {
    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl SubjectState for RoomState {
    fn word(self) -> &'static str {
        self.as_str()
    }
}

/// How long an idle worker sleeps before looking again when nothing woke it
/// (other replicas' jobs, retries coming due).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often [`Worker::provision_now`] looks again while another worker
/// holds the person's job.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// How long webhook event ids are remembered, to answer a redelivery as a
/// duplicate. DAARION Auth retries for far less; a redelivery after that
/// is applied again, which changes nothing (see `Store::forget_events`).
const EVENT_MEMORY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often older event ids are forgotten, and how many per statement (so
/// SQLite's one writer is never held for long).
const FORGET_EVERY: Duration = Duration::from_secs(3600);
const FORGET_BATCH: i64 = 1000;
/// How often online agents' presence is set again: Synapse takes a user
/// who neither syncs nor acts for 30 s as offline.
const PRESENCE_REFRESH: Duration = Duration::from_secs(15);

/// Whether a person can log in, after [`Worker::provision_now`].
#[derive(Debug)]
pub enum AccountCheck {
    /// Their account exists, is active and is linked to their DAARION id.
    Ready(Box<Person>),
    /// DAARION deleted them, or their account is deactivated.
    Deactivated,
    /// Synapse did not answer (or is busy with this person elsewhere);
    /// the job is queued and will be retried.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Provisioning failed permanently; an operator has to look.
    Failed(String),
    /// We have no record of this person.
    Unknown,
}

pub struct Worker {
    store: Store,
    synapse: Arc<Synapse>,
    policy: LocalpartPolicy,
    avatars: Arc<AvatarFetcher>,
    /// Loaded by a sync pass that backfills many people.
    taken: TakenLocalparts,
    /// Identifies this process's leases.
    owner: String,
    lease: Duration,
    retry_max_delay: Duration,
    username_grace: Duration,
    /// Signs back-channel logouts (None: the OpenID provider is off).
    oidc: Option<Arc<Signer>>,
    alias_prefix: String,
    agent_prefix: String,
    server_name: String,
    bot: String,
    join_concurrency: usize,
    /// How long an agent's message may wait for its room or agent.
    message_wait: Duration,
    /// Where people's messages and presence go by HTTP (None: not sent).
    city_events: Option<CityEvents>,
    /// ... and on NATS (`NATS_OUT`; None: not published).
    nats_out: Option<Arc<Bus>>,
    /// Set once the application service's bot is known to exist (and to
    /// be a server admin) in this process.
    bot_ready: tokio::sync::OnceCell<()>,
    wake: Arc<Notify>,
    clock: Clock,
}

impl Worker {
    pub fn new(
        settings: &Settings,
        store: Store,
        synapse: Arc<Synapse>,
        policy: LocalpartPolicy,
        oidc: Option<Arc<Signer>>,
        wake: Arc<Notify>,
        clock: Clock,
    ) -> anyhow::Result<Worker> {
        let avatars = Arc::new(AvatarFetcher::new(settings)?);
        let owner = crate::store::lease_owner();
        let city_events = CityEvents::new(settings)?;
        Ok(Worker {
            store,
            synapse,
            policy,
            avatars,
            taken: TakenLocalparts::new(clock.clone()),
            owner,
            lease: settings.job_lease,
            retry_max_delay: settings.retry_max_delay,
            username_grace: settings.username_grace,
            oidc,
            alias_prefix: settings.city.alias_prefix.clone(),
            agent_prefix: settings.city.agent_prefix.clone(),
            server_name: settings.server_name.clone(),
            bot: settings.city.bot.clone(),
            join_concurrency: settings.synapse_max_concurrency,
            message_wait: settings.city.message_wait,
            city_events,
            nats_out: None,
            bot_ready: tokio::sync::OnceCell::new(),
            wake,
            clock,
        })
    }

    /// Publishes the events for DAARION.city on `bus` too, when its
    /// settings say so (`NATS_OUT=true`).
    pub fn with_bus(mut self, bus: Option<Arc<Bus>>) -> Worker {
        self.nats_out = bus.filter(|bus| bus.settings().out);
        self
    }

    /// Claims one due job and runs it. `Ok(None)` when nothing is due.
    pub async fn run_one(&self) -> anyhow::Result<Option<JobOutcome>> {
        let now = self.clock.now_ms();
        let leased_until = now + self.lease.as_millis() as i64;
        let Some(job) = self
            .store
            .claim_next_job(&self.owner, now, leased_until)
            .await?
        else {
            return Ok(None);
        };
        // Every log line of the job, and every Synapse request it makes
        // (as X-Request-Id), carries the job's own id.
        let job_id = format!("job-{}", telemetry::new_request_id());
        let span = tracing::info_span!(
            "job", request_id = %job_id, kind = job.kind.as_str(), subject = %job.subject
        );
        telemetry::with_request_id(
            job_id,
            async { self.execute(&job).await.map(Some) }.instrument(span),
        )
        .await
    }

    /// Gives back the jobs this process still holds (at shutdown, after its
    /// loops stopped), so that another replica or the next start takes them
    /// at once rather than when their leases run out.
    pub async fn release_leases(&self) -> anyhow::Result<u64> {
        Ok(self.store.release_leases(&self.owner).await?)
    }

    /// Makes sure the person has an active account now: runs their job in
    /// this task (the same reconcile step as the queue, under the same
    /// lease, so it never races a worker), or, while another worker holds
    /// the job, waits for it up to `wait`.
    pub async fn provision_now(
        &self,
        user_id: &str,
        wait: Duration,
    ) -> anyhow::Result<AccountCheck> {
        let give_up = Instant::now() + wait;
        loop {
            let Some(person) = self.store.person(user_id).await? else {
                return Ok(AccountCheck::Unknown);
            };
            if person.wanted.deleted {
                return Ok(AccountCheck::Deactivated);
            }
            // Accounts linked before the OpenID provider existed get the
            // second external id from their job first.
            if person.ready_for_sign_in() {
                return Ok(AccountCheck::Ready(Box::new(person)));
            }
            if Instant::now() >= give_up {
                return Ok(AccountCheck::Unavailable {
                    reason: "the account is still being created by another worker".into(),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            let now = self.clock.now_ms();
            let leased_until = now + self.lease.as_millis() as i64;
            match self
                .store
                .claim_subject_now(JobKind::Person, user_id, &self.owner, now, leased_until)
                .await?
            {
                ClaimFor::Claimed(job) => {
                    let outcome = self.provision(&job, true).await;
                    self.record(&job, &outcome).await?;
                    match outcome {
                        Outcome::Done(State::Deactivated) => return Ok(AccountCheck::Deactivated),
                        // Read the record again: it says what was done.
                        Outcome::Done(_) => continue,
                        Outcome::Retry { reason, after } => {
                            return Ok(AccountCheck::Unavailable {
                                reason,
                                retry_after: after,
                            })
                        }
                        Outcome::Failed(reason) => return Ok(AccountCheck::Failed(reason)),
                        // Not with `settle_now`; should it come, answer as busy.
                        Outcome::Wait { reason, .. } => {
                            return Ok(AccountCheck::Unavailable {
                                reason,
                                retry_after: Some(Duration::from_secs(1)),
                            })
                        }
                    }
                }
                ClaimFor::Parked => {
                    return Ok(AccountCheck::Failed(
                        person
                            .last_error
                            .unwrap_or_else(|| "provisioning failed".into()),
                    ))
                }
                // Nothing queued, yet no usable account: queue the work again.
                ClaimFor::Missing => {
                    self.store.requeue(JobKind::Person, user_id, now).await?;
                }
                ClaimFor::Leased => tokio::time::sleep(LEASE_POLL).await,
            }
        }
    }

    /// Runs this subject's job if it is due and no worker holds it;
    /// `Ok(None)` otherwise (a sync pass drives the work it caused).
    async fn run_job_of(&self, kind: JobKind, key: &str) -> anyhow::Result<Option<JobOutcome>> {
        let now = self.clock.now_ms();
        let leased_until = now + self.lease.as_millis() as i64;
        let Some(job) = self
            .store
            .claim_subject_if_due(kind, key, &self.owner, now, leased_until)
            .await?
        else {
            return Ok(None);
        };
        self.execute(&job).await.map(Some)
    }

    /// Runs the subject's job until it is done or parked (a pass drives the
    /// work it caused), waiting out retries and other workers' leases
    /// until `deadline`. False when it is still being retried then, or once
    /// `give_up` is set (by this or another job of the same pass): it stays
    /// queued for the background workers.
    pub async fn settle(
        &self,
        kind: JobKind,
        key: &str,
        deadline: Instant,
        give_up: &std::sync::atomic::AtomicBool,
    ) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            // Done, failed or retried: the job's row tells which, below.
            if let Err(e) = self.run_job_of(kind, key).await {
                tracing::warn!(kind = kind.as_str(), subject = %key, "cannot run a job: {e:#}");
            }
            let wait_until = match self.store.job_state(kind, key).await {
                Ok(JobState::None) | Ok(JobState::Failed) => return true,
                Ok(JobState::Waiting(at)) => at,
                Err(e) => {
                    tracing::warn!(kind = kind.as_str(), subject = %key, "cannot read a job: {e}");
                    self.clock.now_ms() + 1000
                }
            };
            if give_up.load(Relaxed) {
                return false;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    kind = kind.as_str(), subject = %key,
                    "work still retried after SYNC_JOB_WAIT_SECONDS; the pass stops waiting"
                );
                give_up.store(true, Relaxed);
                return false;
            }
            // A retry's backoff or another worker's run: look again soon.
            let pause = (wait_until - self.clock.now_ms()).clamp(20, 250) as u64;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    pub fn synapse(&self) -> &Arc<Synapse> {
        &self.synapse
    }

    /// The clock every job and pass of this worker reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Which localparts Synapse has, for backfills (see `synapse::taken`).
    pub fn taken(&self) -> &TakenLocalparts {
        &self.taken
    }

    /// Runs the job's handler and records its outcome.
    async fn execute(&self, job: &Job) -> anyhow::Result<JobOutcome> {
        match job.kind {
            JobKind::Person => {
                let outcome = self.provision(job, false).await;
                self.record(job, &outcome).await?;
                Ok(JobOutcome::Person(outcome))
            }
            JobKind::Room => {
                let outcome = self.reconcile_room(job).await;
                self.record(job, &outcome).await?;
                if outcome == Outcome::Done(RoomState::Ready) {
                    // Agents' messages that waited for the room can go.
                    self.queue_sends_of(&job.subject, false).await;
                }
                Ok(JobOutcome::Room(outcome))
            }
            JobKind::Agent => {
                let outcome = self.reconcile_agent(job).await;
                self.record(job, &outcome).await?;
                Ok(JobOutcome::Agent(outcome))
            }
            JobKind::Send => {
                let deps = send::SendDeps {
                    store: &self.store,
                    synapse: &self.synapse,
                    files: &self.avatars,
                    names: Names {
                        server_name: &self.server_name,
                        bot: &self.bot,
                        agent_prefix: &self.agent_prefix,
                    },
                    max_wait: self.message_wait,
                    outbox: self.city_events.is_some() || self.nats_out.is_some(),
                    clock: &self.clock,
                };
                let outcome = send::drain(&deps, &job.subject).await;
                self.record(job, &outcome).await?;
                Ok(JobOutcome::Send(outcome))
            }
            JobKind::Deliver => {
                let to = deliver::Transports {
                    http: self.city_events.as_ref(),
                    nats: self.nats_out.as_deref(),
                };
                let outcome = deliver::drain(&self.store, &to, &job.subject, &self.clock).await;
                self.record(job, &outcome).await?;
                Ok(JobOutcome::Deliver(outcome))
            }
        }
    }

    /// Queues the `send` jobs that waited for this room or agent.
    async fn queue_sends_of(&self, key: &str, agent: bool) {
        match self
            .store
            .queue_sends_of(key, agent, self.clock.now_ms())
            .await
        {
            Ok(0) => {}
            Ok(_) => self.wake.notify_waiters(),
            Err(e) => tracing::warn!("cannot queue waiting messages: {e}"),
        }
    }

    async fn reconcile_agent(&self, job: &Job) -> Outcome<AgentState> {
        let agent = match self.store.agent(&job.subject).await {
            Ok(Some(agent)) => agent,
            Ok(None) => return Outcome::Failed("the agent's record is missing".into()),
            Err(e) => return Outcome::retry(e.to_string()),
        };
        let deps = agent::AgentDeps {
            store: &self.store,
            synapse: &self.synapse,
            avatars: &self.avatars,
            agent_prefix: &self.agent_prefix,
            clock: &self.clock,
        };
        agent::reconcile(&deps, agent).await
    }

    async fn reconcile_room(&self, job: &Job) -> Outcome<RoomState> {
        let room = match self.store.room(&job.subject).await {
            Ok(Some(room)) => room,
            Ok(None) => return Outcome::Failed("the room's record is missing".into()),
            Err(e) => return Outcome::retry(e.to_string()),
        };
        if let Err(e) = self
            .bot_ready
            .get_or_try_init(|| self.synapse.ensure_bot())
            .await
        {
            return e.into();
        }
        let deps = room::RoomDeps {
            store: &self.store,
            synapse: &self.synapse,
            avatars: &self.avatars,
            alias_prefix: &self.alias_prefix,
            join_concurrency: self.join_concurrency,
            clock: &self.clock,
        };
        room::reconcile(&deps, room).await
    }

    /// A person's reconcile step. `settle_now`: a sign-in waits for this
    /// account (see [`person::reconcile`]).
    async fn provision(&self, job: &Job, settle_now: bool) -> Outcome {
        let person = match self.store.person(&job.subject).await {
            Ok(Some(person)) => person,
            Ok(None) => return Outcome::Failed("the person's record is missing".into()),
            Err(e) => return Outcome::retry(e.to_string()),
        };
        let had_account = person.account == Account::Active;
        let deps = person::Deps {
            store: &self.store,
            synapse: &self.synapse,
            policy: &self.policy,
            avatars: &self.avatars,
            taken: &self.taken,
            username_grace: self.username_grace,
            oidc: self.oidc.as_deref(),
            clock: &self.clock,
        };
        let outcome = person::reconcile(&deps, person, settle_now).await;
        if outcome == Outcome::Done(State::Provisioned) && !had_account {
            // A new (or reactivated) account: the City Rooms the person is
            // a member of can join them now.
            match self
                .store
                .queue_rooms_of(&job.subject, self.clock.now_ms())
                .await
            {
                Ok(0) => {}
                Ok(_) => self.wake.notify_waiters(),
                Err(e) => return e.into(),
            }
        }
        outcome
    }

    async fn record<S: SubjectState>(&self, job: &Job, outcome: &Outcome<S>) -> anyhow::Result<()> {
        let now = self.clock.now_ms();
        let kind = job.kind.as_str();
        let subject = job.subject.as_str();
        match outcome {
            Outcome::Done(state) => {
                metrics::job(kind, "done", state.word());
                tracing::debug!(kind, subject, state = state.word(), "job done");
                self.store
                    .finish_done(job, &self.owner, state.word(), now)
                    .await?;
            }
            Outcome::Retry { reason, after } => {
                let attempts = job.attempts;
                let delay = after.unwrap_or_else(|| backoff(attempts, self.retry_max_delay));
                metrics::job(kind, "retry", "pending");
                tracing::warn!(
                    kind,
                    subject,
                    attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "job will be retried: {reason}"
                );
                let run_at = now + delay.as_millis() as i64;
                self.store
                    .finish_retry(job, &self.owner, reason, run_at)
                    .await?;
            }
            Outcome::Wait { until, reason } => {
                metrics::job(kind, "wait", "pending");
                tracing::debug!(kind, subject, until, "job waits: {reason}");
                self.store.finish_later(job, &self.owner, *until).await?;
            }
            Outcome::Failed(reason) => {
                metrics::job(kind, "failed", "failed");
                tracing::error!(kind, subject, "job failed: {reason}");
                self.store
                    .finish_failed(job, &self.owner, reason, now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs `concurrency` loops until `shutdown` turns true; each finishes
    /// the job in hand before it stops. Dropping (aborting) this future
    /// aborts the loops too, mid-job: jobs are safe to interrupt, and
    /// [`Worker::release_leases`] then hands them back.
    pub async fn run(self: Arc<Self>, concurrency: usize, shutdown: watch::Receiver<bool>) {
        let mut loops = JoinSet::new();
        for _ in 0..concurrency {
            loops.spawn(Arc::clone(&self).run_loop(shutdown.clone()));
        }
        loops.spawn(Arc::clone(&self).forget_old_events(shutdown.clone()));
        if self.synapse.appservice_enabled() {
            loops.spawn(Arc::clone(&self).refresh_presence(shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
    }

    /// At start and then every [`FORGET_EVERY`], forgets the event ids
    /// received more than [`EVENT_MEMORY`] ago, so `events` does not grow
    /// for ever, and the OpenID provider's expired sign-ins.
    async fn forget_old_events(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let before = self.clock.now_ms() - EVENT_MEMORY.as_millis() as i64;
            let mut forgotten = 0;
            loop {
                match self.store.forget_events(before, FORGET_BATCH).await {
                    Ok(n) => {
                        forgotten += n;
                        if n < FORGET_BATCH as u64 || *shutdown.borrow() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cannot forget old event ids: {e}");
                        break;
                    }
                }
            }
            if forgotten > 0 {
                let days = EVENT_MEMORY.as_secs() / 86_400;
                tracing::info!(forgotten, days, "forgot old event ids");
            }
            // Expired sign-ins, codes and access tokens of the OpenID
            // provider: refused already, now gone.
            match self
                .store
                .forget_expired_sign_ins(self.clock.now_ms())
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(forgotten = n, "forgot expired sign-ins, codes and tokens"),
                Err(e) => tracing::warn!("cannot forget expired sign-ins: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(FORGET_EVERY) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Every [`PRESENCE_REFRESH`], one replica (the one that takes the
    /// lease) sets the presence of every online or unavailable agent again,
    /// a batch of requests side by side, rather than a timer per agent.
    async fn refresh_presence(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(PRESENCE_REFRESH) => {}
                _ = shutdown.changed() => continue,
            }
            let now = self.clock.now_ms();
            let until = now + PRESENCE_REFRESH.as_millis() as i64 - 1000;
            match self
                .store
                .lease_sync(Pass::Presence, &self.owner, now, until)
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => continue, // another replica's turn
                Err(e) => {
                    tracing::warn!("cannot take the presence refresh: {e}");
                    continue;
                }
            }
            let agents = match self.store.present_agents().await {
                Ok(agents) => agents,
                Err(e) => {
                    tracing::warn!("cannot read agents' presence: {e}");
                    continue;
                }
            };
            let synapse = &self.synapse;
            let failed = with_purpose(
                Purpose::Pass,
                futures_util::stream::iter(agents)
                    .map(|a| async move {
                        synapse
                            .set_presence(
                                &synapse.user_id(&a.localpart),
                                a.presence.as_str(),
                                a.status_msg.as_deref(),
                            )
                            .await
                    })
                    .buffer_unordered(self.join_concurrency.max(1))
                    .filter(|r| std::future::ready(r.is_err()))
                    .count(),
            )
            .await;
            if failed > 0 {
                tracing::warn!(failed, "could not refresh some agents' presence");
            }
        }
    }

    async fn run_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let pause = match with_purpose(Purpose::Queue, self.run_one()).await {
                Ok(Some(_)) => continue,
                Ok(None) => self.idle_pause().await,
                Err(e) => {
                    tracing::error!("worker cannot use the database: {e:#}");
                    IDLE_POLL
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Until the next job is due, at most [`IDLE_POLL`].
    async fn idle_pause(&self) -> Duration {
        match self.store.next_due().await {
            Ok(Some(due)) => Duration::from_millis(
                (due - self.clock.now_ms()).clamp(1, IDLE_POLL.as_millis() as i64) as u64,
            ),
            _ => IDLE_POLL,
        }
    }
}

/// Exponential backoff with jitter: about 1 s, 2 s, 4 s … up to `max`, each
/// drawn from the upper half of its window so replicas do not retry in step.
pub fn backoff(attempts: i64, max: Duration) -> Duration {
    let exp = attempts.clamp(0, 20) as u32;
    let ceiling = Duration::from_secs(1)
        .saturating_mul(2u32.saturating_pow(exp))
        .min(max);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(300);
        for attempts in 0..40 {
            let d = backoff(attempts, max);
            let ceiling = Duration::from_secs(1 << attempts.min(9)).min(max);
            assert!(d <= ceiling && d >= ceiling / 2, "{attempts}: {d:?}");
        }
    }
}
