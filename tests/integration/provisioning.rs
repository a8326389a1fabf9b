//! What the worker does in Synapse, checked through Synapse's admin API.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use matrix_provisioner::app::Application;
use matrix_provisioner::jobs::{JobOutcome, Outcome};
use matrix_provisioner::store::State;
use serde_json::json;

use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(90);

async fn a_signup_becomes_a_linked_account_with_its_display_name(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let tag = unique("");
    let user_id = unique("u_");
    // A Ukrainian username: the localpart uses the national transliteration.
    let (status, body) = app
        .client
        .send_event(&event(
            "user.registered",
            &user_id,
            json!({"username": format!("Щербак Олена {tag}"), "display_name": "Олена Щербак",
                   "email": "olena@example.com"}),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    let expected = admin.user_id(&format!("shcherbak.olena.{tag}"));
    // The name is settled by the worker, a moment after the 202.
    assert_eq!(body["matrix_user_id"], serde_json::Value::Null);
    assert_eq!(body["duplicate"], false);

    let record = app
        .client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    assert_eq!(record["matrix_user_id"], expected);
    assert_eq!(record["display_name"], "Олена Щербак");
    assert_eq!(record["attempts"], 0);

    let user = admin
        .user(&expected)
        .await
        .expect("the account exists in Synapse");
    assert_eq!(user["displayname"], "Олена Щербак");
    assert_eq!(user["admin"], false);
    assert_eq!(
        user["external_ids"],
        json!([{"auth_provider": "daarion", "external_id": user_id},
            {"auth_provider": "oidc-daarion", "external_id": user_id}])
    );
    assert_eq!(admin.lookup(&user_id).await, Some(expected));
    app.shutdown().await;
}
on_both_backends!(a_signup_becomes_a_linked_account_with_its_display_name);

async fn a_localpart_taken_by_a_stranger_gets_a_suffix(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let name = unique("stranger");
    // A username that itself ends like a suffix gets one of its own.
    for name in [name.clone(), format!("{name}-7")] {
        admin.register_raw(&name, false, true).await.unwrap();
        let user_id = unique("u_");
        app.client
            .send_event(&event(
                "user.registered",
                &user_id,
                json!({"username": name}),
            ))
            .await;
        let record = app
            .client
            .wait_for_state(&user_id, "provisioned", DEADLINE)
            .await;
        let ours = admin.user_id(&format!("{name}-2"));
        assert_eq!(record["matrix_user_id"], ours);
        assert_eq!(admin.lookup(&user_id).await, Some(ours));
        // The stranger's account is untouched.
        let stranger = admin.user(&admin.user_id(&name)).await.unwrap();
        assert_eq!(stranger["external_ids"], json!([]));
    }
    app.shutdown().await;
}
on_both_backends!(a_localpart_taken_by_a_stranger_gets_a_suffix);

async fn deletion_deactivates_until_a_new_registration(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let name = unique("leaver");
    let user_id = unique("u_");
    let t0 = Utc::now();
    let at = |s: i64| t0 + TimeDelta::seconds(s);
    let send = |kind: &'static str, data: serde_json::Value, t| {
        let ev = event_at(kind, &user_id, data, t);
        let client = app.client.clone();
        async move { client.send_event(&ev).await }
    };
    send("user.registered", json!({"username": name}), at(0)).await;
    app.client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    let mxid = admin.user_id(&name);

    send("user.deleted", json!({}), at(1)).await;
    app.client
        .wait_for_state(&user_id, "deactivated", DEADLINE)
        .await;
    assert_eq!(admin.user(&mxid).await.unwrap()["deactivated"], true);

    // A later update does not bring the person back...
    send("user.updated", json!({"display_name": "Back?"}), at(2)).await;
    // ...nor does a late copy of the first registration.
    send("user.registered", json!({"username": name}), at(0)).await;
    app.client
        .wait_for_state(&user_id, "deactivated", DEADLINE)
        .await;
    assert_eq!(admin.user(&mxid).await.unwrap()["deactivated"], true);

    // A new registration does, on the same account.
    send("user.registered", json!({"username": name}), at(3)).await;
    app.client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    let user = admin.user(&mxid).await.unwrap();
    assert_eq!(user["deactivated"], false);
    assert_eq!(user["displayname"], "Back?");
    assert_eq!(admin.count_users(&name).await, 1);
    app.shutdown().await;
}
on_both_backends!(deletion_deactivates_until_a_new_registration);

async fn out_of_order_events_end_with_the_newest_values(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let name = unique("late");
    let user_id = unique("u_");
    let t0 = Utc::now();
    // The update (newer) arrives before the registration (older).
    let update = event_at(
        "user.updated",
        &user_id,
        json!({"display_name": "Newer"}),
        t0 + TimeDelta::seconds(5),
    );
    let register = event_at(
        "user.registered",
        &user_id,
        json!({"username": name, "display_name": "Older"}),
        t0,
    );
    app.client.send_event(&update).await;
    app.client.send_event(&register).await;
    // The localpart came from the first event seen (no username in it).
    let record = app
        .client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    assert_eq!(record["display_name"], "Newer");
    let mxid = record["matrix_user_id"].as_str().unwrap().to_string();
    assert_eq!(admin.lookup(&user_id).await.as_deref(), Some(mxid.as_str()));
    assert_eq!(admin.user(&mxid).await.unwrap()["displayname"], "Newer");
    app.shutdown().await;
}
on_both_backends!(out_of_order_events_end_with_the_newest_values);

/// A crash between Synapse's answer and our commit: the account exists and
/// the next attempt gets `M_USER_IN_USE`. It must be recognised as ours.
async fn an_interrupted_registration_is_adopted_not_duplicated(backend: Backend) {
    init_logs();
    let admin = SynapseAdmin::shared().await;
    let db = TestDb::new(backend).await;
    let env = base_env(&db, &admin.info);
    // Built but not run: no background workers, we drive the queue by hand.
    let app = Application::build(settings(&env)).await.unwrap();
    let store = app.store();
    for linked in [false, true] {
        let name = unique("crash");
        let user_id = unique("u_");
        let registered = event("user.registered", &user_id, json!({"username": name}));
        store_event(&app, &registered).await;
        // What the killed worker got done: the attempt written down, the
        // account created in Synapse (and, in the second case, linked too).
        store
            .mark_registering(&user_id, &name, matrix_provisioner::now_ms())
            .await
            .unwrap();
        admin.register_raw(&name, false, true).await.unwrap();
        if linked {
            let (status, body) = admin
                .put(
                    &format!("/_synapse/admin/v2/users/{}", admin.user_id(&name)),
                    &json!({"external_ids": [{"auth_provider": "daarion", "external_id": user_id}]}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }

        let outcome = app.worker().run_one().await.unwrap();
        assert_eq!(
            outcome,
            Some(JobOutcome::Person(Outcome::Done(State::Provisioned)))
        );
        assert_eq!(admin.lookup(&user_id).await, Some(admin.user_id(&name)));
        assert_eq!(admin.count_users(&name).await, 1, "no second account");
        let person = store.person(&user_id).await.unwrap().unwrap();
        assert_eq!(person.localpart, Some(name));
    }
    assert_eq!(
        app.worker().run_one().await.unwrap(),
        None,
        "the queue is empty"
    );
}
on_both_backends!(an_interrupted_registration_is_adopted_not_duplicated);

async fn operators_see_unknown_people_as_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app.client.user("u_nobody").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    app.shutdown().await;
}
on_both_backends!(operators_see_unknown_people_as_404);

/// A `200` whose body is not what Synapse sends (here, the nonce of a
/// registration) is a passing fault: retried, never a failed person.
async fn an_unreadable_success_is_retried_not_failed(backend: Backend) {
    let synapse = shared_synapse();
    let proxy = SynapseProxy::start(&synapse.url);
    let proxied = SynapseInfo {
        url: proxy.url.clone(),
        ..synapse
    };
    let app = TestApp::spawn_with(TestDb::new(backend).await, proxied, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let nonce_path = "/_synapse/admin/v1/register";
    proxy.garble(nonce_path, 2);
    let user_id = unique("u_");
    let username = unique("garbled");
    let (status, _) = app
        .client
        .send_event(&event(
            "user.registered",
            &user_id,
            json!({"username": username}),
        ))
        .await;
    assert_eq!(status, 202);
    // wait_for_state fails the test if the person is ever `failed`.
    app.client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    assert_eq!(admin.lookup(&user_id).await, Some(admin.user_id(&username)));
    let nonces = proxy
        .seen()
        .iter()
        .filter(|(path, _)| path == nonce_path)
        .count();
    assert!(
        nonces >= 4,
        "two garbled nonces, then a nonce and a registration: {nonces}"
    );
    app.shutdown().await;
    proxy.stop().await;
}
on_both_backends!(an_unreadable_success_is_retried_not_failed);
