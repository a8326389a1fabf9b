//! The City Rooms reconcile pass (CONTRACT.md section 8), for cron and
//! operators, built like the profile pass (`profiles`): one at a time across
//! replicas (a lease row), DAARION.city's room listing fed through the same
//! intake as its webhooks (a listing is an event dated the room's
//! `updated_at`), and the room jobs this caused run to completion, so the
//! summary tells what really happened.
//!
//! - Incremental: the rooms changed since the last complete pass (with an
//!   overlap); listings that change nothing queue nothing, so Synapse gets
//!   no request at all.
//! - Full: every room is listed, and every settled room's job also runs,
//!   which reads the room's state once and puts back what was edited by
//!   hand (name, topic, avatar, managed members and their power).
//! - Rooms that existed before the service are created (backfill).
//! - A room that fails is recorded on the room and retried with backoff by
//!   the workers; it never stops the pass or the other rooms.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;

use super::{Lease, PassError};
use crate::config::Settings;
use crate::daarion::RoomApi;
use crate::domain::city::CityEvent;
use crate::jobs::Worker;
use crate::store::{JobKind, Pass, RoomState, Store};
use crate::synapse::{with_purpose, Endpoint, Purpose};

/// Rooms asked of DAARION.city per page.
const PAGE: usize = 200;

/// What a pass did: the body of `POST /v1/admin/room-sync` and the output
/// of `matrix-provisioner sync-rooms`.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RoomSummary {
    pub full: bool,
    /// Rooms listed by DAARION.city.
    pub rooms_checked: u64,
    /// Matrix rooms created (new City Rooms, backfill).
    pub created: u64,
    /// Rooms whose listing changed something.
    pub changed: u64,
    /// Rooms closed (deleted in DAARION.city).
    pub closed: u64,
    /// Members joined and removed, power-levels writes (requests sent).
    pub members_joined: u64,
    pub members_removed: u64,
    pub power_changes: u64,
    /// Rooms whose work failed permanently, or whose listing is malformed.
    pub failures: u64,
    /// Rooms whose work was still being retried when the pass stopped
    /// waiting; it stays queued.
    pub unfinished: u64,
    /// Requests this process sent to Synapse during the pass, and how many
    /// of them changed something.
    pub synapse_requests: u64,
    pub synapse_writes: u64,
    pub duration_ms: u64,
    /// Problems that stopped part of the pass (then the watermark stays).
    pub errors: Vec<String>,
}

impl RoomSummary {
    pub fn succeeded(&self) -> bool {
        self.failures == 0 && self.unfinished == 0 && self.errors.is_empty()
    }
}

const NOT_CONFIGURED: &str =
    "room sync is not configured: set CITY_API_URL, APPSERVICE_AS_TOKEN and APPSERVICE_HS_TOKEN";

pub struct RoomSync {
    settings: Arc<Settings>,
    store: Store,
    worker: Arc<Worker>,
    api: Option<RoomApi>,
    wake: Arc<Notify>,
}

impl RoomSync {
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        worker: Arc<Worker>,
        wake: Arc<Notify>,
    ) -> anyhow::Result<RoomSync> {
        Ok(RoomSync {
            api: RoomApi::new(&settings)?,
            settings,
            store,
            worker,
            wake,
        })
    }

    /// Runs one pass, unless another one is running. Its Synapse requests
    /// (and those of the jobs it drives) come out of the passes' budget.
    pub async fn run(&self, full: bool) -> Result<RoomSummary, PassError> {
        with_purpose(Purpose::Pass, self.run_pass(full)).await
    }

    async fn run_pass(&self, full: bool) -> Result<RoomSummary, PassError> {
        let api = self
            .api
            .as_ref()
            .filter(|_| self.settings.city.appservice_enabled())
            .ok_or(PassError::NotConfigured(NOT_CONFIGURED))?;
        let lease = Lease::take(&self.store, Pass::Rooms, "room sync", self.worker.clock()).await?;
        tracing::info!(full, "room sync pass started");
        let started = Instant::now();
        let synapse = self.worker.synapse();
        let calls_before = synapse.calls().snapshot();
        let mut summary = RoomSummary {
            full,
            ..RoomSummary::default()
        };
        let read_all = self.pass(api, full, &mut summary).await;
        if lease.lost() {
            summary.errors.push("the pass lost its lease".into());
        }
        let complete = read_all && summary.errors.is_empty();
        lease.release(complete, &mut summary.errors).await;
        let calls = synapse.calls().snapshot().since(&calls_before);
        summary.created = calls.get(Endpoint::RoomCreate);
        summary.members_joined = calls.get(Endpoint::AdminJoin);
        summary.members_removed = calls.get(Endpoint::Kick);
        summary.power_changes = calls.get(Endpoint::PowerLevelsPut);
        summary.synapse_requests = calls.total();
        summary.synapse_writes = calls.writes();
        summary.duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            full,
            rooms_checked = summary.rooms_checked,
            created = summary.created,
            changed = summary.changed,
            failures = summary.failures,
            synapse_requests = summary.synapse_requests,
            duration_ms = summary.duration_ms,
            "room sync pass finished"
        );
        Ok(summary)
    }

    /// Reads the listing and queues what changed, then runs the queued
    /// rooms' jobs; returns whether everything was read.
    async fn pass(&self, api: &RoomApi, full: bool, summary: &mut RoomSummary) -> bool {
        let since = if full {
            None
        } else {
            match self.store.sync_watermark(Pass::Rooms).await {
                Ok(w) => w.map(|w| w - super::OVERLAP_MS),
                Err(e) => {
                    summary.errors.push(e.to_string());
                    return false;
                }
            }
        };
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut cursor: Option<String> = None;
        let read_all = loop {
            let page = match api.page(since, cursor.as_deref(), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    summary.errors.push(e.to_string());
                    break false;
                }
            };
            summary.rooms_checked += (page.items.len() + page.malformed.len()) as u64;
            for (room_id, why) in &page.malformed {
                tracing::warn!(room_id = ?room_id, "malformed room in DAARION.city's listing: {why}");
                summary.failures += 1;
            }
            let mut events = Vec::with_capacity(page.items.len());
            for room in page.items {
                let room_id = room.room_id.clone();
                match CityEvent::from_listing(room) {
                    Ok(event) => events.push(event),
                    Err(e) => {
                        tracing::warn!(%room_id, "unacceptable room in DAARION.city's listing: {e:?}");
                        summary.failures += 1;
                    }
                }
            }
            match self
                .store
                .accept_city_events(&events, self.worker.clock().now_ms())
                .await
            {
                Ok(accepted) => {
                    for (event, a) in events.iter().zip(accepted) {
                        if a.queued {
                            summary.changed += 1;
                            touched.insert(event.subject.clone());
                        }
                    }
                }
                Err(e) => {
                    summary.errors.push(e.to_string());
                    break false;
                }
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                break true;
            }
        };
        if full {
            // Compare every settled room with what Synapse holds.
            match self.store.settled_rooms().await {
                Ok(ids) => {
                    if let Err(e) = self
                        .store
                        .queue_rooms(&ids, self.worker.clock().now_ms())
                        .await
                    {
                        summary.errors.push(e.to_string());
                    }
                    touched.extend(ids);
                }
                Err(e) => summary.errors.push(e.to_string()),
            }
        }
        self.wake.notify_waiters();
        let wait = self.settings.sync_job_wait;
        let endings: Vec<Ending> = stream::iter(touched)
            .map(|room_id| self.drive(room_id, wait))
            .buffer_unordered(self.settings.synapse_max_concurrency.max(1))
            .collect()
            .await;
        for ending in endings {
            match ending {
                Ending::Done(RoomState::Closed) => summary.closed += 1,
                Ending::Done(_) => {}
                Ending::Failed => summary.failures += 1,
                Ending::Unfinished => summary.unfinished += 1,
            }
        }
        read_all
    }

    /// Runs the room's job until it is done or failed, retries up to
    /// `wait` (then it stays queued for the workers).
    async fn drive(&self, room_id: String, wait: Duration) -> Ending {
        // Each room waits for itself: one slow room does not stop the
        // pass from waiting for the others.
        let give_up = std::sync::atomic::AtomicBool::new(false);
        if !self
            .worker
            .settle(JobKind::Room, &room_id, Instant::now() + wait, &give_up)
            .await
        {
            return Ending::Unfinished;
        }
        match self.store.room(&room_id).await {
            Ok(Some(room)) if room.state == RoomState::Failed => Ending::Failed,
            Ok(Some(room)) => Ending::Done(room.state),
            _ => Ending::Failed,
        }
    }
}

enum Ending {
    Done(RoomState),
    Failed,
    Unfinished,
}
