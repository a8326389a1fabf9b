//! Small HTTP servers on 127.0.0.1 for what is not ours to run: DAARION
//! Auth's user API (CONTRACT.md section 5) and avatar hosts. Self-contained
//! (no other test module), so the benchmark includes this file too.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// Serves the routes `configure` sets up on a free port of 127.0.0.1 with
/// one worker, in the background; returns the port and the server's handle.
pub fn serve_locally<F>(configure: F) -> (u16, actix_web::dev::ServerHandle)
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    serve_on(0, configure)
}

/// [`serve_locally`] on a given port of 127.0.0.1 (0: any free one), for
/// a fake whose address must be known before it starts (the benchmark
/// hands it to the service first).
pub fn serve_on<F>(port: u16, configure: F) -> (u16, actix_web::dev::ServerHandle)
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || App::new().configure(configure.clone()))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

// ---------------------------------------------------------------- user API

/// A person as the fake user API lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeUser {
    pub user_id: String,
    pub username: Option<String>,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub email: Option<String>,
    pub updated_at_ms: i64,
    pub deleted: bool,
}

impl FakeUser {
    pub fn new(user_id: &str, username: &str, display_name: &str, updated_at_ms: i64) -> FakeUser {
        FakeUser {
            user_id: user_id.into(),
            username: Some(username.into()),
            display_name: Some(display_name.into()),
            avatar_url: None,
            email: None,
            updated_at_ms,
            deleted: false,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "user_id": self.user_id,
            "username": self.username,
            "display_name": self.display_name,
            "avatar_url": self.avatar_url,
            "email": self.email,
            "updated_at": rfc3339(self.updated_at_ms),
            "deleted": self.deleted,
        })
    }
}

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Default)]
struct Directory {
    by_id: HashMap<String, FakeUser>,
    /// Sorted by (updated_at, user_id), rebuilt after a change.
    sorted: Option<Arc<Vec<FakeUser>>>,
}

impl Directory {
    fn sorted(&mut self) -> Arc<Vec<FakeUser>> {
        if self.sorted.is_none() {
            let mut all: Vec<FakeUser> = self.by_id.values().cloned().collect();
            all.sort_by(|a, b| (a.updated_at_ms, &a.user_id).cmp(&(b.updated_at_ms, &b.user_id)));
            self.sorted = Some(Arc::new(all));
        }
        Arc::clone(self.sorted.as_ref().unwrap())
    }
}

/// DAARION Auth's user API: pages sorted by `updated_at`, `updated_since`
/// honoured, the cursor an offset, bearer token checked. `hold()` makes
/// requests wait until `release()`, to keep a pass running on purpose.
#[derive(Clone)]
pub struct FakeUserApi {
    pub url: String,
    dir: Arc<Mutex<Directory>>,
    /// The query string of every request, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    /// Requests that arrived while held.
    pub waiting: Arc<AtomicUsize>,
}

struct ApiState {
    token: String,
    dir: Arc<Mutex<Directory>>,
    requests: Arc<Mutex<Vec<String>>>,
    gate: tokio::sync::watch::Receiver<bool>,
    waiting: Arc<AtomicUsize>,
}

impl FakeUserApi {
    pub fn start(token: &str) -> FakeUserApi {
        let dir = Arc::new(Mutex::new(Directory::default()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (gate, gate_rx) = tokio::sync::watch::channel(true);
        let waiting = Arc::new(AtomicUsize::new(0));
        let state = web::Data::new(ApiState {
            token: token.to_string(),
            dir: Arc::clone(&dir),
            requests: Arc::clone(&requests),
            gate: gate_rx,
            waiting: Arc::clone(&waiting),
        });
        let (port, _) = serve_locally(move |cfg| {
            cfg.app_data(state.clone())
                .route("/v1/users", web::get().to(list_users));
        });
        FakeUserApi {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            requests,
            gate: Arc::new(gate),
            waiting,
        }
    }

    pub fn put(&self, user: FakeUser) {
        let mut dir = self.dir.lock().unwrap();
        dir.by_id.insert(user.user_id.clone(), user);
        dir.sorted = None;
    }

    pub fn put_all(&self, users: impl IntoIterator<Item = FakeUser>) {
        let mut dir = self.dir.lock().unwrap();
        for user in users {
            dir.by_id.insert(user.user_id.clone(), user);
        }
        dir.sorted = None;
    }

    pub fn get(&self, user_id: &str) -> Option<FakeUser> {
        self.dir.lock().unwrap().by_id.get(user_id).cloned()
    }

    pub fn all(&self) -> Vec<FakeUser> {
        self.dir.lock().unwrap().sorted().as_ref().clone()
    }

    pub fn hold(&self) {
        self.gate.send_replace(false);
    }

    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    pub fn request_log(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn list_users(state: web::Data<ApiState>, req: HttpRequest) -> HttpResponse {
    state
        .requests
        .lock()
        .unwrap()
        .push(req.query_string().to_string());
    let expected = format!("Bearer {}", state.token);
    let presented = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok());
    if presented != Some(expected.as_str()) {
        return HttpResponse::Unauthorized().json(json!({"error": "unauthorized"}));
    }
    let mut gate = state.gate.clone();
    if !*gate.borrow() {
        state.waiting.fetch_add(1, Ordering::SeqCst);
        let _ = gate.wait_for(|open| *open).await;
    }
    let query: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let since = match query.get("updated_since") {
        Some(raw) => match DateTime::parse_from_rfc3339(raw) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => return HttpResponse::BadRequest().json(json!({"error": "updated_since"})),
        },
        None => None,
    };
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let sorted = state.dir.lock().unwrap().sorted();
    let start = match query.get("cursor") {
        Some(c) => match c.parse::<usize>() {
            Ok(offset) => offset,
            Err(_) => return HttpResponse::BadRequest().json(json!({"error": "cursor"})),
        },
        None => since.map_or(0, |s| sorted.partition_point(|u| u.updated_at_ms < s)),
    };
    let end = (start + limit).min(sorted.len());
    let users: Vec<Value> = sorted[start.min(end)..end]
        .iter()
        .map(FakeUser::to_json)
        .collect();
    let next = (end < sorted.len()).then(|| end.to_string());
    HttpResponse::Ok().json(json!({"users": users, "next_cursor": next}))
}

// ---------------------------------------------------------------- login API

/// A person DAARION Auth's login API knows.
#[derive(Debug, Clone)]
pub struct FakeAccount {
    /// A UUID, as DAARION's ids are.
    pub user_id: String,
    pub email: String,
    pub password: String,
    pub display_name: String,
    pub active: bool,
}

impl FakeAccount {
    /// A new person with a fresh UUID, an address under `example.test`
    /// and a password of their own.
    pub fn new(display_name: &str) -> FakeAccount {
        let user_id = uuid();
        FakeAccount {
            email: format!("{}@example.test", &user_id[..13]),
            password: format!("pw-{}", &user_id[24..]),
            user_id,
            display_name: display_name.into(),
            active: true,
        }
    }
}

/// A fresh version-4-shaped UUID.
pub fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// DAARION Auth's login API exactly as CONTRACT.md section 10 describes it:
/// `POST /api/auth/login` with `{"email", "password"}`; HS256 access and
/// refresh tokens signed with one key (the refresh token names the session
/// this login opened); `{"detail": …}` errors; emails compared
/// case-insensitively. `set_down(true)` makes it answer 503.
#[derive(Clone)]
pub struct FakeLoginApi {
    /// The login URL (`AUTH_PASSWORD_LOGIN_URL`).
    pub url: String,
    accounts: Arc<Mutex<HashMap<String, FakeAccount>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Logins asked, and the sessions opened (in order).
    pub logins: Arc<AtomicUsize>,
    pub sessions: Arc<Mutex<Vec<String>>>,
}

struct LoginState {
    secret: String,
    accounts: Arc<Mutex<HashMap<String, FakeAccount>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    logins: Arc<AtomicUsize>,
    sessions: Arc<Mutex<Vec<String>>>,
}

impl FakeLoginApi {
    /// Tokens are signed with `secret` (DAARION's `AUTH_JWT_SECRET`).
    pub fn start(secret: &str) -> FakeLoginApi {
        FakeLoginApi::start_on(secret, 0)
    }

    /// [`FakeLoginApi::start`] on a given port of 127.0.0.1.
    pub fn start_on(secret: &str, port: u16) -> FakeLoginApi {
        let accounts = Arc::new(Mutex::new(HashMap::new()));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let logins = Arc::new(AtomicUsize::new(0));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let state = web::Data::new(LoginState {
            secret: secret.into(),
            accounts: Arc::clone(&accounts),
            down: Arc::clone(&down),
            logins: Arc::clone(&logins),
            sessions: Arc::clone(&sessions),
        });
        let (port, _) = serve_on(port, move |cfg| {
            cfg.app_data(state.clone())
                .route("/api/auth/login", web::post().to(login));
        });
        FakeLoginApi {
            url: format!("http://127.0.0.1:{port}/api/auth/login"),
            accounts,
            down,
            logins,
            sessions,
        }
    }

    pub fn add(&self, account: &FakeAccount) {
        self.accounts
            .lock()
            .unwrap()
            .insert(account.email.to_lowercase(), account.clone());
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn logins(&self) -> usize {
        self.logins.load(Ordering::SeqCst)
    }
}

async fn login(state: web::Data<LoginState>, body: web::Bytes) -> HttpResponse {
    state.logins.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"detail": "Service temporarily unavailable"}));
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::UnprocessableEntity().json(json!({"detail": "invalid body"}));
    };
    let (Some(email), Some(password)) = (body["email"].as_str(), body["password"].as_str()) else {
        return HttpResponse::UnprocessableEntity().json(json!({"detail": "email and password"}));
    };
    let account = state
        .accounts
        .lock()
        .unwrap()
        .get(&email.to_lowercase())
        .cloned();
    let Some(account) = account.filter(|a| a.password == password) else {
        return HttpResponse::Unauthorized().json(json!({"detail": "Invalid email or password"}));
    };
    if !account.active {
        return HttpResponse::Forbidden().json(json!({"detail": "User account is inactive"}));
    }
    let now = Utc::now().timestamp();
    let session_id = uuid();
    state.sessions.lock().unwrap().push(session_id.clone());
    let key = jsonwebtoken::EncodingKey::from_secret(state.secret.as_bytes());
    let sign = |claims: Value| {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let access = sign(json!({"sub": account.user_id, "email": account.email,
        "name": account.display_name, "roles": ["member"], "type": "access",
        "iss": "daarion-auth", "iat": now, "exp": now + 1800}));
    let refresh = sign(json!({"sub": account.user_id, "type": "refresh",
        "session_id": session_id, "iss": "daarion-auth", "iat": now, "exp": now + 30 * 86400}));
    HttpResponse::Ok().json(json!({
        "access_token": access, "refresh_token": refresh, "token_type": "bearer",
        "expires_in": 1800,
        "user": {"id": account.user_id, "email": account.email,
                 "display_name": account.display_name, "avatar_url": null,
                 "roles": ["member"], "is_active": true,
                 "created_at": "2026-01-01T00:00:00Z"}
    }))
}

// ---------------------------------------------------------------- avatars

/// 50 MiB: more than any avatar cap.
pub const HUGE: usize = 50 * 1024 * 1024;

/// A host serving images and hostile answers:
/// `/img/{name}` the bytes set with `put`, `/redirect?to=URL` a 302,
/// `/huge` 50 MiB streamed without a length, `/huge-declared` with one,
/// `/page.html` an HTML page. Counts requests by path and bytes sent by
/// the huge streams.
#[derive(Clone)]
pub struct AvatarHost {
    pub port: u16,
    images: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
    pub huge_bytes_sent: Arc<AtomicUsize>,
}

struct HostState {
    images: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    huge_bytes_sent: Arc<AtomicUsize>,
}

impl AvatarHost {
    pub fn start() -> AvatarHost {
        let images = Arc::new(Mutex::new(HashMap::new()));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let huge_bytes_sent = Arc::new(AtomicUsize::new(0));
        let state = web::Data::new(HostState {
            images: Arc::clone(&images),
            hits: Arc::clone(&hits),
            huge_bytes_sent: Arc::clone(&huge_bytes_sent),
        });
        let (port, _) = serve_locally(move |cfg| {
            cfg.app_data(state.clone())
                .default_service(web::to(serve_avatar));
        });
        AvatarHost {
            port,
            images,
            hits,
            huge_bytes_sent,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn put(&self, name: &str, bytes: Vec<u8>) {
        self.images.lock().unwrap().insert(name.to_string(), bytes);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

async fn serve_avatar(state: web::Data<HostState>, req: HttpRequest) -> HttpResponse {
    let path = req.path().to_string();
    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    if let Some(name) = path.strip_prefix("/img/") {
        return match state.images.lock().unwrap().get(name) {
            // A wrong Content-Type on purpose: the bytes decide.
            Some(bytes) => HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(bytes.clone()),
            None => HttpResponse::NotFound().finish(),
        };
    }
    match path.as_str() {
        "/redirect" => {
            let query: HashMap<String, String> =
                url::form_urlencoded::parse(req.query_string().as_bytes())
                    .into_owned()
                    .collect();
            HttpResponse::Found()
                .insert_header(("Location", query.get("to").cloned().unwrap_or_default()))
                .finish()
        }
        "/huge" | "/huge-declared" => {
            let sent = Arc::clone(&state.huge_bytes_sent);
            // PNG magic first, so only the size can be the reason to refuse.
            let mut first = true;
            let chunk = 64 * 1024;
            let stream = futures_util::stream::iter(0..HUGE / chunk).map(move |_| {
                let mut bytes = vec![0u8; chunk];
                if first {
                    bytes[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
                    first = false;
                }
                sent.fetch_add(chunk, Ordering::SeqCst);
                Ok::<_, actix_web::Error>(web::Bytes::from(bytes))
            });
            let mut response = HttpResponse::Ok();
            response.content_type("image/png");
            if path == "/huge-declared" {
                response.no_chunking(HUGE as u64);
            }
            response.streaming(stream)
        }
        "/page.html" => HttpResponse::Ok()
            // Claims to be an image: the bytes say otherwise.
            .content_type("image/png")
            .body("<!DOCTYPE html><html><body>not an avatar</body></html>"),
        _ => HttpResponse::NotFound().finish(),
    }
}

/// A tiny valid-looking PNG whose content depends on `seed`.
pub fn png(seed: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.extend(std::iter::repeat_n(seed, 64));
    bytes
}

use futures_util::StreamExt;
