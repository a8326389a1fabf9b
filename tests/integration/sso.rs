//! Single sign-on against the real Synapse: DAARION access tokens (HS256,
//! and RS256 / ES256 / EdDSA from a JWKS served by the test) become Matrix
//! logins; a person not provisioned yet is provisioned on the spot, once;
//! every bad token is a 401 that leaves no trace in our database or Synapse.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::fakes::serve_locally;
use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(30);
const AUTH_SECRET: &str = "daarion-access-token-secret";
const ISSUER: &str = "https://auth.daarion.test";
const AUDIENCE: &str = "matrix-provisioner";

// ---------------------------------------------------------------- keys and tokens

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/jwt").join(name)).unwrap()
}

/// A DAARION signing key: its algorithm, the private key, and the `kid` it
/// is published under.
#[derive(Clone)]
struct SigningKey {
    alg: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
}

impl SigningKey {
    fn hs256(secret: &[u8]) -> SigningKey {
        SigningKey {
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
            kid: None,
        }
    }

    fn daarion_hs256() -> SigningKey {
        SigningKey::hs256(AUTH_SECRET.as_bytes())
    }

    fn rsa(file: &str, kid: &str) -> SigningKey {
        SigningKey {
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(&fixture(file)).unwrap(),
            kid: Some(kid.into()),
        }
    }

    fn ec(kid: &str) -> SigningKey {
        SigningKey {
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(&fixture("ec-p256.pem")).unwrap(),
            kid: Some(kid.into()),
        }
    }

    fn ed(kid: &str) -> SigningKey {
        SigningKey {
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap(),
            kid: Some(kid.into()),
        }
    }

    fn with_kid(&self, kid: Option<&str>) -> SigningKey {
        SigningKey {
            kid: kid.map(str::to_string),
            ..self.clone()
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        encode(&header, claims, &self.key).unwrap()
    }

    /// The public half, as DAARION Auth would publish it.
    fn jwk(&self) -> Value {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = self.kid.clone();
        serde_json::to_value(jwk).unwrap()
    }
}

/// Claims of a good DAARION access token for `sub`.
fn claims(sub: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({"sub": sub, "iat": now, "exp": now + 300, "iss": ISSUER, "aud": AUDIENCE})
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with no signature at all.
fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// `token` with its payload replaced (the signature no longer matches).
fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

// ---------------------------------------------------------------- a fake DAARION JWKS

/// DAARION Auth's key set, served by the test; counts the downloads.
struct FakeJwks {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

impl FakeJwks {
    async fn start(keys: &[&SigningKey]) -> FakeJwks {
        let set = Arc::new(Mutex::new(Value::Null));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&set), Arc::clone(&hits));
        let (port, _) = serve_locally(move |cfg| {
            let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
            cfg.route(
                "/.well-known/jwks.json",
                web::get().to(move || {
                    let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
                    async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let body = served.lock().unwrap().clone();
                        HttpResponse::Ok().json(body)
                    }
                }),
            );
        });
        let jwks = FakeJwks {
            url: format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
            keys: set,
            hits,
        };
        jwks.publish(keys);
        jwks
    }

    fn publish(&self, keys: &[&SigningKey]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        *self.keys.lock().unwrap() = json!({ "keys": keys });
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- the service and Synapse

async fn sso_app(backend: Backend, jwks: Option<&FakeJwks>, extra: &[(&str, &str)]) -> TestApp {
    sso_app_with(TestDb::new(backend).await, shared_synapse(), jwks, extra).await
}

async fn sso_app_with(
    db: TestDb,
    synapse: SynapseInfo,
    jwks: Option<&FakeJwks>,
    extra: &[(&str, &str)],
) -> TestApp {
    let mut env = vec![
        ("AUTH_JWT_SECRET", AUTH_SECRET),
        ("AUTH_JWT_ISSUER", ISSUER),
        ("AUTH_JWT_AUDIENCE", AUDIENCE),
    ];
    if let Some(jwks) = jwks {
        env.push(("AUTH_JWKS_URL", jwks.url.as_str()));
    }
    env.extend_from_slice(extra);
    TestApp::spawn_with(db, synapse, &env).await
}

#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    cache_control: Option<String>,
    body: Value,
}

impl Answer {
    fn error(&self) -> (u16, &str) {
        (self.status, self.body["error"].as_str().unwrap_or("-"))
    }
}

async fn post_sso(
    client: &Client,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
    forwarded_for: Option<&str>,
) -> Answer {
    let mut request = client.http.post(format!("{}{path}", client.base));
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    if let Some(ip) = forwarded_for {
        request = request.header("X-Forwarded-For", ip);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Answer {
        status: response.status().as_u16(),
        retry_after: header("Retry-After").and_then(|v| v.parse().ok()),
        cache_control: header("Cache-Control"),
        body: response.json().await.unwrap_or(Value::Null),
    }
}

async fn login_token(app: &TestApp, token: &str) -> Answer {
    let bearer = format!("Bearer {token}");
    post_sso(
        &app.client,
        "/v1/sso/login-token",
        Some(&bearer),
        None,
        None,
    )
    .await
}

async fn session(app: &TestApp, token: &str, body: Option<&str>) -> Answer {
    let bearer = format!("Bearer {token}");
    post_sso(&app.client, "/v1/sso/session", Some(&bearer), body, None).await
}

/// A Matrix client-server API call, as a DAARION app would make it.
async fn matrix(
    method: reqwest::Method,
    url: &str,
    access_token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = access_token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Registers the person through the webhook and waits for the account.
async fn provisioned(app: &TestApp, user_id: &str, username: &str) -> String {
    let (status, body) = app
        .client
        .send_event(&event(
            "user.registered",
            user_id,
            json!({ "username": username }),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    let record = app
        .client
        .wait_for_state(user_id, "provisioned", DEADLINE)
        .await;
    record["matrix_user_id"].as_str().unwrap().to_string()
}

/// Messages of a room, read through Synapse's admin API.
async fn room_messages(admin: &SynapseAdmin, room_id: &str) -> Vec<Value> {
    let (status, body) = admin
        .get(&format!(
            "/_synapse/admin/v1/rooms/{room_id}/messages?dir=b&limit=50"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["chunk"].as_array().unwrap().clone()
}

// ---------------------------------------------------------------- the tests

async fn a_login_token_opens_a_matrix_session_as_the_person(backend: Backend) {
    let app = sso_app(backend, None, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let user_id = unique("u_");
    let mxid = provisioned(&app, &user_id, &unique("tok")).await;

    let before = Utc::now().timestamp();
    let answer = login_token(&app, &SigningKey::daarion_hs256().sign(&claims(&user_id))).await;
    let after = Utc::now().timestamp();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = &answer.body;
    assert_eq!(body["matrix_user_id"], mxid);
    assert_eq!(
        body["homeserver_url"],
        app.synapse.url.trim_end_matches('/')
    );
    assert_eq!(body["login"]["type"], "org.matrix.login.jwt");
    assert_eq!(answer.cache_control.as_deref(), Some("no-store"));
    let expires = DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!(
        (before + 120..=after + 120).contains(&expires),
        "expires_at is two minutes ahead: {expires} vs {before}..{after}"
    );

    // The `login` object, as is, is the body of Synapse's /login.
    let homeserver = body["homeserver_url"].as_str().unwrap();
    let (status, login) = matrix(
        reqwest::Method::POST,
        &format!("{homeserver}/_matrix/client/v3/login"),
        None,
        Some(&body["login"]),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let (status, whoami) = matrix(
        reqwest::Method::GET,
        &format!("{homeserver}/_matrix/client/v3/account/whoami"),
        login["access_token"].as_str(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{whoami}");
    assert_eq!(whoami["user_id"], mxid);
    assert_eq!(admin.lookup(&user_id).await, Some(mxid));
    app.shutdown().await;
}
on_both_backends!(a_login_token_opens_a_matrix_session_as_the_person);

/// Someone known only from an update (no username yet) who signs in during
/// the grace period gets their account at once, named from the token's
/// `preferred_username`.
async fn a_sign_in_during_the_grace_period_names_the_account_at_once(backend: Backend) {
    let app = sso_app(backend, None, &[("USERNAME_GRACE_SECONDS", "600")]).await;
    let admin = SynapseAdmin::shared().await;
    let user_id = unique("u_");
    let username = unique("signin-");
    let (status, body) = app
        .client
        .send_event(&event(
            "user.updated",
            &user_id,
            json!({"display_name": "Early"}),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["matrix_user_id"], Value::Null);

    let token = SigningKey::daarion_hs256().sign(&with(
        claims(&user_id),
        "preferred_username",
        json!(username),
    ));
    let answer = login_token(&app, &token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let expected = admin.user_id(&username);
    assert_eq!(answer.body["matrix_user_id"], expected);
    assert_eq!(admin.lookup(&user_id).await, Some(expected.clone()));
    let user = admin.user(&expected).await.unwrap();
    assert_eq!(user["displayname"], "Early");
    app.shutdown().await;
}
on_both_backends!(a_sign_in_during_the_grace_period_names_the_account_at_once);

/// The provisioning a sign-in starts (in a task of its own) carries the
/// sign-in's request id to Synapse.
async fn provisioning_at_sign_in_carries_the_request_id(backend: Backend) {
    let synapse = shared_synapse();
    let proxy = SynapseProxy::start(&synapse.url);
    let proxied = SynapseInfo {
        url: proxy.url.clone(),
        ..synapse
    };
    let app = sso_app_with(TestDb::new(backend).await, proxied, None, &[]).await;
    let user_id = unique("u_");
    let token = SigningKey::daarion_hs256().sign(&with(
        claims(&user_id),
        "preferred_username",
        json!(unique("traced")),
    ));
    let request_id = unique("sso-req-");
    let response = app
        .client
        .http
        .post(format!("{}/v1/sso/login-token", app.client.base))
        .bearer_auth(&token)
        .header("X-Request-Id", &request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let registrations: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|(path, _)| path == "/_synapse/admin/v1/register")
        .collect();
    assert!(!registrations.is_empty());
    for (path, id) in registrations {
        assert_eq!(id.as_deref(), Some(request_id.as_str()), "{path}");
    }
    app.shutdown().await;
    proxy.stop().await;
}
on_both_backends!(provisioning_at_sign_in_carries_the_request_id);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_a_real_device_that_can_create_a_room_and_send_a_message() {
    let app = sso_app(Backend::Sqlite, None, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let user_id = unique("u_");
    let mxid = provisioned(&app, &user_id, &unique("agent")).await;
    let token = SigningKey::daarion_hs256().sign(&claims(&user_id));

    let answer = session(&app, &token, Some(r#"{"device_name": "DAARION agent"}"#)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.cache_control.as_deref(), Some("no-store"));
    let body = &answer.body;
    assert_eq!(body["matrix_user_id"], mxid);
    let homeserver = body["homeserver_url"].as_str().unwrap();
    let access_token = body["access_token"].as_str().unwrap();
    let device_id = body["device_id"].as_str().unwrap();

    // A real device of the person's, named as the caller asked.
    let (status, device) = matrix(
        reqwest::Method::GET,
        &format!("{homeserver}/_matrix/client/v3/devices/{device_id}"),
        Some(access_token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["display_name"], "DAARION agent");

    let (status, room) = matrix(
        reqwest::Method::POST,
        &format!("{homeserver}/_matrix/client/v3/createRoom"),
        Some(access_token),
        Some(&json!({"name": "SSO session test"})),
    )
    .await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap();
    let text = format!("hello from {}", unique("session-"));
    let (status, sent) = matrix(
        reqwest::Method::PUT,
        &format!("{homeserver}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1"),
        Some(access_token),
        Some(&json!({"msgtype": "m.text", "body": text})),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let messages = room_messages(&admin, room_id).await;
    assert!(
        messages.iter().any(|m| m["event_id"] == sent["event_id"]
            && m["sender"] == mxid
            && m["content"]["body"] == text),
        "{messages:?}"
    );

    // No body is fine; a bad one is a 400 in our error shape.
    let answer = session(&app, &token, None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_ne!(
        answer.body["device_id"], device_id,
        "each session is a new device"
    );
    for bad in [
        "{",
        r#"{"device_name": 5}"#,
        &format!(r#"{{"device_name": "{}"}}"#, "x".repeat(101)),
    ] {
        let answer = session(&app, &token, Some(bad)).await;
        assert_eq!(
            answer.error(),
            (400, "bad_request"),
            "{bad}: {}",
            answer.body
        );
        assert!(answer.body["message"].is_string());
    }
    app.shutdown().await;
}

async fn an_unknown_person_is_provisioned_at_login_exactly_once(backend: Backend) {
    let app = sso_app(backend, None, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let tag = unique("spot");
    let user_id = unique("u_");
    let token = SigningKey::daarion_hs256().sign(&with(
        with(claims(&user_id), "preferred_username", json!(tag)),
        "name",
        json!("Олена Спот"),
    ));
    // The webhook never came: the login creates the account on the spot.
    let answer = login_token(&app, &token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mxid = admin.user_id(&tag);
    assert_eq!(answer.body["matrix_user_id"], mxid);
    let user = admin.user(&mxid).await.expect("the account exists");
    assert_eq!(
        user["external_ids"],
        json!([{"auth_provider": "daarion", "external_id": user_id},
            {"auth_provider": "oidc-daarion", "external_id": user_id}])
    );
    assert_eq!(user["displayname"], "Олена Спот");
    assert_eq!(admin.lookup(&user_id).await, Some(mxid.clone()));

    // Later logins and sessions use the same account.
    let again = login_token(&app, &token).await;
    assert_eq!(again.body["matrix_user_id"], mxid);
    let answer = session(&app, &token, None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["matrix_user_id"], mxid);
    assert_eq!(admin.count_users(&tag).await, 1);
    let (_, record) = app.client.user(&user_id).await;
    assert_eq!(record["state"], "provisioned");

    // DAARION's own events still win over what the token said.
    app.client
        .send_event(&event(
            "user.updated",
            &user_id,
            json!({"display_name": "Олена Справжня"}),
        ))
        .await;
    eventually("the webhook's display name", DEADLINE, || async {
        let user = admin.user(&mxid).await?;
        (user["displayname"] == "Олена Справжня").then_some(())
    })
    .await;
    app.shutdown().await;
}
on_both_backends!(an_unknown_person_is_provisioned_at_login_exactly_once);

async fn a_webhook_and_a_login_racing_make_one_account(backend: Backend) {
    let app = sso_app(backend, None, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let tag = unique("race");
    let people: Vec<(String, String)> = (0..8)
        .map(|i| (format!("u_{tag}_{i}"), format!("{tag}-{i}")))
        .collect();
    let answers: Vec<(u16, Answer, String)> = stream::iter(people.clone())
        .map(|(user_id, username)| {
            let app = &app;
            async move {
                let registered =
                    event("user.registered", &user_id, json!({ "username": username }));
                let token = SigningKey::daarion_hs256().sign(&with(
                    claims(&user_id),
                    "preferred_username",
                    json!(username),
                ));
                let ((webhook, _), login) =
                    tokio::join!(app.client.send_event(&registered), login_token(app, &token));
                (webhook, login, username)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for (webhook, login, username) in &answers {
        assert_eq!(*webhook, 202);
        assert_eq!(login.status, 200, "{}", login.body);
        assert_eq!(login.body["matrix_user_id"], admin.user_id(username));
    }
    for (user_id, _) in &people {
        app.client
            .wait_for_state(user_id, "provisioned", DEADLINE)
            .await;
    }
    assert_eq!(admin.count_users(&tag).await, people.len() as u64);
    for (user_id, username) in &people {
        assert_eq!(
            admin.lookup(user_id).await,
            Some(admin.user_id(username)),
            "{user_id}"
        );
    }
    app.shutdown().await;
}
on_both_backends!(a_webhook_and_a_login_racing_make_one_account);

async fn deactivated_people_are_refused(backend: Backend) {
    let app = sso_app(backend, None, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let hs = SigningKey::daarion_hs256();

    let user_id = unique("u_");
    let mxid = provisioned(&app, &user_id, &unique("gone")).await;
    let token = hs.sign(&claims(&user_id));
    assert_eq!(login_token(&app, &token).await.status, 200);
    let (status, _) = app
        .client
        .send_event(&event("user.deleted", &user_id, json!({})))
        .await;
    assert_eq!(status, 202);
    // Refused from the moment the deletion is stored, before Synapse hears of it.
    assert_eq!(
        login_token(&app, &token).await.error(),
        (403, "user_deactivated")
    );
    app.client
        .wait_for_state(&user_id, "deactivated", DEADLINE)
        .await;
    assert_eq!(admin.user(&mxid).await.unwrap()["deactivated"], true);
    assert_eq!(
        login_token(&app, &token).await.error(),
        (403, "user_deactivated")
    );
    assert_eq!(
        session(&app, &token, None).await.error(),
        (403, "user_deactivated")
    );

    // Deleted before an account was ever made: refused, and none is made.
    let tag = unique("never");
    let user_id = unique("u_");
    app.client
        .send_event(&event("user.deleted", &user_id, json!({})))
        .await;
    let token = hs.sign(&with(claims(&user_id), "preferred_username", json!(tag)));
    assert_eq!(
        login_token(&app, &token).await.error(),
        (403, "user_deactivated")
    );
    assert_eq!(admin.lookup(&user_id).await, None);
    assert_eq!(admin.count_users(&tag).await, 0);
    app.shutdown().await;
}
on_both_backends!(deactivated_people_are_refused);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_down_is_a_503_with_retry_after() {
    let synapse = PrivateSynapse::start();
    let app = sso_app_with(
        TestDb::new(Backend::Sqlite).await,
        synapse.info.clone(),
        None,
        &[],
    )
    .await;
    let admin = SynapseAdmin::new(synapse.info.clone()).await;
    let hs = SigningKey::daarion_hs256();
    let known = unique("u_");
    provisioned(&app, &known, &unique("known")).await;
    synapse.stop();

    // A login token for someone provisioned needs no Synapse...
    let answer = login_token(&app, &hs.sign(&claims(&known))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // ...a session does.
    let answer = session(&app, &hs.sign(&claims(&known)), None).await;
    assert_eq!(answer.error(), (503, "homeserver_unavailable"));
    assert!(answer.retry_after.is_some_and(|s| s >= 1), "{answer:?}");

    // Someone who would have to be provisioned first.
    let tag = unique("later");
    let newcomer = unique("u_");
    let token = hs.sign(&with(claims(&newcomer), "preferred_username", json!(tag)));
    let answer = login_token(&app, &token).await;
    assert_eq!(answer.error(), (503, "homeserver_unavailable"));
    assert!(answer.retry_after.is_some_and(|s| s >= 1), "{answer:?}");

    synapse.resume();
    let answer = eventually("a login once Synapse is back", DEADLINE, || async {
        let answer = login_token(&app, &token).await;
        (answer.status == 200).then_some(answer)
    })
    .await;
    assert_eq!(answer.body["matrix_user_id"], admin.user_id(&tag));
    assert_eq!(admin.lookup(&newcomer).await, Some(admin.user_id(&tag)));
    assert_eq!(admin.count_users(&tag).await, 1);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_of_every_kind_are_accepted_and_rotation_is_followed() {
    let rsa1 = SigningKey::rsa("rsa-a.pem", "rsa-1");
    let rsa2 = SigningKey::rsa("rsa-b.pem", "rsa-2");
    let ec = SigningKey::ec("ec-1");
    let ed = SigningKey::ed("ed-1");
    let jwks = FakeJwks::start(&[&rsa1, &ec, &ed]).await;
    let app = sso_app(
        Backend::Sqlite,
        Some(&jwks),
        &[("AUTH_JWKS_MIN_REFRESH_SECONDS", "1")],
    )
    .await;
    let user_id = unique("u_");
    let mxid = provisioned(&app, &user_id, &unique("keys")).await;

    for key in [&rsa1, &ec, &ed] {
        let answer = login_token(&app, &key.sign(&claims(&user_id))).await;
        assert_eq!(answer.status, 200, "{:?}: {}", key.alg, answer.body);
        assert_eq!(answer.body["matrix_user_id"], mxid);
    }
    assert_eq!(jwks.hits(), 1, "one download serves every key");

    // DAARION rotates: rsa-2 appears, rsa-1 is withdrawn.
    jwks.publish(&[&rsa2, &ec, &ed]);
    eventually("the new key to be accepted", DEADLINE, || async {
        let answer = login_token(&app, &rsa2.sign(&claims(&user_id))).await;
        assert!(
            answer.status == 200 || answer.error() == (401, "invalid_token"),
            "{answer:?}"
        );
        (answer.status == 200).then_some(())
    })
    .await;
    let answer = login_token(&app, &rsa1.sign(&claims(&user_id))).await;
    assert_eq!(
        answer.error(),
        (401, "invalid_token"),
        "a withdrawn key is refused"
    );
    let answer = login_token(&app, &ed.sign(&claims(&user_id))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_does_not_flood_daarion_auth() {
    const MIN_REFRESH_SECONDS: u64 = 5;
    let rsa = SigningKey::rsa("rsa-a.pem", "rsa-1");
    let jwks = FakeJwks::start(&[&rsa]).await;
    let app = sso_app(
        Backend::Sqlite,
        Some(&jwks),
        &[("AUTH_JWKS_MIN_REFRESH_SECONDS", "5")],
    )
    .await;
    let user_id = unique("u_");
    provisioned(&app, &user_id, &unique("flood")).await;
    let started = Instant::now();
    assert_eq!(
        login_token(&app, &rsa.sign(&claims(&user_id))).await.status,
        200
    );

    let forged: Vec<String> = (0..300)
        .map(|i| {
            rsa.with_kid(Some(&format!("forged-{i}")))
                .sign(&claims(&user_id))
        })
        .collect();
    let answers: Vec<Answer> = stream::iter(forged.iter())
        .map(|token| login_token(&app, token))
        .buffer_unordered(32)
        .collect()
        .await;
    for answer in &answers {
        assert_eq!(answer.error(), (401, "invalid_token"), "{}", answer.body);
    }
    // The good key still works, from the cache.
    assert_eq!(
        login_token(&app, &rsa.sign(&claims(&user_id))).await.status,
        200
    );
    let elapsed = started.elapsed().as_secs();
    // The first download, then at most one per interval started.
    let allowed = 1 + elapsed / MIN_REFRESH_SECONDS + 1;
    assert!(
        jwks.hits() as u64 <= allowed,
        "{} downloads in {elapsed} s for {} forged tokens",
        jwks.hits(),
        forged.len()
    );
    app.shutdown().await;
}

/// A key set streamed without a length (chunked) and far over the limit:
/// the service stops reading at the limit instead of taking it all in, and
/// answers as for any key set it cannot use (keys unavailable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_chunked_key_set_is_not_read_to_the_end() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1024; // 64 MiB
    let produced = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&produced);
    let (port, server) = serve_locally(move |cfg| {
        let counted = Arc::clone(&counted);
        cfg.route(
            "/.well-known/jwks.json",
            web::get().to(move || {
                let counted = Arc::clone(&counted);
                async move {
                    // `{"keys":[` and then spaces, a chunk at a time.
                    let body = stream::iter(0..CHUNKS).map(move |i| {
                        counted.fetch_add(CHUNK, Ordering::SeqCst);
                        let mut chunk = vec![b' '; CHUNK];
                        if i == 0 {
                            chunk[..9].copy_from_slice(br#"{"keys":["#);
                        }
                        Ok::<_, actix_web::Error>(web::Bytes::from(chunk))
                    });
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .streaming(body)
                }
            }),
        );
    });
    let url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let app = sso_app(Backend::Sqlite, None, &[("AUTH_JWKS_URL", url.as_str())]).await;
    let rsa = SigningKey::rsa("rsa-a.pem", "rsa-1");
    let answer = login_token(&app, &rsa.sign(&claims(&unique("u_")))).await;
    assert_eq!(
        answer.error(),
        (503, "auth_keys_unavailable"),
        "{}",
        answer.body
    );
    // The limit is 256 KiB; what the server got out on top of it is at
    // most what the sockets buffer, far from the 64 MiB offered.
    let sent = produced.load(Ordering::SeqCst);
    assert!(sent < 16 * 1024 * 1024, "{sent} bytes were read");
    app.shutdown().await;
    server.stop(false).await;
}

async fn every_bad_token_is_a_401_that_provisions_nothing(backend: Backend) {
    let rsa = SigningKey::rsa("rsa-a.pem", "rsa-1");
    let ec = SigningKey::ec("ec-1");
    let jwks = FakeJwks::start(&[&rsa, &ec]).await;
    let app = sso_app(backend, Some(&jwks), &[]).await;
    let admin = SynapseAdmin::shared().await;
    let hs = SigningKey::daarion_hs256();
    let tag = unique("refused");
    let sub = format!("u_{tag}");
    let good = || with(claims(&sub), "preferred_username", json!(tag));
    let now = Utc::now().timestamp();
    let other_rsa_as_rsa1 = SigningKey::rsa("rsa-b.pem", "rsa-1");
    let rsa_public_key_as_secret = SigningKey {
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(&fixture("rsa-a.pub.pem")),
        kid: Some("rsa-1".into()),
    };
    let cases: Vec<(&str, String)> = vec![
        ("expired", hs.sign(&with(good(), "exp", json!(now - 120)))),
        (
            "expired, RS256",
            rsa.sign(&with(good(), "exp", json!(now - 120))),
        ),
        ("no exp", hs.sign(&without(good(), "exp"))),
        (
            "not yet valid",
            hs.sign(&with(good(), "nbf", json!(now + 120))),
        ),
        (
            "wrong issuer",
            hs.sign(&with(good(), "iss", json!("https://evil.test"))),
        ),
        ("no issuer", hs.sign(&without(good(), "iss"))),
        (
            "wrong audience",
            hs.sign(&with(good(), "aud", json!("someone-else"))),
        ),
        ("no audience", hs.sign(&without(good(), "aud"))),
        ("no sub", hs.sign(&without(good(), "sub"))),
        (
            "bad signature, HS256",
            SigningKey::hs256(b"not-the-secret").sign(&good()),
        ),
        (
            "bad signature, RS256 by another key under rsa-1",
            other_rsa_as_rsa1.sign(&good()),
        ),
        (
            "payload changed after signing",
            tampered(&hs.sign(&claims("u_someone_else")), &good()),
        ),
        (
            "alg none",
            unsigned(json!({"alg": "none", "typ": "JWT"}), &good()),
        ),
        (
            "alg none naming a key",
            unsigned(json!({"alg": "none", "kid": "rsa-1"}), &good()),
        ),
        (
            "HS256 signed with the RSA public key",
            rsa_public_key_as_secret.sign(&good()),
        ),
        (
            "HS256 signed with the RSA public key, no kid",
            rsa_public_key_as_secret.with_kid(None).sign(&good()),
        ),
        (
            "ES256 naming the RSA key",
            ec.with_kid(Some("rsa-1")).sign(&good()),
        ),
        (
            "unknown kid",
            rsa.with_kid(Some("no-such-key")).sign(&good()),
        ),
        ("no kid", rsa.with_kid(None).sign(&good())),
        (
            "HS512 with the right secret",
            SigningKey {
                alg: Algorithm::HS512,
                ..hs.clone()
            }
            .sign(&good()),
        ),
        (
            "garbage header",
            format!(
                "{}.{}.c2ln",
                b64(b"not json at all"),
                b64(good().to_string().as_bytes())
            ),
        ),
        (
            "numeric alg",
            unsigned(json!({"alg": 256}), &good()) + "c2ln",
        ),
        (
            "embedded key",
            unsigned(
                json!({"alg": "RS256", "jwk": rsa.jwk(), "kid": "embedded"}),
                &good(),
            ) + "c2ln",
        ),
        ("not a JWT", "garbage".into()),
        ("two parts", "a.b".into()),
    ];
    for (what, token) in &cases {
        let bearer = format!("Bearer {token}");
        for path in ["/v1/sso/login-token", "/v1/sso/session"] {
            let answer = post_sso(&app.client, path, Some(&bearer), None, None).await;
            assert_eq!(
                answer.error(),
                (401, "invalid_token"),
                "{what} at {path}: {}",
                answer.body
            );
        }
    }
    let good_token = hs.sign(&good());
    for authorization in [
        None,
        Some("Bearer".to_string()),
        Some(format!("Basic {good_token}")),
        Some(good_token.clone()),
    ] {
        let answer = post_sso(
            &app.client,
            "/v1/sso/login-token",
            authorization.as_deref(),
            None,
            None,
        )
        .await;
        assert_eq!(
            answer.error(),
            (401, "invalid_token"),
            "{authorization:?}: {}",
            answer.body
        );
    }

    // Nothing was provisioned: not here, not in Synapse.
    for table in ["people", "events", "jobs"] {
        assert_eq!(app.db.count(table).await, 0, "{table}");
    }
    assert_eq!(admin.lookup(&sub).await, None);
    assert_eq!(admin.count_users(&tag).await, 0);

    // The same claims, signed properly, get through: the refusals were the tokens'.
    let answer = login_token(&app, &good_token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["matrix_user_id"], admin.user_id(&tag));
    app.shutdown().await;
}
on_both_backends!(every_bad_token_is_a_401_that_provisions_nothing);

/// DAARION Auth as it runs (CONTRACT.md section 10): its access tokens (no
/// `aud`, `iss: daarion-auth`, a UUID `sub`, `email`, `name`, `type:
/// access`) sign people in with `AUTH_JWT_ISSUER=daarion-auth` and no
/// audience setting; its refresh tokens, signed with the same key, are
/// refused wherever an access token is expected, as is any token that says
/// it is something else.
async fn daarion_s_refresh_tokens_are_not_access_tokens(backend: Backend) {
    let app = sso_app(
        backend,
        None,
        &[
            ("AUTH_JWT_ISSUER", "daarion-auth"),
            ("AUTH_JWT_AUDIENCE", ""),
        ],
    )
    .await;
    let user_id = format!(
        "{:08x}-7b4d-4e8a-9c0f-{:012x}",
        rand::random::<u32>(),
        rand::random::<u64>() & 0xffff_ffff_ffff
    );
    let mxid = provisioned(&app, &user_id, &unique("real")).await;
    let now = Utc::now().timestamp();
    let key = SigningKey::daarion_hs256();
    let access = json!({"sub": user_id, "email": "olena@daarion.city", "name": "Олена",
        "roles": ["member"], "type": "access", "iss": "daarion-auth",
        "iat": now, "exp": now + 1800});
    let answer = login_token(&app, &key.sign(&access)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["matrix_user_id"], mxid);

    let refresh = json!({"sub": user_id, "type": "refresh", "session_id": "daarion-s-1",
        "iss": "daarion-auth", "iat": now, "exp": now + 30 * 86400});
    for (what, claims) in [
        ("DAARION's refresh token", refresh),
        ("an ID token", with(access.clone(), "type", json!("id"))),
        (
            "a token_use: id",
            with(without(access.clone(), "type"), "token_use", json!("id")),
        ),
        (
            "a typ: Refresh",
            with(access.clone(), "typ", json!("Refresh")),
        ),
    ] {
        let token = key.sign(&claims);
        for answer in [
            login_token(&app, &token).await,
            session(&app, &token, None).await,
        ] {
            assert_eq!(
                answer.error(),
                (401, "invalid_token"),
                "{what}: {}",
                answer.body
            );
        }
    }
    app.shutdown().await;
}
on_both_backends!(daarion_s_refresh_tokens_are_not_access_tokens);

/// Why a token is refused goes to our logs, not to the caller: an expired
/// token, a forged signature and a made-up `kid` all get the same 401, so
/// the answer teaches a forger nothing (and echoes nothing they sent).
async fn refusals_do_not_say_why(backend: Backend) {
    let rsa = SigningKey::rsa("rsa-a.pem", "rsa-1");
    let jwks = FakeJwks::start(&[&rsa]).await;
    let app = sso_app(backend, Some(&jwks), &[]).await;
    let user_id = unique("u_");
    provisioned(&app, &user_id, &unique("why")).await;
    let now = Utc::now().timestamp();
    let kid = unique("made-up-kid-");
    let cases = [
        (
            "expired",
            rsa.sign(&with(claims(&user_id), "exp", json!(now - 120))),
        ),
        (
            "bad signature",
            SigningKey::rsa("rsa-b.pem", "rsa-1").sign(&claims(&user_id)),
        ),
        (
            "made-up kid",
            rsa.with_kid(Some(&kid)).sign(&claims(&user_id)),
        ),
        (
            "expired HS256",
            SigningKey::daarion_hs256().sign(&with(claims(&user_id), "exp", json!(now - 120))),
        ),
        (
            "bad signature HS256",
            SigningKey::hs256(b"not-the-secret").sign(&claims(&user_id)),
        ),
    ];
    let mut bodies = Vec::new();
    for (what, token) in &cases {
        for answer in [
            login_token(&app, token).await,
            session(&app, token, None).await,
        ] {
            assert_eq!(
                answer.error(),
                (401, "invalid_token"),
                "{what}: {}",
                answer.body
            );
            let text = answer.body.to_string();
            for telling in [
                "xpired",
                "ignature",
                "kid",
                kid.as_str(),
                "made-up",
                "rsa-1",
            ] {
                assert!(!text.contains(telling), "{what}: {telling:?} in {text}");
            }
            bodies.push(answer.body);
        }
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:#?}");
    // The good key still works: the refusals were the tokens'.
    let answer = login_token(&app, &rsa.sign(&claims(&user_id))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    app.shutdown().await;
}
on_both_backends!(refusals_do_not_say_why);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_logs_in_with_our_login_token() {
    let app = sso_app(Backend::Sqlite, None, &[]).await;
    let admin = SynapseAdmin::shared().await;
    let tag = unique("nio");
    let user_id = unique("u_");
    let token =
        SigningKey::daarion_hs256().sign(&with(claims(&user_id), "preferred_username", json!(tag)));
    let answer = login_token(&app, &token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mxid = answer.body["matrix_user_id"].as_str().unwrap().to_string();

    let python = venv_python();
    let text = format!("hello from matrix-nio {}", unique(""));
    let mut child = tokio::process::Command::new(python)
        .arg(repo().join("tests/clients/nio_sso_login.py"))
        .arg(answer.body["homeserver_url"].as_str().unwrap())
        .arg(&mxid)
        .arg(&text)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let login = answer.body["login"].to_string();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(login.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "nio client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["user_id"], mxid);
    let room_id = result["room_id"].as_str().unwrap();
    let messages = room_messages(&admin, room_id).await;
    assert!(
        messages.iter().any(|m| m["event_id"] == result["event_id"]
            && m["sender"] == mxid
            && m["content"]["body"] == text),
        "{messages:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_pass_the_callers_address_and_synapse_limits_on() {
    // Synapse's default limits: a burst of 5 logins per client address.
    let synapse = PrivateSynapse::start_with(false);
    let proxied = sso_app_with(
        TestDb::new(Backend::Sqlite).await,
        synapse.info.clone(),
        None,
        &[("TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    let direct = sso_app_with(
        TestDb::new(Backend::Sqlite).await,
        synapse.info.clone(),
        None,
        &[],
    )
    .await;
    let hs = SigningKey::daarion_hs256();
    const PEOPLE: usize = 8;

    // Behind a trusted proxy, each caller is its own address to Synapse:
    // more people than one address's burst all get in.
    for i in 0..PEOPLE {
        let token = hs.sign(&claims(&unique("u_")));
        let answer = post_sso(
            &proxied.client,
            "/v1/sso/session",
            Some(&format!("Bearer {token}")),
            None,
            Some(&format!("198.51.100.{}", i + 1)),
        )
        .await;
        assert_eq!(answer.status, 200, "caller {i}: {}", answer.body);
    }

    // Taken at its own address, the same traffic is one address, and
    // Synapse's 429 comes back as ours, with Retry-After.
    let mut limited = 0;
    for i in 0..PEOPLE {
        let token = hs.sign(&claims(&unique("u_")));
        let answer = post_sso(
            &direct.client,
            "/v1/sso/session",
            Some(&format!("Bearer {token}")),
            None,
            Some("198.51.100.77"),
        )
        .await;
        if answer.status != 200 {
            assert_eq!(answer.error(), (429, "rate_limited"), "caller {i}");
            assert!(answer.retry_after.is_some_and(|s| s >= 1), "{answer:?}");
            limited += 1;
        }
    }
    assert!(limited > 0, "Synapse's per-address limit never applied");
    proxied.shutdown().await;
    direct.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sso_endpoints_are_in_the_openapi_description() {
    let app = sso_app(Backend::Sqlite, None, &[]).await;
    let (status, spec) = matrix(
        reqwest::Method::GET,
        &format!("{}/openapi.json", app.client.base),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    for path in ["/v1/sso/login-token", "/v1/sso/session"] {
        let post = &spec["paths"][path]["post"];
        assert!(post.is_object(), "{path} missing");
        assert!(post["responses"]["401"].is_object(), "{path}");
        assert_eq!(post["security"][0]["daarion_token"], json!([]), "{path}");
    }
    assert!(spec["components"]["schemas"]["LoginTokenResponse"].is_object());
    app.shutdown().await;
}
