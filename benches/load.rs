//! Load generator for scripts/bench.sh (run through `cargo bench --bench load -- MODE …`).
//!
//! Modes (all traffic to 127.0.0.1 only; every loop bounded in count and time):
//!   get URL CONCURRENCY SECONDS                 — GET rate and latency (the /healthz baseline)
//!   webhooks URL SECRET CONCURRENCY SECONDS     — signed, distinct user.registered webhooks
//!   raw-register SYNAPSE SECRET CONCURRENCY N   — Synapse's own shared-secret registration rate
//!   e2e URL SECRET ADMIN_TOKEN CONCURRENCY N    — N signups, time until all are provisioned
//!   post URL BEARER CONCURRENCY SECONDS         — POST rate and latency (SSO token exchange)
//!   token hs256 SECRET SUB | token rs256 PEM KID SUB — print a DAARION access token (1 h)
//!   jwks PEM KID                                — print a JWKS with the public half of PEM
//!   signin URL TOKEN SECRET CONCURRENCY SECONDS — OpenID sign-ins through the provider alone:
//!                                                 authorize, DAARION's return, continue, token
//!   element SYNAPSE URL IDP TOKEN N             — N whole Element-path sign-ins through Synapse,
//!                                                 with the share of their time spent in the service
//!   people URL SECRET ADMIN_TOKEN N FILE        — N signups, waits until provisioned, writes
//!                                                 "user_id matrix_user_id" lines to FILE
//!   room-joins URL SYNAPSE CITY_SECRET ADMIN_TOKEN AS_TOKEN FILE CONCURRENCY
//!                                               — the people of FILE's first half join one City
//!                                                 Room through the service (member_added webhooks),
//!                                                 the second half join a room of the bot's raw
//!                                                 through Synapse's admin join API, same concurrency
//!   agent-messages URL SYNAPSE CITY_SECRET ADMIN_TOKEN AS_TOKEN AGENT_PREFIX N ROOMS CONCURRENCY
//!                                               — N agent messages into ROOMS City Rooms through
//!                                                 the service (webhook to Matrix event) next to N
//!                                                 sent raw by the application service, CONCURRENCY
//!                                                 in flight on the raw side
//!   people-messages URL SYNAPSE CITY_SECRET ADMIN_TOKEN AS_TOKEN FILE RECEIVER_PORT N
//!                                               — a person of FILE sends N messages in a City Room;
//!                                                 delay until DAARION.city (a receiver on
//!                                                 RECEIVER_PORT) has each, p50 and p99
//!   listing TAG ROOMS MEMBERS FILE|- [EARLIER]  — a page of DAARION.city's room API: ROOMS rooms
//!                                                 of MEMBERS people each, drawn from FILE (`-`:
//!                                                 DAARION people without a Matrix account yet),
//!                                                 after the rooms of an EARLIER listing
//!   password SYNAPSE URL LOGIN_PORT AUTH_SECRET MODULE_SECRET WEBHOOK_SECRET ADMIN_TOKEN
//!            REGISTRATION_SECRET LOCAL_FILE PEOPLE CONCURRENCY SECONDS
//!                                               — password sign-ins (m.login.password): serves
//!                                                 DAARION Auth's login API on LOGIN_PORT (the fake
//!                                                 of tests/integration/fakes.rs), signs PEOPLE up by
//!                                                 webhook, then logins through Synapse's module next
//!                                                 to Synapse's own password logins of PEOPLE local
//!                                                 accounts (registered once, kept in LOCAL_FILE),
//!                                                 then `POST /v1/sso/password` straight; one JSON
//!                                                 line per measurement. SYNAPSE_PID and SERVICE_PID
//!                                                 (optional) add CPU time per sign-in.
//!   nats-publish NATS_URL SECRET N FILE         — makes DAARION's inbound streams (as
//!                                                 NATS_CREATE_STREAMS does), publishes N distinct
//!                                                 user.registered events signed with SECRET to
//!                                                 DAARION_AUTH, writes their bodies to FILE
//!   nats-drain NATS_URL STREAM CONSUMER N       — waits until the durable CONSUMER (the
//!                                                 service's) has answered N messages: the rate
//!                                                 from its creation to nothing pending or unacked
//!   nats-bare NATS_URL STREAM CONSUMER N        — the same for a bare pull consumer of this
//!                                                 process's, made as the service makes its own,
//!                                                 that only acknowledges (the upper bound)
//!   webhooks-file URL SECRET CONCURRENCY FILE   — each body of FILE once as a signed webhook,
//!                                                 timed until all are answered
//!
//! Each prints one JSON line with its figures (`password`: one per measurement).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/integration/fakes.rs"]
mod fakes;

use matrix_provisioner::domain::signature;
use matrix_provisioner::synapse::registration_mac;
use serde_json::{json, Value};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = runtime.block_on(async {
        match args.first().map(String::as_str) {
            Some("get") => get(&args[1], num(&args[2]), secs(&args[3])).await,
            Some("webhooks") => webhooks(&args[1], &args[2], num(&args[3]), secs(&args[4])).await,
            Some("raw-register") => {
                raw_register(&args[1], &args[2], num(&args[3]), num(&args[4])).await
            }
            Some("e2e") => e2e(&args[1], &args[2], &args[3], num(&args[4]), num(&args[5])).await,
            Some("post") => post(&args[1], &args[2], num(&args[3]), secs(&args[4])).await,
            Some("token") => Value::String(token(&args[1..])),
            Some("jwks") => jwks(&args[1], &args[2]),
            Some("signin") => {
                signin(&args[1], &args[2], &args[3], num(&args[4]), secs(&args[5])).await
            }
            Some("element") => element(&args[1], &args[2], &args[3], &args[4], num(&args[5])).await,
            Some("people") => people(&args[1], &args[2], &args[3], num(&args[4]), &args[5]).await,
            Some("room-joins") => room_joins(&args[1..7], num(&args[7])).await,
            Some("agent-messages") => {
                agent_messages(&args[1..7], num(&args[7]), num(&args[8]), num(&args[9])).await
            }
            Some("people-messages") => {
                people_messages(&args[1..7], num(&args[7]) as u16, num(&args[8])).await
            }
            Some("listing") => listing(
                &args[1],
                num(&args[2]),
                num(&args[3]),
                &args[4],
                args.get(5).map(String::as_str),
            ),
            Some("password") => {
                password(
                    &args[1..10],
                    num(&args[10]),
                    num(&args[11]),
                    secs(&args[12]),
                )
                .await
            }
            Some("nats-publish") => nats_publish(&args[1], &args[2], num(&args[3]), &args[4]).await,
            Some("nats-drain") => nats_drain(&args[1], &args[2], &args[3], num(&args[4])).await,
            Some("nats-bare") => nats_bare(&args[1], &args[2], &args[3], num(&args[4])).await,
            Some("webhooks-file") => {
                webhooks_file(&args[1], &args[2], num(&args[3]), &args[4]).await
            }
            _ => panic!("usage: see the header of benches/load.rs"),
        }
    });
    match out {
        Value::String(text) => println!("{text}"),
        other => println!("{other}"),
    }
}

fn num(s: &str) -> usize {
    s.parse().expect("a number")
}

fn secs(s: &str) -> Duration {
    Duration::from_secs(s.parse().expect("seconds"))
}

fn client(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Runs `op(i)` with `concurrency` in flight until `deadline` passes or
/// `limit` operations were started; returns (latencies in µs of the
/// successes, failures, elapsed).
async fn drive<F, Fut>(
    concurrency: usize,
    deadline: Duration,
    limit: usize,
    op: F,
) -> (Vec<u64>, usize, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit || start.elapsed() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    if op(i).await {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        failed += 1;
                    }
                }
                (lat, failed)
            })
        })
        .collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (lat, f) = task.await.unwrap();
        all.extend(lat);
        failed += f;
    }
    (all, failed, start.elapsed())
}

fn summary(
    mode: &str,
    mut lat: Vec<u64>,
    failed: usize,
    elapsed: Duration,
    concurrency: usize,
) -> Value {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    json!({
        "mode": mode,
        "concurrency": concurrency,
        "ok": lat.len(),
        "failed": failed,
        "seconds": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        "per_second": (lat.len() as f64 / elapsed.as_secs_f64()).round(),
        "p50_ms": pct(0.50) as f64 / 1000.0,
        "p99_ms": pct(0.99) as f64 / 1000.0,
    })
}

async fn get(url: &str, concurrency: usize, seconds: Duration) -> Value {
    let (http, url) = (client(concurrency), url.to_string());
    let (lat, failed, elapsed) = drive(concurrency, seconds, usize::MAX, move |_| {
        let (http, url) = (http.clone(), url.clone());
        async move { matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
    summary("get", lat, failed, elapsed, concurrency)
}

fn signup(tag: &str, i: usize) -> (String, Vec<u8>) {
    let user_id = format!("u_{tag}_{i}");
    let body = json!({
        "id": format!("evt_{tag}_{i}"),
        "type": "user.registered",
        "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"user_id": user_id, "username": format!("{tag}-{i}"),
                 "display_name": format!("Bench Person {i}"), "email": "bench@example.com"}
    });
    (user_id, serde_json::to_vec(&body).unwrap())
}

async fn post_signed(http: &reqwest::Client, url: &str, secret: &str, body: Vec<u8>) -> bool {
    let sig = signature::sign(secret, chrono::Utc::now().timestamp(), &body);
    let r = http
        .post(format!("{url}/v1/webhooks/auth"))
        .header("Content-Type", "application/json")
        .header("X-Daarion-Signature", sig)
        .body(body)
        .send()
        .await;
    matches!(r, Ok(r) if r.status().as_u16() == 202)
}

fn tag() -> String {
    format!("b{}", rand::random::<u32>())
}

async fn webhooks(url: &str, secret: &str, concurrency: usize, seconds: Duration) -> Value {
    let (http, url, secret, tag) = (
        client(concurrency),
        url.to_string(),
        secret.to_string(),
        tag(),
    );
    let (lat, failed, elapsed) = drive(concurrency, seconds, usize::MAX, move |i| {
        let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
        let (_, body) = signup(&tag, i);
        async move { post_signed(&http, &url, &secret, body).await }
    })
    .await;
    summary("webhooks", lat, failed, elapsed, concurrency)
}

async fn raw_register(synapse: &str, secret: &str, concurrency: usize, n: usize) -> Value {
    let (http, synapse, secret, tag) = (
        client(concurrency),
        synapse.to_string(),
        secret.to_string(),
        tag(),
    );
    let (lat, failed, elapsed) = drive(concurrency, Duration::from_secs(3600), n, move |i| {
        let (http, synapse, secret) = (http.clone(), synapse.clone(), secret.clone());
        let username = format!("raw{tag}-{i}");
        async move {
            let password = format!("pw-{}", rand::random::<u64>());
            register_local(&http, &synapse, &secret, &username, &password).await
        }
    })
    .await;
    summary("raw-register", lat, failed, elapsed, concurrency)
}

/// Shared-secret registration of a local account with a password.
async fn register_local(
    http: &reqwest::Client,
    synapse: &str,
    secret: &str,
    username: &str,
    password: &str,
) -> bool {
    let url = format!("{synapse}/_synapse/admin/v1/register");
    let Ok(r) = http.get(&url).send().await else {
        return false;
    };
    let Ok(nonce) = r.json::<Value>().await else {
        return false;
    };
    let nonce = nonce["nonce"].as_str().unwrap_or_default().to_string();
    let mac = registration_mac(secret, &nonce, username, password, false);
    let body = json!({"nonce": nonce, "username": username, "password": password, "mac": mac,
                      "admin": false, "inhibit_login": true, "displayname": "Raw"});
    matches!(http.post(&url).json(&body).send().await, Ok(r) if r.status().is_success())
}

/// Sends N signups (at most 64 in flight) and waits until every one is
/// provisioned; the rate is N over the time from the first send to the last
/// provisioned account.
async fn e2e(url: &str, secret: &str, admin_token: &str, concurrency: usize, n: usize) -> Value {
    let http = client(64);
    let tag = tag();
    let start = Instant::now();
    let ids: Vec<String> = {
        let (http, url, secret, send_tag) = (
            http.clone(),
            url.to_string(),
            secret.to_string(),
            tag.clone(),
        );
        let (lat, failed, _) = drive(64, Duration::from_secs(600), n, move |i| {
            let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
            let (_, body) = signup(&send_tag, i);
            async move { post_signed(&http, &url, &secret, body).await }
        })
        .await;
        assert_eq!((lat.len(), failed), (n, 0), "every signup is accepted");
        (0..n).map(|i| signup(&tag, i).0).collect()
    };
    let accepted_after = start.elapsed();
    let mut pending = ids;
    let limit = Instant::now() + Duration::from_secs(3600);
    while !pending.is_empty() && Instant::now() < limit {
        let mut still = Vec::new();
        for id in pending {
            let r = http
                .get(format!("{url}/v1/users/{id}"))
                .bearer_auth(admin_token)
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            match body["state"].as_str() {
                Some("provisioned") => {}
                Some("failed") => panic!("{id} failed: {body}"),
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let elapsed = start.elapsed();
    json!({
        "mode": "e2e",
        "tag": tag,
        "worker_concurrency": concurrency,
        "people": n,
        "unfinished": pending.len(),
        "accepted_in_seconds": (accepted_after.as_secs_f64() * 100.0).round() / 100.0,
        "seconds": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        "per_second": ((n - pending.len()) as f64 / elapsed.as_secs_f64() * 100.0).round() / 100.0,
    })
}

async fn post(url: &str, bearer: &str, concurrency: usize, seconds: Duration) -> Value {
    let (http, url, bearer) = (client(concurrency), url.to_string(), bearer.to_string());
    let (lat, failed, elapsed) = drive(concurrency, seconds, usize::MAX, move |_| {
        let (http, url, bearer) = (http.clone(), url.clone(), bearer.clone());
        async move {
            let r = http.post(&url).bearer_auth(&bearer).send().await;
            matches!(r, Ok(r) if r.status().is_success())
        }
    })
    .await;
    summary("post", lat, failed, elapsed, concurrency)
}

fn token(args: &[String]) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let now = chrono::Utc::now().timestamp();
    let (header, key, sub) = match args[0].as_str() {
        "hs256" => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(args[1].as_bytes()),
            &args[2],
        ),
        "rs256" => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(args[2].clone());
            let pem = std::fs::read(&args[1]).expect("the PEM file");
            (
                header,
                EncodingKey::from_rsa_pem(&pem).expect("an RSA key"),
                &args[3],
            )
        }
        other => panic!("unknown token kind {other}"),
    };
    let claims = json!({"sub": sub, "iat": now, "exp": now + 3600, "preferred_username": sub});
    encode(&header, &claims, &key).expect("signing works")
}

fn jwks(pem: &str, kid: &str) -> Value {
    use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey};
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(pem).expect("the PEM file")).expect("an RSA key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("a public JWK");
    jwk.common.key_id = Some(kid.to_string());
    json!({"keys": [jwk]})
}

/// The redirect URI the bench's client registers (in `OIDC_REDIRECT_URIS`).
const BENCH_CLIENT_CB: &str = "http://bench.client/cb";

fn no_redirects(concurrency: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// From Synapse's redirect to the code: the service's four browser steps
/// (authorize, DAARION's return, the confirmation page, the person's
/// "Continue"), with DAARION's page skipped (its answer is posted straight
/// back).
/// Returns (the redirect back to the client, the time spent in the service).
async fn browser_steps(
    http: &reqwest::Client,
    base: &str,
    authorize: &str,
    daarion_token: &str,
) -> Option<(String, Duration)> {
    let mut in_service = Duration::ZERO;
    let t = Instant::now();
    let r = http.get(authorize).send().await.ok()?;
    in_service += t.elapsed();
    let login = r.headers().get("location")?.to_str().ok()?.to_string();
    let cookie = r.headers().get("set-cookie")?.to_str().ok()?;
    let cookie = cookie.split(';').next()?.to_string();
    let state = query_param(&login, "state")?;
    let t = Instant::now();
    let r = http
        .post(format!("{base}/v1/sso/return"))
        .form(&[("access_token", daarion_token), ("state", &state)])
        .send()
        .await
        .ok()?;
    in_service += t.elapsed();
    let next = r.headers().get("location")?.to_str().ok()?.to_string();
    let t = Instant::now();
    let r = http
        .get(&next)
        .header("Cookie", &cookie)
        .send()
        .await
        .ok()?;
    in_service += t.elapsed();
    if !r.status().is_success() {
        return None;
    }
    let proof = query_param(&next, "proof")?;
    let t = Instant::now();
    let r = http
        .post(format!("{base}/v1/sso/continue"))
        .header("Cookie", &cookie)
        .form(&[
            ("state", state.as_str()),
            ("proof", proof.as_str()),
            ("answer", "continue"),
        ])
        .send()
        .await
        .ok()?;
    in_service += t.elapsed();
    let back = r.headers().get("location")?.to_str().ok()?.to_string();
    Some((back, in_service))
}

async fn signin(
    base: &str,
    daarion_token: &str,
    client_secret: &str,
    concurrency: usize,
    seconds: Duration,
) -> Value {
    let http = no_redirects(concurrency);
    let (base, daarion_token, client_secret) = (
        base.to_string(),
        daarion_token.to_string(),
        client_secret.to_string(),
    );
    let (lat, failed, elapsed) = drive(concurrency, seconds, usize::MAX, move |i| {
        let (http, base, daarion_token, client_secret) = (
            http.clone(),
            base.clone(),
            daarion_token.clone(),
            client_secret.clone(),
        );
        async move {
            let verifier = format!("bench-verifier-{i}-{}", "v".repeat(40));
            let challenge = {
                use base64::Engine;
                use sha2::Digest;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(sha2::Sha256::digest(verifier.as_bytes()))
            };
            let authorize = format!(
                "{base}/oidc/authorize?response_type=code&client_id=synapse&scope=openid%20profile\
                 &redirect_uri={}&state=s{i}&nonce=n{i}&code_challenge={challenge}\
                 &code_challenge_method=S256",
                url::form_urlencoded::byte_serialize(BENCH_CLIENT_CB.as_bytes())
                    .collect::<String>()
            );
            let Some((back, _)) = browser_steps(&http, &base, &authorize, &daarion_token).await
            else {
                return false;
            };
            let Some(code) = query_param(&back, "code") else {
                return false;
            };
            let r = http
                .post(format!("{base}/oidc/token"))
                .basic_auth("synapse", Some(&client_secret))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", BENCH_CLIENT_CB),
                    ("code_verifier", &verifier),
                ])
                .send()
                .await;
            matches!(r, Ok(r) if r.status().is_success())
        }
    })
    .await;
    summary("signin", lat, failed, elapsed, concurrency)
}

/// The sum of the service's request durations (seconds) by route, from its
/// `/metrics`.
async fn service_seconds(http: &reqwest::Client, base: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("matrix_provisioner_http_request_duration_seconds_sum"))
        .filter(|l| !l.contains("route=\"/metrics\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn element(synapse: &str, base: &str, idp: &str, daarion_token: &str, n: usize) -> Value {
    let http = no_redirects(1);
    let mut totals = Vec::with_capacity(n);
    let mut in_service = Duration::ZERO;
    let before = service_seconds(&http, base).await;
    for _ in 0..n {
        let start = Instant::now();
        let redirect = format!(
            "{synapse}/_matrix/client/v3/login/sso/redirect/oidc-{idp}?redirectUrl=http%3A%2F%2Felement.bench%2F"
        );
        let r = http.get(&redirect).send().await.unwrap();
        let synapse_cookies: Vec<String> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|c| c.to_str().ok()?.split(';').next().map(str::to_string))
            .collect();
        let authorize = r.headers()["location"].to_str().unwrap().to_string();
        let (callback, _) = browser_steps(&http, base, &authorize, daarion_token)
            .await
            .expect("the provider's steps");
        let r = http
            .get(&callback)
            .header("Cookie", synapse_cookies.join("; "))
            .send()
            .await
            .unwrap();
        let back = r.headers()["location"].to_str().unwrap().to_string();
        let token = query_param(&back, "loginToken").expect("a login token");
        let r = http
            .post(format!("{synapse}/_matrix/client/v3/login"))
            .json(&json!({"type": "m.login.token", "token": token}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "m.login.token: {}", r.status());
        totals.push(start.elapsed());
    }
    let after = service_seconds(&http, base).await;
    in_service += Duration::from_secs_f64(after - before);
    let total: Duration = totals.iter().sum();
    let mut ms: Vec<f64> = totals.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "mode": "element",
        "sign_ins": n,
        "p50_ms": ms[ms.len() / 2],
        "mean_ms": (total.as_secs_f64() * 1000.0 / n as f64 * 10.0).round() / 10.0,
        "service_share": ((in_service.as_secs_f64() / total.as_secs_f64()) * 1000.0).round() / 1000.0,
    })
}

/// Signs N people up, waits for their accounts, writes their ids.
async fn people(url: &str, secret: &str, admin_token: &str, n: usize, file: &str) -> Value {
    let result = e2e(url, secret, admin_token, 16, n).await;
    let http = client(16);
    let tag = result["tag"].as_str().unwrap().to_string();
    let mut lines = String::new();
    for i in 0..n {
        let (id, _) = signup(&tag, i);
        let body: Value = http
            .get(format!("{url}/v1/users/{id}"))
            .bearer_auth(admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mxid = body["matrix_user_id"].as_str().expect("provisioned");
        lines.push_str(&format!("{id} {mxid}\n"));
    }
    std::fs::write(file, lines).unwrap();
    result
}

fn read_people(file: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| {
            let (id, mxid) = l.split_once(' ').unwrap();
            (id.to_string(), mxid.to_string())
        })
        .collect()
}

async fn post_city(http: &reqwest::Client, url: &str, secret: &str, event: &Value) -> bool {
    let body = serde_json::to_vec(event).unwrap();
    let sig = signature::sign(secret, chrono::Utc::now().timestamp(), &body);
    let r = http
        .post(format!("{url}/v1/webhooks/city"))
        .header("Content-Type", "application/json")
        .header("X-Daarion-Signature", sig)
        .body(body)
        .send()
        .await;
    matches!(r, Ok(r) if r.status().as_u16() == 202)
}

/// Members Synapse counts as joined in the room.
async fn joined(http: &reqwest::Client, synapse: &str, token: &str, room: &str) -> u64 {
    let r = http
        .get(format!("{synapse}/_synapse/admin/v1/rooms/{room}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    body["joined_members"].as_u64().unwrap_or(0)
}

async fn wait_joined(http: &reqwest::Client, synapse: &str, token: &str, room: &str, n: u64) {
    let limit = Instant::now() + Duration::from_secs(3600);
    while joined(http, synapse, token, room).await < n {
        assert!(
            Instant::now() < limit,
            "the joins did not finish within an hour"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first half of FILE's people join City Rooms through the service,
/// the second half rooms of the bot's through Synapse's admin join API
/// directly (the bot is the server admin the service makes it), at the same
/// concurrency. Two rounds of half each, the side that goes first
/// alternating, so neither gains from going second (warm caches) or first
/// (a quieter machine).
async fn room_joins(args: &[String], concurrency: usize) -> Value {
    let (url, synapse, city_secret, admin_token, as_token, file) =
        (&args[0], &args[1], &args[2], &args[3], &args[4], &args[5]);
    let people = read_people(file);
    let half = people.len() / 2;
    let (ours, raw) = people.split_at(half);
    let http = client(concurrency);
    let (mut service, mut direct) = (Duration::ZERO, Duration::ZERO);
    let rounds = [
        (&ours[..half / 2], &raw[..half / 2]),
        (&ours[half / 2..], &raw[half / 2..]),
    ];
    for (round, (ours, raw)) in rounds.into_iter().enumerate() {
        let ours_first = round == 0;
        if ours_first {
            service += joins_through_service(
                &http,
                url,
                synapse,
                city_secret,
                admin_token,
                as_token,
                ours,
                concurrency,
            )
            .await;
            direct += joins_raw(&http, synapse, as_token, raw, concurrency).await;
        } else {
            direct += joins_raw(&http, synapse, as_token, raw, concurrency).await;
            service += joins_through_service(
                &http,
                url,
                synapse,
                city_secret,
                admin_token,
                as_token,
                ours,
                concurrency,
            )
            .await;
        }
    }
    let per_second = |n: usize, d: Duration| (n as f64 / d.as_secs_f64() * 10.0).round() / 10.0;
    let ours_rate = per_second(half, service);
    let raw_rate = per_second(half, direct);
    json!({
        "mode": "room-joins",
        "members": half,
        "rounds": 2,
        "concurrency": concurrency,
        "service_seconds": (service.as_secs_f64() * 100.0).round() / 100.0,
        "service_per_second": ours_rate,
        "raw_seconds": (direct.as_secs_f64() * 100.0).round() / 100.0,
        "raw_per_second": raw_rate,
        "ratio": (ours_rate / raw_rate * 100.0).round() / 100.0,
    })
}

/// A new City Room, then `people` added to it by webhooks; the time from
/// the first webhook until Synapse counts them all joined.
#[allow(clippy::too_many_arguments)]
async fn joins_through_service(
    http: &reqwest::Client,
    url: &str,
    synapse: &str,
    city_secret: &str,
    admin_token: &str,
    as_token: &str,
    people: &[(String, String)],
    concurrency: usize,
) -> Duration {
    let room_id = format!("r_{}", tag());
    let created = json!({"id": format!("{room_id}-created"), "type": "room.created",
        "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"room_id": room_id, "slug": room_id, "name": "Bench joins", "visibility": "public"}});
    assert!(post_city(http, url, city_secret, &created).await);
    let room = loop {
        let body: Value = http
            .get(format!("{url}/v1/rooms/{room_id}"))
            .bearer_auth(admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        if body["state"] == "ready" {
            break body["matrix_room_id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let encoded: String = url::form_urlencoded::byte_serialize(room.as_bytes()).collect();
    let n = people.len();
    let start = Instant::now();
    let members: Arc<Vec<String>> = Arc::new(people.iter().map(|(id, _)| id.clone()).collect());
    let (h, u, s, r) = (
        http.clone(),
        url.to_string(),
        city_secret.to_string(),
        room_id.clone(),
    );
    let (lat, failed, _) = drive(concurrency, Duration::from_secs(3600), n, move |i| {
        let (h, u, s) = (h.clone(), u.clone(), s.clone());
        let event = json!({"id": format!("{r}-m{i}"), "type": "room.member_added",
            "created_at": chrono::Utc::now().to_rfc3339(),
            "data": {"room_id": r, "member_id": members[i], "role": "member"}});
        async move { post_city(&h, &u, &s, &event).await }
    })
    .await;
    assert_eq!(
        (lat.len(), failed),
        (n, 0),
        "every member_added is accepted"
    );
    wait_joined(http, synapse, as_token, &encoded, n as u64 + 1).await;
    start.elapsed()
}

/// A new room of the bot's, then `people` joined by the admin join API.
async fn joins_raw(
    http: &reqwest::Client,
    synapse: &str,
    as_token: &str,
    people: &[(String, String)],
    concurrency: usize,
) -> Duration {
    let created: Value = http
        .post(format!("{synapse}/_matrix/client/v3/createRoom"))
        .bearer_auth(as_token)
        .json(&json!({"preset": "public_chat", "name": "Bench raw joins"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = created["room_id"].as_str().unwrap().to_string();
    let room: String = url::form_urlencoded::byte_serialize(room.as_bytes()).collect();
    let targets: Arc<Vec<String>> = Arc::new(people.iter().map(|(_, mxid)| mxid.clone()).collect());
    let n = people.len();
    let (h, sy, tok) = (http.clone(), synapse.to_string(), as_token.to_string());
    let (lat, failed, elapsed) = drive(concurrency, Duration::from_secs(3600), n, move |i| {
        let (h, sy, tok, room) = (h.clone(), sy.clone(), tok.clone(), room.clone());
        let user = targets[i].clone();
        async move {
            let r = h
                .post(format!("{sy}/_synapse/admin/v1/join/{room}"))
                .bearer_auth(tok)
                .json(&json!({"user_id": user}))
                .send()
                .await;
            matches!(r, Ok(r) if r.status().is_success())
        }
    })
    .await;
    assert_eq!((lat.len(), failed), (n, 0), "every raw join succeeds");
    elapsed
}

/// One page of DAARION.city's room API with every room.
fn listing(tag: &str, rooms: usize, members: usize, file: &str, earlier: Option<&str>) -> Value {
    let people = if file == "-" {
        (0..rooms * members)
            .map(|i| (format!("ghost_{tag}_{i}"), String::new()))
            .collect()
    } else {
        read_people(file)
    };
    // Changed now: the next incremental pass reads these rooms (and every
    // one after it re-reads them within its overlap: the dearer case).
    let updated_at = chrono::Utc::now().to_rfc3339();
    let mut list: Vec<Value> = earlier
        .map(|f| {
            let page: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            page["rooms"].as_array().unwrap().clone()
        })
        .unwrap_or_default();
    list.extend((0..rooms).map(|r| {
        let members: Vec<Value> = (0..members)
            .map(|m| {
                let (id, _) = &people[(r * 7 + m) % people.len()];
                json!({"member_id": id, "role": if m == 0 { "owner" } else { "member" }})
            })
            .collect();
        json!({"room_id": format!("{tag}_{r}"), "slug": format!("{tag}-{r}"),
                   "name": format!("Bench room {r}"), "topic": "benchmark",
                   "visibility": if r % 2 == 0 { "public" } else { "private" },
                   "members": members, "updated_at": updated_at, "deleted": false})
    }));
    json!({"rooms": list, "next_cursor": null})
}

// ---------------------------------------------------------------- agents

/// GET a JSON document of the service (admin token).
async fn admin_get(http: &reqwest::Client, url: &str, token: &str) -> Value {
    match http.get(url).bearer_auth(token).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Polls `check` every 20 ms until it holds (at most an hour).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let limit = Instant::now() + Duration::from_secs(3600);
    while !check().await {
        assert!(
            Instant::now() < limit,
            "{what} did not happen within an hour"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A City Room with `members`, ready in Matrix with all of them joined:
/// its DAARION id and its Matrix room id.
async fn city_room(
    http: &reqwest::Client,
    url: &str,
    synapse: &str,
    secret: &str,
    admin_token: &str,
    as_token: &str,
    members: &[String],
) -> (String, String) {
    let room_id = format!("r_{}", tag());
    let now = chrono::Utc::now().to_rfc3339();
    let mut events = vec![json!({"id": format!("{room_id}-c"), "type": "room.created",
        "created_at": now, "data": {"room_id": room_id, "slug": room_id,
        "name": "Bench agents", "visibility": "public"}})];
    for (i, m) in members.iter().enumerate() {
        events.push(
            json!({"id": format!("{room_id}-m{i}"), "type": "room.member_added",
            "created_at": now, "data": {"room_id": room_id, "member_id": m}}),
        );
    }
    for e in &events {
        assert!(post_city(http, url, secret, e).await);
    }
    let limit = Instant::now() + Duration::from_secs(3600);
    let matrix_room = loop {
        let body = admin_get(http, &format!("{url}/v1/rooms/{room_id}"), admin_token).await;
        if body["state"] == "ready" {
            break body["matrix_room_id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < limit,
            "the City Room is not ready after an hour"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let n = members.len() as u64 + 1;
    wait_joined(http, synapse, as_token, &enc(&matrix_room), n).await;
    (room_id, matrix_room)
}

/// Agent messages per second through the service (webhook in, until all
/// are in Matrix) next to the same sends made raw by an application service
/// (`PUT …/send?user_id=&ts=`), into ROOMS rooms, N messages a side in two
/// rounds whose first side alternates. The service sends each room's
/// messages in order, one at a time; the raw side sends with CONCURRENCY
/// in flight (1 for one room: ordered, like the service).
async fn agent_messages(args: &[String], n: usize, rooms: usize, concurrency: usize) -> Value {
    let (url, synapse, secret, admin_token, as_token, prefix) =
        (&args[0], &args[1], &args[2], &args[3], &args[4], &args[5]);
    let http = client(32);
    let t = tag();
    let agent_id = format!("a_{t}");
    let created = json!({"id": format!("{agent_id}-c"), "type": "agent.created",
        "created_at": chrono::Utc::now().to_rfc3339(),
        "data": {"agent_id": agent_id, "slug": t, "display_name": "Bench agent"}});
    assert!(post_city(&http, url, secret, &created).await);
    until("the agent's puppet", || async {
        admin_get(&http, &format!("{url}/v1/agents/{agent_id}"), admin_token).await["state"]
            == "ready"
    })
    .await;
    let mut ours_rooms = Vec::new();
    for _ in 0..rooms {
        let (room_id, _) = city_room(
            &http,
            url,
            synapse,
            secret,
            admin_token,
            as_token,
            std::slice::from_ref(&agent_id),
        )
        .await;
        ours_rooms.push(room_id);
    }
    // The raw side: a puppet of the same namespace in rooms of the bot's.
    let puppet = format!("{prefix}raw-{t}");
    let r = http
        .post(format!("{synapse}/_matrix/client/v3/register"))
        .bearer_auth(as_token)
        .json(
            &json!({"type": "m.login.application_service", "username": puppet,
                      "inhibit_login": true}),
        )
        .send()
        .await
        .unwrap();
    let registered: Value = r.json().await.unwrap();
    let puppet_id = registered["user_id"]
        .as_str()
        .expect("registered")
        .to_string();
    let mut raw_rooms = Vec::new();
    for _ in 0..rooms {
        let created: Value = http
            .post(format!("{synapse}/_matrix/client/v3/createRoom"))
            .bearer_auth(as_token)
            .json(&json!({"preset": "public_chat", "name": "Bench raw agents"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let room = enc(created["room_id"].as_str().unwrap());
        let joined = http
            .post(format!("{synapse}/_synapse/admin/v1/join/{room}"))
            .bearer_auth(as_token)
            .json(&json!({"user_id": puppet_id}))
            .send()
            .await
            .unwrap();
        assert!(joined.status().is_success());
        raw_rooms.push(room);
    }
    let (mut service, mut direct) = (Duration::ZERO, Duration::ZERO);
    let half = n / 2;
    for round in 0..2 {
        let ours = || {
            agent_burst(
                &http,
                url,
                secret,
                admin_token,
                &agent_id,
                &ours_rooms,
                round,
                half,
            )
        };
        let raw = || {
            raw_burst(
                &http,
                synapse,
                as_token,
                &puppet_id,
                &raw_rooms,
                round,
                half,
                concurrency,
            )
        };
        if round == 0 {
            service += ours().await;
            direct += raw().await;
        } else {
            direct += raw().await;
            service += ours().await;
        }
    }
    let rate = |d: Duration| (2.0 * half as f64 / d.as_secs_f64() * 10.0).round() / 10.0;
    json!({
        "mode": "agent-messages",
        "messages": 2 * half,
        "rooms": rooms,
        "rounds": 2,
        "raw_concurrency": concurrency,
        "service_seconds": (service.as_secs_f64() * 100.0).round() / 100.0,
        "service_per_second": rate(service),
        "raw_seconds": (direct.as_secs_f64() * 100.0).round() / 100.0,
        "raw_per_second": rate(direct),
        "ratio": (rate(service) / rate(direct) * 100.0).round() / 100.0,
    })
}

/// `n` agent messages by webhook, spread over `rooms` round-robin, dated in
/// order; the time from the first webhook until none is pending.
#[allow(clippy::too_many_arguments)]
async fn agent_burst(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    admin_token: &str,
    agent_id: &str,
    rooms: &[String],
    round: usize,
    n: usize,
) -> Duration {
    let start = Instant::now();
    let t0 = chrono::Utc::now();
    let events: Arc<Vec<Value>> = Arc::new(
        (0..n)
            .map(|i| {
                let id = format!("{agent_id}-r{round}-{i}");
                let at = t0 + chrono::Duration::milliseconds(i as i64);
                json!({"id": id, "type": "agent.message", "created_at": at.to_rfc3339(),
                       "data": {"message_id": id, "agent_id": agent_id,
                                "room_id": rooms[i % rooms.len()], "body": format!("bench {i}")}})
            })
            .collect(),
    );
    let (h, u, s) = (http.clone(), url.to_string(), secret.to_string());
    let (lat, failed, _) = drive(16, Duration::from_secs(3600), n, move |i| {
        let (h, u, s, events) = (h.clone(), u.clone(), s.clone(), Arc::clone(&events));
        async move { post_city(&h, &u, &s, &events[i]).await }
    })
    .await;
    assert_eq!(
        (lat.len(), failed),
        (n, 0),
        "every agent.message is accepted"
    );
    until("the agent's messages to be sent", || async {
        let o = admin_get(http, &format!("{url}/v1/admin/outbox"), admin_token).await;
        o["to_matrix"]["pending"] == 0
    })
    .await;
    let o = admin_get(http, &format!("{url}/v1/admin/outbox"), admin_token).await;
    assert_eq!(o["to_matrix"]["failed"], 0, "no message failed: {o}");
    start.elapsed()
}

/// `n` messages sent raw as `puppet` (`?user_id=&ts=`), round-robin over
/// `rooms`, `concurrency` in flight.
#[allow(clippy::too_many_arguments)]
async fn raw_burst(
    http: &reqwest::Client,
    synapse: &str,
    as_token: &str,
    puppet: &str,
    rooms: &[String],
    round: usize,
    n: usize,
    concurrency: usize,
) -> Duration {
    let rooms = Arc::new(rooms.to_vec());
    let (h, sy, tok, user) = (
        http.clone(),
        synapse.to_string(),
        as_token.to_string(),
        enc(puppet),
    );
    let run = tag();
    let (lat, failed, elapsed) = drive(concurrency, Duration::from_secs(3600), n, move |i| {
        let (h, sy, tok, user, rooms) = (h.clone(), sy.clone(), tok.clone(), user.clone(), Arc::clone(&rooms));
        let txn = format!("raw-{run}-{round}-{i}");
        async move {
            let ts = chrono::Utc::now().timestamp_millis();
            let room = &rooms[i % rooms.len()];
            let r = h
                .put(format!(
                    "{sy}/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}?user_id={user}&ts={ts}"
                ))
                .bearer_auth(tok)
                .json(&json!({"msgtype": "m.text", "body": format!("raw {i}")}))
                .send()
                .await;
            matches!(r, Ok(r) if r.status().is_success())
        }
    })
    .await;
    assert_eq!((lat.len(), failed), (n, 0), "every raw send succeeds");
    elapsed
}

/// People's messages on their way to DAARION.city: a person of FILE in a
/// City Room sends N messages one after another (a receiver on
/// RECEIVER_PORT plays DAARION.city); the delay from Synapse's answer to
/// the person's send until the receiver has the event, p50 and p99; and
/// the service's own histogram (from Synapse's transaction to the 2xx).
async fn people_messages(args: &[String], receiver_port: u16, n: usize) -> Value {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let (url, synapse, secret, admin_token, as_token, file) =
        (&args[0], &args[1], &args[2], &args[3], &args[4], &args[5]);
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = Arc::clone(&arrived);
    let server = actix_web::HttpServer::new(move || {
        let seen = Arc::clone(&seen);
        actix_web::App::new().route(
            "/events",
            actix_web::web::post().to(move |body: actix_web::web::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if event["type"] == "matrix.message" {
                        if let Some(id) = event["id"].as_str() {
                            seen.lock().unwrap().insert(id.to_string(), Instant::now());
                        }
                    }
                    actix_web::HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", receiver_port))
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);

    let http = client(8);
    let (person, mxid) = read_people(file).into_iter().next().expect("a person");
    let (_, room) = city_room(
        &http,
        url,
        synapse,
        secret,
        admin_token,
        as_token,
        &[person],
    )
    .await;
    let login: Value = http
        .post(format!(
            "{synapse}/_synapse/admin/v1/users/{}/login",
            enc(&mxid)
        ))
        .bearer_auth(as_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().expect("a login").to_string();
    let room = enc(&room);
    let run = tag();
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(n);
    for i in 0..n {
        let r: Value = http
            .put(format!(
                "{synapse}/_matrix/client/v3/rooms/{room}/send/m.room.message/{run}-{i}"
            ))
            .bearer_auth(&token)
            .json(&json!({"msgtype": "m.text", "body": format!("person {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sent.push((
            r["event_id"].as_str().expect("sent").to_string(),
            Instant::now(),
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until("DAARION.city to have every message", || async {
        arrived.lock().unwrap().len() >= n
    })
    .await;
    let arrived = arrived.lock().unwrap().clone();
    let mut delays: Vec<u64> = sent
        .iter()
        .map(|(id, at)| arrived[id].saturating_duration_since(*at).as_micros() as u64)
        .collect();
    delays.sort_unstable();
    let pct =
        |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)] as f64 / 1000.0;
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    handle.stop(false).await;
    json!({
        "mode": "people-messages",
        "messages": n,
        "delay_p50_ms": pct(0.50),
        "delay_p99_ms": pct(0.99),
        "delay_max_ms": pct(1.0),
        "service_histogram_p50_le_s": histogram_bound(&metrics, 0.50),
        "service_histogram_p99_le_s": histogram_bound(&metrics, 0.99),
    })
}

/// The bucket bound under which fraction `p` of the service's delivery
/// delays fall (its histogram, from Synapse's transaction to the 2xx).
fn histogram_bound(metrics: &str, p: f64) -> Value {
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("matrix_provisioner_city_delivery_delay_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le.parse().unwrap_or(f64::INFINITY), count))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, c)| *c >= total * p && total > 0.0)
        .map_or(Value::Null, |(le, _)| json!(le))
}

// ---------------------------------------------------------------- password sign-in

/// The service's route Synapse's password module asks.
const PASSWORD_ROUTE: &str = "/v1/sso/password";

/// One route's request-duration histogram of the service (from its
/// `/metrics`): requests, seconds in all, cumulative buckets `(le, count)`.
#[derive(Default, Clone)]
struct RouteTimes {
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

impl RouteTimes {
    async fn read(http: &reqwest::Client, base: &str, route: &str) -> RouteTimes {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let name = "matrix_provisioner_http_request_duration_seconds";
        let label = format!("route=\"{route}\"");
        let mut times = RouteTimes::default();
        for line in text.lines().filter(|l| l.contains(&label)) {
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if line.starts_with(&format!("{name}_bucket")) {
                let le = line
                    .split("le=\"")
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::INFINITY);
                times.buckets.push((le, value));
            } else if line.starts_with(&format!("{name}_sum")) {
                times.sum = value;
            } else if line.starts_with(&format!("{name}_count")) {
                times.count = value;
            }
        }
        times
    }

    /// What happened between `before` and `self`, added to `total`.
    fn add_since(&self, before: &RouteTimes, total: &mut RouteTimes) {
        total.count += self.count - before.count;
        total.sum += self.sum - before.sum;
        if total.buckets.is_empty() {
            total.buckets = self.buckets.iter().map(|(le, _)| (*le, 0.0)).collect();
        }
        for (i, (_, n)) in self.buckets.iter().enumerate() {
            let earlier = before.buckets.get(i).map_or(0.0, |b| b.1);
            total.buckets[i].1 += n - earlier;
        }
    }

    /// The bucket bound (ms) under which half of the requests fall.
    fn p50_le_ms(&self) -> Value {
        self.buckets
            .iter()
            .find(|(_, n)| self.count > 0.0 && *n >= self.count / 2.0)
            .map_or(Value::Null, |(le, _)| json!(le * 1000.0))
    }

    fn mean_ms(&self) -> Value {
        if self.count > 0.0 {
            json!((self.sum / self.count * 1e6).round() / 1000.0)
        } else {
            Value::Null
        }
    }
}

/// CPU time (user + system, ms) a process has used so far.
fn cpu_ms(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    // utime and stime (fields 14 and 15), in clock ticks of 1/100 s (Linux's USER_HZ).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// The processes whose CPU time is counted: Synapse, the service and this
/// load generator (with DAARION's login API in it).
struct Cpu(Vec<(&'static str, String)>);

impl Cpu {
    fn from_env() -> Cpu {
        let mut pids = vec![("load", "self".to_string())];
        for (name, var) in [("synapse", "SYNAPSE_PID"), ("service", "SERVICE_PID")] {
            if let Ok(pid) = std::env::var(var) {
                pids.push((name, pid));
            }
        }
        Cpu(pids)
    }

    fn now(&self) -> Vec<f64> {
        self.0
            .iter()
            .map(|(_, pid)| cpu_ms(pid).unwrap_or(0.0))
            .collect()
    }

    /// CPU ms per sign-in of each process, from the sums in `spent`.
    fn per(&self, spent: &[f64], n: usize) -> Value {
        let mut out = serde_json::Map::new();
        for ((name, _), ms) in self.0.iter().zip(spent) {
            out.insert(
                name.to_string(),
                json!((ms / n.max(1) as f64 * 100.0).round() / 100.0),
            );
        }
        Value::Object(out)
    }
}

/// `(localpart, password)` of the people a side signs in as.
type Logins = Arc<Vec<(String, String)>>;

/// What a side of the comparison adds up over its rounds.
#[derive(Default)]
struct Side {
    lat: Vec<u64>,
    failed: usize,
    elapsed: Duration,
    service: RouteTimes,
    cpu: Vec<f64>,
}

/// Logins with `m.login.password` as Element X sends them, by localpart,
/// round-robin over `people`, `concurrency` in flight, until `seconds` pass
/// (or `limit` logins started); adds what it measured to `side`.
#[allow(clippy::too_many_arguments)]
async fn logins(
    http: &reqwest::Client,
    synapse: &str,
    url: &str,
    people: &Logins,
    concurrency: usize,
    seconds: Duration,
    limit: usize,
    cpu: &Cpu,
    side: &mut Side,
) {
    let before = RouteTimes::read(http, url, PASSWORD_ROUTE).await;
    let cpu_before = cpu.now();
    let (h, sy, people) = (http.clone(), synapse.to_string(), Arc::clone(people));
    let shown = Arc::new(AtomicUsize::new(0));
    let (lat, failed, elapsed) = drive(concurrency, seconds, limit, move |i| {
        let (h, sy, shown) = (h.clone(), sy.clone(), Arc::clone(&shown));
        let (user, password) = people[i % people.len()].clone();
        async move {
            let r = h
                .post(format!("{sy}/_matrix/client/v3/login"))
                .json(&json!({"type": "m.login.password",
                              "identifier": {"type": "m.id.user", "user": user},
                              "password": password}))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => true,
                other => {
                    if shown.fetch_add(1, Ordering::Relaxed) < 3 {
                        match other {
                            Ok(r) => eprintln!(
                                "login of {user}: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            ),
                            Err(e) => eprintln!("login of {user}: {e}"),
                        }
                    }
                    false
                }
            }
        }
    })
    .await;
    let after = RouteTimes::read(http, url, PASSWORD_ROUTE).await;
    after.add_since(&before, &mut side.service);
    let spent: Vec<f64> = cpu
        .now()
        .iter()
        .zip(&cpu_before)
        .map(|(a, b)| a - b)
        .collect();
    if side.cpu.is_empty() {
        side.cpu = vec![0.0; spent.len()];
    }
    for (total, s) in side.cpu.iter_mut().zip(spent) {
        *total += s;
    }
    side.lat.extend(lat);
    side.failed += failed;
    side.elapsed += elapsed;
}

/// PEOPLE DAARION people known to the login API, signed up by webhook
/// with an address and a name and no username (as DAARION Auth sends
/// them), provisioned: their localparts and passwords.
async fn daarion_people(
    http: &reqwest::Client,
    url: &str,
    webhook_secret: &str,
    admin_token: &str,
    login: &fakes::FakeLoginApi,
    n: usize,
) -> Vec<(String, String)> {
    let t = tag();
    let accounts: Vec<fakes::FakeAccount> = (0..n)
        .map(|i| fakes::FakeAccount::new(&format!("Bench {t} {i}")))
        .collect();
    for a in &accounts {
        login.add(a);
    }
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                serde_json::to_vec(&json!({
                    "id": format!("evt_{t}_{i}"),
                    "type": "user.registered",
                    "created_at": chrono::Utc::now().to_rfc3339(),
                    "data": {"user_id": a.user_id, "display_name": a.display_name,
                             "email": a.email}
                }))
                .unwrap()
            })
            .collect(),
    );
    let (h, u, s) = (http.clone(), url.to_string(), webhook_secret.to_string());
    let (lat, failed, _) = drive(16, Duration::from_secs(600), n, move |i| {
        let (h, u, s, bodies) = (h.clone(), u.clone(), s.clone(), Arc::clone(&bodies));
        async move { post_signed(&h, &u, &s, bodies[i].clone()).await }
    })
    .await;
    assert_eq!((lat.len(), failed), (n, 0), "every signup is accepted");
    let mut people = Vec::with_capacity(n);
    for a in &accounts {
        let limit = Instant::now() + Duration::from_secs(3600);
        let record = loop {
            let record =
                admin_get(http, &format!("{url}/v1/users/{}", a.user_id), admin_token).await;
            assert_ne!(record["state"], "failed", "{record}");
            if record["state"] == "provisioned" {
                break record;
            }
            assert!(
                Instant::now() < limit,
                "not provisioned after an hour: {record}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mxid = record["matrix_user_id"].as_str().expect("a Matrix id");
        let localpart = mxid[1..].split(':').next().unwrap().to_string();
        people.push((localpart, a.password.clone()));
    }
    people
}

/// N local accounts with passwords of Synapse's own (shared-secret
/// registration, 8 at once), kept in FILE for the next run on the same
/// Synapse.
async fn local_people(
    http: &reqwest::Client,
    synapse: &str,
    secret: &str,
    n: usize,
    file: &str,
) -> Vec<(String, String)> {
    if let Ok(text) = std::fs::read_to_string(file) {
        let known: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        if known.len() >= n {
            return known.into_iter().take(n).collect();
        }
    }
    let t = tag();
    let people: Arc<Vec<(String, String)>> = Arc::new(
        (0..n)
            .map(|i| {
                (
                    format!("local{t}-{i}"),
                    format!("pw-{}", rand::random::<u64>()),
                )
            })
            .collect(),
    );
    let (h, sy, s, p) = (
        http.clone(),
        synapse.to_string(),
        secret.to_string(),
        Arc::clone(&people),
    );
    let (lat, failed, _) = drive(8, Duration::from_secs(3600), n, move |i| {
        let (h, sy, s, p) = (h.clone(), sy.clone(), s.clone(), Arc::clone(&p));
        async move { register_local(&h, &sy, &s, &p[i].0, &p[i].1).await }
    })
    .await;
    assert_eq!(
        (lat.len(), failed),
        (n, 0),
        "every local account is registered"
    );
    let lines: String = people.iter().map(|(u, p)| format!("{u} {p}\n")).collect();
    std::fs::write(file, lines).unwrap();
    people.as_ref().clone()
}

/// Password sign-ins (CONTRACT.md section 11), all in one run at one
/// concurrency: through Synapse's module (the service asks DAARION's login
/// API, here a fake in this process that answers at once) next to
/// Synapse's own password logins (bcrypt) in two rounds of SECONDS/2 a
/// side, the side that goes first alternating; then the service's part
/// alone (`POST /v1/sso/password` as the module sends it), at the same
/// concurrency and one at a time.
async fn password(args: &[String], n: usize, concurrency: usize, seconds: Duration) -> Value {
    let (synapse, url, login_port, auth_secret, module_secret) =
        (&args[0], &args[1], &args[2], &args[3], &args[4]);
    let (webhook_secret, admin_token, registration_secret, local_file) =
        (&args[5], &args[6], &args[7], &args[8]);
    let login = fakes::FakeLoginApi::start_on(auth_secret, login_port.parse().expect("a port"));
    let http = client(concurrency.max(16));
    let cpu = Cpu::from_env();
    let daarion: Logins =
        Arc::new(daarion_people(&http, url, webhook_secret, admin_token, &login, n).await);
    let local: Logins =
        Arc::new(local_people(&http, synapse, registration_secret, n, local_file).await);
    let mut lines = Vec::new();
    let mut described = |mut v: Value, fields: Value| {
        let object = v.as_object_mut().unwrap();
        for (k, f) in fields.as_object().unwrap() {
            object.insert(k.clone(), f.clone());
        }
        lines.push(v.to_string());
    };

    // Each person's first password sign-in (the account exists: the
    // webhook made it; the service has not seen them sign in yet).
    let mut first = Side::default();
    logins(
        &http,
        synapse,
        url,
        &daarion,
        concurrency,
        Duration::from_secs(600),
        n,
        &cpu,
        &mut first,
    )
    .await;
    let ok = first.lat.len();
    described(
        summary(
            "password-login",
            first.lat,
            first.failed,
            first.elapsed,
            concurrency,
        ),
        json!({"via": "module", "round": "each person's first sign-in", "people": n,
               "service_mean_ms": first.service.mean_ms(),
               "service_p50_le_ms": first.service.p50_le_ms(),
               "cpu_ms_per_login": cpu.per(&first.cpu, ok)}),
    );

    let half = seconds / 2;
    let (mut module, mut own) = (Side::default(), Side::default());
    for round in 0..2 {
        let sides: [(&Logins, bool); 2] = if round == 0 {
            [(&daarion, true), (&local, false)]
        } else {
            [(&local, false), (&daarion, true)]
        };
        for (people, through_module) in sides {
            let side = if through_module {
                &mut module
            } else {
                &mut own
            };
            logins(
                &http,
                synapse,
                url,
                people,
                concurrency,
                half,
                usize::MAX,
                &cpu,
                side,
            )
            .await;
        }
    }
    let rate = |s: &Side| s.lat.len() as f64 / s.elapsed.as_secs_f64();
    let ratio = (rate(&module) / rate(&own) * 100.0).round() / 100.0;
    let login_ms: f64 = module.lat.iter().sum::<u64>() as f64 / 1000.0;
    let (own_ok, module_ok) = (own.lat.len(), module.lat.len());
    described(
        summary(
            "password-login",
            own.lat,
            own.failed,
            own.elapsed,
            concurrency,
        ),
        json!({"via": "synapse's own password (bcrypt)", "rounds": 2, "people": n,
               "module_lookups": own.service.count, "module_lookup_mean_ms": own.service.mean_ms(),
               "cpu_ms_per_login": cpu.per(&own.cpu, own_ok)}),
    );
    described(
        summary(
            "password-login",
            module.lat,
            module.failed,
            module.elapsed,
            concurrency,
        ),
        json!({"via": "module", "rounds": 2, "people": n, "ratio_to_synapse": ratio,
               "service_mean_ms": module.service.mean_ms(),
               "service_p50_le_ms": module.service.p50_le_ms(),
               "service_share": ((module.service.sum * 1000.0 / login_ms) * 1000.0).round() / 1000.0,
               "cpu_ms_per_login": cpu.per(&module.cpu, module_ok)}),
    );

    // The service's part alone, as the module asks it.
    for c in [concurrency, 1] {
        let cpu_before = cpu.now();
        let (h, u, secret, people) = (
            http.clone(),
            url.to_string(),
            module_secret.to_string(),
            Arc::clone(&daarion),
        );
        let (lat, failed, elapsed) = drive(c, seconds, usize::MAX, move |i| {
            let (h, u, secret) = (h.clone(), u.clone(), secret.clone());
            let (user, password) = people[i % people.len()].clone();
            async move {
                let r = h
                    .post(format!("{u}{PASSWORD_ROUTE}"))
                    .bearer_auth(secret)
                    .json(&json!({"user": user, "password": password, "client_ip": "127.0.0.1"}))
                    .send()
                    .await;
                matches!(r, Ok(r) if r.status().is_success())
            }
        })
        .await;
        let spent: Vec<f64> = cpu
            .now()
            .iter()
            .zip(&cpu_before)
            .map(|(a, b)| a - b)
            .collect();
        let ok = lat.len();
        described(
            summary("sso-password", lat, failed, elapsed, c),
            json!({"people": n, "cpu_ms_per_request": cpu.per(&spent, ok)}),
        );
    }
    Value::String(lines.join("\n"))
}

// ------------------------------------------------------------ NATS JetStream

/// DAARION Auth's stream and its subjects (CONTRACT.md section 12).
const NATS_AUTH_STREAM: &str = "DAARION_AUTH";
/// The service's pull settings (src/nats and src/bus), for the bare consumer.
const NATS_PULL_BATCH: usize = 256;
const NATS_MAX_ACK_PENDING: i64 = 4096;

async fn nats_js(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(url).await.expect("NATS answers"))
}

/// Creates DAARION's two inbound streams as the service would
/// (`NATS_CREATE_STREAMS`), waiting for JetStream to be up; then publishes N
/// distinct `user.registered` events to `daarion.auth.events.user.registered`,
/// each signed with SECRET in `X-Daarion-Signature`, a thousand unanswered at
/// most, and writes their bodies to FILE, one a line (for `webhooks-file`).
async fn nats_publish(url: &str, secret: &str, n: usize, file: &str) -> Value {
    use async_nats::jetstream::stream;
    let js = nats_js(url).await;
    for (name, subjects) in [
        (NATS_AUTH_STREAM, "daarion.auth.events.>"),
        ("DAARION_CITY", "daarion.city.events.>"),
    ] {
        let config = stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.to_string()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        };
        let mut tries = 0;
        while let Err(e) = js.get_or_create_stream(config.clone()).await {
            tries += 1;
            assert!(tries < 200, "JetStream does not make {name}: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let tag = tag();
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| signup(&tag, i).1).collect();
    let mut lines = Vec::with_capacity(n);
    for body in &bodies {
        lines.push(String::from_utf8(body.clone()).unwrap());
    }
    std::fs::write(file, lines.join("\n") + "\n").expect("FILE is writable");
    let start = Instant::now();
    for chunk in bodies.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for body in chunk {
            let mut headers = async_nats::HeaderMap::new();
            let sig = signature::sign(secret, chrono::Utc::now().timestamp(), body);
            headers.insert(signature::HEADER, sig.as_str());
            let subject = "daarion.auth.events.user.registered";
            let ack = js
                .publish_with_headers(subject, headers, body.clone().into())
                .await
                .expect("NATS takes the message");
            acks.push(ack);
        }
        for ack in acks {
            ack.await.expect("JetStream stores the message");
        }
    }
    let elapsed = start.elapsed();
    json!({
        "mode": "nats-publish",
        "tag": tag,
        "published": n,
        "seconds": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        "per_second": (n as f64 / elapsed.as_secs_f64()).round(),
    })
}

/// Waits (at most 10 minutes) until the durable CONSUMER of STREAM exists and
/// has answered N messages: none pending, none awaiting its ack. The time is
/// from the consumer's creation (JetStream's clock, this machine's) to the
/// first look that finds it so, looks 10 ms apart.
async fn nats_drained(
    js: &async_nats::jetstream::Context,
    stream: &str,
    name: &str,
    n: usize,
) -> Value {
    use async_nats::jetstream::consumer::pull;
    let limit = Instant::now() + Duration::from_secs(600);
    let stream = js.get_stream(stream).await.expect("the stream exists");
    loop {
        assert!(
            Instant::now() < limit,
            "consumer {name} did not finish in 10 minutes"
        );
        let info = match stream.get_consumer::<pull::Config>(name).await {
            Ok(consumer) => consumer.get_info().await.ok(),
            Err(_) => None,
        };
        if let Some(info) = info {
            if info.delivered.consumer_sequence >= n as u64
                && info.num_pending == 0
                && info.num_ack_pending == 0
            {
                let now = chrono::Utc::now().timestamp_nanos_opt().unwrap() as i128;
                let seconds = (now - info.created.unix_timestamp_nanos()) as f64 / 1e9;
                return json!({
                    "consumer": name,
                    "ok": info.ack_floor.consumer_sequence,
                    "redelivered": info.num_redelivered,
                    "seconds": (seconds * 100.0).round() / 100.0,
                    "per_second": (n as f64 / seconds).round(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `nats-drain`: the service's consumer, timed by [`nats_drained`].
async fn nats_drain(url: &str, stream: &str, name: &str, n: usize) -> Value {
    let js = nats_js(url).await;
    let mut out = nats_drained(&js, stream, name, n).await;
    out["mode"] = json!("nats-service");
    out
}

/// `nats-bare`: the upper bound: a durable pull consumer made as the
/// service makes its own (explicit acks, the same batch and ack-pending
/// limit) that only acknowledges each message, timed by [`nats_drained`].
async fn nats_bare(url: &str, stream: &str, name: &str, n: usize) -> Value {
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt;
    let js = nats_js(url).await;
    let consumer = js
        .get_stream(stream)
        .await
        .expect("the stream exists")
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: NATS_MAX_ACK_PENDING,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            },
        )
        .await
        .expect("JetStream makes the consumer");
    let taker = tokio::spawn(async move {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(NATS_PULL_BATCH)
            .messages()
            .await
            .expect("JetStream hands out messages");
        let mut taken = 0;
        while taken < n {
            match messages.next().await {
                Some(Ok(message)) => {
                    message.ack().await.expect("the ack is sent");
                    taken += 1;
                }
                Some(Err(e)) => eprintln!("nats-bare: {e}"),
                None => break,
            }
        }
    });
    let mut out = nats_drained(&js, stream, name, n).await;
    taker.await.unwrap();
    out["mode"] = json!("nats-bare");
    out["batch"] = json!(NATS_PULL_BATCH);
    out
}

/// `webhooks-file`: every body of FILE (one a line) as a signed DAARION
/// Auth webhook, CONCURRENCY in flight, timed until all are answered.
async fn webhooks_file(url: &str, secret: &str, concurrency: usize, file: &str) -> Value {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        std::fs::read_to_string(file)
            .expect("FILE is readable")
            .lines()
            .map(|l| l.as_bytes().to_vec())
            .collect(),
    );
    let n = bodies.len();
    let (http, url, secret) = (client(concurrency), url.to_string(), secret.to_string());
    let (lat, failed, elapsed) = drive(concurrency, Duration::from_secs(600), n, move |i| {
        let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
        let body = bodies[i].clone();
        async move { post_signed(&http, &url, &secret, body).await }
    })
    .await;
    summary("webhooks-file", lat, failed, elapsed, concurrency)
}
