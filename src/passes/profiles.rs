//! The profile sync pass (CONTRACT.md section 4), for cron and operators:
//! reads the people DAARION Auth changed since the last pass (everyone on a
//! full pass), feeds each one through the same intake as webhooks (a
//! listing is an event whose `created_at` is the person's `updated_at`, so
//! last-writer-wins holds between the two), and runs the Synapse work this
//! caused to completion, so the summary tells what really happened.
//!
//! - Unknown people are provisioned (backfill), their accounts created
//!   through the admin API, which skips Synapse's bcrypt hash. When many are
//!   to be created, Synapse's account list is read once instead of looking
//!   each localpart up (`synapse::taken`).
//! - Nothing is sent to Synapse for people whose listing changes nothing:
//!   they are compared in memory, a page at a time.
//! - A full pass also looks for drift: Synapse's user list is paged and each
//!   profile compared with what we applied; `PROFILE_DRIFT` says whether to
//!   put DAARION's back or only to count it.
//! - One pass at a time across processes and hosts: a lease row in the
//!   database; a second pass gets [`PassError::InProgress`].
//! - The pass runs the jobs it caused itself (as many at once as
//!   `SYNAPSE_MAX_CONCURRENCY`, next to the background workers) and waits
//!   for each, so `created`, `failed`… are true. A person whose work is
//!   still being retried after `SYNC_JOB_WAIT_SECONDS` (Synapse down) is
//!   counted `unfinished`, and from then on the pass stops waiting: the
//!   rest stays queued for the workers and the cron hears about it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use utoipa::ToSchema;

use super::{Lease, PassError};
use crate::config::{DriftPolicy, Settings};
use crate::daarion::UserApi;
use crate::domain::event::{Event, EventKind};
use crate::jobs::Worker;
use crate::store::{Account, CreateVia, JobKind, Pass, Person, State, Store};
use crate::synapse::{localpart_of, with_purpose, Purpose, Synapse};

/// People read but not yet handled by the driving side, at most.
const TOUCHED_BACKLOG: usize = 1024;
/// Synapse users per page when looking for drift.
const DRIFT_PAGE: u32 = 500;
/// Pages overlap by this many users: an account deactivated meanwhile
/// shifts the rest of the list back by one, which would skip someone.
const DRIFT_OVERLAP: u64 = 50;

/// What a pass did: the body of `POST /v1/admin/profile-sync` and the
/// output of `matrix-provisioner sync-profiles`.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Summary {
    /// Whether everyone was read (otherwise: changes since the last pass).
    pub full: bool,
    /// People listed by DAARION Auth.
    pub checked: u64,
    /// Existing accounts whose profile was updated.
    pub changed: u64,
    /// Accounts created (backfill of people new to the service).
    pub created: u64,
    /// Accounts deactivated (people deleted in DAARION).
    pub deactivated: u64,
    /// Accounts of people registered again, reactivated.
    pub reactivated: u64,
    /// People whose work failed permanently, or whose listing is malformed.
    pub failed: u64,
    /// People whose work was still being retried when the pass stopped
    /// waiting; it stays queued.
    pub unfinished: u64,
    /// People whose avatar could not be used (see `GET /v1/users/{id}`).
    pub avatar_errors: u64,
    /// Profiles in Matrix that differ from what we applied (full passes).
    pub drift_found: u64,
    /// Of those, put back to DAARION's (with `PROFILE_DRIFT=enforce`).
    pub drift_fixed: u64,
    /// Requests this process sent to Synapse during the pass, and how many
    /// of them changed something.
    pub synapse_requests: u64,
    pub synapse_writes: u64,
    pub duration_ms: u64,
    /// Problems that stopped part of the pass (then the watermark stays).
    pub errors: Vec<String>,
}

impl Summary {
    /// For the cron's exit status.
    pub fn succeeded(&self) -> bool {
        self.failed == 0 && self.unfinished == 0 && self.errors.is_empty()
    }
}

const NOT_CONFIGURED: &str =
    "profile sync is not configured: set AUTH_API_URL (and AUTH_API_TOKEN)";

/// Why a person was touched by the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Listing,
    Drift,
}

/// A person whose Synapse work the pass waits for.
struct Touched {
    user_id: String,
    before: Option<Person>,
    cause: Cause,
}

/// How one person's work ended.
enum Ending {
    Created,
    Changed,
    Deactivated,
    Reactivated,
    Nothing,
    Failed,
    Unfinished,
}

pub struct ProfileSync {
    settings: Arc<Settings>,
    store: Store,
    worker: Arc<Worker>,
    api: Option<UserApi>,
    wake: Arc<Notify>,
}

impl ProfileSync {
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        worker: Arc<Worker>,
        wake: Arc<Notify>,
    ) -> anyhow::Result<ProfileSync> {
        Ok(ProfileSync {
            api: UserApi::new(&settings)?,
            settings,
            store,
            worker,
            wake,
        })
    }

    fn synapse(&self) -> &Synapse {
        self.worker.synapse()
    }

    /// Runs one pass, unless another one is running. Its Synapse requests
    /// (and those of the jobs it drives) come out of the passes' budget.
    pub async fn run(&self, full: bool) -> Result<Summary, PassError> {
        with_purpose(Purpose::Pass, self.run_pass(full)).await
    }

    async fn run_pass(&self, full: bool) -> Result<Summary, PassError> {
        let api = self
            .api
            .as_ref()
            .ok_or(PassError::NotConfigured(NOT_CONFIGURED))?;
        let lease = Lease::take(
            &self.store,
            Pass::Profiles,
            "profile sync",
            self.worker.clock(),
        )
        .await?;
        tracing::info!(full, "profile sync pass started");
        let started = Instant::now();
        let calls_before = self.synapse().calls().snapshot();

        let mut summary = Summary {
            full,
            ..Summary::default()
        };
        let read_all = self.pass(api, full, &mut summary, lease.lost_flag()).await;
        self.worker.taken().pause().await;
        lease.release(read_all, &mut summary.errors).await;
        let calls = self.synapse().calls().snapshot().since(&calls_before);
        summary.synapse_requests = calls.total();
        summary.synapse_writes = calls.writes();
        summary.duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            full,
            checked = summary.checked,
            changed = summary.changed,
            created = summary.created,
            deactivated = summary.deactivated,
            failed = summary.failed,
            unfinished = summary.unfinished,
            drift_found = summary.drift_found,
            synapse_requests = summary.synapse_requests,
            duration_ms = summary.duration_ms,
            "profile sync pass finished"
        );
        for (outcome, n) in [
            ("checked", summary.checked),
            ("changed", summary.changed),
            ("created", summary.created),
            ("deactivated", summary.deactivated),
            ("reactivated", summary.reactivated),
            ("failed", summary.failed),
            ("unfinished", summary.unfinished),
            ("drift_found", summary.drift_found),
            ("drift_fixed", summary.drift_fixed),
        ] {
            crate::metrics::sync(outcome, n);
        }
        Ok(summary)
    }

    /// Reads and queues (one side) while running the queued work (the
    /// other side), so a backfill starts creating accounts with the first
    /// page. Returns whether DAARION's listing was read completely.
    async fn pass(
        &self,
        api: &UserApi,
        full: bool,
        summary: &mut Summary,
        lease_lost: &std::sync::atomic::AtomicBool,
    ) -> bool {
        // Bounded: a backfill of 100,000 people reads no faster than their
        // accounts are created, keeping memory flat.
        let (touched_tx, mut touched_rx) = mpsc::channel::<Touched>(TOUCHED_BACKLOG);
        // Set when someone's work outlasted SYNC_JOB_WAIT_SECONDS.
        let give_up = std::sync::atomic::AtomicBool::new(false);
        let mut read = ReadSide {
            sync: self,
            touched: touched_tx,
            checked: 0,
            failed: 0,
            drift_found: 0,
            newcomers: 0,
            errors: Vec::new(),
        };
        let reading = async move {
            let complete = read.read(api, full, lease_lost).await;
            drop(read.touched);
            (
                complete,
                read.checked,
                read.failed,
                read.drift_found,
                read.errors,
            )
        };
        let incoming = stream::poll_fn(move |cx| touched_rx.poll_recv(cx));
        let driving = incoming
            .map(|t| self.drive(t, &give_up))
            // Twice as many people in progress as requests allowed to Synapse
            // at once: while some wait on our database, the others keep all
            // of Synapse's slots busy (the client still caps requests).
            .buffer_unordered(2 * self.settings.synapse_max_concurrency.max(1))
            .collect::<Vec<_>>();
        let ((complete, checked, failed, drift_found, errors), results) =
            tokio::join!(reading, driving);
        summary.checked = checked;
        summary.failed = failed;
        summary.drift_found = drift_found;
        summary.errors = errors;
        for (cause, result, avatar_error) in results {
            summary.avatar_errors += avatar_error as u64;
            match (cause, result) {
                (_, Ending::Failed) => summary.failed += 1,
                (_, Ending::Unfinished) => summary.unfinished += 1,
                (Cause::Drift, _) => summary.drift_fixed += 1,
                (_, Ending::Created) => summary.created += 1,
                (_, Ending::Changed) => summary.changed += 1,
                (_, Ending::Deactivated) => summary.deactivated += 1,
                (_, Ending::Reactivated) => summary.reactivated += 1,
                (_, Ending::Nothing) => {}
            }
        }
        complete
    }

    /// Runs the person's job until it is done or failed; jobs held by
    /// another worker are waited for, retries up to SYNC_JOB_WAIT_SECONDS.
    async fn drive(
        &self,
        t: Touched,
        give_up: &std::sync::atomic::AtomicBool,
    ) -> (Cause, Ending, bool) {
        let deadline = Instant::now() + self.settings.sync_job_wait;
        if !self
            .worker
            .settle(JobKind::Person, &t.user_id, deadline, give_up)
            .await
        {
            return (t.cause, Ending::Unfinished, false);
        }
        let after = match self.store.person(&t.user_id).await {
            Ok(Some(after)) => after,
            _ => return (t.cause, Ending::Failed, false),
        };
        let avatar_error = after.avatar_error.is_some();
        let before = t.before.as_ref().map_or(Account::None, |p| p.account);
        let result = match (after.state, before, after.account) {
            (State::Failed, _, _) => Ending::Failed,
            (State::Pending, _, _) => Ending::Unfinished,
            (_, Account::None | Account::Registering, Account::Active) => Ending::Created,
            (_, Account::Active, Account::Deactivated) => Ending::Deactivated,
            (_, Account::Deactivated, Account::Active) => Ending::Reactivated,
            (_, Account::Active, Account::Active) => Ending::Changed,
            _ => Ending::Nothing,
        };
        (t.cause, result, avatar_error)
    }
}

/// The reading half of a pass.
struct ReadSide<'a> {
    sync: &'a ProfileSync,
    touched: mpsc::Sender<Touched>,
    checked: u64,
    failed: u64,
    drift_found: u64,
    /// People read so far who will need an account.
    newcomers: u64,
    errors: Vec<String>,
}

impl ReadSide<'_> {
    /// Returns whether the listing was read completely.
    async fn read(
        &mut self,
        api: &UserApi,
        full: bool,
        lease_lost: &std::sync::atomic::AtomicBool,
    ) -> bool {
        let complete = match self.read_listing(api, full, lease_lost).await {
            Ok(()) => true,
            Err(e) => {
                self.errors.push(e);
                false
            }
        };
        if full {
            if let Err(e) = self.retry_pending_avatars().await {
                self.errors.push(e);
            }
            if self.sync.settings.profile_drift != DriftPolicy::Off {
                if let Err(e) = self.find_drift().await {
                    self.errors.push(e);
                }
            }
        }
        complete
    }

    async fn read_listing(
        &mut self,
        api: &UserApi,
        full: bool,
        lease_lost: &std::sync::atomic::AtomicBool,
    ) -> Result<(), String> {
        let store = &self.sync.store;
        let since = if full {
            None
        } else {
            store
                .sync_watermark(Pass::Profiles)
                .await
                .map_err(|e| e.to_string())?
                .map(|w| w - super::OVERLAP_MS)
        };
        let mut seen: HashSet<String> = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            if lease_lost.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(
                    "the pass lost its lease (database unreachable?) and stopped reading".into(),
                );
            }
            let page = api
                .page(since, cursor.as_deref(), self.sync.settings.sync_page_size)
                .await
                .map_err(|e| e.to_string())?;
            self.checked += (page.items.len() + page.malformed.len()) as u64;
            for (user_id, why) in &page.malformed {
                tracing::warn!(user_id = ?user_id, "malformed person in DAARION's listing: {why}");
                self.failed += 1;
            }
            let mut events = Vec::with_capacity(page.items.len());
            for user in page.items {
                let user_id = user.user_id.clone();
                match Event::from_listing(user) {
                    Ok(event) => events.push(event),
                    Err(e) => {
                        tracing::warn!(user_id = %user_id, "unacceptable person in DAARION's listing: {e:?}");
                        self.failed += 1;
                    }
                }
            }
            let ids: Vec<String> = events.iter().map(|e| e.user_id.clone()).collect();
            let known = store.people_by_ids(&ids).await.map_err(|e| e.to_string())?;
            // Listed again without news: nothing to store or do.
            let news: Vec<Event> = events
                .into_iter()
                .filter(|event| {
                    known
                        .get(&event.user_id)
                        .is_none_or(|person| person.wanted.clone().apply(event))
                })
                .collect();
            let newcomers = news
                .iter()
                .filter(|e| e.kind != EventKind::Deleted && !known.contains_key(&e.user_id))
                .count();
            if newcomers > 0 {
                self.newcomers += newcomers as u64;
                self.index_synapse_accounts().await;
            }
            let accepted = store
                .accept_events_via(
                    &news,
                    self.sync.worker.clock().now_ms(),
                    CreateVia::AdminApi,
                )
                .await
                .map_err(|e| e.to_string())?;
            if accepted.iter().any(|a| a.queued) {
                self.sync.wake.notify_waiters();
            }
            for (event, accepted) in news.into_iter().zip(accepted) {
                if accepted.queued && seen.insert(event.user_id.clone()) {
                    let _ = self
                        .touched
                        .send(Touched {
                            before: known.get(&event.user_id).cloned(),
                            user_id: event.user_id,
                            cause: Cause::Listing,
                        })
                        .await;
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// People whose avatar host failed last time get another try.
    async fn retry_pending_avatars(&mut self) -> Result<(), String> {
        let store = &self.sync.store;
        let pending = store
            .people_with_pending_avatars()
            .await
            .map_err(|e| e.to_string())?;
        for user_id in pending {
            let before = store.person(&user_id).await.map_err(|e| e.to_string())?;
            store
                .queue_work(&user_id, self.sync.worker.clock().now_ms())
                .await
                .map_err(|e| e.to_string())?;
            let _ = self
                .touched
                .send(Touched {
                    user_id,
                    before,
                    cause: Cause::Listing,
                })
                .await;
        }
        Ok(())
    }

    /// A backfill of many people reads Synapse's accounts once instead of
    /// looking each one up before creating it (see `synapse::taken`).
    async fn index_synapse_accounts(&self) {
        let worker = &self.sync.worker;
        if let Err(e) = worker
            .taken()
            .load_if_worth_it(worker.synapse(), self.newcomers)
            .await
        {
            tracing::warn!("cannot read Synapse's accounts; looking each one up instead: {e}");
        }
    }

    /// Pages Synapse's active users and compares each profile we manage
    /// with what we applied. People with work outstanding are skipped:
    /// their job sets the profile anyway.
    async fn find_drift(&mut self) -> Result<(), String> {
        let sync = self.sync;
        let synapse = sync.synapse();
        let enforce = sync.settings.profile_drift == DriftPolicy::Enforce;
        let mut seen = HashSet::new();
        let mut from = 0;
        loop {
            let page = synapse
                .list_users(from, DRIFT_PAGE)
                .await
                .map_err(|e| format!("cannot list Synapse's users to look for drift: {e}"))?;
            let by_localpart: HashMap<String, _> = page
                .users
                .iter()
                .filter(|u| seen.insert(u.name.clone()))
                .filter_map(|u| Some((localpart_of(&u.name)?.to_string(), u)))
                .collect();
            let localparts: Vec<String> = by_localpart.keys().cloned().collect();
            let people = sync
                .store
                .settled_people_by_localparts(&localparts)
                .await
                .map_err(|e| e.to_string())?;
            for person in people {
                let Some(user) = person
                    .localpart
                    .as_ref()
                    .and_then(|lp| by_localpart.get(lp))
                else {
                    continue;
                };
                let avatar = user.avatar_url.as_deref().filter(|u| !u.is_empty());
                // The listing has active accounts only: one we deactivated is back.
                let drifted = person.account == Account::Deactivated
                    || user.displayname != person.applied_display_name
                    || avatar != person.avatar_mxc.as_deref();
                if !drifted {
                    continue;
                }
                self.drift_found += 1;
                tracing::info!(
                    user_id = %person.user_id, matrix_user_id = %user.name, enforce,
                    "the Matrix profile differs from DAARION's"
                );
                if enforce {
                    sync.store
                        .queue_verify(&person.user_id, self.sync.worker.clock().now_ms())
                        .await
                        .map_err(|e| e.to_string())?;
                    sync.wake.notify_one();
                    let _ = self
                        .touched
                        .send(Touched {
                            user_id: person.user_id.clone(),
                            before: Some(person),
                            cause: Cause::Drift,
                        })
                        .await;
                }
            }
            match page.next {
                Some(next) if next > from + DRIFT_OVERLAP => from = next - DRIFT_OVERLAP,
                Some(next) if next > from => from = next,
                _ => return Ok(()),
            }
        }
    }
}
