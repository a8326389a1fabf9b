//! The sync pass against a fake DAARION user API and the real Synapse:
//! backfill, renames, deletions, drift, exclusivity and the cron command.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use matrix_provisioner::app::Application;
use matrix_provisioner::domain::event::{Event, ListedUser};
use matrix_provisioner::jobs::{JobOutcome, Outcome};
use matrix_provisioner::store::{CreateVia, State};
use matrix_provisioner::synapse::{Endpoint, TakenLocalparts};
use serde_json::{json, Value};

use crate::fakes::{FakeUser, FakeUserApi};
use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(60);
pub const API_TOKEN: &str = "test-user-api-token";

pub async fn spawn_with_api(db: TestDb, api: &FakeUserApi, extra: &[(&str, &str)]) -> TestApp {
    let service_user = unique("prov");
    let mut overrides = vec![
        ("AUTH_API_URL", api.url.as_str()),
        ("AUTH_API_TOKEN", API_TOKEN),
        ("SYNAPSE_ADMIN_USER", service_user.as_str()),
    ];
    overrides.extend_from_slice(extra);
    TestApp::spawn_with(db, shared_synapse(), &overrides).await
}

pub fn ms(t: chrono::DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn summary_counts(s: &Value) -> [u64; 6] {
    [
        "checked",
        "changed",
        "created",
        "deactivated",
        "failed",
        "unfinished",
    ]
    .map(|k| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {s}"))
    })
}

/// Everyone in the API has the account the API says, in Synapse: linked
/// to their id, named after their username, deactivated if deleted, with
/// their display name. `never_seen_deleted` have no account at all.
async fn synapse_matches(admin: &SynapseAdmin, api: &FakeUserApi, never_seen_deleted: &[String]) {
    for user in api.all() {
        let expected = admin.user_id(user.username.as_deref().unwrap());
        if never_seen_deleted.contains(&user.user_id) {
            assert_eq!(admin.lookup(&user.user_id).await, None, "{}", user.user_id);
            continue;
        }
        assert_eq!(
            admin.lookup(&user.user_id).await.as_deref(),
            Some(expected.as_str()),
            "{}",
            user.user_id
        );
        let account = admin.user(&expected).await.unwrap();
        assert_eq!(account["deactivated"], user.deleted, "{expected}");
        if !user.deleted {
            assert_eq!(
                account["displayname"].as_str(),
                user.display_name.as_deref(),
                "{expected}"
            );
        }
    }
}

async fn a_full_pass_makes_synapse_match_the_user_api(backend: Backend) {
    let api = FakeUserApi::start(API_TOKEN);
    let app = spawn_with_api(TestDb::new(backend).await, &api, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let tag = unique("sy");
    let t0 = Utc::now() - TimeDelta::hours(1);
    let later = ms(t0 + TimeDelta::minutes(10));
    let id = |i: usize| format!("u_{tag}_{i}");
    // 0..40 known and renamed in DAARION since; 40..60 known, unchanged;
    // 60..75 known, deleted since; 75..85 never seen and deleted;
    // 85..300 never seen: the backfill.
    for i in 0..75 {
        let (status, body) = app
            .client
            .send_event(&event_at(
                "user.registered",
                &id(i),
                json!({"username": format!("{tag}-{i}"), "display_name": format!("Old {i}")}),
                t0,
            ))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // A webhook newer than the listing: the listing must not undo it.
    app.client
        .send_event(&event_at(
            "user.updated",
            &id(0),
            json!({"display_name": "Newest 0"}),
            t0 + TimeDelta::minutes(20),
        ))
        .await;
    for i in 0..75 {
        app.client
            .wait_for_state(&id(i), "provisioned", DEADLINE)
            .await;
    }
    let users = (0..300).map(|i| {
        let mut u = FakeUser::new(&id(i), &format!("{tag}-{i}"), &format!("Person {i}"), later);
        match i {
            0 => u.display_name = Some("Newest 0".into()),
            40..=59 => {
                u.display_name = Some(format!("Old {i}"));
                u.updated_at_ms = ms(t0);
            }
            60..=84 => u.deleted = true,
            _ => {}
        }
        u
    });
    api.put_all(users);
    let never_seen_deleted: Vec<String> = (75..85).map(id).collect();

    let registrations = app.service_synapse.calls().get(Endpoint::Register);
    let lookups = app.service_synapse.calls().get(Endpoint::UserGet);
    let (status, summary) = app.client.profile_sync(true).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        summary_counts(&summary),
        [300, 39, 215, 15, 0, 0],
        "{summary}"
    );
    // Synapse's accounts were read as a list, not looked up one by one.
    let lookups = app.service_synapse.calls().get(Endpoint::UserGet) - lookups;
    assert!(lookups < 100, "{lookups} lookups for 215 creations");
    assert_eq!(summary["full"], true);
    assert_eq!(summary["errors"], json!([]));
    // Backfilled accounts were created by the admin API, not registered.
    assert_eq!(
        app.service_synapse.calls().get(Endpoint::Register),
        registrations
    );

    synapse_matches(&admin, &api, &never_seen_deleted).await;

    // Nothing changed: a second full pass writes nothing to Synapse.
    let (status, summary) = app.client.profile_sync(true).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary_counts(&summary), [300, 0, 0, 0, 0, 0], "{summary}");
    assert_eq!(summary["synapse_writes"], 0, "{summary}");
    assert_eq!(summary["drift_found"], 0, "{summary}");
    synapse_matches(&admin, &api, &never_seen_deleted).await;

    // A display name changed by hand in Matrix is put back.
    let edited = admin.user_id(&format!("{tag}-100"));
    let (status, _) = admin
        .put(
            &format!("/_synapse/admin/v2/users/{edited}"),
            &json!({"displayname": "By Hand"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, summary) = app.client.profile_sync(true).await;
    assert_eq!(summary["drift_found"], 1, "{summary}");
    assert_eq!(summary["drift_fixed"], 1, "{summary}");
    assert_eq!(summary["synapse_writes"], 1, "only the fix: {summary}");
    assert_eq!(
        admin.user(&edited).await.unwrap()["displayname"],
        "Person 100"
    );

    // An incremental pass asks only for recent changes: there are none.
    let (_, summary) = app.client.profile_sync(false).await;
    assert_eq!(summary_counts(&summary), [0, 0, 0, 0, 0, 0], "{summary}");
    assert_eq!(summary["synapse_requests"], 0, "{summary}");
    let last = api.request_log().pop().unwrap();
    assert!(last.contains("updated_since="), "{last}");

    // A rename in DAARION: the next incremental pass applies it.
    let mut renamed = api.get(&id(200)).unwrap();
    renamed.display_name = Some("Renamed 200".into());
    renamed.updated_at_ms = ms(Utc::now());
    api.put(renamed);
    let (_, summary) = app.client.profile_sync(false).await;
    assert_eq!(summary_counts(&summary), [1, 1, 0, 0, 0, 0], "{summary}");
    assert_eq!(
        admin
            .user(&admin.user_id(&format!("{tag}-200")))
            .await
            .unwrap()["displayname"],
        "Renamed 200"
    );
    app.shutdown().await;
}
on_both_backends!(a_full_pass_makes_synapse_match_the_user_api);

async fn drift_is_only_reported_when_asked(backend: Backend) {
    let api = FakeUserApi::start(API_TOKEN);
    let app = spawn_with_api(
        TestDb::new(backend).await,
        &api,
        &[("PROFILE_DRIFT", "report")],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let name = unique("drift");
    api.put(FakeUser::new(
        &unique("u_"),
        &name,
        "Real Name",
        ms(Utc::now()),
    ));
    let (_, summary) = app.client.profile_sync(true).await;
    assert_eq!(summary["created"], 1, "{summary}");
    let mxid = admin.user_id(&name);
    admin
        .put(
            &format!("/_synapse/admin/v2/users/{mxid}"),
            &json!({"displayname": "By Hand"}),
        )
        .await;
    let (_, summary) = app.client.profile_sync(true).await;
    assert_eq!(summary["drift_found"], 1, "{summary}");
    assert_eq!(summary["drift_fixed"], 0, "{summary}");
    assert_eq!(summary["synapse_writes"], 0, "{summary}");
    assert_eq!(admin.user(&mxid).await.unwrap()["displayname"], "By Hand");
    app.shutdown().await;
}
on_both_backends!(drift_is_only_reported_when_asked);

async fn two_passes_at_once_one_runs_the_other_is_refused(backend: Backend) {
    let api = FakeUserApi::start(API_TOKEN);
    let db = TestDb::new(backend).await;
    let shared = db.shared();
    let first = spawn_with_api(db, &api, &[]).await;
    // A second replica on the same database.
    let second = spawn_with_api(shared, &api, &[]).await;
    api.put(FakeUser::new(
        &unique("u_"),
        &unique("once"),
        "Once",
        ms(Utc::now()),
    ));
    api.hold();
    let running = tokio::spawn({
        let client = first.client.clone();
        async move { client.profile_sync(true).await }
    });
    eventually("the first pass to be reading", DEADLINE, || async {
        (api.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await;

    let (status, body) = second.client.profile_sync(false).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "sync_in_progress");
    let (status, body) = first.client.profile_sync(true).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("sync_in_progress"))
    );
    // The cron command on another host says so too.
    let out = cron(&second.env, &["--full"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sync_in_progress"));

    api.release();
    let (status, summary) = running.await.unwrap();
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["created"], 1, "{summary}");
    // The lease is free again.
    let (status, summary) = second.client.profile_sync(true).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["created"], 0, "{summary}");
    first.shutdown().await;
    second.shutdown().await;
}
on_both_backends!(two_passes_at_once_one_runs_the_other_is_refused);

/// Runs `matrix-provisioner sync-profiles ARGS` with the service's settings.
pub async fn cron(
    env: &std::collections::HashMap<String, String>,
    args: &[&str],
) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_matrix-provisioner"))
        .arg("sync-profiles")
        .args(args)
        .env_clear()
        .envs(env)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cron_command_prints_the_summary_and_its_outcome() {
    let api = FakeUserApi::start(API_TOKEN);
    let app = spawn_with_api(TestDb::new(Backend::Sqlite).await, &api, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let tag = unique("cron");
    let now = ms(Utc::now());
    api.put_all(
        (0..3).map(|i| FakeUser::new(&format!("u_{tag}_{i}"), &format!("{tag}-{i}"), "Cron", now)),
    );

    let out = cron(&app.env, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON summary");
    assert_eq!(summary_counts(&summary), [3, 0, 3, 0, 0, 0], "{summary}");
    assert_eq!(summary["full"], false);
    for i in 0..3 {
        assert!(admin.lookup(&format!("u_{tag}_{i}")).await.is_some());
    }

    // A malformed person in the listing: reported, the rest goes on, exit 1.
    let mut bad = FakeUser::new(&format!("u_{tag}_bad"), "x", "Bad", now);
    bad.user_id = format!("u_{tag}\u{7}bad");
    api.put(bad);
    let out = cron(&app.env, &["--full"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary_counts(&summary), [4, 0, 0, 0, 1, 0], "{summary}");

    // Without AUTH_API_URL there is nothing to sync from.
    let mut env = app.env.clone();
    env.remove("AUTH_API_URL");
    let out = cron(&env, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_API_URL"));
    app.shutdown().await;
    let unconfigured = TestApp::spawn(Backend::Sqlite).await;
    let (status, body) = unconfigured.client.profile_sync(false).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("sync_not_configured"))
    );
    unconfigured.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_respects_strangers_and_adopts_its_interrupted_creations() {
    let api = FakeUserApi::start(API_TOKEN);
    let db = TestDb::new(Backend::Sqlite).await;
    let admin = SynapseAdmin::shared().await;
    // A stranger holds the name: the backfilled person gets `-2`.
    let name = unique("taken");
    admin.register_raw(&name, false, true).await.unwrap();
    let newcomer = unique("u_");
    api.put(FakeUser::new(&newcomer, &name, "Newcomer", ms(Utc::now())));
    let app = spawn_with_api(db, &api, &[]).await;
    let (_, summary) = app.client.profile_sync(false).await;
    assert_eq!(summary["created"], 1, "{summary}");
    assert_eq!(
        admin.lookup(&newcomer).await,
        Some(admin.user_id(&format!("{name}-2")))
    );
    let stranger = admin.user(&admin.user_id(&name)).await.unwrap();
    assert_eq!(stranger["external_ids"], json!([]));
    assert_eq!(
        stranger["displayname"],
        name.as_str(),
        "the stranger is untouched"
    );

    // Our database forgot someone whose account Synapse has under another
    // localpart: the new account cannot be linked (409), the linked one is
    // adopted and the new one deactivated.
    let name = unique("known");
    let returning = unique("u_");
    let old_account = admin.user_id(&format!("{name}-old"));
    let (status, body) = admin
        .put(
            &format!("/_synapse/admin/v2/users/{old_account}"),
            &json!({"external_ids": [{"auth_provider": "daarion", "external_id": returning}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    api.put(FakeUser::new(
        &returning,
        &name,
        "Returning",
        ms(Utc::now()),
    ));
    let (_, summary) = app.client.profile_sync(false).await;
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(admin.lookup(&returning).await, Some(old_account.clone()));
    assert_eq!(
        admin.user(&old_account).await.unwrap()["displayname"],
        "Returning"
    );
    let stray = admin.user(&admin.user_id(&name)).await.unwrap();
    assert_eq!(stray["deactivated"], true, "{stray}");
    let (_, record) = app.client.user(&returning).await;
    assert_eq!(record["matrix_user_id"], old_account.as_str());
    app.shutdown().await;

    // A crash after the admin API created the account, before we recorded it.
    let (app, _db) = idle_app(&admin).await;
    let store = app.store();
    let name = unique("crashed");
    let user_id = unique("u_");
    queue_backfill(&app, &user_id, &name, "Crashed").await;
    store
        .mark_registering(&user_id, &name, matrix_provisioner::now_ms())
        .await
        .unwrap();
    // Synapse created it but the link never happened.
    let (status, body) = admin
        .put(
            &format!("/_synapse/admin/v2/users/{}", admin.user_id(&name)),
            &json!({"displayname": "Crashed"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let outcome = app.worker().run_one().await.unwrap();
    assert_eq!(
        outcome,
        Some(JobOutcome::Person(Outcome::Done(State::Provisioned)))
    );
    assert_eq!(admin.lookup(&user_id).await, Some(admin.user_id(&name)));
    assert_eq!(admin.count_users(&name).await, 1, "no second account");
}

/// Stores what a sync pass stores for someone DAARION lists and we never
/// saw: their account is to be created through the admin API.
async fn queue_backfill(app: &Application, user_id: &str, username: &str, display_name: &str) {
    let listed: ListedUser = serde_json::from_value(json!({
        "user_id": user_id, "username": username, "display_name": display_name,
        "updated_at": Utc::now().to_rfc3339()
    }))
    .unwrap();
    app.store()
        .accept_events_via(
            &[Event::from_listing(listed).unwrap()],
            matrix_provisioner::now_ms(),
            CreateVia::AdminApi,
        )
        .await
        .unwrap();
}

/// Synapse down during a pass: nothing fails for good, the summary says
/// the work is unfinished (the cron exits non-zero), and the workers finish
/// it when Synapse is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_while_synapse_is_down_leaves_the_work_queued() {
    let synapse = PrivateSynapse::start();
    let api = FakeUserApi::start(API_TOKEN);
    let app = TestApp::spawn_with(
        TestDb::new(Backend::Sqlite).await,
        synapse.info.clone(),
        &[
            ("AUTH_API_URL", &api.url),
            ("AUTH_API_TOKEN", API_TOKEN),
            ("SYNC_JOB_WAIT_SECONDS", "2"),
            ("RETRY_MAX_DELAY_SECONDS", "1"),
        ],
    )
    .await;
    let tag = unique("down");
    let ids: Vec<String> = (0..3).map(|i| format!("u_{tag}_{i}")).collect();
    api.put_all(
        ids.iter()
            .enumerate()
            .map(|(i, id)| FakeUser::new(id, &format!("{tag}-{i}"), "Waiting", ms(Utc::now()))),
    );
    synapse.stop();
    let (status, summary) = app.client.profile_sync(false).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary_counts(&summary), [3, 0, 0, 0, 0, 3], "{summary}");

    synapse.resume();
    let admin = SynapseAdmin::new(synapse.info.clone()).await;
    for id in &ids {
        app.client.wait_for_state(id, "provisioned", DEADLINE).await;
        assert!(admin.lookup(id).await.is_some(), "{id}");
    }
    // The listing was read completely: the next pass has nothing to do.
    let (_, summary) = app.client.profile_sync(false).await;
    assert_eq!(summary_counts(&summary), [3, 0, 0, 0, 0, 0], "{summary}");
    app.shutdown().await;
}

/// A backfill large enough to read Synapse's account list instead of
/// looking each account up still leaves strangers alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backfill_reads_the_account_list_and_respects_strangers() {
    let api = FakeUserApi::start(API_TOKEN);
    let admin = SynapseAdmin::shared().await;
    let tag = unique("lb");
    let stranger = format!("{tag}p7");
    admin.register_raw(&stranger, false, true).await.unwrap();
    let now = ms(Utc::now());
    api.put_all((0..80).map(|i| {
        FakeUser::new(
            &format!("u_{tag}_{i}"),
            &format!("{tag}p{i}"),
            &format!("Backfilled {i}"),
            now,
        )
    }));
    let app = spawn_with_api(TestDb::new(Backend::Sqlite).await, &api, &[]).await;
    let lookups = app.service_synapse.calls().get(Endpoint::UserGet);
    let (status, summary) = app.client.profile_sync(false).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["created"], 80, "{summary}");
    let lookups = app.service_synapse.calls().get(Endpoint::UserGet) - lookups;
    let (_, list) = admin
        .get("/_synapse/admin/v2/users?limit=1&deactivated=true")
        .await;
    eprintln!("{} accounts in the shared Synapse", list["total"]);
    assert!(
        lookups < 40,
        "{lookups} lookups for 80 creations, {} accounts in Synapse",
        list["total"]
    );
    assert!(app.service_synapse.calls().get(Endpoint::UserList) > 0);

    assert_eq!(
        admin.lookup(&format!("u_{tag}_7")).await,
        Some(admin.user_id(&format!("{stranger}-2")))
    );
    let untouched = admin.user(&admin.user_id(&stranger)).await.unwrap();
    assert_eq!(untouched["external_ids"], json!([]));
    assert_eq!(untouched["displayname"], stranger.as_str());
    for i in [0, 79] {
        assert_eq!(
            admin.lookup(&format!("u_{tag}_{i}")).await,
            Some(admin.user_id(&format!("{tag}p{i}")))
        );
    }
    app.shutdown().await;
}

/// The index a backfill reads instead of looking each account up: it knows
/// accounts from before it was read, in any case, deactivated ones too, and
/// those created after it was read once it refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_index_knows_old_and_new_accounts() {
    let admin = SynapseAdmin::shared().await;
    let (app, _db) = idle_app(&admin).await;
    let worker = app.worker();
    let (synapse, taken) = (worker.synapse(), worker.taken());
    let old = unique("idxold");
    admin.register_raw(&old, false, true).await.unwrap();
    let gone = unique("idxgone");
    admin.register_raw(&gone, false, true).await.unwrap();
    let (status, _) = admin
        .post(
            &format!("/_synapse/admin/v1/deactivate/{}", admin.user_id(&gone)),
            &json!({"erase": false}),
        )
        .await;
    assert_eq!(status, 200);

    assert_eq!(
        taken.is_free(synapse, &old).await.unwrap(),
        None,
        "not loaded"
    );
    assert!(
        !taken.load_if_worth_it(synapse, 3).await.unwrap(),
        "a few lookups are cheaper than reading every account"
    );
    assert!(taken.load_if_worth_it(synapse, 1_000_000).await.unwrap());
    for taken_name in [old.clone(), old.to_uppercase(), gone] {
        assert_eq!(
            taken.is_free(synapse, &taken_name).await.unwrap(),
            Some(false),
            "{taken_name}"
        );
    }
    let later = unique("idxnew");
    assert_eq!(taken.is_free(synapse, &later).await.unwrap(), Some(true));

    // Created by hand after the index was read.
    admin.register_raw(&later, false, true).await.unwrap();
    // Seen at the next refresh (no waiting: the service's clock is moved
    // past it, with room for a slow machine's longer interval).
    worker.clock().advance(TakenLocalparts::REFRESH * 20);
    assert_eq!(
        taken.is_free(synapse, &later).await.unwrap(),
        Some(false),
        "{later} seen at the refresh"
    );
    assert_eq!(
        taken.is_free(synapse, &unique("idxfree")).await.unwrap(),
        Some(true)
    );

    // Between passes it does not answer; a pass with many creations puts it
    // back to use, up to date.
    taken.pause().await;
    assert_eq!(taken.is_free(synapse, &later).await.unwrap(), None);
    let after_pause = unique("idxpause");
    admin.register_raw(&after_pause, false, true).await.unwrap();
    assert!(!taken.load_if_worth_it(synapse, 3).await.unwrap());
    assert!(taken.load_if_worth_it(synapse, 1_000).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while taken.is_free(synapse, &after_pause).await.unwrap() != Some(false) {
        assert!(
            std::time::Instant::now() < deadline,
            "{after_pause} never seen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The window the index leaves open: an account made by hand for exactly the
/// localpart being backfilled, after the index was read. It is reported for
/// a person to check (or, after a refresh, avoided with a suffix), never
/// silently taken as the person's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_made_by_hand_during_a_backfill_is_reported_not_adopted() {
    let admin = SynapseAdmin::shared().await;
    let (app, _db) = idle_app(&admin).await;
    let worker = app.worker();
    assert!(worker
        .taken()
        .load_if_worth_it(worker.synapse(), 1_000_000)
        .await
        .unwrap());
    let name = unique("byhand");
    admin.register_raw(&name, false, true).await.unwrap();
    let user_id = unique("u_");
    queue_backfill(&app, &user_id, &name, "Backfilled").await;
    match worker.run_one().await.unwrap() {
        Some(JobOutcome::Person(Outcome::Failed(reason))) => {
            assert!(reason.contains("appeared while we created it"), "{reason}");
            assert!(reason.contains(&name), "{reason}");
        }
        Some(JobOutcome::Person(Outcome::Done(State::Provisioned))) => {
            // The index was refreshed first: the stranger is avoided.
            assert_eq!(
                admin.lookup(&user_id).await,
                Some(admin.user_id(&format!("{name}-2")))
            );
        }
        other => panic!("{other:?}"),
    }
    let person = app.store().person(&user_id).await.unwrap().unwrap();
    assert_ne!(
        (person.state, person.localpart.as_deref()),
        (State::Provisioned, Some(name.as_str())),
        "the stranger's account is never taken as the person's"
    );
}

/// A pass started through the admin endpoint runs in a task of its own; the
/// Synapse requests it makes carry the request's id.
async fn a_pass_started_by_request_carries_its_request_id(backend: Backend) {
    let api = FakeUserApi::start(API_TOKEN);
    let synapse = shared_synapse();
    let proxy = SynapseProxy::start(&synapse.url);
    let proxied = SynapseInfo {
        url: proxy.url.clone(),
        ..synapse
    };
    let app = TestApp::spawn_with(
        TestDb::new(backend).await,
        proxied,
        &[
            ("AUTH_API_URL", api.url.as_str()),
            ("AUTH_API_TOKEN", API_TOKEN),
        ],
    )
    .await;
    let tag = unique("traced");
    api.put(FakeUser::new(
        &format!("u_{tag}"),
        &tag,
        "Traced",
        ms(Utc::now()),
    ));
    let request_id = unique("sync-req-");
    let response = app
        .client
        .http
        .post(format!("{}/v1/admin/profile-sync", app.client.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Request-Id", &request_id)
        .json(&json!({"full": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The pass reads Synapse's user list itself (its people's jobs may
    // be run by a background worker, under the job's own id).
    let seen = proxy.seen();
    let listings: Vec<_> = seen
        .iter()
        .filter(|(path, _)| path == "/_synapse/admin/v2/users")
        .collect();
    assert!(!listings.is_empty(), "{seen:?}");
    for (path, id) in listings {
        assert_eq!(id.as_deref(), Some(request_id.as_str()), "{path}");
    }
    app.shutdown().await;
    proxy.stop().await;
}
on_both_backends!(a_pass_started_by_request_carries_its_request_id);
