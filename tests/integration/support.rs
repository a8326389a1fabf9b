//! The test harness: a real Synapse (shared, started by scripts/test.sh, or
//! private for tests that stop it), a fresh database per test on SQLite or
//! PostgreSQL, the service in-process on port 0 or as a child process, and
//! an admin client of our own so that tests check Synapse, not our records.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use matrix_provisioner::app::Application;
use matrix_provisioner::clock::Clock;
use matrix_provisioner::config::Settings;
use matrix_provisioner::domain::event::{Event, Parsed};
use matrix_provisioner::domain::signature;
use matrix_provisioner::store::Store;
use matrix_provisioner::synapse::{registration_mac, Synapse};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::Row;
use tokio::sync::OnceCell;

pub const WEBHOOK_SECRET: &str = "test-webhook-secret";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Polls `check` until it returns Some or `deadline` passes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn unique(prefix: &str) -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    format!("{prefix}{}", tail.to_lowercase())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through scripts/test.sh")
    })
}

/// The Python of the test virtualenv (matrix-nio is in it), set up by
/// scripts/synapse-venv.sh.
pub fn venv_python() -> PathBuf {
    let venv = Command::new(repo().join("scripts/synapse-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(venv.status.success(), "synapse-venv.sh failed");
    let venv = String::from_utf8(venv.stdout).unwrap();
    PathBuf::from(venv.lines().last().unwrap().trim()).join("bin/python")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn init_logs() {
    if std::env::var("TEST_LOG").is_ok() {
        matrix_provisioner::telemetry::init(matrix_provisioner::config::LogFormat::Text);
    }
}

// ---------------------------------------------------------------- Synapse

#[derive(Debug, Clone)]
pub struct SynapseInfo {
    pub url: String,
    pub server_name: String,
    pub registration_secret: String,
    pub jwt_secret: String,
}

/// The Synapse that scripts/test.sh started for the whole run.
pub fn shared_synapse() -> SynapseInfo {
    SynapseInfo {
        url: required_env("MP_TEST_SYNAPSE_URL"),
        server_name: required_env("MP_TEST_SYNAPSE_SERVER_NAME"),
        registration_secret: required_env("MP_TEST_SYNAPSE_SECRET"),
        jwt_secret: required_env("MP_TEST_SYNAPSE_JWT_SECRET"),
    }
}

/// A Synapse of the test's own, for tests that stop and start it.
pub struct PrivateSynapse {
    pub info: SynapseInfo,
    dir: tempfile::TempDir,
}

impl PrivateSynapse {
    pub fn start() -> PrivateSynapse {
        PrivateSynapse::start_with(true)
    }

    /// `relax_ratelimits: false` keeps Synapse's default rate limits (for
    /// tests of how we pass them on).
    pub fn start_with(relax_ratelimits: bool) -> PrivateSynapse {
        PrivateSynapse::start_configured(relax_ratelimits, &[])
    }

    /// With the service's password module (`synapse-module/`) asking the
    /// service at `service_url` with `secret` (CONTRACT.md section 11).
    pub fn start_with_password_module(service_url: &str, secret: &str) -> PrivateSynapse {
        PrivateSynapse::start_configured(
            true,
            &[
                ("PASSWORD_MODULE_URL", service_url),
                ("PASSWORD_MODULE_SECRET", secret),
            ],
        )
    }

    fn start_configured(relax_ratelimits: bool, extra: &[(&str, &str)]) -> PrivateSynapse {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let info = SynapseInfo {
            url: format!("http://127.0.0.1:{port}"),
            server_name: "private.test".into(),
            registration_secret: "private-registration-secret".into(),
            jwt_secret: "private-jwt-secret".into(),
        };
        let status = Command::new(repo().join("scripts/synapse-config.sh"))
            .arg(dir.path())
            .arg(port.to_string())
            .env("SERVER_NAME", &info.server_name)
            .env("REGISTRATION_SECRET", &info.registration_secret)
            .env("JWT_SECRET", &info.jwt_secret)
            .env("BCRYPT_ROUNDS", "4")
            .env("RELAX_RATELIMITS", if relax_ratelimits { "1" } else { "0" })
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "synapse-config.sh failed");
        let synapse = PrivateSynapse { info, dir };
        synapse.ctl("start");
        synapse
    }

    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// Synapse's own SQLite database (to read what it issued, e.g. tokens).
    pub fn database(&self) -> PathBuf {
        self.dir.path().join("homeserver.db")
    }

    pub fn resume(&self) {
        self.ctl("start");
    }

    fn ctl(&self, command: &str) {
        let status = Command::new(repo().join("scripts/synapse-ctl.sh"))
            .arg(command)
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "synapse-ctl.sh {command} failed");
    }
}

impl Drop for PrivateSynapse {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/synapse-ctl.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}

/// Our own window on Synapse's admin API, independent of the service's client.
#[derive(Clone)]
pub struct SynapseAdmin {
    pub info: SynapseInfo,
    http: reqwest::Client,
    token: String,
}

/// The admin token is shared by the tests; HTTP clients are not, since each
/// test has its own runtime and a client's connections die with theirs.
static SHARED_ADMIN_TOKEN: OnceCell<String> = OnceCell::const_new();

impl SynapseAdmin {
    pub async fn shared() -> SynapseAdmin {
        let token = SHARED_ADMIN_TOKEN
            .get_or_init(|| async { SynapseAdmin::new(shared_synapse()).await.token })
            .await
            .clone();
        SynapseAdmin {
            info: shared_synapse(),
            http: reqwest::Client::new(),
            token,
        }
    }

    pub async fn new(info: SynapseInfo) -> SynapseAdmin {
        let http = reqwest::Client::new();
        let mut admin = SynapseAdmin {
            info,
            http,
            token: String::new(),
        };
        let body = admin
            .register_raw(&unique("testadmin"), true, false)
            .await
            .expect("cannot register the test admin");
        admin.token = body["access_token"].as_str().unwrap().to_string();
        admin
    }

    /// This admin's access token (an operator's `SYNAPSE_ADMIN_TOKEN`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The status of `GET /_matrix/client/v3/account/whoami` with `token`:
    /// 200 while Synapse accepts it, 401 once it is dead.
    pub async fn whoami(&self, token: &str) -> u16 {
        self.http
            .get(format!(
                "{}/_matrix/client/v3/account/whoami",
                self.info.url
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Ends `token`'s session, as an expiry or an admin's clean-up would.
    pub async fn logout(&self, token: &str) {
        let status = self
            .http
            .post(format!("{}/_matrix/client/v3/logout", self.info.url))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "logout");
    }

    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.info.server_name)
    }

    /// Shared-secret registration, as a stranger (another admin tool) would do it.
    pub async fn register_raw(
        &self,
        localpart: &str,
        admin: bool,
        inhibit_login: bool,
    ) -> Result<Value, Value> {
        self.register_with_password(localpart, &unique("pw"), admin, inhibit_login)
            .await
    }

    /// [`SynapseAdmin::register_raw`] with a password of the caller's.
    pub async fn register_with_password(
        &self,
        localpart: &str,
        password: &str,
        admin: bool,
        inhibit_login: bool,
    ) -> Result<Value, Value> {
        let url = format!("{}/_synapse/admin/v1/register", self.info.url);
        let nonce: Value = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nonce = nonce["nonce"].as_str().unwrap();
        let mac = registration_mac(
            &self.info.registration_secret,
            nonce,
            localpart,
            password,
            admin,
        );
        let response = self
            .http
            .post(&url)
            .json(
                &json!({"nonce": nonce, "username": localpart, "password": password,
                          "mac": mac, "admin": admin, "inhibit_login": inhibit_login}),
            )
            .send()
            .await
            .unwrap();
        let ok = response.status().is_success();
        let body: Value = response.json().await.unwrap();
        if ok {
            Ok(body)
        } else {
            Err(body)
        }
    }

    /// GET with our admin token; a loaded machine can make Synapse answer
    /// 5xx or drop a connection now and then, so reads are tried again.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        for _ in 0..5 {
            let response = self
                .http
                .get(format!("{}{path}", self.info.url))
                .bearer_auth(&self.token)
                .send()
                .await;
            if let Ok(response) = response {
                let status = response.status().as_u16();
                if status < 500 {
                    return (status, response.json().await.unwrap_or(Value::Null));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("Synapse keeps failing GET {path}");
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// One request with our admin token, sent once (writes are not retried).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.info.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The bytes behind an `mxc://server/id` URI (authenticated media).
    pub async fn media(&self, mxc: &str) -> Vec<u8> {
        let rest = mxc.strip_prefix("mxc://").expect("an mxc:// URI");
        let response = self
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{rest}",
                self.info.url
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "download of {mxc}");
        response.bytes().await.unwrap().to_vec()
    }

    /// How many media items `matrix_user_id` has uploaded.
    pub async fn uploads_by(&self, matrix_user_id: &str) -> u64 {
        let (status, body) = self
            .get(&format!(
                "/_synapse/admin/v1/users/{matrix_user_id}/media?limit=1"
            ))
            .await;
        match status {
            200 => body["total"].as_u64().unwrap(),
            // The service's account does not exist before its first call.
            404 => 0,
            other => panic!("unexpected {other} from Synapse: {body}"),
        }
    }

    /// A public room created by the test admin, with `matrix_user_id` joined.
    pub async fn room_with(&self, matrix_user_id: &str) -> String {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/createRoom",
                &json!({"preset": "public_chat", "name": "profiles test"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let room_id = body["room_id"].as_str().unwrap().to_string();
        let (status, body) = self
            .post(
                &format!("/_synapse/admin/v1/join/{room_id}"),
                &json!({"user_id": matrix_user_id}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        room_id
    }

    /// The user's current `m.room.member` event content in the room.
    pub async fn membership(&self, room_id: &str, matrix_user_id: &str) -> Value {
        let (status, body) = self
            .get(&format!(
                "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{matrix_user_id}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the user's membership event in the room has `field`
    /// equal to `expected` (`Value::Null`: absent). Synapse rewrites
    /// membership events after a profile change in a background task.
    pub async fn wait_for_membership(
        &self,
        room_id: &str,
        matrix_user_id: &str,
        field: &str,
        expected: &Value,
    ) -> Value {
        let what = format!("{field} = {expected} in {matrix_user_id}'s membership");
        eventually(&what, Duration::from_secs(30), || async {
            let member = self.membership(room_id, matrix_user_id).await;
            let value = member.get(field).cloned().unwrap_or(Value::Null);
            (&value == expected).then_some(member)
        })
        .await
    }

    /// `GET /_synapse/admin/v2/users/@lp:server`, None on 404.
    pub async fn user(&self, matrix_user_id: &str) -> Option<Value> {
        let (status, body) = self
            .get(&format!("/_synapse/admin/v2/users/{matrix_user_id}"))
            .await;
        match status {
            200 => Some(body),
            404 => None,
            other => panic!("unexpected {other} from Synapse: {body}"),
        }
    }

    /// The account linked to a DAARION id.
    pub async fn lookup(&self, daarion_id: &str) -> Option<String> {
        let (status, body) = self
            .get(&format!(
                "/_synapse/admin/v1/auth_providers/daarion/users/{daarion_id}"
            ))
            .await;
        match status {
            200 => Some(body["user_id"].as_str().unwrap().to_string()),
            404 => None,
            other => panic!("unexpected {other} from Synapse: {body}"),
        }
    }

    /// How many accounts (active or not) have `fragment` in their localpart
    /// or display name.
    pub async fn count_users(&self, fragment: &str) -> u64 {
        let (status, body) = self
            .get(&format!(
                "/_synapse/admin/v2/users?name={fragment}&deactivated=true&guests=false&limit=1000"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        body["total"].as_u64().unwrap()
    }
}

// ---------------------------------------------------------------- databases

/// A pool of one connection to `url`, to read or stage rows straight in a
/// database.
pub async fn one_connection(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of the test's own; a SQLite file lives as long as this does.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("provisioner.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin_url = required_env("MP_TEST_POSTGRES_URL");
                let name = unique("t_");
                let pool = one_connection(&admin_url).await;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let base = admin_url.rsplit_once('/').unwrap().0;
                TestDb {
                    url: format!("{base}/{name}"),
                    _dir: None,
                }
            }
        }
    }

    /// The same database, for a second replica of the service.
    pub fn shared(&self) -> TestDb {
        TestDb {
            url: self.url.clone(),
            _dir: None,
        }
    }

    /// Runs one statement straight on the database (to stage a state the
    /// service would reach only through a failure).
    pub async fn execute(&self, sql: &str) {
        let pool = one_connection(&self.url).await;
        sqlx::query(sql).execute(&pool).await.unwrap();
        pool.close().await;
    }

    /// Rows in `table`, read straight from the database.
    pub async fn count(&self, table: &str) -> i64 {
        let pool = one_connection(&self.url).await;
        let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        pool.close().await;
        n
    }
}

// ---------------------------------------------------------------- the service

/// The service built on a fresh SQLite database but not run: no background
/// workers, so a test drives the queue by hand. Keep the `TestDb` alive as
/// long as the app.
pub async fn idle_app(admin: &SynapseAdmin) -> (Application, TestDb) {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = Application::build(settings(&base_env(&db, &admin.info)))
        .await
        .unwrap();
    (app, db)
}

pub fn base_env(db: &TestDb, synapse: &SynapseInfo) -> HashMap<String, String> {
    [
        ("BIND", "127.0.0.1:0".to_string()),
        ("DATABASE_URL", db.url.clone()),
        ("SYNAPSE_URL", synapse.url.clone()),
        ("SYNAPSE_SERVER_NAME", synapse.server_name.clone()),
        (
            "SYNAPSE_REGISTRATION_SECRET",
            synapse.registration_secret.clone(),
        ),
        ("SYNAPSE_JWT_SECRET", synapse.jwt_secret.clone()),
        ("AUTH_WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
        ("ADMIN_API_TOKEN", ADMIN_TOKEN.to_string()),
        ("RETRY_MAX_DELAY_SECONDS", "2".to_string()),
        ("SYNAPSE_TIMEOUT_SECONDS", "5".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Stores a webhook event straight into the service's database, as its
/// intake would (for a service built but not run, whose queue a test drives).
pub async fn store_event(app: &Application, event: &Value) {
    let body = serde_json::to_vec(event).unwrap();
    let Parsed::Event(event) = Event::parse(&body).unwrap() else {
        panic!("not an event the service acts on: {event}")
    };
    app.store()
        .accept_event(&event, matrix_provisioner::now_ms())
        .await
        .unwrap();
}

pub fn settings(env: &HashMap<String, String>) -> Settings {
    Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings are valid")
}

/// A client of the service over HTTP, in-process or a child process alike.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

/// The service's `/metrics` page.
pub async fn metrics_text(client: &Client) -> String {
    client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

impl Client {
    pub fn new(port: u16) -> Client {
        Client {
            base: format!("http://127.0.0.1:{port}"),
            // Idle connections are dropped before the service's keep-alive
            // (5 s) closes them, so a request never goes out on a
            // connection the server is closing at that moment.
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        }
    }

    pub async fn post_webhook(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut request = self
            .http
            .post(format!("{}/v1/webhooks/auth", self.base))
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = signature {
            request = request.header("X-Daarion-Signature", sig);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Signs `event` now with the test secret and posts it.
    pub async fn send_event(&self, event: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(event).unwrap();
        let sig = signature::sign(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), &body);
        self.post_webhook(&body, Some(&sig)).await.unwrap()
    }

    /// `POST /v1/admin/profile-sync`.
    pub async fn profile_sync(&self, full: bool) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/admin/profile-sync", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"full": full}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn user(&self, user_id: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/v1/users/{user_id}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the person reaches `state`; returns their record. Stops
    /// early, with the record, if the person fails instead.
    pub async fn wait_for_state(&self, user_id: &str, state: &str, deadline: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (status, body) = self.user(user_id).await;
            if status == 200 && body["state"] == state {
                return body;
            }
            assert!(
                state == "failed" || body["state"] != "failed",
                "{user_id} failed instead of becoming {state}: {body}"
            );
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {user_id} to be {state}; last answer {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The service running in this process.
pub struct TestApp {
    pub client: Client,
    pub db: TestDb,
    pub synapse: SynapseInfo,
    pub env: HashMap<String, String>,
    /// The service's own Synapse client (its request counts).
    pub service_synapse: Arc<Synapse>,
    /// The service's own database pool (a test may close it under the service).
    pub store: Store,
    /// The service's clock: a test moves it instead of waiting.
    pub clock: Clock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(TestDb::new(backend).await, shared_synapse(), &[]).await
    }

    pub async fn spawn_with(
        db: TestDb,
        synapse: SynapseInfo,
        overrides: &[(&str, &str)],
    ) -> TestApp {
        init_logs();
        let mut env = base_env(&db, &synapse);
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        let clock = Clock::system();
        let app = Application::build_with_clock(settings(&env), clock.clone())
            .await
            .expect("the app builds");
        let client = Client::new(app.port());
        let service_synapse = app.synapse();
        let store = app.store();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        TestApp {
            client,
            db,
            synapse,
            env,
            service_synapse,
            store,
            clock,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn shutdown(mut self) -> TestDb {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        std::mem::replace(
            &mut self.db,
            TestDb {
                url: String::new(),
                _dir: None,
            },
        )
    }

    /// Stops the service, whatever the outcome (for a test that broke the
    /// service's database under it on purpose).
    pub async fn abandon(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

/// The service as a child process (for SIGKILL).
pub struct ChildService {
    pub child: Child,
    pub client: Client,
}

impl ChildService {
    pub async fn start(env: &HashMap<String, String>, port: u16, log: &Path) -> ChildService {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_matrix-provisioner"))
            .arg("serve")
            .env_clear()
            .env("RUST_LOG", "info")
            .envs(env)
            .env("BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let client = Client::new(port);
        eventually(
            "the service to answer /healthz",
            Duration::from_secs(30),
            || async {
                let r = client
                    .http
                    .get(format!("{}/healthz", client.base))
                    .send()
                    .await;
                r.ok().filter(|r| r.status().is_success()).map(drop)
            },
        )
        .await;
        ChildService { child, client }
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM, as an orchestrator does to stop a container.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit (within `deadline`).
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let mut exited = None;
        eventually("the service to exit", deadline, || {
            exited = exited.or_else(|| child.try_wait().unwrap());
            std::future::ready(exited.map(drop))
        })
        .await;
        exited.unwrap()
    }
}

impl Drop for ChildService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- events

pub fn event(kind: &str, user_id: &str, data: Value) -> Value {
    event_at(kind, user_id, data, chrono::Utc::now())
}

pub fn event_at(
    kind: &str,
    user_id: &str,
    mut data: Value,
    at: chrono::DateTime<chrono::Utc>,
) -> Value {
    data["user_id"] = json!(user_id);
    json!({
        "id": unique("evt_"),
        "type": kind,
        "created_at": at.to_rfc3339(),
        "data": data,
    })
}

/// Runs the test body once per database back end.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::support::Backend::Postgres).await
            }
        }
    };
}

// ---------------------------------------------------------------- a proxy

/// An HTTP proxy between the service and Synapse that records the path and
/// `X-Request-Id` of every request, and can make Synapse slow or answer
/// `200` with a body no Synapse endpoint sends.
pub struct SynapseProxy {
    pub url: String,
    state: std::sync::Arc<ProxyState>,
    handle: actix_web::dev::ServerHandle,
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    delay_ms: std::sync::atomic::AtomicU64,
    seen: std::sync::Mutex<Vec<(String, Option<String>)>>,
    /// (path, how many more answers to replace, the status to answer).
    garble: std::sync::Mutex<Option<(String, u32, u16)>>,
    /// (text in the body, how many more, the status to answer, whether
    /// Synapse gets the request first).
    fail_body: std::sync::Mutex<Option<(String, u32, u16, bool)>>,
    /// (path, how long): Synapse answers such a request, and the answer is
    /// held back that long (a service killed meanwhile never sees it).
    hold: std::sync::Mutex<Option<(String, Duration)>>,
    /// Requests for a held path that Synapse answered.
    held: std::sync::atomic::AtomicU64,
    /// Every `password` sent to Synapse (registrations, logins,
    /// reactivations): what must never be written anywhere else.
    passwords: std::sync::Mutex<Vec<String>>,
}

impl SynapseProxy {
    pub fn start(upstream: &str) -> SynapseProxy {
        use actix_web::web;
        let state = std::sync::Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            delay_ms: Default::default(),
            seen: Default::default(),
            garble: Default::default(),
            hold: Default::default(),
            held: Default::default(),
            fail_body: Default::default(),
            passwords: Default::default(),
        });
        let data = web::Data::from(std::sync::Arc::clone(&state));
        let (port, handle) = crate::fakes::serve_locally(move |cfg| {
            cfg.app_data(data.clone())
                .default_service(web::to(proxy_forward));
        });
        SynapseProxy {
            url: format!("http://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    /// Every request from now on waits `delay` before it is forwarded.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// The next `times` requests for exactly `path` get `200` with an HTML
    /// page instead of Synapse's answer (a misconfigured proxy, say).
    pub fn garble(&self, path: &str, times: u32) {
        *self.state.garble.lock().unwrap() = Some((path.to_string(), times, 200));
    }

    /// The next `times` requests for exactly `path` get `503`, as from a
    /// Synapse that is down.
    pub fn fail(&self, path: &str, times: u32) {
        *self.state.garble.lock().unwrap() = Some((path.to_string(), times, 503));
    }

    /// The next `times` requests whose body contains `text` get `status`
    /// with a Matrix error body (a refusal, a 429) instead of Synapse's answer.
    pub fn fail_body(&self, text: &str, times: u32, status: u16) {
        *self.state.fail_body.lock().unwrap() = Some((text.to_string(), times, status, false));
    }

    /// Like [`SynapseProxy::fail_body`], but Synapse gets (and carries out)
    /// the request first: only its answer is replaced.
    pub fn fail_body_after_forwarding(&self, text: &str, times: u32, status: u16) {
        *self.state.fail_body.lock().unwrap() = Some((text.to_string(), times, status, true));
    }

    /// Requests for exactly `path` reach Synapse, but its answer is held
    /// back for `delay`.
    pub fn hold_answers(&self, path: &str, delay: Duration) {
        *self.state.hold.lock().unwrap() = Some((path.to_string(), delay));
    }

    /// How many held requests Synapse has answered.
    pub fn held(&self) -> u64 {
        self.state.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every password the service has sent to Synapse so far.
    pub fn passwords(&self) -> Vec<String> {
        self.state.passwords.lock().unwrap().clone()
    }

    /// (path, X-Request-Id) of every request so far.
    pub fn seen(&self) -> Vec<(String, Option<String>)> {
        self.state.seen.lock().unwrap().clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn proxy_forward(
    req: actix_web::HttpRequest,
    body: actix_web::web::Bytes,
    state: actix_web::web::Data<ProxyState>,
) -> actix_web::HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    state
        .seen
        .lock()
        .unwrap()
        .push((req.path().to_string(), header("x-request-id")));
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) {
        if let Some(Value::String(password)) = fields.get("password") {
            state.passwords.lock().unwrap().push(password.clone());
        }
    }
    {
        let mut garble = state.garble.lock().unwrap();
        if let Some((path, times, status)) = garble.as_mut() {
            if path == req.path() && *times > 0 {
                *times -= 1;
                let status = actix_web::http::StatusCode::from_u16(*status).unwrap();
                return actix_web::HttpResponse::build(status)
                    .content_type("text/html")
                    .body("<html><body>upstream hiccup</body></html>");
            }
        }
    }
    let refusal = {
        let mut fail = state.fail_body.lock().unwrap();
        match fail.as_mut() {
            Some((text, times, status, after))
                if *times > 0 && String::from_utf8_lossy(&body).contains(text.as_str()) =>
            {
                *times -= 1;
                Some((*status, *after))
            }
            _ => None,
        }
    };
    let refuse = |status: u16| {
        let status = actix_web::http::StatusCode::from_u16(status).unwrap();
        let errcode = if status.as_u16() == 429 {
            "M_LIMIT_EXCEEDED"
        } else {
            "M_FORBIDDEN"
        };
        actix_web::HttpResponse::build(status).json(serde_json::json!(
            {"errcode": errcode, "error": "refused by the test proxy", "retry_after_ms": 300}
        ))
    };
    if let Some((status, false)) = refusal {
        return refuse(status);
    }
    let delay = state.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
    if delay > 0 {
        // A slow Synapse, not a test waiting for work.
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let url = format!(
        "{}{}",
        state.upstream,
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
    let mut forward = state.http.request(method, url).body(body.to_vec());
    for name in ["authorization", "content-type"] {
        if let Some(value) = header(name) {
            forward = forward.header(name, value);
        }
    }
    let hold = state
        .hold
        .lock()
        .unwrap()
        .clone()
        .filter(|(path, _)| path == req.path());
    match forward.send().await {
        Ok(response) => {
            if let Some((_, delay)) = hold {
                state.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(delay).await;
            }
            if let Some((status, true)) = refusal {
                let _ = response.bytes().await;
                return refuse(status);
            }
            let status = actix_web::http::StatusCode::from_u16(response.status().as_u16()).unwrap();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            let bytes = response.bytes().await.unwrap_or_default();
            actix_web::HttpResponse::build(status)
                .content_type(content_type)
                .body(bytes.to_vec())
        }
        Err(_) => actix_web::HttpResponse::BadGateway().finish(),
    }
}
