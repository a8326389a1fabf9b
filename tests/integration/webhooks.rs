//! The webhook's edge: every refusal with the contract's error body and
//! nothing stored, and idempotent delivery.

use std::time::Duration;

use matrix_provisioner::domain::signature;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::*;

fn assert_error_body(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "no message in {body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "extra fields in {body}");
}

async fn every_refusal_has_the_error_body_and_stores_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let c = &app.client;
    let now = chrono::Utc::now().timestamp();
    let good = serde_json::to_vec(&event(
        "user.registered",
        &unique("u_"),
        json!({"username": "x"}),
    ))
    .unwrap();

    // Missing, garbage, wrong-key and stale signatures.
    let (status, body) = c.post_webhook(&good, None).await.unwrap();
    assert_eq!(status, 401);
    assert_error_body(&body, "missing_signature");
    let (status, body) = c.post_webhook(&good, Some("garbage")).await.unwrap();
    assert_eq!(status, 401);
    assert_error_body(&body, "invalid_signature");
    let (status, body) = c
        .post_webhook(&good, Some(&signature::sign("wrong-secret", now, &good)))
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_error_body(&body, "invalid_signature");
    let (status, body) = c
        .post_webhook(
            &good,
            Some(&signature::sign(WEBHOOK_SECRET, now - 301, &good)),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_error_body(&body, "stale_signature");
    // A signature over another body.
    let other = br#"{"id":"x"}"#;
    let (status, _) = c
        .post_webhook(&good, Some(&signature::sign(WEBHOOK_SECRET, now, other)))
        .await
        .unwrap();
    assert_eq!(status, 401);

    // Correctly signed, but not JSON of the event shape.
    for bad in [&b"not json"[..], b"[]", b"{\"id\": 1}", b""] {
        let (status, body) = c
            .post_webhook(bad, Some(&signature::sign(WEBHOOK_SECRET, now, bad)))
            .await
            .unwrap();
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        assert_error_body(&body, "bad_request");
    }

    // Values that are not acceptable.
    for bad in [
        event("user.registered", "", json!({})),
        event("user.registered", "   ", json!({})),
        json!({"id": "e1", "type": "user.registered", "created_at": "last tuesday", "data": {"user_id": "u"}}),
    ] {
        let bytes = serde_json::to_vec(&bad).unwrap();
        let (status, body) = c
            .post_webhook(&bytes, Some(&signature::sign(WEBHOOK_SECRET, now, &bytes)))
            .await
            .unwrap();
        assert_eq!(status, 422, "{bad}");
        assert_error_body(&body, "unacceptable_value");
    }

    // Over 64 KiB, even correctly signed.
    let mut big = event("user.registered", &unique("u_"), json!({"username": "big"}));
    big["padding"] = json!("x".repeat(65 * 1024));
    let bytes = serde_json::to_vec(&big).unwrap();
    let (status, body) = c
        .post_webhook(&bytes, Some(&signature::sign(WEBHOOK_SECRET, now, &bytes)))
        .await
        .unwrap();
    assert_eq!(status, 413);
    assert_error_body(&body, "payload_too_large");

    // Unknown routes and bad admin tokens speak the same language.
    let r = c.http.get(format!("{}/nope", c.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_error_body(&r.json().await.unwrap(), "not_found");
    let r = c
        .http
        .get(format!("{}/v1/users/u_1", c.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_error_body(&r.json().await.unwrap(), "unauthorized");

    for table in ["events", "people", "jobs"] {
        assert_eq!(app.db.count(table).await, 0, "rows in {table}");
    }
    app.shutdown().await;
}
on_both_backends!(every_refusal_has_the_error_body_and_stores_nothing);

async fn unknown_event_types_are_acknowledged_and_ignored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, body) = app
        .client
        .send_event(&event("user.logged_in", &unique("u_"), json!({})))
        .await;
    assert_eq!(status, 202);
    assert_eq!(body["ignored"], true);
    assert_eq!(body["duplicate"], false);
    assert_eq!(app.db.count("people").await, 0);
    app.shutdown().await;
}
on_both_backends!(unknown_event_types_are_acknowledged_and_ignored);

async fn the_same_event_five_times_at_once_gives_one_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let name = unique("twin");
    let user_id = unique("u_");
    let ev = event(
        "user.registered",
        &user_id,
        json!({"username": name, "display_name": "Twin"}),
    );
    let body = serde_json::to_vec(&ev).unwrap();
    let sig = signature::sign(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), &body);
    let sends = (0..5).map(|_| app.client.post_webhook(&body, Some(&sig)));
    let answers = futures_util::future::join_all(sends).await;
    let mut fresh = 0;
    for answer in answers {
        let (status, body) = answer.unwrap();
        assert_eq!(status, 202, "{body}");
        // Null until the worker settles the name; then the account's id.
        assert!(
            body["matrix_user_id"].is_null() || body["matrix_user_id"] == admin.user_id(&name),
            "{body}"
        );
        assert_eq!(body["event_id"], ev["id"]);
        if body["duplicate"] == false {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one delivery is not a duplicate");
    app.client
        .wait_for_state(&user_id, "provisioned", Duration::from_secs(90))
        .await;
    // Later repeats are duplicates too, and change nothing.
    let (status, again) = app.client.post_webhook(&body, Some(&sig)).await.unwrap();
    assert_eq!((status, &again["duplicate"]), (202, &json!(true)));

    assert_eq!(admin.count_users(&name).await, 1);
    assert_eq!(admin.lookup(&user_id).await, Some(admin.user_id(&name)));
    assert_eq!(app.db.count("events").await, 1);
    app.shutdown().await;
}
on_both_backends!(the_same_event_five_times_at_once_gives_one_account);

/// Event ids are remembered for a month, then forgotten so `events` does not
/// grow for ever; a redelivery after that is taken as new and changes
/// nothing, as the newest change wins field by field.
async fn old_event_ids_are_forgotten_and_their_redelivery_changes_nothing(backend: Backend) {
    let deadline = Duration::from_secs(60);
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let (user_id, name) = (unique("u_"), unique("old"));
    let registered = event_at(
        "user.registered",
        &user_id,
        json!({"username": name, "display_name": "First"}),
        chrono::Utc::now() - chrono::Duration::seconds(1),
    );
    let updated = event("user.updated", &user_id, json!({"display_name": "Newer"}));
    for ev in [&registered, &updated] {
        assert_eq!(app.client.send_event(ev).await.0, 202);
    }
    let ours = admin.user_id(&name);
    eventually("the newer name in Synapse", deadline, || async {
        let user = admin.user(&ours).await?;
        (user["displayname"] == "Newer").then_some(())
    })
    .await;
    // The registration was received long ago; the service starts again.
    let id = registered["id"].as_str().unwrap();
    app.db
        .execute(&format!(
            "UPDATE events SET received_at = 0 WHERE id = '{id}'"
        ))
        .await;
    let db = app.shutdown().await;
    let app = TestApp::spawn_with(db, shared_synapse(), &[]).await;
    eventually("the old id forgotten", deadline, || async {
        (app.db.count("events").await == 1).then_some(())
    })
    .await;

    let calls = app.service_synapse.calls().snapshot();
    let (status, body) = app.client.send_event(&registered).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["duplicate"], false, "{body}");
    assert_eq!(body["matrix_user_id"], ours.as_str());
    let (_, body) = app.client.send_event(&updated).await;
    assert_eq!(body["duplicate"], true, "{body}");
    // Nothing to do: no job, no request to Synapse, the newer name stays.
    let (_, record) = app.client.user(&user_id).await;
    assert_eq!(record["state"], "provisioned", "{record}");
    assert_eq!(app.db.count("jobs").await, 0);
    assert_eq!(
        app.service_synapse.calls().snapshot().since(&calls).total(),
        0
    );
    assert_eq!(admin.user(&ours).await.unwrap()["displayname"], "Newer");
    app.shutdown().await;
}
on_both_backends!(old_event_ids_are_forgotten_and_their_redelivery_changes_nothing);
