//! Agents (issue 13, CONTRACT.md section 9) against the real Synapse, which
//! loads the registration file the service printed and delivers its
//! transactions to the service on the back end's fixed port. A DAARION
//! person reads and answers with matrix-nio, a client we did not write; a
//! fake DAARION.city receiver records what comes back, after checking its
//! signature, and can fail on purpose.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use matrix_provisioner::domain::signature;
use matrix_provisioner::secret::Secret;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::fakes::serve_locally;
use crate::on_both_backends;
use crate::rooms::*;
use crate::support::*;

// ------------------------------------------------------------ DAARION.city

/// DAARION.city's receiver of Matrix events.
pub(crate) struct Receiver {
    port: u16,
    handle: actix_web::dev::ServerHandle,
    pub(crate) got: Arc<Mutex<Vec<Value>>>,
    /// Deliveries still to answer with a 500.
    fail: Arc<AtomicUsize>,
    /// Deliveries answered with a 500 so far.
    failed: Arc<AtomicUsize>,
    /// Deliveries whose signature did not verify.
    unsigned: Arc<AtomicUsize>,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let unsigned = Arc::new(AtomicUsize::new(0));
        let state = (got.clone(), fail.clone(), failed.clone(), unsigned.clone());
        let (port, handle) = serve_locally(move |cfg| {
            let state = state.clone();
            cfg.route(
                "/events",
                web::post().to(move |req: HttpRequest, body: web::Bytes| {
                    let (got, fail, failed, unsigned) = state.clone();
                    async move {
                        let header = req
                            .headers()
                            .get(signature::HEADER)
                            .and_then(|v| v.to_str().ok());
                        let secrets = [Secret::new(CITY_SECRET)];
                        let now = chrono::Utc::now().timestamp();
                        if signature::verify(header, &body, &secrets, now).is_err() {
                            unsigned.fetch_add(1, Ordering::SeqCst);
                            return HttpResponse::Unauthorized().finish();
                        }
                        let take_failure = fail
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if take_failure {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return HttpResponse::InternalServerError().finish();
                        }
                        got.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        HttpResponse::Ok().finish()
                    }
                }),
            );
        });
        Receiver {
            port,
            handle,
            got,
            fail,
            failed,
            unsigned,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    /// Events of this type received so far.
    pub(crate) fn events(&self, kind: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    }

    /// The next `n` deliveries are answered with a 500.
    pub(crate) fn fail_next(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }

    /// Deliveries answered with a 500 so far.
    pub(crate) fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    pub(crate) async fn stop(self) {
        assert_eq!(
            self.unsigned.load(Ordering::SeqCst),
            0,
            "unsigned deliveries"
        );
        self.handle.stop(false).await;
    }
}

// ------------------------------------------------------------ matrix-nio

/// A DAARION person's matrix-nio client (tests/clients/nio_city_room.py).
pub(crate) struct Nio {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Nio {
    pub(crate) async fn start(user_id: &str, token: &str, room_id: &str) -> Nio {
        Nio::start_client("nio_city_room.py", &[user_id, token, room_id]).await
    }

    /// A client script of tests/clients, given the homeserver and `args`.
    pub(crate) async fn start_client(script: &str, args: &[&str]) -> Nio {
        let mut child = tokio::process::Command::new(venv_python())
            .arg(repo().join("tests/clients").join(script))
            .arg(shared_synapse().url)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut nio = Nio {
            child,
            stdin,
            lines,
        };
        assert_eq!(nio.answer().await, json!({"ready": true}));
        nio
    }

    pub(crate) async fn answer(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .expect("matrix-nio answers")
            .unwrap()
            .expect("matrix-nio is running");
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert!(answer.get("error").is_none(), "matrix-nio: {answer}");
        answer
    }

    pub(crate) async fn ask(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.answer().await
    }

    async fn presence(&mut self, user_id: &str) -> String {
        let answer = self
            .ask(json!({"cmd": "presence", "user_id": user_id}))
            .await;
        answer["presence"].as_str().unwrap().to_string()
    }

    pub(crate) async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A Matrix access token for the person, as Synapse's admin API issues it.
pub(crate) async fn access_token(admin: &SynapseAdmin, user_id: &str) -> String {
    let (status, body) = admin
        .post(
            &format!("/_synapse/admin/v1/users/{}/login", enc(user_id)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

// ------------------------------------------------------------ helpers

/// A City Room with a person and an agent, both joined in Matrix.
pub(crate) struct Scene {
    pub(crate) room_id: String,
    pub(crate) matrix_room: String,
    pub(crate) person_id: String,
    pub(crate) person_mxid: String,
    pub(crate) agent_id: String,
    pub(crate) puppet: String,
}

pub(crate) async fn scene(client: &Client, backend: Backend, visibility: &str) -> Scene {
    let b = backend_name(backend);
    let server = shared_synapse().server_name;
    let (person_id, person_mxid) = provisioned(client, &unique("olena")).await;
    let agent_id = unique("a_");
    let slug = unique("helper-");
    let created = city_event(
        "agent.created",
        json!({"agent_id": agent_id, "slug": slug, "display_name": "Helper"}),
    );
    assert_eq!(send_city(client, &created).await.0, 202);
    let room_id = unique("r_");
    for e in [
        city_event(
            "room.created",
            json!({"room_id": room_id, "slug": room_id, "name": "Agents",
                   "visibility": visibility}),
        ),
        city_event(
            "room.member_added",
            json!({"room_id": room_id, "member_id": person_id, "role": "owner"}),
        ),
        city_event(
            "room.member_added",
            json!({"room_id": room_id, "member_id": agent_id}),
        ),
    ] {
        assert_eq!(send_city(client, &e).await.0, 202);
    }
    let record = wait_room_state(client, &room_id, "ready").await;
    let matrix_room = record["matrix_room_id"].as_str().unwrap().to_string();
    let puppet = format!("@agent-{b}-{slug}:{server}");
    let bot = Bot::new(backend);
    bot.wait_membership(&matrix_room, &puppet, "join").await;
    bot.wait_membership(&matrix_room, &person_mxid, "join")
        .await;
    Scene {
        room_id,
        matrix_room,
        person_id,
        person_mxid,
        agent_id,
        puppet,
    }
}

pub(crate) fn agent_message(scene: &Scene, message_id: &str, body: Value) -> Value {
    let mut data = json!({"message_id": message_id, "agent_id": scene.agent_id,
                          "room_id": scene.room_id});
    for (k, v) in body.as_object().unwrap() {
        data[k] = v.clone();
    }
    city_event("agent.message", data)
}

pub(crate) fn at(event: Value, t: chrono::DateTime<chrono::Utc>) -> Value {
    let mut event = event;
    event["created_at"] = json!(t.to_rfc3339());
    event
}

pub(crate) async fn outboxes(client: &Client) -> Value {
    let (status, body) = admin_call(client, reqwest::Method::GET, "/v1/admin/outbox", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub(crate) async fn message_record(client: &Client, message_id: &str) -> Value {
    let (status, body) = admin_call(
        client,
        reqwest::Method::GET,
        &format!("/v1/messages/{message_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

pub(crate) async fn wait_message_state(client: &Client, message_id: &str, state: &str) -> Value {
    eventually(
        &format!("message {message_id} to be {state}"),
        WAIT,
        || async {
            let body = message_record(client, message_id).await;
            (body["state"] == state).then_some(body)
        },
    )
    .await
}

/// Every `m.room.message` in the room, oldest first, as the bot reads it.
pub(crate) async fn room_messages(bot: &Bot, room_id: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=500&filter={}",
            enc(room_id),
            enc(&json!({"types": ["m.room.message"]}).to_string())
        );
        if let Some(from) = &from {
            path.push_str(&format!("&from={}", enc(from)));
        }
        let (status, body) = bot.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{body}");
        let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
        if chunk.is_empty() {
            return all;
        }
        all.extend(chunk);
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_string()),
            None => return all,
        }
    }
}

/// The service on the back end's application service port, so Synapse's
/// transactions reach it; Synapse is asked to ping it until it gets through
/// (which also makes Synapse send what it held back).
pub(crate) async fn spawn_on_appservice_port(
    backend: Backend,
    extra: &[(&str, String)],
) -> TestApp {
    let mut overrides = city_env(backend, None);
    overrides.push((
        "BIND".into(),
        format!("127.0.0.1:{}", appservice_port(backend)),
    ));
    for (k, v) in extra {
        overrides.push((k.to_string(), v.clone()));
    }
    let overrides: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app = TestApp::spawn_with(TestDb::new(backend).await, shared_synapse(), &overrides).await;
    let bot = Bot::new(backend);
    let b = backend_name(backend);
    eventually("Synapse's ping to get through", WAIT, || async {
        let (status, _) = bot
            .call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v1/appservice/daarion-{b}/ping"),
                Some(json!({})),
            )
            .await;
        (status == 200).then_some(())
    })
    .await;
    app
}

/// `txn` PUT to the service as Synapse sends a transaction; answered 200.
pub(crate) async fn put_transaction(client: &Client, backend: Backend, txn_id: &str, txn: &Value) {
    let response = client
        .http
        .put(format!(
            "{}/_matrix/app/v1/transactions/{}",
            client.base,
            enc(txn_id)
        ))
        .bearer_auth(hs_token(backend))
        .json(txn)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A person's `m.read` receipt up to `event_id`, as Synapse hands it to the
/// service (an ephemeral `m.receipt` of a transaction).
pub(crate) fn read_receipt(room_id: &str, user_id: &str, event_id: &str, ts: i64) -> Value {
    json!({"type": "m.receipt", "room_id": room_id,
           "content": {event_id: {"m.read": {user_id: {"ts": ts}}}}})
}

/// Waits until nothing is left to deliver either way.
pub(crate) async fn drained(client: &Client) -> Value {
    eventually("the outboxes to drain", WAIT, || async {
        let o = outboxes(client).await;
        (o["to_city"]["pending"] == 0 && o["to_matrix"]["pending"] == 0).then_some(o)
    })
    .await
}

// ------------------------------------------------------------ tests

/// The whole round: an agent's puppet, its markdown message and reply as
/// matrix-nio sees them, the person's answer delivered once to DAARION.city
/// through five failures and a resent transaction, and presence both ways.
async fn agents_speak_and_people_answer(backend: Backend) {
    let turn = crate::oidc::TURNS[backend as usize].lock().await;
    let receiver = Receiver::start();
    let app = spawn_on_appservice_port(backend, &[("CITY_EVENTS_URL", receiver.url())]).await;
    let client = &app.client;
    let admin = SynapseAdmin::shared().await;
    let s = scene(client, backend, "public").await;

    // The puppet is the agent, named as DAARION.city names it.
    let user = admin.user(&s.puppet).await.expect("the puppet exists");
    assert_eq!(user["displayname"], "Helper");
    let (status, agent) = admin_call(
        client,
        reqwest::Method::GET,
        &format!("/v1/agents/{}", s.agent_id),
        None,
    )
    .await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["matrix_user_id"], s.puppet);
    assert_eq!(agent["state"], "ready");

    // Presence: set now, checked a minute later.
    let online_since = Instant::now();
    let presence = city_event(
        "presence.changed",
        json!({"member_id": s.agent_id, "presence": "online", "status_msg": "ready to help"}),
    );
    assert_eq!(send_city(client, &presence).await.0, 202);

    let token = access_token(&admin, &s.person_mxid).await;
    let mut nio = Nio::start(&s.person_mxid, &token, &s.matrix_room).await;

    // Two agent messages, dated in the past: markdown, then a reply to it.
    let t1 = chrono::Utc::now() - chrono::Duration::minutes(5);
    let t2 = t1 + chrono::Duration::seconds(1);
    let (m1, m2) = (unique("msg_"), unique("msg_"));
    let first = at(
        agent_message(
            &s,
            &m1,
            json!({"body": "**Hello** from the *city* <script>alert(1)</script>",
                   "format": "markdown"}),
        ),
        t1,
    );
    let second = at(
        agent_message(&s, &m2, json!({"body": "second", "reply_to": m1})),
        t2,
    );
    assert_eq!(send_city(client, &first).await.0, 202);
    assert_eq!(send_city(client, &second).await.0, 202);
    // DAARION.city delivers again: the same message under a new event id.
    let mut again = first.clone();
    again["id"] = json!(unique("cevt_"));
    assert_eq!(send_city(client, &again).await.0, 202);

    let seen = nio
        .ask(json!({"cmd": "messages", "sender": s.puppet, "count": 2, "timeout": 60}))
        .await;
    let seen = seen["messages"].as_array().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (a, b) = (&seen[0], &seen[1]);
    assert_eq!(a["message_id"], m1.as_str());
    assert_eq!(
        a["body"],
        "**Hello** from the *city* <script>alert(1)</script>"
    );
    assert_eq!(a["format"], "org.matrix.custom.html");
    let html = a["formatted_body"].as_str().unwrap();
    assert!(html.contains("<strong>Hello</strong>"), "{html}");
    assert!(html.contains("<em>city</em>"), "{html}");
    assert!(!html.contains("script"), "{html}");
    assert_eq!(a["origin_server_ts"], t1.timestamp_millis());
    assert_eq!(b["message_id"], m2.as_str());
    assert_eq!(b["body"], "second");
    assert!(b["formatted_body"].is_null());
    assert_eq!(b["reply_to"], a["event_id"]);
    assert_eq!(b["origin_server_ts"], t2.timestamp_millis());
    let record = message_record(client, &m1).await;
    assert_eq!(record["state"], "sent");
    assert_eq!(record["event_id"], a["event_id"]);

    // The person answers the agent; DAARION.city fails five times first.
    receiver.fail.store(5, Ordering::SeqCst);
    let answer = format!("thanks {}", s.puppet);
    let sent = nio
        .ask(json!({"cmd": "send", "body": answer,
                    "reply_to": b["event_id"], "mentions": [s.puppet]}))
        .await;
    let event_id = sent["event_id"].as_str().unwrap().to_string();
    let delivered = eventually("the answer to reach DAARION.city", WAIT, || async {
        receiver
            .events("matrix.message")
            .into_iter()
            .find(|e| e["id"] == event_id.as_str())
    })
    .await;
    assert_eq!(receiver.failed.load(Ordering::SeqCst), 5);
    let data = &delivered["data"];
    assert_eq!(data["room_id"], s.room_id.as_str());
    assert_eq!(data["sender_id"], s.person_id.as_str());
    assert_eq!(data["matrix_user_id"], s.person_mxid.as_str());
    assert_eq!(data["body"], answer.as_str());
    assert_eq!(data["format"], "plain");
    assert_eq!(data["reply_to"], m2.as_str());
    assert_eq!(data["mentions"], json!([s.agent_id]));

    // Synapse sends the transaction again, and another brings the same
    // event: still delivered once.
    let (status, event) = Bot::new(backend)
        .call(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&s.matrix_room),
                enc(&event_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    let txn = json!({"events": [event]});
    for txn_id in ["resent-1", "resent-1", "resent-2"] {
        put_transaction(client, backend, txn_id, &txn).await;
    }
    // The person's read receipt up to the agent's answer stays in Matrix:
    // DAARION.city did not ask for receipts (CITY_READ_RECEIPTS is off
    // here; the conversation test has it on and hears this very shape).
    let read = json!({"events": [], "ephemeral": [read_receipt(
        &s.matrix_room,
        &s.person_mxid,
        b["event_id"].as_str().unwrap(),
        chrono::Utc::now().timestamp_millis(),
    )]});
    put_transaction(client, backend, &unique("receipt-"), &read).await;
    // Both answered 200 once stored: whatever they queued is delivered now.
    drained(client).await;
    let copies = receiver
        .events("matrix.message")
        .iter()
        .filter(|e| e["id"] == event_id.as_str())
        .count();
    assert_eq!(copies, 1, "delivered exactly once");
    let reads = receiver.events("matrix.read");
    assert!(reads.is_empty(), "receipts not asked for: {reads:?}");
    let agent_events = room_messages(&Bot::new(backend), &s.matrix_room)
        .await
        .into_iter()
        .filter(|e| e["sender"] == s.puppet.as_str())
        .count();
    assert_eq!(agent_events, 2, "one event per agent message");

    // The person is online (nio syncs), and DAARION.city heard it.
    eventually(
        "the person's presence to reach DAARION.city",
        WAIT,
        || async {
            receiver
                .events("matrix.presence")
                .into_iter()
                .find(|e| e["data"]["sender_id"] == s.person_id.as_str())
                .filter(|e| e["data"]["presence"] == "online")
        },
    )
    .await;

    // A minute later the agent is still online for the person's client.
    let minute = Duration::from_secs(62);
    if let Some(rest) = minute.checked_sub(online_since.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert_eq!(nio.presence(&s.puppet).await, "online");
    let offline = city_event(
        "presence.changed",
        json!({"member_id": s.agent_id, "presence": "offline"}),
    );
    assert_eq!(send_city(client, &offline).await.0, 202);
    let deadline = Instant::now() + WAIT;
    while nio.presence(&s.puppet).await != "offline" {
        assert!(Instant::now() < deadline, "the agent is still not offline");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // What operators and Prometheus see.
    let o = outboxes(client).await;
    assert_eq!(o["to_city"]["pending"], 0);
    assert!(o["agents"]["ready"].as_i64().unwrap() >= 1, "{o}");
    let metrics = metrics_text(client).await;
    for line in [
        r#"matrix_provisioner_messages_total{direction="to_city",outcome="delivered"}"#,
        r#"matrix_provisioner_messages_total{direction="to_city",outcome="retried"}"#,
        r#"matrix_provisioner_messages_total{direction="to_matrix",outcome="sent"}"#,
        r#"matrix_provisioner_outbox_messages{direction="to_city",state="pending"} 0"#,
        r#"matrix_provisioner_agents{state="ready"}"#,
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    nio.stop().await;
    app.shutdown().await;
    receiver.stop().await;
    drop(turn);
}
on_both_backends!(agents_speak_and_people_answer);

/// Messages wait for an agent DAARION.city has not announced yet; one that
/// can never be sent fails with its reason (and an operator can retry it);
/// the agent's profile follows; a deleted agent leaves and is deactivated.
async fn messages_wait_for_their_agent_and_fail_with_a_reason(backend: Backend) {
    use crate::fakes::{png, AvatarHost};
    let host = AvatarHost::start();
    host.put("helper.png", png(11));
    let allowed = format!("127.0.0.1:{}", host.port);
    let app = spawn_city_with(backend, &[("AVATAR_ALLOWED_HOSTS", allowed)]).await;
    let client = &app.client;
    let admin = SynapseAdmin::shared().await;
    let bot = Bot::new(backend);
    let s = scene(client, backend, "private").await;
    let b = backend_name(backend);
    let server = shared_synapse().server_name;

    // An agent not announced yet: its message waits, and says why.
    let late = unique("a_");
    let late_slug = unique("late-");
    let added = city_event(
        "room.member_added",
        json!({"room_id": s.room_id, "member_id": late}),
    );
    assert_eq!(send_city(client, &added).await.0, 202);
    let waiting = unique("msg_");
    let e = city_event(
        "agent.message",
        json!({"message_id": waiting, "agent_id": late, "room_id": s.room_id,
               "body": "I was waiting"}),
    );
    assert_eq!(send_city(client, &e).await.0, 202);
    eventually("the message to say what it waits for", WAIT, || async {
        let record = message_record(client, &waiting).await;
        (record["state"] == "pending"
            && record["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("agent")))
        .then_some(())
    })
    .await;
    let created = city_event(
        "agent.created",
        json!({"agent_id": late, "slug": late_slug, "display_name": "Late"}),
    );
    assert_eq!(send_city(client, &created).await.0, 202);
    let record = wait_message_state(client, &waiting, "sent").await;
    let (status, event) = bot
        .call(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&s.matrix_room),
                enc(record["event_id"].as_str().unwrap())
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(
        event["sender"],
        format!("@agent-{b}-{late_slug}:{server}").as_str()
    );
    assert_eq!(event["content"]["body"], "I was waiting");

    // The profile follows DAARION.city's: name and avatar.
    let renamed = city_event(
        "agent.updated",
        json!({"agent_id": s.agent_id, "display_name": "Helper Two",
               "avatar_url": host.url("/img/helper.png")}),
    );
    assert_eq!(send_city(client, &renamed).await.0, 202);
    let mxc = eventually("the puppet's new name and avatar", WAIT, || async {
        let user = admin.user(&s.puppet).await?;
        let mxc = user["avatar_url"].as_str()?.to_string();
        (user["displayname"] == "Helper Two").then_some(mxc)
    })
    .await;
    assert_eq!(admin.media(&mxc).await, png(11));

    // An agent that is not a member of the room: failed, with the reason.
    let outsider = unique("a_");
    let created = city_event(
        "agent.created",
        json!({"agent_id": outsider, "slug": unique("outsider-")}),
    );
    assert_eq!(send_city(client, &created).await.0, 202);
    let lost = unique("msg_");
    let e = city_event(
        "agent.message",
        json!({"message_id": lost, "agent_id": outsider, "room_id": s.room_id, "body": "hi"}),
    );
    assert_eq!(send_city(client, &e).await.0, 202);
    let record = wait_message_state(client, &lost, "failed").await;
    assert!(
        record["last_error"]
            .as_str()
            .unwrap()
            .contains("not a member"),
        "{record}"
    );
    let o = outboxes(client).await;
    assert!(o["to_matrix"]["failed"].as_i64().unwrap() >= 1, "{o}");
    // Operators retry a failed message (not a sent one).
    let retry = |id: String| async move {
        admin_call(
            client,
            reqwest::Method::POST,
            &format!("/v1/admin/messages/{id}/retry"),
            None,
        )
        .await
        .0
    };
    assert_eq!(retry(lost.clone()).await, 202);
    assert_eq!(retry(waiting.clone()).await, 404);
    wait_message_state(client, &lost, "failed").await;

    // Events that are not acceptable are refused with the contract's body.
    for (data, kind, status) in [
        (
            json!({"agent_id": "a", "slug": "Not A Slug!"}),
            "agent.created",
            422,
        ),
        (
            json!({"message_id": "m", "agent_id": "a", "room_id": "r", "body": "x",
                   "format": "html"}),
            "agent.message",
            422,
        ),
        (
            json!({"message_id": "m", "agent_id": "a", "room_id": "r"}),
            "agent.message",
            400,
        ),
        (
            json!({"member_id": "a", "presence": "away"}),
            "presence.changed",
            422,
        ),
    ] {
        let (got, body) = send_city(client, &city_event(kind, data)).await;
        assert_eq!(got, status, "{kind}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }

    // A deleted agent leaves its rooms and is deactivated; what it says
    // afterwards fails.
    let deleted = city_event("agent.deleted", json!({"agent_id": s.agent_id}));
    assert_eq!(send_city(client, &deleted).await.0, 202);
    eventually("the puppet to be deactivated", WAIT, || async {
        let user = admin.user(&s.puppet).await?;
        (user["deactivated"] == true || user["deactivated"] == 1).then_some(())
    })
    .await;
    bot.wait_membership(&s.matrix_room, &s.puppet, "leave")
        .await;
    let (_, agent) = admin_call(
        client,
        reqwest::Method::GET,
        &format!("/v1/agents/{}", s.agent_id),
        None,
    )
    .await;
    assert_eq!(agent["state"], "deactivated");
    let after = unique("msg_");
    let e = agent_message(&s, &after, json!({"body": "still here?"}));
    assert_eq!(send_city(client, &e).await.0, 202);
    let record = wait_message_state(client, &after, "failed").await;
    assert!(
        record["last_error"].as_str().unwrap().contains("deleted"),
        "{record}"
    );

    // Created again (newer): the same puppet, active, back in its room.
    let again = city_event(
        "agent.created",
        json!({"agent_id": s.agent_id, "slug": "ignored-once-settled", "display_name": "Back"}),
    );
    assert_eq!(send_city(client, &again).await.0, 202);
    eventually("the puppet to be active again", WAIT, || async {
        let user = admin.user(&s.puppet).await?;
        (user["deactivated"] == false || user["deactivated"] == 0).then_some(())
    })
    .await;
    bot.wait_membership(&s.matrix_room, &s.puppet, "join").await;
    let back = unique("msg_");
    let e = agent_message(&s, &back, json!({"body": "back again"}));
    assert_eq!(send_city(client, &e).await.0, 202);
    wait_message_state(client, &back, "sent").await;

    // The City Room deleted: what is said in it afterwards fails, and says why.
    let deleted = city_event("room.deleted", json!({"room_id": s.room_id}));
    assert_eq!(send_city(client, &deleted).await.0, 202);
    let late = unique("msg_");
    let e = agent_message(&s, &late, json!({"body": "anyone?"}));
    assert_eq!(send_city(client, &e).await.0, 202);
    let record = wait_message_state(client, &late, "failed").await;
    assert_eq!(
        record["last_error"], "the City Room was deleted",
        "{record}"
    );
    app.shutdown().await;
}
on_both_backends!(messages_wait_for_their_agent_and_fail_with_a_reason);

/// SIGKILL while a burst of 200 agent messages is being sent: after the
/// restart the room holds exactly 200 events, one per message, in order.
async fn two_hundred_messages_through_a_kill_are_two_hundred_events(backend: Backend) {
    let synapse = shared_synapse();
    let db = TestDb::new(backend).await;
    let mut env = base_env(&db, &synapse);
    env.extend(city_env(backend, None));
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("service.log");
    let mut service = ChildService::start(&env, free_port(), &log).await;
    let s = scene(&service.client, backend, "public").await;

    let burst = unique("burst_");
    let ids: Vec<String> = (0..200).map(|i| format!("{burst}-{i:03}")).collect();
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(10);
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let t = t0 + chrono::Duration::milliseconds(10 * i as i64);
            at(
                agent_message(&s, id, json!({"body": format!("burst {i}")})),
                t,
            )
        })
        .collect();
    // One after another, as fast as they are taken: DAARION.city's order
    // is then the order of arrival (the service sends a room's messages in
    // `created_at` order among those it has; one that arrives after a
    // later one went out cannot overtake it).
    let client = service.client.clone();
    for e in &events {
        assert_eq!(send_city(&client, e).await.0, 202);
    }
    let pending_at_kill = eventually("the first messages to be sent", WAIT, || async {
        let pending = outboxes(&client).await["to_matrix"]["pending"]
            .as_i64()
            .unwrap();
        (pending < 200).then_some(pending)
    })
    .await;
    service.kill();
    assert!(pending_at_kill > 0, "killed after everything was sent");

    let service = ChildService::start(&env, free_port(), &log).await;
    eventually("the burst to be sent", WAIT, || async {
        let o = outboxes(&service.client).await;
        (o["to_matrix"]["pending"] == 0).then_some(())
    })
    .await;
    assert_eq!(outboxes(&service.client).await["to_matrix"]["failed"], 0);
    let sent: Vec<Value> = room_messages(&Bot::new(backend), &s.matrix_room)
        .await
        .into_iter()
        .filter(|e| e["sender"] == s.puppet.as_str())
        .collect();
    let order: Vec<String> = sent
        .iter()
        .map(|e| {
            e["content"]["city.daarion.message_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(order, ids, "each message once, in order");
    for (i, e) in sent.iter().enumerate() {
        let t = t0 + chrono::Duration::milliseconds(10 * i as i64);
        assert_eq!(e["origin_server_ts"], t.timestamp_millis());
    }
    drop(service);
}
on_both_backends!(two_hundred_messages_through_a_kill_are_two_hundred_events);

/// Synapse sends the message but its answer is lost: the next run reads
/// the room, finds the message by its DAARION id and records it, without a
/// second send (so it holds even against a Synapse that forgot its
/// transaction ids, as a restarted one does).
async fn a_lost_answer_is_found_in_the_room_not_sent_again(backend: Backend) {
    let synapse = shared_synapse();
    let proxy = SynapseProxy::start(&synapse.url);
    let app = spawn_city_with(backend, &[("SYNAPSE_URL", proxy.url.clone())]).await;
    let client = &app.client;
    let s = scene(client, backend, "public").await;
    let message_id = unique("msg_");
    let marker = unique("lost-answer-");
    proxy.fail_body_after_forwarding(&marker, 1, 502);
    let e = agent_message(&s, &message_id, json!({"body": marker}));
    assert_eq!(send_city(client, &e).await.0, 202);
    let record = wait_message_state(client, &message_id, "sent").await;
    let txn = matrix_provisioner::domain::agent::txn_id(&message_id);
    let sends = proxy
        .seen()
        .iter()
        .filter(|(path, _)| path.contains(&format!("/send/m.room.message/{txn}")))
        .count();
    assert_eq!(sends, 1, "sent once; the second run read the room instead");
    assert!(
        proxy
            .seen()
            .iter()
            .any(|(path, _)| path.ends_with("/messages")),
        "the room was read"
    );
    let events: Vec<Value> = room_messages(&Bot::new(backend), &s.matrix_room)
        .await
        .into_iter()
        .filter(|e| e["content"]["body"] == marker.as_str())
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_id"], record["event_id"]);

    // The same for a reaction: Synapse stores it, its answer is lost, and
    // the next run finds it in the room instead of reacting twice.
    let key = unique("lost-reaction-");
    proxy.fail_body_after_forwarding(&key, 1, 502);
    let react = city_event(
        "agent.reaction",
        json!({"agent_id": s.agent_id, "target": message_id, "key": key}),
    );
    assert_eq!(send_city(client, &react).await.0, 202);
    let bot = Bot::new(backend);
    let reactions = || async {
        let (status, body) = bot
            .call(
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                    enc(&s.matrix_room)
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.reaction")
            .filter(|e| e["content"]["m.relates_to"]["key"] == key.as_str())
            .cloned()
            .collect::<Vec<Value>>()
    };
    eventually("the place to have nothing pending", WAIT, || async {
        let o = outboxes(client).await;
        let sends = proxy
            .seen()
            .iter()
            .filter(|(path, _)| path.contains("/send/m.reaction/"))
            .count();
        (o["to_matrix"]["pending"] == 0 && sends >= 1).then_some(())
    })
    .await;
    let sends = proxy
        .seen()
        .iter()
        .filter(|(path, _)| path.contains("/send/m.reaction/"))
        .count();
    assert_eq!(sends, 1, "sent once; the second run read the room instead");
    let found = reactions().await;
    assert_eq!(found.len(), 1, "one reaction: {found:?}");
    assert_eq!(found[0]["sender"], s.puppet.as_str());
    assert_eq!(
        found[0]["content"]["m.relates_to"]["event_id"],
        record["event_id"]
    );

    // An edit while Synapse is down (503 three times, as while it
    // restarts): retried until it is up, then in the room once.
    let edited = unique("edited-while-down-");
    proxy.fail_body(&edited, 3, 503);
    let edit = city_event(
        "agent.message_edited",
        json!({"message_id": message_id, "body": edited}),
    );
    assert_eq!(send_city(client, &edit).await.0, 202);
    let edits = eventually("the edit to reach the room", WAIT, || async {
        let edits: Vec<Value> = room_messages(&bot, &s.matrix_room)
            .await
            .into_iter()
            .filter(|e| e["content"]["m.new_content"]["body"] == edited.as_str())
            .collect();
        (!edits.is_empty()).then_some(edits)
    })
    .await;
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert_eq!(
        edits[0]["content"]["m.relates_to"]["event_id"],
        record["event_id"]
    );
    let record = message_record(client, &message_id).await;
    assert_eq!(record["edits"], 1, "{record}");
    app.shutdown().await;
    proxy.stop().await;
}
on_both_backends!(a_lost_answer_is_found_in_the_room_not_sent_again);

pub(crate) async fn spawn_city_with(backend: Backend, extra: &[(&str, String)]) -> TestApp {
    let mut env = city_env(backend, None);
    for (k, v) in extra {
        env.push((k.to_string(), v.clone()));
    }
    let overrides: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestApp::spawn_with(TestDb::new(backend).await, shared_synapse(), &overrides).await
}

/// People's HTML is Matrix HTML from any server: what DAARION.city gets is
/// sanitised with the policy agents' HTML goes out with.
async fn people_s_html_reaches_daarion_city_sanitised(backend: Backend) {
    let receiver = Receiver::start();
    let app = spawn_city_with(backend, &[("CITY_EVENTS_URL", receiver.url())]).await;
    let client = &app.client;
    // A City Room the service made earlier (staged: only its Matrix id matters).
    let room_id = unique("r_");
    let matrix_room = format!("!{}:{}", unique("staged"), shared_synapse().server_name);
    let now = chrono::Utc::now().timestamp_millis();
    app.db
        .execute(&format!(
            "INSERT INTO rooms (room_id, state, matrix_room_id, created_at, updated_at) \
             VALUES ('{room_id}', 'ready', '{matrix_room}', {now}, {now})"
        ))
        .await;
    let event_id = format!("${}", unique("evt"));
    let html = "<b>bold</b> <a href=\"https://daarion.city/x\">ok</a> <code>x = 1</code>\
                <script>alert(1)</script><img src=\"http://tracker.example/p.png\" \
                onerror=\"alert(2)\"><a href=\"javascript:alert(3)\">bad</a>\
                <style>body { display: none }</style>";
    let txn = json!({"events": [{
        "type": "m.room.message", "event_id": event_id, "room_id": matrix_room,
        "sender": "@mallory:evil.example", "origin_server_ts": now,
        "content": {"msgtype": "m.text", "body": "bold ok x = 1",
                    "format": "org.matrix.custom.html", "formatted_body": html},
    }]});
    put_transaction(client, backend, &unique("txn"), &txn).await;
    let delivered = eventually("the message to reach DAARION.city", WAIT, || async {
        receiver
            .events("matrix.message")
            .into_iter()
            .find(|e| e["id"] == event_id.as_str())
    })
    .await;
    let data = &delivered["data"];
    assert_eq!(data["room_id"], room_id.as_str());
    assert_eq!(data["matrix_user_id"], "@mallory:evil.example");
    assert_eq!(data["format"], "html");
    let clean = data["formatted_body"].as_str().unwrap();
    for gone in [
        "script",
        "alert",
        "onerror",
        "<img",
        "tracker",
        "javascript",
        "<style",
        "display",
    ] {
        assert!(!clean.contains(gone), "{gone:?} in {clean}");
    }
    for kept in [
        "<b>bold</b>",
        "href=\"https://daarion.city/x\"",
        "<code>x = 1</code>",
    ] {
        assert!(clean.contains(kept), "{kept:?} not in {clean}");
    }
    app.shutdown().await;
    receiver.stop().await;
}
on_both_backends!(people_s_html_reaches_daarion_city_sanitised);
