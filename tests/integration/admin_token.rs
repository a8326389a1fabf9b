//! The service's Synapse admin token: one per deployment, kept in the
//! database, shared by the service and every cron run, replaced only when
//! Synapse refuses it, and never more than one of ours left alive.

use chrono::Utc;
use futures_util::future::join_all;
use matrix_provisioner::app::Core;
use matrix_provisioner::synapse::Endpoint;
use serde_json::Value;
use sqlx::Row;

use crate::fakes::{FakeUser, FakeUserApi};
use crate::on_both_backends;
use crate::support::*;
use crate::sync::{cron, ms, spawn_with_api, API_TOKEN};

/// The stored token and its version, read straight from the database.
async fn stored(db: &TestDb) -> (Option<String>, i64) {
    let pool = one_connection(&db.url).await;
    let row = sqlx::query("SELECT token, version FROM service_tokens WHERE name = 'synapse_admin'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    (
        row.try_get("token").unwrap(),
        row.try_get("version").unwrap(),
    )
}

async fn full_pass_by_cron(env: &std::collections::HashMap<String, String>) -> Value {
    let out = cron(env, &["--full"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("stdout is the JSON summary")
}

async fn cron_runs_share_the_services_admin_token(backend: Backend) {
    let api = FakeUserApi::start(API_TOKEN);
    let app = spawn_with_api(TestDb::new(backend).await, &api, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let tag = unique("tok");
    api.put(FakeUser::new(
        &format!("u_{tag}"),
        &tag,
        "Token",
        ms(Utc::now()),
    ));
    let (status, summary) = app.client.profile_sync(true).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["created"], 1, "{summary}");
    let (token, version) = stored(&app.db).await;
    let token = token.expect("the service stored its admin token");
    assert_eq!(admin.whoami(&token).await, 200);

    // Cron runs are new processes: they use the stored token, and a full
    // pass with nothing to change writes nothing to Synapse (no login).
    for _ in 0..2 {
        let summary = full_pass_by_cron(&app.env).await;
        assert_eq!(summary["changed"], 0, "{summary}");
        assert_eq!(summary["synapse_writes"], 0, "{summary}");
        assert_eq!(stored(&app.db).await, (Some(token.clone()), version));
    }

    // Synapse forgets the token: the next run logs in once and shares the
    // new token; the run after it logs in no more.
    admin.logout(&token).await;
    let summary = full_pass_by_cron(&app.env).await;
    assert_eq!(summary["synapse_writes"], 1, "one login: {summary}");
    let (renewed, renewed_version) = stored(&app.db).await;
    let renewed = renewed.unwrap();
    assert_ne!(renewed, token);
    assert_eq!(renewed_version, version + 1);
    let summary = full_pass_by_cron(&app.env).await;
    assert_eq!(summary["synapse_writes"], 0, "{summary}");
    assert_eq!(admin.whoami(&token).await, 401);
    assert_eq!(admin.whoami(&renewed).await, 200);

    // The running service, whose own token is now refused, takes the
    // shared one instead of logging in again.
    let logins = app.service_synapse.calls().get(Endpoint::Login);
    let (status, summary) = app.client.profile_sync(true).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["synapse_writes"], 0, "{summary}");
    assert_eq!(app.service_synapse.calls().get(Endpoint::Login), logins);
    assert_eq!(stored(&app.db).await, (Some(renewed), renewed_version));
    // ... and counts the refusal (deploy/prometheus/alerts.yml watches it).
    let metrics = metrics_text(&app.client).await;
    let refusals: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"matrix_provisioner_synapse_admin_token_refusals_total{reason="unknown_token"} "#,
            )
        })
        .and_then(|v| v.parse().ok())
        .expect("the refusals counter in /metrics");
    assert!(refusals >= 1.0, "{refusals}");
    app.shutdown().await;
}
on_both_backends!(cron_runs_share_the_services_admin_token);

/// Three processes that start together on an empty database all log in;
/// one token is kept and the others are logged out: one live token of ours.
async fn processes_racing_for_a_token_leave_one_alive(backend: Backend) {
    let admin = SynapseAdmin::shared().await;
    // The admin account exists already, made by a deployment on another
    // database (so every login below succeeds and makes a token).
    let first = TestDb::new(backend).await;
    let mut env = base_env(&first, &shared_synapse());
    env.insert("SYNAPSE_ADMIN_USER".into(), unique("race"));
    let core = Core::build(settings(&env)).await.unwrap();
    core.synapse
        .lookup_external_id("nobody-at-all")
        .await
        .unwrap();
    core.store.close().await;

    let db = TestDb::new(backend).await;
    env.insert("DATABASE_URL".into(), db.url.clone());
    let mut cores = Vec::new();
    for _ in 0..3 {
        cores.push(Core::build(settings(&env)).await.unwrap());
    }
    let looked_up = join_all(
        cores
            .iter()
            .map(|core| core.synapse.lookup_external_id("nobody-at-all")),
    )
    .await;
    assert!(
        looked_up.iter().all(|r| matches!(r, Ok(None))),
        "{looked_up:?}"
    );
    let count = |endpoint| -> u64 { cores.iter().map(|c| c.synapse.calls().get(endpoint)).sum() };
    let (logins, logouts) = (count(Endpoint::Login), count(Endpoint::Logout));
    assert!(logins >= 1);
    assert_eq!(logins - logouts, 1, "{logins} logins, {logouts} logouts");
    let (token, version) = stored(&db).await;
    assert_eq!(version, 1, "stored once");
    assert_eq!(admin.whoami(&token.unwrap()).await, 200);
    for core in &cores {
        core.store.close().await;
    }
}
on_both_backends!(processes_racing_for_a_token_leave_one_alive);

/// An operator's `SYNAPSE_ADMIN_TOKEN` is used as is and never stored.
async fn an_operators_token_is_never_stored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let admin = SynapseAdmin::shared().await;
    let mut env = base_env(&db, &shared_synapse());
    env.insert("SYNAPSE_ADMIN_TOKEN".into(), admin.token().to_string());
    let core = Core::build(settings(&env)).await.unwrap();
    let found = core.synapse.lookup_external_id("nobody-at-all").await;
    assert!(matches!(found, Ok(None)), "{found:?}");
    assert_eq!(core.synapse.calls().get(Endpoint::Login), 0);
    assert_eq!(stored(&db).await, (None, 0));
    core.store.close().await;
}
on_both_backends!(an_operators_token_is_never_stored);
