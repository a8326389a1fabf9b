//! NATS JetStream, the second transport (issue 23, CONTRACT.md section 12),
//! against a real `nats-server -js` of each test's own on 127.0.0.1
//! (Debian's package; scripts/test.sh installs it), on both back ends. The
//! test publishes and reads with async-nats, the client DAARION's Rust
//! services would use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use matrix_provisioner::domain::signature;
use serde_json::{json, Value};

use crate::on_both_backends;
use crate::rooms::*;
use crate::support::*;

// ------------------------------------------------------------ the server

/// A `nats-server` with JetStream, its store in a directory of its own.
pub(crate) struct NatsServer {
    pub(crate) url: String,
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
    client: ClientSide,
}

/// What the test's own connections need besides the options file: the CA
/// of a server with TLS, and a `.creds` file for one in operator mode.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientSide {
    pub(crate) tls_ca: Option<PathBuf>,
    pub(crate) creds: Option<PathBuf>,
}

impl NatsServer {
    pub(crate) async fn start() -> NatsServer {
        NatsServer::start_with(&[]).await
    }

    /// With more of nats-server's options (`--user u --pass p` or
    /// `--auth token`); the test's own connections authenticate alike.
    pub(crate) async fn start_with(options: &[&str]) -> NatsServer {
        NatsServer::start_full(options, None, ClientSide::default()).await
    }

    /// With a configuration file (TLS, operator mode) besides the command
    /// line's options; the test's own connections trust and authenticate
    /// as `client` says. A server with TLS has a `tls://` URL.
    pub(crate) async fn start_with_config(config: &str, client: ClientSide) -> NatsServer {
        NatsServer::start_full(&[], Some(config), client).await
    }

    async fn start_full(options: &[&str], config: Option<&str>, client: ClientSide) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        if let Some(config) = config {
            let file = dir.path().join("nats.conf");
            std::fs::write(&file, config).unwrap();
            options.extend(["-c".to_string(), file.to_str().unwrap().to_string()]);
        }
        std::fs::write(dir.path().join("options"), options.join("\n")).unwrap();
        let child = NatsServer::spawn(port, dir.path());
        let scheme = if client.tls_ca.is_some() {
            "tls"
        } else {
            "nats"
        };
        let server = NatsServer {
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            child,
            dir,
            client,
        };
        server.wait_ready().await;
        server
    }

    /// A connection of the test's own, authenticated as the server asks.
    pub(crate) async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let options = std::fs::read_to_string(self.dir.path().join("options")).unwrap_or_default();
        let options: Vec<&str> = options.lines().collect();
        let connect = match options.as_slice() {
            ["--user", user, "--pass", pass] => async_nats::ConnectOptions::with_user_and_password(
                user.to_string(),
                pass.to_string(),
            ),
            ["--auth", token] => async_nats::ConnectOptions::with_token(token.to_string()),
            _ => async_nats::ConnectOptions::new(),
        };
        let mut connect = match &self.client.creds {
            Some(creds) => connect.credentials_file(creds).await.unwrap(),
            None => connect,
        };
        if let Some(ca) = &self.client.tls_ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        connect.connect(&self.url).await
    }

    fn spawn(port: u16, dir: &std::path::Path) -> Child {
        let options = std::fs::read_to_string(dir.join("options")).unwrap_or_default();
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("jetstream"))
            .arg("-l")
            .arg(dir.join("nats.log"))
            .args(options.lines().filter(|l| !l.is_empty()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "nats-server is missing: scripts/test.sh installs it (apt-get install nats-server)",
            )
    }

    async fn wait_ready(&self) {
        eventually("nats-server to answer", Duration::from_secs(20), || async {
            let client = self.connect().await.ok()?;
            // JetStream answers (async-nats cannot read 2.9's account info).
            client.request("$JS.API.INFO", "".into()).await.ok()
        })
        .await;
    }

    /// SIGKILL, then the same server again on the same port and store.
    pub(crate) async fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = NatsServer::spawn(self.port, self.dir.path());
        self.wait_ready().await;
    }

    pub(crate) async fn js(&self) -> jetstream::Context {
        jetstream::new(self.connect().await.unwrap())
    }

    /// The server's log, for a failure's message.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The settings that put the service on `nats`, its streams created by
/// the service and a message taken by a killed service handed out again
/// after 2 s.
pub(crate) fn nats_env(nats: &NatsServer) -> Vec<(String, String)> {
    vec![
        ("NATS_URL".into(), nats.url.clone()),
        ("NATS_CREATE_STREAMS".into(), "true".into()),
        ("NATS_ACK_WAIT_SECONDS".into(), "2".into()),
    ]
}

pub(crate) fn overrides(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Which inbound stream an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum To {
    Auth,
    City,
}

fn subject(to: To, event: &Value) -> String {
    let kind = event["type"].as_str().unwrap();
    match to {
        To::Auth => format!("daarion.auth.events.{kind}"),
        To::City => format!("daarion.city.events.{kind}"),
    }
}

/// Publishes `body` on `subject` and waits for JetStream to store it.
async fn publish_raw(js: &jetstream::Context, subject: String, headers: HeaderMap, body: Vec<u8>) {
    js.publish_with_headers(subject, headers, body.into())
        .await
        .unwrap()
        .await
        .expect("JetStream stores the message");
}

/// Publishes every event (unsigned: the bus authenticates), a thousand at
/// once (the client holds at most 5,000 unanswered), waiting for JetStream's
/// acks after each thousand.
pub(crate) async fn publish_all(js: &jetstream::Context, events: &[(To, Value)]) {
    for chunk in events.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (to, event) in chunk {
            let body = serde_json::to_vec(event).unwrap();
            acks.push(js.publish(subject(*to, event), body.into()).await.unwrap());
        }
        for ack in acks {
            ack.await.expect("JetStream stores the message");
        }
    }
}

/// Waits until the service made its inbound streams (NATS_CREATE_STREAMS).
pub(crate) async fn wait_for_streams(js: &jetstream::Context) {
    for stream in ["DAARION_AUTH", "DAARION_CITY"] {
        eventually(&format!("stream {stream}"), WAIT, || async {
            js.get_stream(stream).await.ok()
        })
        .await;
    }
}

/// The service's durable consumer on `stream`, as JetStream reports it.
async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
) -> Option<async_nats::jetstream::consumer::Info> {
    let consumer: PullConsumer = js
        .get_stream(stream)
        .await
        .ok()?
        .get_consumer("matrix-provisioner")
        .await
        .ok()?;
    consumer.get_info().await.ok()
}

/// Waits until the service has answered every message of `stream`.
pub(crate) async fn consumer_drained(js: &jetstream::Context, stream: &str) {
    eventually(
        &format!("every message of {stream} answered"),
        WAIT,
        || async {
            let info = consumer_info(js, stream).await?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
}

/// Rows of `sql` (every column cast to text), read straight from a database.
async fn rows(db: &TestDb, sql: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::Row;
    let pool = one_connection(&db.url).await;
    let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
                .collect()
        })
        .collect()
}

pub(crate) async fn scalar(db: &TestDb, sql: &str) -> i64 {
    use sqlx::Row;
    let pool = one_connection(&db.url).await;
    let n: i64 = sqlx::query(sql)
        .fetch_one(&pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    pool.close().await;
    n
}

/// What the intake made of the events, without what depends on when or
/// whether Synapse did the work: people, rooms, members, agents, agents'
/// messages and the event log.
async fn intake_state(db: &TestDb) -> Vec<(String, Vec<Vec<Option<String>>>)> {
    let queries = [
        "SELECT user_id, username, CAST(username_at AS TEXT), display_name, \
         CAST(display_name_at AS TEXT), avatar_url, CAST(avatar_url_at AS TEXT), \
         CAST(deleted AS TEXT), CAST(lifecycle_at AS TEXT) FROM people ORDER BY user_id",
        "SELECT source, id, subject, kind, CAST(created_at AS TEXT) FROM events \
         ORDER BY source, id",
        "SELECT room_id, slug, name, topic, avatar_url, visibility, CAST(deleted AS TEXT), \
         CAST(lifecycle_at AS TEXT), CAST(name_at AS TEXT) FROM rooms ORDER BY room_id",
        "SELECT room_id, member_id, role, CAST(present AS TEXT), CAST(at AS TEXT) \
         FROM room_members ORDER BY room_id, member_id",
        "SELECT agent_id, slug, display_name, avatar_url, CAST(deleted AS TEXT), presence, \
         status_msg, CAST(presence_at AS TEXT) FROM agents ORDER BY agent_id",
        "SELECT message_id, room_id, agent_id, body, format, reply_to, \
         CAST(created_at AS TEXT), kind, CAST(final AS TEXT), CAST(deleted AS TEXT) \
         FROM agent_messages ORDER BY message_id",
    ];
    let mut state = Vec::new();
    for sql in queries {
        state.push((sql.to_string(), rows(db, sql).await));
    }
    state
}

/// A few hundred events of every kind, both sources, in an order that
/// exercises the intake's rules: updates before registrations, older
/// updates after newer ones, deletions, repeats of the same id, types the
/// service ignores, City Rooms with people and agents as members, agents'
/// messages and presence.
fn mixed_events() -> Vec<(To, Value)> {
    mixed_events_of(60, 6, 4)
}

/// [`mixed_events`] for `people` people, `rooms` City Rooms (8 members, an
/// agent and 10 of its messages each) and `agents` agents.
fn mixed_events_of(people: usize, rooms: usize, agents: usize) -> Vec<(To, Value)> {
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    let at = |s: i64| t0 + chrono::Duration::seconds(s);
    let tag = unique("mix");
    let mut events = Vec::new();
    let people: Vec<String> = (0..people).map(|i| format!("u_{tag}_{i:05}")).collect();
    for (i, user) in people.iter().enumerate() {
        let i = i as i64;
        if i % 6 == 5 {
            // The update comes first, the registration after it.
            events.push((
                To::Auth,
                event_at(
                    "user.updated",
                    user,
                    json!({"display_name": format!("Late {i}")}),
                    at(100 + i),
                ),
            ));
        }
        events.push((
            To::Auth,
            event_at(
                "user.registered",
                user,
                json!({"username": format!("{tag}-{i}"), "display_name": format!("Person {i}"),
                       "email": format!("{tag}-{i}@example.com")}),
                at(i),
            ),
        ));
        if i % 3 == 0 {
            events.push((
                To::Auth,
                event_at(
                    "user.updated",
                    user,
                    json!({"display_name": format!("New {i}"), "avatar_url": null}),
                    at(200 + i),
                ),
            ));
        }
        if i % 4 == 0 {
            // Older than the registration: changes nothing.
            events.push((
                To::Auth,
                event_at(
                    "user.updated",
                    user,
                    json!({"display_name": format!("Old {i}")}),
                    at(i - 50),
                ),
            ));
        }
        if i % 7 == 0 {
            events.push((
                To::Auth,
                event_at("user.deleted", user, json!({}), at(300 + i)),
            ));
        }
    }
    events.push((
        To::Auth,
        json!({"id": unique("evt_"), "type": "user.befriended", "created_at": at(0).to_rfc3339(),
               "data": {"user_id": people[0]}}),
    ));
    let city_at = |kind: &str, data: Value, s: i64| {
        let mut e = city_event(kind, data);
        e["created_at"] = json!(at(s).to_rfc3339());
        e
    };
    let agents: Vec<String> = (0..agents).map(|i| format!("a_{tag}_{i}")).collect();
    for (i, agent) in agents.iter().enumerate() {
        events.push((
            To::City,
            city_at("agent.created", json!({"agent_id": agent, "slug": format!("{tag}-{i}"), "display_name": format!("Agent {i}")}), i as i64),
        ));
    }
    events.push((
        To::City,
        city_at(
            "agent.updated",
            json!({"agent_id": agents[1], "display_name": "Renamed"}),
            50,
        ),
    ));
    events.push((
        To::City,
        city_at(
            "presence.changed",
            json!({"member_id": agents[2], "presence": "online", "status_msg": "here"}),
            60,
        ),
    ));
    let rooms: Vec<String> = (0..rooms).map(|i| format!("r_{tag}_{i}")).collect();
    for (i, room) in rooms.iter().enumerate() {
        let s = 10 * i as i64;
        events.push((
            To::City,
            city_at("room.created", json!({"room_id": room, "slug": room, "name": format!("Room {i}"),
                                           "visibility": if i % 2 == 0 { "public" } else { "private" }}), s),
        ));
        for k in 0..8 {
            let j = (i * 7 + k * 13) % people.len();
            let (person, role) = (&people[j], ["member", "moderator", "owner"][j % 3]);
            events.push((
                To::City,
                city_at(
                    "room.member_added",
                    json!({"room_id": room, "member_id": person, "role": role}),
                    s + 1,
                ),
            ));
        }
        events.push((
            To::City,
            city_at(
                "room.member_added",
                json!({"room_id": room, "member_id": agents[i % agents.len()]}),
                s + 2,
            ),
        ));
        events.push((
            To::City,
            city_at(
                "room.member_removed",
                json!({"room_id": room, "member_id": people[i % people.len()]}),
                s + 3,
            ),
        ));
        events.push((
            To::City,
            city_at(
                "room.updated",
                json!({"room_id": room, "topic": format!("Topic {i}")}),
                s + 4,
            ),
        ));
        for m in 0..10 {
            events.push((
                To::City,
                city_at(
                    "agent.message",
                    json!({"message_id": format!("m_{room}_{m}"), "agent_id": agents[i % agents.len()], "room_id": room,
                           "body": format!("**message** {m}"), "format": if m % 2 == 0 { "markdown" } else { "plain" }}),
                    s + 5 + m,
                ),
            ));
        }
    }
    events.push((
        To::City,
        city_at(
            "room.deleted",
            json!({"room_id": rooms.last().unwrap()}),
            10 * rooms.len() as i64 + 100,
        ),
    ));
    events.push((
        To::City,
        city_event("room.archived", json!({"room_id": rooms[0]})),
    ));
    // Repeats of the same id: a redelivery, by either transport.
    let again: Vec<(To, Value)> = events.iter().step_by(17).cloned().collect();
    events.extend(again);
    events
}

/// A Synapse that is not there: both services keep what their intake
/// made, and their work for Synapse waits.
pub(crate) fn no_synapse() -> SynapseInfo {
    SynapseInfo {
        url: format!("http://127.0.0.1:{}", free_port()),
        ..shared_synapse()
    }
}

// ------------------------------------------------------------ tests

/// The same few hundred mixed events, once as signed webhooks to one
/// service and once published to JetStream for another: the two
/// databases hold the same people, City Rooms, members, agents, agents'
/// messages and event log.
async fn events_on_jetstream_make_what_webhooks_make(backend: Backend) {
    same_as_webhooks(backend, mixed_events(), 1).await;
}
on_both_backends!(events_on_jetstream_make_what_webhooks_make);

/// Sends `events` as signed webhooks to one service (`in_flight` at once)
/// and publishes them to JetStream for another, then compares what the two
/// intakes made.
async fn same_as_webhooks(backend: Backend, events: Vec<(To, Value)>, in_flight: usize) {
    let nats = NatsServer::start().await;
    let mut city = city_env(backend, None);
    // No Synapse: their workers only retry; one at a time is enough.
    city.push(("WORKER_CONCURRENCY".into(), "1".into()));
    let by_webhook =
        TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&city)).await;
    let mut env = city.clone();
    env.extend(nats_env(&nats));
    let by_nats =
        TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;

    let started = std::time::Instant::now();
    let client = &by_webhook.client;
    futures_util::stream::iter(&events)
        .map(|(to, event)| async move {
            let (status, body) = match to {
                To::Auth => client.send_event(event).await,
                To::City => send_city(client, event).await,
            };
            assert_eq!(status, 202, "{body}");
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
    let by_http = started.elapsed();
    let js = nats.js().await;
    wait_for_streams(&js).await;
    let started = std::time::Instant::now();
    publish_all(&js, &events).await;
    consumer_drained(&js, "DAARION_AUTH").await;
    consumer_drained(&js, "DAARION_CITY").await;
    let by_bus = started.elapsed();

    let expected = intake_state(&by_webhook.db).await;
    let got = intake_state(&by_nats.db).await;
    for ((sql, want), (_, have)) in expected.iter().zip(&got) {
        assert!(!want.is_empty(), "nothing in {sql}");
        assert_eq!(have.len(), want.len(), "{sql}");
        assert_eq!(have, want, "{sql}");
    }
    let stored = scalar(&by_nats.db, "SELECT COUNT(*) FROM events").await;
    println!(
        "{} events ({stored} stored, the rest repeats or ignored): webhooks ({in_flight} at once) \
         {:.2} s, published to JetStream and all answered {:.2} s",
        events.len(),
        by_http.as_secs_f64(),
        by_bus.as_secs_f64()
    );
    by_webhook.shutdown().await;
    by_nats.shutdown().await;
}

/// Ten thousand mixed events in a burst (3,000 people, 180 City Rooms, 40
/// agents, their messages), webhooks 32 at a time for one service and one
/// JetStream burst for the other: the same intake.
async fn ten_thousand_events_on_jetstream_make_what_webhooks_make(backend: Backend) {
    let events = mixed_events_of(3000, 180, 40);
    assert!(events.len() >= 10_000, "{} events", events.len());
    same_as_webhooks(backend, events, 32).await;
}
on_both_backends!(ten_thousand_events_on_jetstream_make_what_webhooks_make);

/// A person's registration published twice (as a redelivery would bring
/// it) and an update published twice: one Matrix account, the update
/// applied, and every message answered.
async fn a_redelivered_event_is_a_duplicate(backend: Backend) {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn_with(
        TestDb::new(backend).await,
        shared_synapse(),
        &overrides(&nats_env(&nats)),
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let js = nats.js().await;
    wait_for_streams(&js).await;
    let user_id = unique("u_");
    let username = unique("nats");
    let registered = event("user.registered", &user_id, json!({"username": username}));
    let updated = event(
        "user.updated",
        &user_id,
        json!({"display_name": "Олена з NATS"}),
    );
    publish_all(&js, &[(To::Auth, registered.clone())]).await;
    let user = app
        .client
        .wait_for_state(&user_id, "provisioned", WAIT)
        .await;
    publish_all(
        &js,
        &[
            (To::Auth, registered.clone()),
            (To::Auth, updated.clone()),
            (To::Auth, updated.clone()),
        ],
    )
    .await;
    consumer_drained(&js, "DAARION_AUTH").await;
    let mxid = user["matrix_user_id"].as_str().unwrap().to_string();
    eventually("the update to reach Synapse", WAIT, || async {
        let account = admin.user(&mxid).await?;
        (account["displayname"] == "Олена з NATS").then_some(())
    })
    .await;
    assert_eq!(admin.count_users(&username).await, 1, "one account");
    assert_eq!(admin.lookup(&user_id).await.as_deref(), Some(mxid.as_str()));
    let logged = scalar(
        &app.db,
        &format!("SELECT COUNT(*) FROM events WHERE subject = '{user_id}'"),
    )
    .await;
    assert_eq!(logged, 2, "each event id once in the event log");
    app.shutdown().await;
}
on_both_backends!(a_redelivered_event_is_a_duplicate);

/// What can never be accepted (not JSON, no signature, a wrong one, a
/// value the service refuses) reaches `matrix-provisioner.dead.<subject>`
/// once, with `Mp-Error` saying why, and is not handed out again; the
/// messages around it are stored.
async fn a_message_that_can_never_be_accepted_is_dead_lettered_once(backend: Backend) {
    let nats = NatsServer::start().await;
    let mut env = nats_env(&nats);
    env.extend(city_env(backend, None));
    env.push(("NATS_REQUIRE_SIGNATURE".into(), "true".into()));
    let app = TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut dead = client.subscribe("matrix-provisioner.dead.>").await.unwrap();
    client.flush().await.unwrap();
    let js = jetstream::new(client.clone());
    eventually("the service's streams", WAIT, || async {
        js.get_stream("MATRIX_PROVISIONER_DEAD").await.ok()
    })
    .await;

    let signed = |secret: &str, body: &[u8]| {
        let mut headers = HeaderMap::new();
        let sig = signature::sign(secret, chrono::Utc::now().timestamp(), body);
        headers.insert(signature::HEADER, sig.as_str());
        headers
    };
    let user = |kind: &str| event(kind, &unique("u_"), json!({"username": unique("dl")}));
    let good = user("user.registered");
    let not_json = b"{\"id\": \"evt_x\", \"type\": ".to_vec();
    let unsigned = serde_json::to_vec(&user("user.registered")).unwrap();
    let wrongly_signed = serde_json::to_vec(&user("user.registered")).unwrap();
    let room = city_event(
        "room.created",
        json!({"room_id": unique("r_"), "slug": "ok", "name": "ok", "visibility": "public"}),
    );
    let bad_room = city_event(
        "room.created",
        json!({"room_id": unique("r_"), "slug": "x", "name": "x", "visibility": "secret"}),
    );
    let auth = "daarion.auth.events.user.registered".to_string();
    let city = "daarion.city.events.room.created".to_string();
    publish_raw(
        &js,
        auth.clone(),
        signed(WEBHOOK_SECRET, &not_json),
        not_json.clone(),
    )
    .await;
    publish_raw(&js, auth.clone(), HeaderMap::new(), unsigned.clone()).await;
    publish_raw(
        &js,
        auth.clone(),
        signed("not-the-secret", &wrongly_signed),
        wrongly_signed,
    )
    .await;
    let body = serde_json::to_vec(&bad_room).unwrap();
    publish_raw(&js, city.clone(), signed(CITY_SECRET, &body), body).await;
    let body = serde_json::to_vec(&good).unwrap();
    publish_raw(&js, auth.clone(), signed(WEBHOOK_SECRET, &body), body).await;
    let body = serde_json::to_vec(&room).unwrap();
    publish_raw(&js, city.clone(), signed(CITY_SECRET, &body), body).await;

    let mut letters = Vec::new();
    while letters.len() < 4 {
        let letter = tokio::time::timeout(WAIT, dead.next())
            .await
            .unwrap_or_else(|_| panic!("dead letters: {letters:?}\n{}", nats.log()))
            .unwrap();
        letters.push(letter);
    }
    consumer_drained(&js, "DAARION_AUTH").await;
    consumer_drained(&js, "DAARION_CITY").await;
    // Three times the acknowledgement wait: nothing is handed out again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), dead.next())
            .await
            .is_err(),
        "a message was dead-lettered twice"
    );
    let why: Vec<(String, String)> = letters
        .iter()
        .map(|m| {
            let error = m.headers.as_ref().unwrap().get("Mp-Error").unwrap();
            (m.subject.to_string(), error.as_str().to_string())
        })
        .collect();
    let code = |i: usize| why[i].1.split(':').next().unwrap().to_string();
    let mut codes: Vec<String> = (0..4).map(code).collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "bad_request",
            "invalid_signature",
            "missing_signature",
            "unacceptable_value"
        ],
        "{why:?}"
    );
    for (subject, _) in &why {
        assert!(
            subject == &format!("matrix-provisioner.dead.{auth}")
                || subject == &format!("matrix-provisioner.dead.{city}"),
            "{subject}"
        );
    }
    let not_json_letter = letters
        .iter()
        .find(|m| m.payload.as_ref() == not_json.as_slice());
    assert!(
        not_json_letter.is_some(),
        "the copy carries the body as published"
    );
    // The service's dead-letter stream keeps them, once each.
    let mut stream = js.get_stream("MATRIX_PROVISIONER_DEAD").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 4);
    // The good ones around them are stored.
    let stored = scalar(
        &app.db,
        &format!(
            "SELECT COUNT(*) FROM events WHERE id IN ('{}', '{}')",
            good["id"].as_str().unwrap(),
            room["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(stored, 2);
    assert_eq!(scalar(&app.db, "SELECT COUNT(*) FROM events").await, 2);
    let metrics = metrics_text(&app.client).await;
    assert!(
        metrics.contains(
            r#"matrix_provisioner_nats_messages_total{code="missing_signature",outcome="dead",stream="DAARION_AUTH"}"#
        ),
        "{metrics}"
    );
    app.shutdown().await;
}
on_both_backends!(a_message_that_can_never_be_accepted_is_dead_lettered_once);

/// A TCP relay between the service and NATS that can drop, while
/// forwarding everything else (read from NATS's text protocol):
/// - `acks`: the service's acknowledgements (`PUB $JS.ACK.…`): JetStream
///   then never hears that a message was taken, however often the service
///   stores and acknowledges it;
/// - `pub_acks`: JetStream's answers to the service's publishes (a `MSG`
///   to the service's inbox naming the stream): JetStream stores what the
///   service publishes, and the service never hears so.
struct Relay {
    port: u16,
    acks: Arc<Dropping>,
    pub_acks: Arc<Dropping>,
    task: tokio::task::JoinHandle<()>,
}

/// One kind of message a relay drops while `on`, and how many it dropped.
#[derive(Default)]
struct Dropping {
    on: AtomicBool,
    count: std::sync::atomic::AtomicUsize,
}

impl Dropping {
    fn start(&self) {
        self.on.store(true, Ordering::SeqCst);
    }

    fn stop(&self) {
        self.on.store(false, Ordering::SeqCst);
    }

    fn dropped(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Relay {
    async fn start(upstream: &str) -> Relay {
        let upstream = upstream.trim_start_matches("nats://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (acks, pub_acks) = (Arc::new(Dropping::default()), Arc::new(Dropping::default()));
        let (a, p) = (Arc::clone(&acks), Arc::clone(&pub_acks));
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((service, _)) = listener.accept().await {
                let Ok(nats) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (from_service, to_service) = service.into_split();
                let (from_nats, to_nats) = nats.into_split();
                pipes.spawn(filter(
                    from_service,
                    to_nats,
                    Arc::clone(&a),
                    |fields, _| fields[1].starts_with("$JS.ACK."),
                ));
                pipes.spawn(filter(
                    from_nats,
                    to_service,
                    Arc::clone(&p),
                    |fields, payload| {
                        fields[0].eq_ignore_ascii_case("MSG")
                            && fields[1].starts_with("_INBOX.")
                            && String::from_utf8_lossy(payload)
                                .contains(r#""stream":"MATRIX_EVENTS""#)
                    },
                ));
            }
        });
        Relay {
            port,
            acks,
            pub_acks,
            task,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one direction's protocol lines (and payloads), leaving out
/// the messages `target` picks (by the line's fields and the payload)
/// while `dropping` is on.
async fn filter(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dropping: Arc<Dropping>,
    target: fn(&[&str], &[u8]) -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        let mut out = Vec::new();
        while let Some(eol) = pending.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&pending[..eol]).to_string();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let verb = fields.first().map(|v| v.to_ascii_uppercase());
            let payload = match verb.as_deref() {
                Some("PUB" | "HPUB" | "MSG" | "HMSG") => {
                    fields.last().unwrap().parse::<usize>().unwrap() + 2
                }
                _ => 0,
            };
            let whole = eol + 2 + payload;
            if pending.len() < whole {
                break;
            }
            if payload > 0
                && dropping.on.load(Ordering::SeqCst)
                && target(&fields, &pending[eol + 2..whole])
            {
                dropping.count.fetch_add(1, Ordering::SeqCst);
            } else {
                out.extend_from_slice(&pending[..whole]);
            }
            pending.drain(..whole);
        }
        if !out.is_empty() && to.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// SIGKILL after an agent's 200 messages were stored but before JetStream
/// heard a single acknowledgement (a relay drops them): JetStream hands
/// them all out again to the next process, the intake takes them as
/// duplicates, and the room gets each message once, in order.
async fn a_kill_between_storing_and_acknowledging_loses_and_doubles_nothing(backend: Backend) {
    let nats = NatsServer::start().await;
    let relay = Relay::start(&nats.url).await;
    let db = TestDb::new(backend).await;
    let mut env: HashMap<String, String> = base_env(&db, &shared_synapse());
    env.extend(city_env(backend, None));
    env.extend(nats_env(&nats));
    env.insert("NATS_URL".into(), relay.url());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("service.log");
    let mut service = ChildService::start(&env, free_port(), &log).await;
    let s = crate::agents::scene(&service.client, backend, "public").await;
    let js = nats.js().await;
    wait_for_streams(&js).await;
    relay.acks.start();

    let burst = unique("nburst_");
    let ids: Vec<String> = (0..200).map(|i| format!("{burst}-{i:03}")).collect();
    let t0 = chrono::Utc::now() - chrono::Duration::minutes(10);
    let events: Vec<(To, Value)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let t = t0 + chrono::Duration::milliseconds(10 * i as i64);
            let e =
                crate::agents::agent_message(&s, id, json!({"body": format!("nats burst {i}")}));
            (To::City, crate::agents::at(e, t))
        })
        .collect();
    publish_all(&js, &events).await;
    let in_burst = format!("SELECT COUNT(*) FROM agent_messages WHERE message_id LIKE '{burst}-%'");
    eventually("the burst to be stored", WAIT, || async {
        (scalar(&db, &in_burst).await == 200).then_some(())
    })
    .await;
    eventually("the service to acknowledge the burst", WAIT, || async {
        (relay.acks.dropped() >= 200).then_some(())
    })
    .await;
    let info = consumer_info(&js, "DAARION_CITY").await.unwrap();
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "JetStream heard no acknowledgement before the kill: {info:?}"
    );
    service.kill();
    drop(relay);

    env.insert("NATS_URL".into(), nats.url.clone());
    let service = ChildService::start(&env, free_port(), &log).await;
    consumer_drained(&js, "DAARION_CITY").await;
    // Every message was handed out twice: to the killed process and again.
    let info = consumer_info(&js, "DAARION_CITY").await.unwrap();
    assert!(info.delivered.consumer_sequence >= 400, "{info:?}");
    eventually("the burst to be sent", WAIT, || async {
        let o = crate::agents::outboxes(&service.client).await;
        (o["to_matrix"]["pending"] == 0).then_some(())
    })
    .await;
    assert_eq!(scalar(&db, &in_burst).await, 200);
    let sent: Vec<String> = crate::agents::room_messages(&Bot::new(backend), &s.matrix_room)
        .await
        .into_iter()
        .filter(|e| e["sender"] == s.puppet.as_str())
        .filter_map(|e| {
            e["content"]["city.daarion.message_id"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|id| id.starts_with(&burst))
        .collect();
    assert_eq!(sent, ids, "each message once, in order");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    drop(service);
}
on_both_backends!(a_kill_between_storing_and_acknowledging_loses_and_doubles_nothing);

/// A person's message in a City Room, as Synapse's transaction brings it
/// to the service; returns its Matrix event id.
async fn person_says(client: &Client, backend: Backend, matrix_room: &str, body: &str) -> String {
    let event_id = format!("${}", unique("evt"));
    let txn = json!({"events": [{
        "type": "m.room.message", "event_id": event_id, "room_id": matrix_room,
        "sender": "@olena:elsewhere.example", "origin_server_ts": chrono::Utc::now().timestamp_millis(),
        "content": {"msgtype": "m.text", "body": body},
    }]});
    crate::agents::put_transaction(client, backend, &unique("txn"), &txn).await;
    event_id
}

/// With `CITY_EVENTS_URL` and `NATS_OUT` both set, a person's message
/// goes out both ways, once each: to DAARION.city's receiver, and to
/// JetStream as `matrix.events.matrix.message` with `Nats-Msg-Id` = its
/// id and the HTTP signature. While JetStream cannot take it (no
/// `MATRIX_EVENTS` stream yet) the receiver still gets it, once, and the
/// event waits in the outbox for NATS; while the receiver fails, JetStream
/// gets it, once, and the retries only POST.
async fn people_s_messages_go_out_on_both_transports_once(backend: Backend) {
    let nats = NatsServer::start().await;
    let receiver = crate::agents::Receiver::start();
    let mut env = city_env(backend, None);
    env.push(("CITY_EVENTS_URL".into(), receiver.url()));
    env.push(("NATS_URL".into(), nats.url.clone()));
    env.push(("NATS_OUT".into(), "true".into()));
    let app = TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
    // A City Room the service made earlier (staged: only its Matrix id matters).
    let matrix_room = format!("!{}:{}", unique("staged"), shared_synapse().server_name);
    let room_id = staged_room(&app.db, &matrix_room).await;
    let delivered = |id: &str| {
        receiver
            .events("matrix.message")
            .iter()
            .filter(|e| e["id"] == id)
            .count()
    };

    // NATS cannot take it: HTTP can.
    let first = person_says(&app.client, backend, &matrix_room, "first").await;
    eventually("the receiver to get the first", WAIT, || async {
        (delivered(&first) == 1).then_some(())
    })
    .await;
    let waiting = eventually("the outbox to say why it waits", WAIT, || async {
        let o = crate::agents::outboxes(&app.client).await;
        let error = o["to_city"]["last_error"].as_str()?.to_string();
        (o["to_city"]["pending"] == 1 && error.contains("not published to NATS")).then_some(error)
    })
    .await;
    assert!(waiting.contains(&first), "{waiting}");
    let js = nats.js().await;
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: "MATRIX_EVENTS".into(),
            subjects: vec!["matrix.events.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the first to leave the outbox", WAIT, || async {
        let o = crate::agents::outboxes(&app.client).await;
        (o["to_city"]["pending"] == 0).then_some(())
    })
    .await;
    assert_eq!(
        delivered(&first),
        1,
        "POSTed once, though its job ran again"
    );

    // HTTP fails three times: NATS takes it meanwhile, once.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut published = client.subscribe("matrix.events.>").await.unwrap();
    client.flush().await.unwrap();
    receiver.fail_next(3);
    let second = person_says(&app.client, backend, &matrix_room, "second").await;
    eventually("the second to leave the outbox", WAIT, || async {
        let o = crate::agents::outboxes(&app.client).await;
        (o["to_city"]["pending"] == 0 && delivered(&second) == 1).then_some(())
    })
    .await;
    assert_eq!(receiver.failed(), 3);
    let mut copies = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), published.next()).await
    {
        copies.push(m);
    }
    assert_eq!(
        copies.len(),
        1,
        "published once, though its job ran four times"
    );

    // JetStream holds each once, as the contract says.
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    for (seq, id) in [(1, &first), (2, &second)] {
        let m = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(m.subject.as_str(), "matrix.events.matrix.message");
        assert_eq!(m.headers.get("Nats-Msg-Id").unwrap().as_str(), id.as_str());
        let sig = m.headers.get(signature::HEADER).map(|v| v.as_str());
        let secrets = [matrix_provisioner::secret::Secret::new(CITY_SECRET)];
        signature::verify(sig, &m.payload, &secrets, chrono::Utc::now().timestamp())
            .expect("signed as on HTTP");
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["type"], "matrix.message");
        assert_eq!(body["data"]["room_id"], room_id.as_str());
        assert_eq!(
            Some(&body),
            receiver
                .events("matrix.message")
                .iter()
                .find(|e| e["id"] == id.as_str())
        );
    }
    app.shutdown().await;
    receiver.stop().await;
}
on_both_backends!(people_s_messages_go_out_on_both_transports_once);

/// A room row as the service would have made it (only its Matrix id
/// matters to a person's message); returns its DAARION.city id.
async fn staged_room(db: &TestDb, matrix_room: &str) -> String {
    let room_id = unique("r_");
    let now = chrono::Utc::now().timestamp_millis();
    db.execute(&format!(
        "INSERT INTO rooms (room_id, state, matrix_room_id, created_at, updated_at) \
         VALUES ('{room_id}', 'ready', '{matrix_room}', {now}, {now})"
    ))
    .await;
    room_id
}

/// SIGKILL after JetStream stored a person's `matrix.message` but before
/// the service heard JetStream's answer (a relay drops it), so the outbox
/// row is not marked: the next process publishes it again with the same
/// `Nats-Msg-Id`, JetStream answers "duplicate", the row leaves the
/// outbox, and the stream holds the event once.
async fn a_message_is_published_once_across_a_kill(backend: Backend) {
    let nats = NatsServer::start().await;
    let js = nats.js().await;
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: "MATRIX_EVENTS".into(),
            subjects: vec!["matrix.events.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let relay = Relay::start(&nats.url).await;
    relay.pub_acks.start();
    let db = TestDb::new(backend).await;
    let mut env: HashMap<String, String> = base_env(&db, &shared_synapse());
    env.extend(city_env(backend, None));
    env.extend(nats_env(&nats));
    env.insert("NATS_URL".into(), relay.url());
    env.insert("NATS_OUT".into(), "true".into());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("service.log");
    let mut service = ChildService::start(&env, free_port(), &log).await;
    let matrix_room = format!("!{}:{}", unique("staged"), shared_synapse().server_name);
    let room_id = staged_room(&db, &matrix_room).await;

    let id = person_says(&service.client, backend, &matrix_room, "once").await;
    eventually("JetStream to store it", WAIT, || async {
        let stream = js.get_stream("MATRIX_EVENTS").await.ok()?;
        (stream.cached_info().state.messages == 1).then_some(())
    })
    .await;
    eventually("JetStream's answer to be lost", WAIT, || async {
        (relay.pub_acks.dropped() >= 1).then_some(())
    })
    .await;
    let o = crate::agents::outboxes(&service.client).await;
    assert_eq!(o["to_city"]["pending"], 1, "not marked as published: {o}");
    service.kill();
    drop(relay);

    env.insert("NATS_URL".into(), nats.url.clone());
    let service = ChildService::start(&env, free_port(), &log).await;
    eventually("the message to leave the outbox", WAIT, || async {
        let o = crate::agents::outboxes(&service.client).await;
        (o["to_city"]["pending"] == 0).then_some(())
    })
    .await;
    let metrics = metrics_text(&service.client).await;
    assert!(
        metrics.contains(
            r#"matrix_provisioner_city_deliveries_total{outcome="duplicate",transport="nats"} 1"#
        ),
        "the second process was told it was a duplicate: {metrics}"
    );
    assert_eq!(stream.info().await.unwrap().state.messages, 1, "once");
    let m = stream.get_raw_message(1).await.unwrap();
    assert_eq!(m.headers.get("Nats-Msg-Id").unwrap().as_str(), id.as_str());
    let body: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["data"]["room_id"], room_id.as_str());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    drop(service);
}
on_both_backends!(a_message_is_published_once_across_a_kill);

/// `n` DAARION Auth signups for DAARION_AUTH, their user ids `u_<tag>_…`.
fn signups(tag: &str, n: usize) -> Vec<(To, Value)> {
    (0..n)
        .map(|i| {
            let e = event(
                "user.registered",
                &format!("u_{tag}_{i:04}"),
                json!({"username": format!("{tag}-{i}")}),
            );
            (To::Auth, e)
        })
        .collect()
}

/// What one service's `/metrics` says it did with JetStream's messages.
async fn accepted_by(client: &Client) -> u64 {
    let text = metrics_text(client).await;
    text.lines()
        .filter(|l| l.starts_with("matrix_provisioner_nats_messages_total{"))
        .filter(|l| l.contains(r#"outcome="accepted""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Two replicas on one PostgreSQL bind the same durable consumer:
/// JetStream splits a burst between them, and every event is stored once.
async fn two_replicas_split_one_consumer() {
    let nats = NatsServer::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let mut env: HashMap<String, String> = base_env(&db, &no_synapse());
    env.extend(nats_env(&nats));
    // No Synapse: their workers only retry; one at a time is enough.
    env.insert("WORKER_CONCURRENCY".into(), "1".into());
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("service.log");
    let one = ChildService::start(&env, free_port(), &log).await;
    let two = ChildService::start(&env, free_port(), &log).await;
    let js = nats.js().await;
    wait_for_streams(&js).await;
    eventually("both replicas to pull", WAIT, || async {
        let info = consumer_info(&js, "DAARION_AUTH").await?;
        (info.num_waiting >= 2).then_some(())
    })
    .await;
    let tag = unique("split");
    let events = signups(&tag, 600);
    publish_all(&js, &events).await;
    consumer_drained(&js, "DAARION_AUTH").await;
    let stored = scalar(
        &db,
        &format!("SELECT COUNT(*) FROM events WHERE subject LIKE 'u_{tag}_%'"),
    )
    .await;
    assert_eq!(stored, 600);
    let (a, b) = (
        accepted_by(&one.client).await,
        accepted_by(&two.client).await,
    );
    assert_eq!(a + b, 600, "each event stored once: {a} + {b}");
    assert!(a > 0 && b > 0, "both replicas took a share: {a} + {b}");
    println!("600 events split between two replicas: {a} + {b}");
    drop((one, two));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_one_consumer_postgres() {
    two_replicas_split_one_consumer().await
}

/// NATS killed and started again in the middle of a burst, while the
/// service holds 500 messages it stored but whose acknowledgements JetStream
/// never heard (a relay drops them): the service reconnects, JetStream hands
/// those 500 out again (duplicates) and the rest of the burst after them,
/// and every event is stored once and answered.
async fn nats_restarted_mid_burst_loses_nothing(backend: Backend) {
    let mut nats = NatsServer::start().await;
    let relay = Relay::start(&nats.url).await;
    let mut env = nats_env(&nats);
    env.push(("NATS_URL".into(), relay.url()));
    env.push(("WORKER_CONCURRENCY".into(), "1".into()));
    let app = TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
    let js = nats.js().await;
    wait_for_streams(&js).await;
    let tag = unique("restart");
    let events = signups(&tag, 1000);
    let in_burst = format!("SELECT COUNT(*) FROM events WHERE subject LIKE 'u_{tag}_%'");
    relay.acks.start();
    publish_all(&js, &events[..500]).await;
    eventually("the first half to be stored", WAIT, || async {
        (scalar(&app.db, &in_burst).await == 500).then_some(())
    })
    .await;
    let info = consumer_info(&js, "DAARION_AUTH").await.unwrap();
    assert_eq!(info.ack_floor.stream_sequence, 0, "{info:?}");

    nats.restart().await;
    relay.acks.stop();
    let js = nats.js().await;
    publish_all(&js, &events[500..]).await;
    eventually("the whole burst to be stored", WAIT, || async {
        (scalar(&app.db, &in_burst).await == 1000).then_some(())
    })
    .await;
    consumer_drained(&js, "DAARION_AUTH").await;
    assert_eq!(scalar(&app.db, &in_burst).await, 1000);
    let info = consumer_info(&js, "DAARION_AUTH").await.unwrap();
    assert!(
        info.delivered.consumer_sequence >= 1500,
        "the first half again: {info:?}"
    );
    let ready: Value = app
        .client
        .http
        .get(format!("{}/readyz", app.client.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["nats"], "connected", "{ready}");
    app.shutdown().await;
}
on_both_backends!(nats_restarted_mid_burst_loses_nothing);

/// What the service says of NATS at `/readyz` (the status, and `nats`).
pub(crate) async fn readiness(client: &Client) -> (u16, Value) {
    let response = client
        .http
        .get(format!("{}/readyz", client.base))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

pub(crate) async fn metrics(app: &TestApp) -> String {
    metrics_text(&app.client).await
}

/// How many times nats-server's log has `words` (its words for a refused
/// connection).
pub(crate) fn refusals(nats: &NatsServer, words: &str) -> usize {
    nats.log().matches(words).count()
}

/// Waits until nats-server refused the service twice more than `before`
/// (the first attempt and a retry), then: `/readyz` still 200 and says NATS
/// is not connected, the gauge says 0, and a webhook is still taken.
pub(crate) async fn refused_and_still_ready(
    app: &TestApp,
    nats: &NatsServer,
    words: &str,
    before: usize,
) {
    eventually(
        &format!("nats-server to refuse the service twice ({words})"),
        WAIT,
        || async { (refusals(nats, words) >= before + 2).then_some(()) },
    )
    .await;
    let (status, body) = readiness(&app.client).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["nats"], "connected", "{body}");
    let metrics = metrics(app).await;
    assert!(
        metrics.contains("matrix_provisioner_nats_connected 0"),
        "{metrics}"
    );
    let e = event(
        "user.registered",
        &unique("u_"),
        json!({"username": unique("hook")}),
    );
    assert_eq!(
        app.client.send_event(&e).await.0,
        202,
        "webhooks still taken"
    );
}

/// A NATS that asks for a user and password, or a token: the service
/// authenticates with NATS_USER + NATS_PASSWORD or NATS_TOKEN and takes its
/// messages. With a wrong password it is never connected, says so at
/// `/readyz` and in its gauge, and stays ready (webhooks are still taken).
async fn the_service_authenticates_to_nats(backend: Backend) {
    let user_id = unique("u_");
    for (options, settings) in [
        (
            vec!["--user", "mp", "--pass", "nats-password"],
            vec![("NATS_USER", "mp"), ("NATS_PASSWORD", "nats-password")],
        ),
        (
            vec!["--auth", "nats-token"],
            vec![("NATS_TOKEN", "nats-token")],
        ),
    ] {
        let nats = NatsServer::start_with(&options).await;
        let mut env = nats_env(&nats);
        for (k, v) in &settings {
            env.push((k.to_string(), v.to_string()));
        }
        let app =
            TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
        let js = nats.js().await;
        wait_for_streams(&js).await;
        let e = event(
            "user.registered",
            &user_id,
            json!({"username": unique("auth")}),
        );
        publish_all(&js, &[(To::Auth, e.clone())]).await;
        consumer_drained(&js, "DAARION_AUTH").await;
        let stored = format!(
            "SELECT COUNT(*) FROM events WHERE id = '{}'",
            e["id"].as_str().unwrap()
        );
        assert_eq!(scalar(&app.db, &stored).await, 1, "{settings:?}");
        assert_eq!(readiness(&app.client).await.1["nats"], "connected");
        app.shutdown().await;
    }

    let nats = NatsServer::start_with(&["--user", "mp", "--pass", "nats-password"]).await;
    let mut env = nats_env(&nats);
    env.push(("NATS_USER".into(), "mp".into()));
    env.push(("NATS_PASSWORD".into(), "wrong-password".into()));
    let words = "authentication error";
    let before = refusals(&nats, words);
    let app = TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
    refused_and_still_ready(&app, &nats, words, before).await;
    app.abandon().await;
}
on_both_backends!(the_service_authenticates_to_nats);
