//! City Rooms (issue 12, CONTRACT.md sections 8 and 9) against the real
//! Synapse, which loads the registration file the service printed (see
//! scripts/test.sh: one application service per back end). Everything is
//! read back from Synapse as the bot sees it: room state, members, power
//! levels, the directory and aliases.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use matrix_provisioner::domain::signature;
use serde_json::{json, Value};

use crate::fakes::serve_locally;
use crate::on_both_backends;
use crate::support::*;

pub(crate) const CITY_SECRET: &str = "test-city-secret";
pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// Where Synapse reaches the back end's application service (the port the
/// OpenID tests use too: one test at a time binds it).
pub(crate) fn appservice_port(backend: Backend) -> u16 {
    let name = format!("MP_TEST_OIDC_PORT_{}", backend_name(backend).to_uppercase());
    required_env(&name).parse().unwrap()
}

pub(crate) fn as_token(backend: Backend) -> String {
    format!(
        "{}-{}",
        required_env("MP_TEST_AS_TOKEN"),
        backend_name(backend)
    )
}

pub(crate) fn hs_token(backend: Backend) -> String {
    format!(
        "{}-{}",
        required_env("MP_TEST_HS_TOKEN"),
        backend_name(backend)
    )
}

/// The settings of the back end's application service, as registered.
pub(crate) fn city_env(backend: Backend, api: Option<&str>) -> Vec<(String, String)> {
    let b = backend_name(backend);
    let mut env = vec![
        ("CITY_WEBHOOK_SECRET".to_string(), CITY_SECRET.to_string()),
        ("APPSERVICE_ID".into(), format!("daarion-{b}")),
        ("APPSERVICE_BOT".into(), format!("daarion-{b}")),
        ("AGENT_LOCALPART_PREFIX".into(), format!("agent-{b}-")),
        ("ROOM_ALIAS_PREFIX".into(), format!("city-{b}-")),
        ("APPSERVICE_AS_TOKEN".into(), as_token(backend)),
        ("APPSERVICE_HS_TOKEN".into(), hs_token(backend)),
        (
            "APPSERVICE_URL".into(),
            format!("http://127.0.0.1:{}", appservice_port(backend)),
        ),
        ("JOB_LEASE_SECONDS".into(), "3".into()),
    ];
    if let Some(api) = api {
        env.push(("CITY_API_URL".into(), api.to_string()));
        env.push(("CITY_API_TOKEN".into(), "city-api-token".into()));
    }
    env
}

pub(crate) async fn spawn_city(backend: Backend, db: TestDb, api: Option<&str>) -> TestApp {
    let env = city_env(backend, api);
    let overrides: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestApp::spawn_with(db, shared_synapse(), &overrides).await
}

pub(crate) fn city_event(kind: &str, data: Value) -> Value {
    json!({
        "id": unique("cevt_"),
        "type": kind,
        "created_at": chrono::Utc::now().to_rfc3339(),
        "data": data,
    })
}

pub(crate) async fn send_city(client: &Client, event: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    let sig = signature::sign(CITY_SECRET, chrono::Utc::now().timestamp(), &body);
    let response = client
        .http
        .post(format!("{}/v1/webhooks/city", client.base))
        .header("Content-Type", "application/json")
        .header("X-Daarion-Signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn admin_call(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client
        .http
        .request(method, format!("{}{path}", client.base))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn room_record(client: &Client, room_id: &str) -> (u16, Value) {
    admin_call(
        client,
        reqwest::Method::GET,
        &format!("/v1/rooms/{room_id}"),
        None,
    )
    .await
}

pub(crate) async fn wait_room_state(client: &Client, room_id: &str, state: &str) -> Value {
    eventually(&format!("room {room_id} to be {state}"), WAIT, || async {
        let (status, body) = room_record(client, room_id).await;
        assert!(
            state == "failed" || body["state"] != "failed",
            "{room_id} failed instead of becoming {state}: {body}"
        );
        (status == 200 && body["state"] == state).then_some(body)
    })
    .await
}

/// A person with an account: their Matrix id.
pub(crate) async fn provisioned(client: &Client, username: &str) -> (String, String) {
    let user_id = unique("u_");
    let (status, _) = client
        .send_event(&event(
            "user.registered",
            &user_id,
            json!({"username": username}),
        ))
        .await;
    assert_eq!(status, 202);
    let person = client.wait_for_state(&user_id, "provisioned", WAIT).await;
    (
        user_id,
        person["matrix_user_id"].as_str().unwrap().to_string(),
    )
}

/// Synapse as the application service's bot sees it.
pub(crate) struct Bot {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Bot {
    pub(crate) fn new(backend: Backend) -> Bot {
        Bot {
            http: reqwest::Client::new(),
            base: shared_synapse().url,
            token: as_token(backend),
        }
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The room's state events by (type, state_key).
    pub(crate) async fn state(&self, room_id: &str) -> HashMap<(String, String), Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/rooms/{}/state", enc(room_id)),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    (
                        e["type"].as_str().unwrap().to_string(),
                        e["state_key"].as_str().unwrap().to_string(),
                    ),
                    e["content"].clone(),
                )
            })
            .collect()
    }

    pub(crate) async fn content(&self, room_id: &str, kind: &str) -> Value {
        self.state(room_id)
            .await
            .remove(&(kind.to_string(), String::new()))
            .unwrap_or(Value::Null)
    }

    pub(crate) async fn membership(&self, room_id: &str, user: &str) -> Option<String> {
        self.state(room_id)
            .await
            .get(&("m.room.member".to_string(), user.to_string()))
            .and_then(|c| c["membership"].as_str().map(str::to_string))
    }

    pub(crate) async fn wait_membership(&self, room_id: &str, user: &str, membership: &str) {
        eventually(&format!("{user} to be {membership}"), WAIT, || async {
            (self.membership(room_id, user).await.as_deref() == Some(membership)).then_some(())
        })
        .await
    }

    pub(crate) async fn power(&self, room_id: &str, user: &str) -> Option<i64> {
        self.content(room_id, "m.room.power_levels").await["users"][user].as_i64()
    }

    pub(crate) async fn alias(&self, alias: &str) -> Option<String> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/directory/room/{}", enc(alias)),
                None,
            )
            .await;
        (status == 200).then(|| body["room_id"].as_str().unwrap().to_string())
    }

    pub(crate) async fn directory(&self, room_id: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/_matrix/client/v3/directory/list/room/{}", enc(room_id)),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["visibility"].as_str().unwrap().to_string()
    }

    pub(crate) async fn put_state(&self, room_id: &str, kind: &str, content: Value) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room_id)),
                Some(content),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

pub(crate) fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Rooms on the server whose name contains `name` (Synapse's own count).
async fn rooms_named(admin: &SynapseAdmin, name: &str) -> u64 {
    let (status, body) = admin
        .get(&format!(
            "/_synapse/admin/v1/rooms?search_term={}",
            enc(name)
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["total_rooms"].as_u64().unwrap()
}

// ------------------------------------------------------------------ tests

async fn a_city_room_and_its_members_follow_the_city(backend: Backend) {
    let app = spawn_city(backend, TestDb::new(backend).await, None).await;
    let bot = Bot::new(backend);
    let b = backend_name(backend);
    let (a_id, a_mxid) = provisioned(&app.client, &unique("ann")).await;

    let room_id = unique("r_");
    let slug = unique("kyiv-");
    let name = format!("Київ · {slug}");
    let created = city_event(
        "room.created",
        json!({"room_id": room_id, "slug": slug, "name": name, "topic": "Центр",
               "visibility": "public"}),
    );
    assert_eq!(send_city(&app.client, &created).await.0, 202);
    let b_id = unique("u_");
    for (member, role) in [(&a_id, "owner"), (&b_id, "moderator")] {
        let e = city_event(
            "room.member_added",
            json!({"room_id": room_id, "member_id": member, "role": role}),
        );
        assert_eq!(send_city(&app.client, &e).await.0, 202);
    }
    // A repeated event id changes nothing.
    let (status, body) = send_city(&app.client, &created).await;
    assert_eq!((status, body["duplicate"].clone()), (202, json!(true)));

    let record = wait_room_state(&app.client, &room_id, "ready").await;
    let matrix_room = record["matrix_room_id"].as_str().unwrap().to_string();
    let alias = format!("#city-{b}-{slug}:{}", shared_synapse().server_name);
    assert_eq!(record["alias"], json!(alias));
    assert_eq!(bot.alias(&alias).await, Some(matrix_room.clone()));
    bot.wait_membership(&matrix_room, &a_mxid, "join").await;
    assert_eq!(
        bot.content(&matrix_room, "m.room.name").await["name"],
        json!(name)
    );
    assert_eq!(
        bot.content(&matrix_room, "m.room.topic").await["topic"],
        json!("Центр")
    );
    assert_eq!(
        bot.content(&matrix_room, "m.room.join_rules").await["join_rule"],
        json!("public")
    );
    assert_eq!(bot.directory(&matrix_room).await, "public");
    let bot_id = format!("@daarion-{b}:{}", shared_synapse().server_name);
    assert_eq!(bot.power(&matrix_room, &a_mxid).await, Some(100));
    // From room version 12 on the creator (the bot) holds unlimited power
    // and must not be listed; before, it is listed at 100.
    let version = bot.content(&matrix_room, "m.room.create").await["room_version"]
        .as_str()
        .unwrap()
        .parse::<u32>()
        .unwrap_or(1);
    let bot_power = if version >= 12 { None } else { Some(100) };
    assert_eq!(bot.power(&matrix_room, &bot_id).await, bot_power);
    assert_eq!(record["members"], json!({"listed": 2, "with_account": 1}));

    // The moderator gets an account later: joined then, with power 50.
    let (status, _) = app
        .client
        .send_event(&event(
            "user.registered",
            &b_id,
            json!({"username": unique("bob")}),
        ))
        .await;
    assert_eq!(status, 202);
    let b_mxid = app.client.wait_for_state(&b_id, "provisioned", WAIT).await["matrix_user_id"]
        .as_str()
        .unwrap()
        .to_string();
    bot.wait_membership(&matrix_room, &b_mxid, "join").await;
    eventually("the moderator's power", WAIT, || async {
        (bot.power(&matrix_room, &b_mxid).await == Some(50)).then_some(())
    })
    .await;

    // A role change and a removal.
    let e = city_event(
        "room.member_added",
        json!({"room_id": room_id, "member_id": b_id, "role": "member"}),
    );
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    let e = city_event(
        "room.member_removed",
        json!({"room_id": room_id, "member_id": a_id}),
    );
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    bot.wait_membership(&matrix_room, &a_mxid, "leave").await;
    eventually("the role change", WAIT, || async {
        let levels = bot.content(&matrix_room, "m.room.power_levels").await;
        (levels["users"].get(&b_mxid).is_none() && levels["users"].get(&a_mxid).is_none())
            .then_some(())
    })
    .await;
    assert_eq!(
        bot.membership(&matrix_room, &b_mxid).await.as_deref(),
        Some("join")
    );

    // Name and topic follow; an older event does not undo a newer one.
    let older = json!({
        "id": unique("cevt_"), "type": "room.updated",
        "created_at": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
        "data": {"room_id": room_id, "name": "Old name"},
    });
    let newer = city_event("room.updated", json!({"room_id": room_id, "topic": null}));
    assert_eq!(send_city(&app.client, &newer).await.0, 202);
    assert_eq!(send_city(&app.client, &older).await.0, 202);
    eventually("the topic to be cleared", WAIT, || async {
        let topic = bot.content(&matrix_room, "m.room.topic").await;
        (topic.is_null() || topic["topic"] == json!("")).then_some(())
    })
    .await;
    wait_room_state(&app.client, &room_id, "ready").await;
    assert_eq!(
        bot.content(&matrix_room, "m.room.name").await["name"],
        json!(name)
    );
    let admin = SynapseAdmin::shared().await;
    assert_eq!(rooms_named(&admin, &slug).await, 1, "one Matrix room");

    let metrics = metrics_text(&app.client).await;
    assert!(
        metrics.contains(r#"matrix_provisioner_rooms{state="ready"} 1"#),
        "{metrics}"
    );
    assert!(metrics
        .contains(r#"matrix_provisioner_jobs_total{kind="room",outcome="done",state="ready"}"#));
    app.shutdown().await;
}
on_both_backends!(a_city_room_and_its_members_follow_the_city);

async fn a_private_room_keeps_strangers_out_and_a_deleted_room_closes(backend: Backend) {
    let app = spawn_city(backend, TestDb::new(backend).await, None).await;
    let bot = Bot::new(backend);
    let admin = SynapseAdmin::shared().await;
    let (a_id, a_mxid) = provisioned(&app.client, &unique("ann")).await;
    let room_id = unique("r_");
    let slug = unique("private-");
    for e in [
        city_event(
            "room.created",
            json!({"room_id": room_id, "slug": slug, "name": slug, "visibility": "private"}),
        ),
        city_event(
            "room.member_added",
            json!({"room_id": room_id, "member_id": a_id}),
        ),
    ] {
        assert_eq!(send_city(&app.client, &e).await.0, 202);
    }
    let record = wait_room_state(&app.client, &room_id, "ready").await;
    let matrix_room = record["matrix_room_id"].as_str().unwrap().to_string();
    bot.wait_membership(&matrix_room, &a_mxid, "join").await;
    assert_eq!(
        bot.content(&matrix_room, "m.room.join_rules").await["join_rule"],
        json!("invite")
    );
    assert_eq!(bot.directory(&matrix_room).await, "private");
    assert_eq!(
        bot.power(&matrix_room, &a_mxid).await,
        None,
        "members have power 0"
    );

    // Someone who is not a member gets in by hand; the next run removes them.
    let stranger = unique("stranger");
    admin.register_raw(&stranger, false, true).await.unwrap();
    let stranger = admin.user_id(&stranger);
    let (status, body) = bot
        .call(
            reqwest::Method::POST,
            &format!("/_synapse/admin/v1/join/{}", enc(&matrix_room)),
            Some(json!({"user_id": stranger})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = admin_call(
        &app.client,
        reqwest::Method::POST,
        &format!("/v1/admin/rooms/{room_id}/retry"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    bot.wait_membership(&matrix_room, &stranger, "leave").await;
    assert_eq!(
        bot.membership(&matrix_room, &a_mxid).await.as_deref(),
        Some("join")
    );

    // Deleted: members out, alias freed, closed; the room and its history stay.
    let alias = record["alias"].as_str().unwrap().to_string();
    let e = city_event("room.deleted", json!({"room_id": room_id}));
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    wait_room_state(&app.client, &room_id, "closed").await;
    assert_eq!(
        bot.membership(&matrix_room, &a_mxid).await.as_deref(),
        Some("leave")
    );
    assert_eq!(bot.alias(&alias).await, None, "the alias is freed");
    assert_eq!(
        bot.content(&matrix_room, "m.room.join_rules").await["join_rule"],
        json!("invite")
    );
    assert_eq!(bot.directory(&matrix_room).await, "private");
    assert_eq!(rooms_named(&admin, &slug).await, 1, "history kept");

    // Created anew (a newer event): the same room opens again, with its
    // alias and its members.
    let e = city_event(
        "room.created",
        json!({"room_id": room_id, "slug": slug, "name": slug, "visibility": "private"}),
    );
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    wait_room_state(&app.client, &room_id, "ready").await;
    assert_eq!(bot.alias(&alias).await, Some(matrix_room.clone()));
    bot.wait_membership(&matrix_room, &a_mxid, "join").await;
    assert_eq!(rooms_named(&admin, &slug).await, 1, "still one room");

    // Unknown rooms and bad input.
    assert_eq!(room_record(&app.client, "r_nobody").await.0, 404);
    let (status, body) = send_city(
        &app.client,
        &city_event(
            "room.updated",
            json!({"room_id": room_id, "visibility": "secret"}),
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (422, json!("unacceptable_value"))
    );
    let forged = city_event("room.deleted", json!({"room_id": room_id}));
    let body = serde_json::to_vec(&forged).unwrap();
    let sig = signature::sign("wrong", chrono::Utc::now().timestamp(), &body);
    let response = app
        .client
        .http
        .post(format!("{}/v1/webhooks/city", app.client.base))
        .header("X-Daarion-Signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.shutdown().await;
}
on_both_backends!(a_private_room_keeps_strangers_out_and_a_deleted_room_closes);

/// SIGKILL after Synapse created the room and before the service heard of
/// it: the restarted service finds the room by its alias.
async fn one_room_even_when_killed_after_synapse_created_it(backend: Backend) {
    let synapse = shared_synapse();
    let proxy = SynapseProxy::start(&synapse.url);
    let db = TestDb::new(backend).await;
    let mut env = base_env(&db, &synapse);
    env.insert("SYNAPSE_URL".into(), proxy.url.clone());
    env.extend(city_env(backend, None));
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("service.log");
    proxy.hold_answers("/_matrix/client/v3/createRoom", Duration::from_secs(120));
    let mut service = ChildService::start(&env, free_port(), &log).await;

    let room_id = unique("r_");
    let slug = unique("crash-");
    let e = city_event(
        "room.created",
        json!({"room_id": room_id, "slug": slug, "name": slug, "visibility": "public"}),
    );
    assert_eq!(send_city(&service.client, &e).await.0, 202);
    eventually("Synapse to create the room", WAIT, || async {
        (proxy.held() == 1).then_some(())
    })
    .await;
    service.kill();
    let admin = SynapseAdmin::shared().await;
    assert_eq!(rooms_named(&admin, &slug).await, 1, "Synapse created it");

    proxy.hold_answers("/nothing", Duration::ZERO);
    let service = ChildService::start(&env, free_port(), &log).await;
    let record = wait_room_state(&service.client, &room_id, "ready").await;
    assert_eq!(rooms_named(&admin, &slug).await, 1, "still one room");
    let bot = Bot::new(backend);
    assert_eq!(
        bot.alias(record["alias"].as_str().unwrap())
            .await
            .as_deref(),
        record["matrix_room_id"].as_str()
    );
    drop(service);
    proxy.stop().await;
}
on_both_backends!(one_room_even_when_killed_after_synapse_created_it);

async fn two_replicas_receiving_the_same_room_created_make_one_room(backend: Backend) {
    let db = TestDb::new(backend).await;
    let shared = db.shared();
    let one = spawn_city(backend, db, None).await;
    let two = spawn_city(backend, shared, None).await;
    let room_id = unique("r_");
    let slug = unique("twice-");
    let data = json!({"room_id": room_id, "slug": slug, "name": slug, "visibility": "public"});
    let same = city_event("room.created", data.clone());
    let other_id = city_event("room.created", data);
    let (a, b, c) = tokio::join!(
        send_city(&one.client, &same),
        send_city(&two.client, &same),
        send_city(&two.client, &other_id),
    );
    assert_eq!((a.0, b.0, c.0), (202, 202, 202));
    let one_record = wait_room_state(&one.client, &room_id, "ready").await;
    let two_record = wait_room_state(&two.client, &room_id, "ready").await;
    assert_eq!(one_record["matrix_room_id"], two_record["matrix_room_id"]);
    let admin = SynapseAdmin::shared().await;
    assert_eq!(rooms_named(&admin, &slug).await, 1);
    two.shutdown().await;
    one.shutdown().await;
}
on_both_backends!(two_replicas_receiving_the_same_room_created_make_one_room);

/// DAARION.city's room API, as the reconcile pass reads it.
#[derive(Clone, Default)]
struct FakeCity {
    rooms: Arc<Mutex<Vec<Value>>>,
}

impl FakeCity {
    fn start(&self) -> String {
        let rooms = Arc::clone(&self.rooms);
        let (port, _handle) = serve_locally(move |cfg| {
            let rooms = Arc::clone(&rooms);
            cfg.route(
                "/v1/rooms",
                web::get().to(move |req: actix_web::HttpRequest| {
                    let rooms = Arc::clone(&rooms);
                    async move {
                        let authorized = req
                            .headers()
                            .get("authorization")
                            .is_some_and(|v| v == "Bearer city-api-token");
                        if !authorized {
                            return HttpResponse::Unauthorized().finish();
                        }
                        let since = url::form_urlencoded::parse(req.query_string().as_bytes())
                            .find(|(k, _)| k == "updated_since")
                            .and_then(|(_, v)| chrono::DateTime::parse_from_rfc3339(&v).ok());
                        let listed: Vec<Value> = rooms
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|r| {
                                since.is_none_or(|since| {
                                    chrono::DateTime::parse_from_rfc3339(
                                        r["updated_at"].as_str().unwrap(),
                                    )
                                    .unwrap()
                                        >= since
                                })
                            })
                            .cloned()
                            .collect();
                        HttpResponse::Ok().json(json!({"rooms": listed, "next_cursor": null}))
                    }
                }),
            );
        });
        format!("http://127.0.0.1:{port}")
    }
}

async fn room_sync(client: &Client, full: bool) -> Value {
    let (status, body) = admin_call(
        client,
        reqwest::Method::POST,
        "/v1/admin/room-sync",
        Some(json!({"full": full})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn the_reconcile_pass_backfills_puts_hand_edits_back_and_is_free_when_nothing_changed(
    backend: Backend,
) {
    let city = FakeCity::default();
    let api = city.start();
    let app = spawn_city(backend, TestDb::new(backend).await, Some(&api)).await;
    let bot = Bot::new(backend);
    let (a_id, a_mxid) = provisioned(&app.client, &unique("ann")).await;
    let (r1, r2) = (unique("r_"), unique("r_"));
    let (s1, s2) = (unique("open-"), unique("closed-"));
    let updated_at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    *city.rooms.lock().unwrap() = vec![
        json!({"room_id": r1, "slug": s1, "name": s1, "topic": "t", "visibility": "public",
               "members": [{"member_id": a_id, "role": "owner"}],
               "updated_at": updated_at, "deleted": false}),
        json!({"room_id": r2, "slug": s2, "name": s2, "visibility": "private",
               "members": [{"member_id": a_id}],
               "updated_at": updated_at, "deleted": false}),
    ];

    // Rooms that existed before the service: created by the first pass.
    let summary = room_sync(&app.client, false).await;
    assert_eq!(summary["rooms_checked"], 2, "{summary}");
    assert_eq!(summary["created"], 2, "{summary}");
    assert_eq!(summary["members_joined"], 2, "{summary}");
    assert_eq!(summary["failures"], 0, "{summary}");
    let m1 = room_record(&app.client, &r1).await.1["matrix_room_id"]
        .as_str()
        .unwrap()
        .to_string();
    let m2 = room_record(&app.client, &r2).await.1["matrix_room_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bot.power(&m1, &a_mxid).await, Some(100));

    // Nothing changed: an incremental pass sends Synapse nothing.
    let summary = room_sync(&app.client, false).await;
    assert_eq!(summary["synapse_requests"], 0, "{summary}");
    assert_eq!(summary["changed"], 0, "{summary}");

    // Hand edits in Matrix: only a full pass looks, and puts them back.
    bot.put_state(&m1, "m.room.name", json!({"name": "Vandalised"}))
        .await;
    let mut levels = bot.content(&m1, "m.room.power_levels").await;
    levels["users"][&a_mxid] = json!(0);
    bot.put_state(&m1, "m.room.power_levels", levels).await;
    let (status, body) = bot
        .call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&m2)),
            Some(json!({"user_id": a_mxid})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let summary = room_sync(&app.client, false).await;
    assert_eq!(summary["synapse_requests"], 0, "{summary}");

    let summary = room_sync(&app.client, true).await;
    assert_eq!(summary["members_joined"], 1, "{summary}");
    assert_eq!(summary["power_changes"], 1, "{summary}");
    assert_eq!(summary["failures"], 0, "{summary}");
    assert_eq!(bot.content(&m1, "m.room.name").await["name"], json!(s1));
    assert_eq!(bot.power(&m1, &a_mxid).await, Some(100));
    assert_eq!(bot.membership(&m2, &a_mxid).await.as_deref(), Some("join"));

    // A full pass with nothing to put back only reads each room's state.
    let summary = room_sync(&app.client, true).await;
    assert_eq!(summary["synapse_writes"], 0, "{summary}");
    assert_eq!(summary["synapse_requests"], 2, "{summary}");

    // A change in the listing: a member removed from the private room.
    let later = chrono::Utc::now().to_rfc3339();
    {
        let mut rooms = city.rooms.lock().unwrap();
        rooms[1]["members"] = json!([]);
        rooms[1]["updated_at"] = json!(later);
    }
    let summary = room_sync(&app.client, false).await;
    assert_eq!(summary["changed"], 1, "{summary}");
    assert_eq!(summary["members_removed"], 1, "{summary}");
    assert_eq!(bot.membership(&m2, &a_mxid).await.as_deref(), Some("leave"));

    // The cron's command: same pass, JSON summary, exit status 0.
    let mut env = app.env.clone();
    env.remove("BIND");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_matrix-provisioner"))
        .arg("sync-rooms")
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["synapse_requests"], 0, "{summary}");
    app.shutdown().await;
}
on_both_backends!(
    the_reconcile_pass_backfills_puts_hand_edits_back_and_is_free_when_nothing_changed
);

/// The registration file, the homeserver's calls, and names people never get.
async fn the_service_is_an_application_service(backend: Backend) {
    let b = backend_name(backend);
    let env: HashMap<String, String> = city_env(backend, None)
        .into_iter()
        .chain([
            (
                "SYNAPSE_SERVER_NAME".to_string(),
                shared_synapse().server_name,
            ),
            ("SYNAPSE_REGISTRATION_SECRET".to_string(), "x".to_string()),
        ])
        .collect();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_matrix-provisioner"))
        .arg("appservice-registration")
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(output.status.success());
    let file = String::from_utf8(output.stdout).unwrap();
    for line in [
        format!("id: \"daarion-{b}\""),
        "rate_limited: false".to_string(),
        "receive_ephemeral: true".to_string(),
        format!("sender_localpart: \"daarion-{b}\""),
        format!("regex: \"^@agent\\\\-{b}\\\\-.*:"),
        format!("regex: \"^#city\\\\-{b}\\\\-.*:"),
    ] {
        assert!(file.contains(&line), "{line} missing in:\n{file}");
    }

    // Synapse pings the service through the link it registered.
    let turn = crate::oidc::TURNS[backend as usize].lock().await;
    let db = TestDb::new(backend).await;
    let port = appservice_port(backend).to_string();
    let bind = format!("127.0.0.1:{port}");
    let mut overrides = city_env(backend, None);
    overrides.push(("BIND".into(), bind));
    let overrides: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app = TestApp::spawn_with(db, shared_synapse(), &overrides).await;
    let bot = Bot::new(backend);
    // Synapse may first try a connection it pooled to an earlier service
    // on this port (Twisted then reports `AlreadyCalled`): ask again.
    let body = eventually("Synapse's ping to get through", WAIT, || async {
        let (status, body) = bot
            .call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v1/appservice/daarion-{b}/ping"),
                Some(json!({})),
            )
            .await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(body["duration_ms"].is_number(), "{body}");

    // Only Synapse's token opens the application service's endpoints.
    let put = |token: Option<String>| {
        let client = app.client.clone();
        async move {
            let mut request = client
                .http
                .put(format!("{}/_matrix/app/v1/transactions/t1", client.base))
                .json(&json!({"events": []}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(put(None).await.0, 401);
    let (status, body) = put(Some("wrong".into())).await;
    assert_eq!(
        (status, body["errcode"].clone()),
        (403, json!("M_FORBIDDEN"))
    );
    assert_eq!(put(Some(hs_token(backend))).await, (200, json!({})));

    // People never get names inside the application service's namespaces.
    let server = shared_synapse().server_name;
    let tail = unique("");
    let (_, agent_like) = provisioned(&app.client, &format!("agent-{b}-{tail}")).await;
    assert_eq!(agent_like, format!("@u-agent-{b}-{tail}:{server}"));
    let (_, bot_like) = provisioned(&app.client, &format!("daarion-{b}")).await;
    assert_ne!(bot_like, format!("@daarion-{b}:{server}"));
    app.shutdown().await;
    drop(turn);
}
on_both_backends!(the_service_is_an_application_service);

/// The room avatar comes through the same guarded fetcher as people's and
/// is uploaded once per image; a room Synapse refuses, or limits, is
/// recorded on that room and never holds up another.
async fn avatars_follow_and_one_failing_room_never_holds_up_another(backend: Backend) {
    use crate::fakes::{png, AvatarHost};
    let host = AvatarHost::start();
    host.put("a.png", png(7));
    host.put("a-copy.png", png(7));
    let synapse = shared_synapse();
    let proxy = SynapseProxy::start(&synapse.url);
    let allowed = format!("127.0.0.1:{}", host.port);
    let mut env = city_env(backend, None);
    env.push(("SYNAPSE_URL".into(), proxy.url.clone()));
    env.push(("AVATAR_ALLOWED_HOSTS".into(), allowed));
    let overrides: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = TestApp::spawn_with(TestDb::new(backend).await, synapse, &overrides).await;
    let bot = Bot::new(backend);

    let pictured = unique("r_");
    let e = city_event(
        "room.created",
        json!({"room_id": pictured, "slug": unique("pic-"), "visibility": "public",
               "avatar_url": host.url("/img/a.png")}),
    );
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    let record = wait_room_state(&app.client, &pictured, "ready").await;
    let room = record["matrix_room_id"].as_str().unwrap().to_string();
    let mxc = bot.content(&room, "m.room.avatar").await["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(mxc.starts_with("mxc://"), "{mxc}");
    let uploads = app.service_synapse.calls().snapshot();

    // The same bytes at another URL: nothing uploaded, nothing changed.
    let e = city_event(
        "room.updated",
        json!({"room_id": pictured, "avatar_url": host.url("/img/a-copy.png")}),
    );
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    eventually("the copy to be fetched", WAIT, || async {
        (host.hits("/img/a-copy.png") == 1).then_some(())
    })
    .await;
    wait_room_state(&app.client, &pictured, "ready").await;
    let sent = app.service_synapse.calls().snapshot().since(&uploads);
    assert_eq!(
        sent.get(matrix_provisioner::synapse::Endpoint::MediaUpload),
        0,
        "{sent:?}"
    );
    assert_eq!(bot.content(&room, "m.room.avatar").await["url"], json!(mxc));

    // An avatar that cannot be used: no avatar, the error shown, the room fine.
    let e = city_event(
        "room.updated",
        json!({"room_id": pictured, "avatar_url": "http://10.255.255.1/x.png", "name": "Still here"}),
    );
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    let record = eventually("the avatar error", WAIT, || async {
        let (_, body) = room_record(&app.client, &pictured).await;
        (body["state"] == "ready" && body["avatar_error"].is_string()).then_some(body)
    })
    .await;
    assert!(record["last_error"].is_null(), "{record}");
    assert_eq!(
        bot.content(&room, "m.room.name").await["name"],
        json!("Still here")
    );
    let avatar = bot.content(&room, "m.room.avatar").await;
    assert!(avatar.is_null() || avatar["url"] == json!(""), "{avatar}");

    // Synapse refuses one room: failed with the reason, the other one made.
    let (refused, fine) = (unique("r_"), unique("r_"));
    let refused_slug = unique("refused-");
    proxy.fail_body(&refused_slug, 1, 403);
    for (room_id, slug) in [(&refused, refused_slug.clone()), (&fine, unique("fine-"))] {
        let e = city_event(
            "room.created",
            json!({"room_id": room_id, "slug": slug, "visibility": "private"}),
        );
        assert_eq!(send_city(&app.client, &e).await.0, 202);
    }
    let failed = wait_room_state(&app.client, &refused, "failed").await;
    assert!(
        failed["last_error"].as_str().unwrap().contains("403"),
        "{failed}"
    );
    wait_room_state(&app.client, &fine, "ready").await;
    // The operator's retry, once Synapse agrees.
    let (status, _) = admin_call(
        &app.client,
        reqwest::Method::POST,
        &format!("/v1/admin/rooms/{refused}/retry"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    wait_room_state(&app.client, &refused, "ready").await;

    // A join that Synapse carried out but whose answer says `403` (as when
    // a lost answer makes a retry's invite step meet a joined member): the
    // member is in, and the room does not fail.
    let (member_id, member_mxid) = provisioned(&app.client, &unique("joiner")).await;
    proxy.fail_body_after_forwarding(&member_mxid, 1, 403);
    let e = city_event(
        "room.member_added",
        json!({"room_id": fine, "member_id": member_id}),
    );
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    let fine_room = wait_room_state(&app.client, &fine, "ready").await["matrix_room_id"]
        .as_str()
        .unwrap()
        .to_string();
    bot.wait_membership(&fine_room, &member_mxid, "join").await;
    let record = wait_room_state(&app.client, &fine, "ready").await;
    assert!(record["last_error"].is_null(), "{record}");

    // A rate limit is retried with backoff, the error shown meanwhile.
    let limited = unique("r_");
    let limited_slug = unique("limited-");
    proxy.fail_body(&limited_slug, 3, 429);
    let e = city_event(
        "room.created",
        json!({"room_id": limited, "slug": limited_slug, "visibility": "private"}),
    );
    assert_eq!(send_city(&app.client, &e).await.0, 202);
    eventually("the rate limit to show", WAIT, || async {
        let (_, body) = room_record(&app.client, &limited).await;
        (body["attempts"].as_i64() >= Some(1)
            && body["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("rate limited")))
        .then_some(())
    })
    .await;
    let done = wait_room_state(&app.client, &limited, "ready").await;
    assert_eq!(done["attempts"], 0, "{done}");
    assert!(done["last_error"].is_null(), "{done}");
    app.shutdown().await;
    proxy.stop().await;
}
on_both_backends!(avatars_follow_and_one_failing_room_never_holds_up_another);
