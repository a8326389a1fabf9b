//! SIGTERM: the service stops accepting, finishes the requests in flight,
//! gives jobs a deadline to finish, hands the unfinished ones back to the
//! queue and exits 0; after a restart every accepted signup is provisioned,
//! exactly once.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde_json::json;
use sqlx::Row;

use crate::on_both_backends;
use crate::support::*;

const PEOPLE: usize = 40;

/// Jobs in the queue, and how many of them are leased to someone.
async fn jobs(db: &TestDb) -> (i64, i64) {
    let pool = one_connection(&db.url).await;
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN lease_owner IS NOT NULL THEN 1 ELSE 0 END), 0) AS leased FROM jobs",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    (row.try_get("n").unwrap(), row.try_get("leased").unwrap())
}

async fn sigterm_with_jobs_in_flight_loses_nothing(backend: Backend) {
    let admin = SynapseAdmin::shared().await;
    // A slow Synapse: every request takes a while, so jobs are in the
    // middle of their Synapse calls when the signal comes.
    let proxy = SynapseProxy::start(&admin.info.url);
    proxy.set_delay(Duration::from_millis(400));
    let db = TestDb::new(backend).await;
    let slow = SynapseInfo {
        url: proxy.url.clone(),
        ..admin.info.clone()
    };
    let mut env = base_env(&db, &slow);
    env.insert("SHUTDOWN_TIMEOUT_SECONDS".into(), "2".into());
    // Far longer than the test: jobs must come back because they were
    // handed back, not because their leases ran out.
    env.insert("JOB_LEASE_SECONDS".into(), "600".into());
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let tag = unique("term");
    let events: Vec<(String, serde_json::Value)> = (0..PEOPLE)
        .map(|i| {
            let user_id = format!("u_{tag}_{i}");
            let ev = event(
                "user.registered",
                &user_id,
                json!({"username": format!("{tag}-{i}"), "display_name": format!("Person {i}")}),
            );
            (user_id, ev)
        })
        .collect();

    let mut service = ChildService::start(&env, port, log.path()).await;
    let statuses: Vec<u16> = stream::iter(events.iter())
        .map(|(_, ev)| service.client.send_event(ev))
        .buffer_unordered(8)
        .map(|(status, _)| status)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    eventually(
        "some accounts to exist",
        Duration::from_secs(60),
        || async { (admin.count_users(&tag).await >= 3).then_some(()) },
    )
    .await;

    // A request in flight when the signal comes is answered.
    let seen_before = proxy.seen().len();
    let in_flight = {
        let client = service.client.clone();
        tokio::spawn(async move {
            client
                .http
                .get(format!("{}/readyz", client.base))
                .header("X-Request-Id", "in-flight-at-sigterm")
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    eventually(
        "the readiness probe to reach Synapse",
        Duration::from_secs(30),
        || async {
            proxy.seen()[seen_before..]
                .iter()
                .any(|(_, id)| id.as_deref() == Some("in-flight-at-sigterm"))
                .then_some(())
        },
    )
    .await;
    service.terminate();
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);

    let (queued, leased) = jobs(&db).await;
    assert!(
        queued > 0,
        "everything finished before the signal: nothing tested"
    );
    assert_eq!(
        leased, 0,
        "unfinished jobs are handed back, not left leased"
    );
    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert!(logs.contains("SIGTERM received"), "{logs}");

    // The next start (with Synapse at full speed) finishes everything.
    env.insert("SYNAPSE_URL".into(), admin.info.url.clone());
    let service = ChildService::start(&env, port, log.path()).await;
    let ids: Vec<&String> = events.iter().map(|(id, _)| id).collect();
    eventually(
        "everyone to be provisioned",
        Duration::from_secs(120),
        || async {
            let states: Vec<(u16, serde_json::Value)> = stream::iter(ids.iter())
                .map(|id| service.client.user(id))
                .buffer_unordered(8)
                .collect()
                .await;
            states
                .iter()
                .all(|(s, b)| *s == 200 && b["state"] == "provisioned")
                .then_some(())
        },
    )
    .await;
    assert_eq!(admin.count_users(&tag).await, PEOPLE as u64);
    for (i, (user_id, _)) in events.iter().enumerate() {
        assert_eq!(
            admin.lookup(user_id).await,
            Some(admin.user_id(&format!("{tag}-{i}"))),
            "{user_id}"
        );
    }
    drop(service);
    proxy.stop().await;
}
on_both_backends!(sigterm_with_jobs_in_flight_loses_nothing);
