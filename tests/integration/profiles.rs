//! Display names and avatars follow DAARION, checked in Synapse: profiles,
//! room membership events, the media repository; and hostile avatar URLs.

use std::time::Duration;

use matrix_provisioner::jobs::{JobOutcome, Outcome};
use matrix_provisioner::store::State;
use serde_json::{json, Value};

use crate::fakes::{png, AvatarHost, HUGE};
use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// Sends `kind` for `user_id` and waits until the work it queued is done.
async fn send_and_settle(app: &TestApp, kind: &str, user_id: &str, data: Value) -> Value {
    let (status, body) = app.client.send_event(&event(kind, user_id, data)).await;
    assert_eq!(status, 202, "{body}");
    app.client
        .wait_for_state(user_id, "provisioned", DEADLINE)
        .await
}

async fn a_rename_reaches_the_profile_and_room_membership(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = SynapseAdmin::shared().await;
    let name = unique("renamed");
    let user_id = unique("u_");
    let record = send_and_settle(
        &app,
        "user.registered",
        &user_id,
        json!({"username": name, "display_name": "Before"}),
    )
    .await;
    let mxid = record["matrix_user_id"].as_str().unwrap().to_string();
    let room = admin.room_with(&mxid).await;
    admin
        .wait_for_membership(&room, &mxid, "displayname", &json!("Before"))
        .await;

    let calls = app.service_synapse.calls().snapshot();
    send_and_settle(
        &app,
        "user.updated",
        &user_id,
        json!({"display_name": "Після перейменування"}),
    )
    .await;
    let user = admin.user(&mxid).await.unwrap();
    assert_eq!(user["displayname"], "Після перейменування");
    let member = admin
        .wait_for_membership(&room, &mxid, "displayname", &json!("Після перейменування"))
        .await;
    assert_eq!(member["membership"], "join");
    // Only what changed was sent: one display-name PUT, no avatar, nothing else.
    let sent = app.service_synapse.calls().snapshot().since(&calls);
    assert_eq!(sent.nonzero(), vec![("user_put", 1)], "{sent:?}");

    // The same name again, newer: nothing to send.
    let calls = app.service_synapse.calls().snapshot();
    let (status, _) = app
        .client
        .send_event(&event(
            "user.updated",
            &user_id,
            json!({"display_name": "Після перейменування"}),
        ))
        .await;
    assert_eq!(status, 202);
    app.client
        .wait_for_state(&user_id, "provisioned", DEADLINE)
        .await;
    assert_eq!(
        app.service_synapse.calls().snapshot().since(&calls).total(),
        0
    );

    // Cleared in DAARION: Matrix shows the localpart, as for any account
    // created without a name.
    send_and_settle(
        &app,
        "user.updated",
        &user_id,
        json!({"display_name": null}),
    )
    .await;
    assert_eq!(admin.user(&mxid).await.unwrap()["displayname"], name);
    admin
        .wait_for_membership(&room, &mxid, "displayname", &json!(name))
        .await;
    app.shutdown().await;
}
on_both_backends!(a_rename_reaches_the_profile_and_room_membership);

async fn an_avatar_is_uploaded_once_per_distinct_image(backend: Backend) {
    let host = AvatarHost::start();
    host.put("a.png", png(1));
    host.put("a-copy.png", png(1));
    host.put("b.png", png(2));
    let service_user = unique("prov");
    let allowed = format!("127.0.0.1:{}", host.port);
    let app = TestApp::spawn_with(
        TestDb::new(backend).await,
        shared_synapse(),
        &[
            ("AVATAR_ALLOWED_HOSTS", &allowed),
            ("SYNAPSE_ADMIN_USER", &service_user),
        ],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let uploader = admin.user_id(&service_user);
    let user_id = unique("u_");
    let record = send_and_settle(
        &app,
        "user.registered",
        &user_id,
        json!({"username": unique("pic"), "display_name": "Pic", "avatar_url": host.url("/img/a.png")}),
    )
    .await;
    let mxid = record["matrix_user_id"].as_str().unwrap().to_string();
    let first = admin.user(&mxid).await.unwrap()["avatar_url"]
        .as_str()
        .expect("an avatar is set")
        .to_string();
    assert!(first.starts_with("mxc://"), "{first}");
    assert_eq!(record["avatar_mxc"], first.as_str());
    assert_eq!(admin.media(&first).await, png(1), "the media bytes match");
    assert_eq!(admin.uploads_by(&uploader).await, 1);
    let room = admin.room_with(&mxid).await;
    admin
        .wait_for_membership(&room, &mxid, "avatar_url", &json!(first))
        .await;

    // Another URL, the same bytes: downloaded, not uploaded, profile untouched.
    let calls = app.service_synapse.calls().snapshot();
    let record = send_and_settle(
        &app,
        "user.updated",
        &user_id,
        json!({"avatar_url": host.url("/img/a-copy.png")}),
    )
    .await;
    assert_eq!(host.hits("/img/a-copy.png"), 1);
    assert_eq!(record["avatar_mxc"], first.as_str());
    assert_eq!(
        admin.user(&mxid).await.unwrap()["avatar_url"],
        first.as_str()
    );
    assert_eq!(admin.uploads_by(&uploader).await, 1, "nothing new uploaded");
    assert_eq!(
        app.service_synapse.calls().snapshot().since(&calls).total(),
        0
    );

    // Other bytes: uploaded once, set once.
    let calls = app.service_synapse.calls().snapshot();
    let record = send_and_settle(
        &app,
        "user.updated",
        &user_id,
        json!({"avatar_url": host.url("/img/b.png")}),
    )
    .await;
    let second = admin.user(&mxid).await.unwrap()["avatar_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second, first);
    assert_eq!(record["avatar_mxc"], second.as_str());
    assert_eq!(admin.media(&second).await, png(2));
    assert_eq!(
        admin.uploads_by(&uploader).await,
        2,
        "one upload for the new image"
    );
    assert_eq!(
        app.service_synapse
            .calls()
            .snapshot()
            .since(&calls)
            .nonzero(),
        vec![("user_put", 1), ("media_upload", 1)]
    );
    admin
        .wait_for_membership(&room, &mxid, "avatar_url", &json!(second))
        .await;

    // The same URL again (a newer event): not even downloaded.
    send_and_settle(
        &app,
        "user.updated",
        &user_id,
        json!({"avatar_url": host.url("/img/b.png"), "display_name": "Pic"}),
    )
    .await;
    assert_eq!(host.hits("/img/b.png"), 1);

    // Cleared: no avatar in Matrix.
    let record = send_and_settle(&app, "user.updated", &user_id, json!({"avatar_url": null})).await;
    assert_eq!(record["avatar_mxc"], Value::Null);
    assert_eq!(admin.user(&mxid).await.unwrap()["avatar_url"], Value::Null);
    admin
        .wait_for_membership(&room, &mxid, "avatar_url", &Value::Null)
        .await;
    assert_eq!(admin.uploads_by(&uploader).await, 2);
    app.shutdown().await;
}
on_both_backends!(an_avatar_is_uploaded_once_per_distinct_image);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_avatar_urls_are_refused_and_the_name_still_applies() {
    // `host` is allow-listed (by port); `other` serves a real PNG but is
    // not, so only the policy can be why it is refused.
    let host = AvatarHost::start();
    let other = AvatarHost::start();
    other.put("a.png", png(3));
    let service_user = unique("prov");
    let allowed = format!("127.0.0.1:{}", host.port);
    let app = TestApp::spawn_with(
        TestDb::new(Backend::Sqlite).await,
        shared_synapse(),
        &[
            ("AVATAR_ALLOWED_HOSTS", &allowed),
            ("SYNAPSE_ADMIN_USER", &service_user),
        ],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let cases = [
        (other.url("/img/a.png"), "127.0.0.1 is a loopback address"),
        (
            format!("http://localhost:{}/img/a.png", other.port),
            "localhost resolves to",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "169.254.169.254 is a link-local address",
        ),
        (
            format!("http://[::1]:{}/img/a.png", other.port),
            "::1 is a loopback address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{}/img/a.png", other.port),
            "IPv4-mapped",
        ),
        (
            host.url("/redirect?to=http://10.20.30.40/a.png"),
            "10.20.30.40 is a private address",
        ),
        (
            host.url(&format!("/redirect?to={}", other.url("/img/a.png"))),
            "127.0.0.1 is a loopback address",
        ),
        (host.url("/huge"), "larger than 5242880 bytes"),
        (host.url("/huge-declared"), "larger than 5242880 bytes"),
        (host.url("/page.html"), "not a PNG, JPEG, GIF or WebP image"),
        ("file:///etc/passwd".to_string(), "only http and https"),
    ];
    let people: Vec<(String, String)> = (0..cases.len())
        .map(|i| (unique("u_"), format!("Named {i}")))
        .collect();
    for ((url, _), (user_id, name)) in cases.iter().zip(&people) {
        let (status, body) = app
            .client
            .send_event(&event(
                "user.registered",
                user_id,
                json!({"username": unique("hostile"), "display_name": name, "avatar_url": url}),
            ))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    for ((url, reason), (user_id, name)) in cases.iter().zip(&people) {
        // Provisioned: a refused avatar blocks nothing else.
        let record = app
            .client
            .wait_for_state(user_id, "provisioned", DEADLINE)
            .await;
        let error = record["avatar_error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{url}: {error:?} should say {reason:?}"
        );
        assert_eq!(record["avatar_mxc"], Value::Null, "{url}");
        let user = admin
            .user(record["matrix_user_id"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(user["displayname"], name.as_str(), "{url}");
        assert_eq!(user["avatar_url"], Value::Null, "{url}");
    }
    assert_eq!(
        admin.uploads_by(&admin.user_id(&service_user)).await,
        0,
        "nothing uploaded"
    );
    let contacted: usize = other.hits.lock().unwrap().values().sum();
    assert_eq!(contacted, 0, "the refused host was never contacted");
    // Both huge bodies were cut off well before their end.
    let sent = host
        .huge_bytes_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < HUGE,
        "{sent} bytes were produced for two 50 MiB bodies"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_avatar_host_is_reported_and_does_not_block() {
    let port = free_port(); // nothing listens there
    let allowed = format!("127.0.0.1:{port}");
    let app = TestApp::spawn_with(
        TestDb::new(Backend::Sqlite).await,
        shared_synapse(),
        &[("AVATAR_ALLOWED_HOSTS", &allowed)],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let user_id = unique("u_");
    let record = send_and_settle(
        &app,
        "user.registered",
        &user_id,
        json!({"username": unique("down"), "display_name": "Still Named",
               "avatar_url": format!("http://127.0.0.1:{port}/a.png")}),
    )
    .await;
    let error = record["avatar_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot connect"), "{error}");
    assert_eq!(
        record["last_error"], error,
        "operators see it as the last error"
    );
    let user = admin
        .user(record["matrix_user_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(user["displayname"], "Still Named");
    assert_eq!(user["avatar_url"], Value::Null);
    app.shutdown().await;
}

/// Synapse can answer 429 to a display-name PUT after saving the name. The
/// retry must see that and not write (and rewrite every room membership)
/// again: after a failed attempt the worker reads the profile first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_reads_the_profile_before_writing_it_again() {
    init_logs();
    let admin = SynapseAdmin::shared().await;
    let (app, db) = idle_app(&admin).await;
    let name = unique("retry");
    let user_id = unique("u_");
    store_event(
        &app,
        &event(
            "user.registered",
            &user_id,
            json!({"username": name, "display_name": "First"}),
        ),
    )
    .await;
    assert_eq!(
        app.worker().run_one().await.unwrap(),
        Some(JobOutcome::Person(Outcome::Done(State::Provisioned)))
    );
    let mxid = admin.user_id(&name);

    // The rename's PUT reached Synapse, its answer did not: what a 429
    // after the save looks like from here (an attempt counted as failed).
    store_event(
        &app,
        &event("user.updated", &user_id, json!({"display_name": "Second"})),
    )
    .await;
    let (status, _) = admin
        .put(
            &format!("/_synapse/admin/v2/users/{mxid}"),
            &json!({"displayname": "Second"}),
        )
        .await;
    assert_eq!(status, 200);
    db.execute(&format!(
        "UPDATE jobs SET attempts = 1 WHERE kind = 'person' AND subject = '{user_id}'"
    ))
    .await;

    let calls = app.synapse().calls().snapshot();
    assert_eq!(
        app.worker().run_one().await.unwrap(),
        Some(JobOutcome::Person(Outcome::Done(State::Provisioned)))
    );
    let sent = app.synapse().calls().snapshot().since(&calls);
    assert_eq!(
        sent.nonzero(),
        vec![("user_get", 1)],
        "read, not written: {sent:?}"
    );
    assert_eq!(admin.user(&mxid).await.unwrap()["displayname"], "Second");

    // Without that failure, a change is written straight away.
    store_event(
        &app,
        &event("user.updated", &user_id, json!({"display_name": "Third"})),
    )
    .await;
    let calls = app.synapse().calls().snapshot();
    app.worker().run_one().await.unwrap();
    let sent = app.synapse().calls().snapshot().since(&calls);
    assert_eq!(sent.nonzero(), vec![("user_put", 1)], "{sent:?}");
    assert_eq!(admin.user(&mxid).await.unwrap()["displayname"], "Third");
}
