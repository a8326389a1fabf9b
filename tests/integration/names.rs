//! How a person's localpart is settled: from the best name known when the
//! account is about to be created, whatever order the events came in; from
//! other sources (`LOCALPART_SOURCES`) only after a grace period without a
//! username or a registration.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(90);

/// A registration (with the username) and nine updates without one, sent
/// in each of the ten orders the registration can take among them, one
/// after the other (the worker runs between them): always exactly one
/// account, named from the username, showing the newest display name.
async fn a_registration_among_nine_updates_names_the_account_in_any_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let start = Utc::now() - TimeDelta::seconds(60);
    let mut people = Vec::new();
    for position in 0..10 {
        let user_id = unique("u_");
        let username = unique(&format!("order{position}-"));
        let registration = event_at(
            "user.registered",
            &user_id,
            json!({"username": username, "display_name": "Registered"}),
            start,
        );
        let mut events: Vec<Value> = (1..=9)
            .map(|i| {
                event_at(
                    "user.updated",
                    &user_id,
                    json!({"display_name": format!("Edit {i}")}),
                    start + TimeDelta::seconds(i),
                )
            })
            .collect();
        events.insert(position, registration);
        let expected = admin.user_id(&username);
        for e in &events {
            let (status, body) = app.client.send_event(e).await;
            assert_eq!(status, 202, "{body}");
            // Not settled yet (null), or settled from the username: never
            // the user id's name.
            assert!(
                body["matrix_user_id"].is_null() || body["matrix_user_id"] == expected,
                "position {position}: {body}"
            );
        }
        people.push((user_id, username, expected));
    }
    for (user_id, username, expected) in &people {
        let record = app
            .client
            .wait_for_state(user_id, "provisioned", DEADLINE)
            .await;
        assert_eq!(&record["matrix_user_id"], expected, "{record}");
        assert_eq!(admin.lookup(user_id).await.as_ref(), Some(expected));
        assert_eq!(admin.count_users(username).await, 1, "one account");
        assert_eq!(
            admin.count_users(&user_id.to_lowercase()).await,
            0,
            "no account named after the user id"
        );
        let user = admin.user(expected).await.unwrap();
        assert_eq!(user["displayname"], "Edit 9");
    }
    app.shutdown().await;
}
on_both_backends!(a_registration_among_nine_updates_names_the_account_in_any_order);

/// The same ten events sent all at once, as a burst: still one account,
/// named from the username.
async fn a_burst_of_a_registration_and_nine_updates_gives_one_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let start = Utc::now() - TimeDelta::seconds(60);
    let user_id = unique("u_");
    let username = unique("burst-");
    let mut events = vec![event_at(
        "user.registered",
        &user_id,
        json!({"username": username}),
        start,
    )];
    events.extend((1..=9).map(|i| {
        event_at(
            "user.updated",
            &user_id,
            json!({"display_name": format!("Burst {i}")}),
            start + TimeDelta::seconds(i),
        )
    }));
    events.reverse(); // the registration last in line
    let answers = join_all(events.iter().map(|e| app.client.send_event(e))).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 202),
        "{answers:?}"
    );
    let record = app
        .client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    assert_eq!(record["matrix_user_id"], admin.user_id(&username));
    assert_eq!(admin.count_users(&username).await, 1);
    app.shutdown().await;
}
on_both_backends!(a_burst_of_a_registration_and_nine_updates_gives_one_account);

/// Someone known only from an update gets a name from elsewhere (their
/// display name, `LOCALPART_SOURCES`' default), but only once the grace
/// period has passed with no username and no registration. Ten minutes of grace pass
/// by moving the service's clock, not by waiting.
async fn an_update_only_person_is_named_after_the_grace_period(backend: Backend) {
    let grace = Duration::from_secs(600);
    let app = TestApp::spawn_with(
        TestDb::new(backend).await,
        shared_synapse(),
        &[("USERNAME_GRACE_SECONDS", &grace.as_secs().to_string())],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let user_id = unique("u_");
    let tag = unique("");
    let name = format!("Only Updated {tag}");
    let (status, body) = app
        .client
        .send_event(&event(
            "user.updated",
            &user_id,
            json!({"display_name": name}),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["matrix_user_id"], Value::Null, "not settled yet");

    // The job runs and puts itself off until the grace period ends (its
    // run time minutes ahead); meanwhile there is no account.
    let waiting = format!(
        "jobs WHERE kind = 'person' AND subject = '{user_id}' AND run_at > {}",
        app.clock.now_ms() + grace.as_millis() as i64 - 60_000
    );
    eventually("the job to wait for a username", DEADLINE, || async {
        (app.db.count(&waiting).await == 1).then_some(())
    })
    .await;
    let (_, record) = app.client.user(&user_id).await;
    assert_eq!(record["state"], "pending");
    assert_eq!(admin.lookup(&user_id).await, None, "no account yet");

    // The grace period ends: the account is named after the display name.
    app.clock.advance(grace);
    let record = app
        .client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    let expected = admin.user_id(&format!("only.updated.{tag}"));
    assert_eq!(record["matrix_user_id"], expected);
    assert_eq!(record["attempts"], 0, "waiting is not a failure");
    assert_eq!(record["last_error"], Value::Null);
    let user = admin.user(&expected).await.unwrap();
    assert_eq!(user["displayname"], name.as_str());
    app.shutdown().await;
}
on_both_backends!(an_update_only_person_is_named_after_the_grace_period);

/// A username that arrives during the grace period names the account, and
/// is acted on at once (not at the end of the grace period).
async fn a_username_in_the_grace_period_names_the_account(backend: Backend) {
    let app = TestApp::spawn_with(
        TestDb::new(backend).await,
        shared_synapse(),
        &[("USERNAME_GRACE_SECONDS", "600")],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let user_id = unique("u_");
    let username = unique("late-");
    let (status, _) = app
        .client
        .send_event(&event(
            "user.updated",
            &user_id,
            json!({"display_name": "Late"}),
        ))
        .await;
    assert_eq!(status, 202);
    let (status, _) = app
        .client
        .send_event(&event(
            "user.updated",
            &user_id,
            json!({"username": username}),
        ))
        .await;
    assert_eq!(status, 202);
    // Well within the ten minutes of grace.
    let record = app
        .client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    assert_eq!(record["matrix_user_id"], admin.user_id(&username));
    app.shutdown().await;
}
on_both_backends!(a_username_in_the_grace_period_names_the_account);
