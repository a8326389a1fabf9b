//! "Continue with DAARION": the service as the OpenID provider of the real
//! Synapse's single sign-on, walked the way Element walks it, with a fake
//! DAARION sign-in page; then every refusal, the signing keys, and
//! single sign-out through back-channel logout.
//!
//! scripts/test.sh configures Synapse with one provider per back end
//! (`daarion-sqlite`, `daarion-postgres`) at fixed ports; the tests of one
//! back end take turns on its port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use matrix_provisioner::synapse::Endpoint;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::fakes::serve_locally;
use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(60);
const AUTH_SECRET: &str = "oidc-test-daarion-secret";
const ISSUER: &str = "https://auth.daarion.test";
const AUDIENCE: &str = "matrix-provisioner";
/// Element's address, in Synapse's `sso.client_whitelist`.
const ELEMENT: &str = "http://element.test/";
/// A client redirect URI of our own, for driving the provider directly.
const CLIENT_CB: &str = "http://client.test/cb";

/// One test at a time per back end: Synapse knows each provider by its port.
pub(crate) static TURNS: [tokio::sync::Mutex<()>; 2] = [
    tokio::sync::Mutex::const_new(()),
    tokio::sync::Mutex::const_new(()),
];

fn idp(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "daarion-sqlite",
        Backend::Postgres => "daarion-postgres",
    }
}

fn provider_port(backend: Backend) -> u16 {
    let name = match backend {
        Backend::Sqlite => "MP_TEST_OIDC_PORT_SQLITE",
        Backend::Postgres => "MP_TEST_OIDC_PORT_POSTGRES",
    };
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test.sh"))
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------- DAARION's sign-in page

/// Who the fake DAARION page signs in, or that it refuses.
#[derive(Clone)]
enum Answer {
    Person(Value),
    Deny,
    BadToken(Value),
}

/// DAARION Auth's sign-in page, as section 7 describes its side: it "signs
/// the person in" and answers with a page that posts an access token and
/// the state back to `return_to`.
struct FakeDaarion {
    url: String,
    answer: Arc<Mutex<Answer>>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeDaarion {
    fn start() -> FakeDaarion {
        let answer = Arc::new(Mutex::new(Answer::Deny));
        let shared = web::Data::from(Arc::clone(&answer));
        let (port, handle) = serve_locally(move |cfg| {
            cfg.app_data(shared.clone())
                .route("/login", web::get().to(fake_login));
        });
        FakeDaarion {
            url: format!("http://127.0.0.1:{port}/login"),
            answer,
            handle,
        }
    }

    /// The next sign-ins are `user_id` with these claims.
    fn sign_in_as(&self, user_id: &str, username: &str, name: &str, sid: Option<&str>) {
        let mut claims = daarion_claims(user_id);
        claims["preferred_username"] = json!(username);
        claims["name"] = json!(name);
        if let Some(sid) = sid {
            claims["sid"] = json!(sid);
        }
        *self.answer.lock().unwrap() = Answer::Person(claims);
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn daarion_claims(sub: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({"sub": sub, "iat": now, "exp": now + 300, "iss": ISSUER, "aud": AUDIENCE})
}

fn daarion_token(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn fake_login(req: HttpRequest, answer: web::Data<Mutex<Answer>>) -> HttpResponse {
    let q: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let (Some(return_to), Some(state)) = (q.get("return_to"), q.get("state")) else {
        return HttpResponse::BadRequest().body("return_to and state are required");
    };
    let fields = match answer.lock().unwrap().clone() {
        Answer::Person(claims) => vec![("access_token", daarion_token(&claims, AUTH_SECRET))],
        Answer::BadToken(claims) => vec![("access_token", daarion_token(&claims, "not-the-key"))],
        Answer::Deny => vec![("error", "access_denied".to_string())],
    };
    let inputs: String = fields
        .iter()
        .chain(std::iter::once(&("state", state.clone())))
        .map(|(name, value)| format!("<input type=\"hidden\" name=\"{name}\" value=\"{value}\">"))
        .collect();
    HttpResponse::Ok().content_type("text/html").body(format!(
        "<!doctype html><form method=\"post\" action=\"{return_to}\">{inputs}</form>\
         <script>document.forms[0].submit()</script>"
    ))
}

/// The form of the fake page: its action and fields.
fn parse_form(html: &str) -> (String, Vec<(String, String)>) {
    let between = |s: &str, start: &str| -> Option<String> {
        let i = s.find(start)? + start.len();
        Some(s[i..i + s[i..].find('"')?].to_string())
    };
    let action = between(html, "action=\"").expect("a form action");
    let fields = html
        .split("<input ")
        .skip(1)
        .map(|input| {
            (
                between(input, "name=\"").unwrap(),
                between(input, "value=\"").unwrap(),
            )
        })
        .collect();
    (action, fields)
}

// ---------------------------------------------------------------- a browser

/// One step of a browser: the answer's status, `Location` and body.
#[derive(Debug)]
pub(crate) struct Hop {
    pub(crate) status: u16,
    pub(crate) location: Option<String>,
    refresh: Option<String>,
    /// `Content-Security-Policy` and `Retry-After`.
    csp: Option<String>,
    retry_after: Option<String>,
    pub(crate) body: String,
}

/// Just enough of a browser: it keeps cookies (all of them on 127.0.0.1,
/// whatever their path) and lets the test follow each redirect itself.
pub(crate) struct Browser {
    http: reqwest::Client,
    jar: Mutex<HashMap<String, String>>,
    lang: &'static str,
}

impl Browser {
    pub(crate) fn new() -> Browser {
        Browser::speaking("en")
    }

    fn speaking(lang: &'static str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: Mutex::new(HashMap::new()),
            lang,
        }
    }

    pub(crate) async fn get(&self, url: &str) -> Hop {
        self.send(self.http.get(url)).await
    }

    pub(crate) async fn post_form(&self, url: &str, fields: &[(String, String)]) -> Hop {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(
            self.http
                .post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Hop {
        let cookies: Vec<String> = self
            .jar
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut request = request.header("Accept-Language", self.lang);
        if !cookies.is_empty() {
            request = request.header("Cookie", cookies.join("; "));
        }
        let response = request.send().await.unwrap();
        for set in response.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let first = set.split(';').next().unwrap();
            let (name, value) = first.split_once('=').unwrap();
            let removed = set.to_ascii_lowercase().contains("max-age=0") || value.is_empty();
            let mut jar = self.jar.lock().unwrap();
            if removed {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
        Hop {
            status: response.status().as_u16(),
            location: response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string()),
            refresh: response
                .headers()
                .get("refresh")
                .map(|l| l.to_str().unwrap().to_string()),
            csp: response
                .headers()
                .get("content-security-policy")
                .map(|l| l.to_str().unwrap().to_string()),
            retry_after: response
                .headers()
                .get("retry-after")
                .map(|l| l.to_str().unwrap().to_string()),
            body: response.text().await.unwrap_or_default(),
        }
    }
}

fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Where the page after "Continue" moves on to by itself: a `200` that
/// refreshes at once (a redirect there would be held against the
/// confirmation form's `form-action` all the way to the client).
fn onward(hop: &Hop) -> String {
    assert_eq!(hop.status, 200, "confirm: {}", hop.body);
    let location = hop.location.clone().expect("Location for programs");
    assert_eq!(
        hop.refresh.as_deref(),
        Some(format!("0; url={location}").as_str())
    );
    assert!(hop.body.contains("http-equiv=\"refresh\""), "{}", hop.body);
    location
}

fn redirected(hop: &Hop, what: &str) -> String {
    assert!(
        (300..400).contains(&hop.status),
        "{what}: expected a redirect, got {} {}",
        hop.status,
        hop.body
    );
    hop.location.clone().unwrap()
}

// ---------------------------------------------------------------- the provider under test

struct Provider {
    app: TestApp,
    port: u16,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

fn provider_overrides(backend: Backend, daarion: &FakeDaarion) -> Vec<(String, String)> {
    let port = provider_port(backend);
    let synapse = shared_synapse();
    vec![
        ("BIND".into(), format!("127.0.0.1:{port}")),
        ("PUBLIC_URL".into(), format!("http://127.0.0.1:{port}")),
        (
            "OIDC_CLIENT_SECRET".into(),
            required_env("MP_TEST_OIDC_SECRET"),
        ),
        ("OIDC_IDP_ID".into(), idp(backend).into()),
        (
            "OIDC_REDIRECT_URIS".into(),
            format!("{}/_synapse/client/oidc/callback,{CLIENT_CB}", synapse.url),
        ),
        ("AUTH_LOGIN_URL".into(), daarion.url.clone()),
        ("AUTH_JWT_SECRET".into(), AUTH_SECRET.into()),
        ("AUTH_JWT_ISSUER".into(), ISSUER.into()),
        ("AUTH_JWT_AUDIENCE".into(), AUDIENCE.into()),
    ]
}

async fn provider_with(
    backend: Backend,
    daarion: &FakeDaarion,
    db: TestDb,
    synapse: SynapseInfo,
    extra: &[(&str, &str)],
) -> Provider {
    let turn = TURNS[backend as usize].lock().await;
    let mut overrides = provider_overrides(backend, daarion);
    for (k, v) in extra {
        overrides.retain(|(name, _)| name != k);
        overrides.push((k.to_string(), v.to_string()));
    }
    let overrides: Vec<(&str, &str)> = overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let app = TestApp::spawn_with(db, synapse, &overrides).await;
    Provider {
        app,
        port: provider_port(backend),
        _turn: turn,
    }
}

async fn provider(backend: Backend, daarion: &FakeDaarion) -> Provider {
    provider_with(
        backend,
        daarion,
        TestDb::new(backend).await,
        shared_synapse(),
        &[],
    )
    .await
}

impl Provider {
    /// `user.registered` through the webhook, then provisioned.
    async fn signed_up(&self, user_id: &str, data: Value) {
        let (status, body) = self
            .app
            .client
            .send_event(&event("user.registered", user_id, data))
            .await;
        assert_eq!(status, 202, "{body}");
        self.app
            .client
            .wait_for_state(user_id, "provisioned", DEADLINE)
            .await;
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn stop(self) {
        self.app.shutdown().await;
    }
}

// ---------------------------------------------------------------- Element's path

/// What Element does, step by step: asks Synapse for its logins, follows
/// the DAARION button through Synapse, the provider and DAARION's page back
/// to Element with a login token, and logs in with it.
async fn element_sign_in(browser: &Browser, provider: &Provider, backend: Backend) -> Value {
    let login = start_sign_in(browser, provider, backend).await;
    let page = browser.get(&login).await;
    assert_eq!(page.status, 200, "DAARION's page: {}", page.body);
    let (action, fields) = parse_form(&page.body);
    let continue_at = redirected(&browser.post_form(&action, &fields).await, "return");
    finish_sign_in(browser, &continue_at).await
}

/// Element's first steps: Synapse's login flows, its DAARION button, the
/// provider's authorize; returns where the person signs in (DAARION's page
/// or the service's own).
async fn start_sign_in(browser: &Browser, provider: &Provider, backend: Backend) -> String {
    // Synapse as browsers reach it (the service may go through a proxy).
    let synapse = &shared_synapse().url;
    let flows: Value = reqwest::get(format!("{synapse}/_matrix/client/v3/login"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let idp_id = format!("oidc-{}", idp(backend));
    let sso = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "m.login.sso")
        .expect("Synapse offers single sign-on");
    let button = sso["identity_providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == idp_id.as_str())
        .expect("Synapse lists the DAARION provider");
    assert_eq!(button["name"], "DAARION");

    let start = format!(
        "{synapse}/_matrix/client/v3/login/sso/redirect/{idp_id}?redirectUrl={}",
        urlencode(ELEMENT)
    );
    let authorize = redirected(&browser.get(&start).await, "Synapse's SSO redirect");
    assert!(
        authorize.starts_with(&format!("{}/oidc/authorize?", provider.base())),
        "{authorize}"
    );
    redirected(&browser.get(&authorize).await, "authorize")
}

/// Element's last steps, from the provider's confirmation page: continue,
/// Synapse's callback, back to Element with a login token, and the login.
async fn finish_sign_in(browser: &Browser, continue_at: &str) -> Value {
    let synapse = &shared_synapse().url;
    let confirmation = browser.get(continue_at).await;
    assert_eq!(
        confirmation.status, 200,
        "the confirmation: {}",
        confirmation.body
    );
    let callback = onward(&confirm(browser, &confirmation, "continue").await);
    assert!(
        callback.starts_with(&format!("{synapse}/_synapse/client/oidc/callback?")),
        "{callback}"
    );
    let back = redirected(&browser.get(&callback).await, "Synapse's callback");
    assert!(back.starts_with(ELEMENT), "{back}");
    let login_token = query_of(&back)["loginToken"].clone();
    let response = reqwest::Client::new()
        .post(format!("{synapse}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.token", "token": login_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The person's answer on the confirmation page (`continue` or `cancel`):
/// its form posted as the browser would.
async fn confirm(browser: &Browser, page: &Hop, answer: &str) -> Hop {
    let (action, mut fields) = parse_form(&page.body);
    fields.push(("answer".into(), answer.into()));
    browser.post_form(&action, &fields).await
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------------------------------------------------------------- the tests

/// The webhook's account, an account made by the sign-in itself, and an
/// account linked before the provider existed: Element always lands in the
/// person's one account, and Synapse never makes one of its own.
async fn element_signs_people_in_to_their_one_account(backend: Backend) {
    let daarion = FakeDaarion::start();
    let provider = provider(backend, &daarion).await;
    let admin = SynapseAdmin::shared().await;
    let oidc_provider = format!("oidc-{}", idp(backend));

    // Signed up through the webhook first.
    let user_id = unique("u_");
    let username = unique("elem");
    provider
        .signed_up(
            &user_id,
            json!({"username": username, "display_name": "Олена Вебхук"}),
        )
        .await;
    daarion.sign_in_as(&user_id, "someone-else", "Other Name", Some("s1"));
    let login = element_sign_in(&Browser::new(), &provider, backend).await;
    let expected = admin.user_id(&username);
    assert_eq!(login["user_id"], expected);
    assert_eq!(
        admin.whoami(login["access_token"].as_str().unwrap()).await,
        200
    );
    let user = admin.user(&expected).await.unwrap();
    let ids = user["external_ids"].as_array().unwrap();
    assert!(ids.contains(&json!({"auth_provider": "daarion", "external_id": user_id})));
    assert!(ids.contains(&json!({"auth_provider": oidc_provider, "external_id": user_id})));

    // Nobody knows this person yet: the sign-in makes the account, once.
    let newcomer = unique("u_");
    let new_name = unique("fresh");
    daarion.sign_in_as(&newcomer, &new_name, "Новий", None);
    let login = element_sign_in(&Browser::new(), &provider, backend).await;
    assert_eq!(login["user_id"], admin.user_id(&new_name));
    assert_eq!(admin.count_users(&new_name).await, 1);
    assert_eq!(
        admin.lookup(&newcomer).await,
        Some(admin.user_id(&new_name))
    );
    let again = element_sign_in(&Browser::new(), &provider, backend).await;
    assert_eq!(again["user_id"], admin.user_id(&new_name));
    assert_eq!(admin.count_users(&new_name).await, 1);

    // Linked before the provider existed: only the `daarion` id.
    let old = unique("u_");
    let old_name = unique("old");
    provider
        .signed_up(&old, json!({"username": old_name, "display_name": "Old"}))
        .await;
    let (status, _) = admin
        .put(
            &format!("/_synapse/admin/v2/users/{}", admin.user_id(&old_name)),
            &json!({"external_ids": [{"auth_provider": "daarion", "external_id": old}]}),
        )
        .await;
    assert_eq!(status, 200);
    daarion.sign_in_as(&old, &old_name, "Old", None);
    // The service's Synapse writes of a sign-in after our record of the
    // link is forgotten.
    let puts_of_a_sign_in = || async {
        provider
            .app
            .db
            .execute(&format!(
                "UPDATE people SET oidc_linked = 0 WHERE user_id = '{old}'"
            ))
            .await;
        let calls = provider.app.service_synapse.calls().snapshot();
        let login = element_sign_in(&Browser::new(), &provider, backend).await;
        assert_eq!(login["user_id"], admin.user_id(&old_name));
        let used = provider
            .app
            .service_synapse
            .calls()
            .snapshot()
            .since(&calls);
        used.get(Endpoint::UserPut)
    };
    assert_eq!(puts_of_a_sign_in().await, 1, "one write adds the oidc id");
    // Already there (say, written by hand): read, not written again.
    assert_eq!(puts_of_a_sign_in().await, 0);

    provider.stop().await;
    daarion.stop().await;
}
on_both_backends!(element_signs_people_in_to_their_one_account);

/// What Synapse would do, by hand: authorize for our own client redirect,
/// through DAARION's page, to the code.
async fn code_for(
    browser: &Browser,
    provider: &Provider,
    extra: &[(&str, &str)],
) -> Result<(String, HashMap<String, String>), Hop> {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", "synapse"),
        ("redirect_uri", CLIENT_CB),
        ("scope", "openid profile"),
        ("state", "client-state"),
        ("nonce", "n-0S6_WzA2Mj"),
    ];
    for (k, v) in extra {
        params.retain(|(name, _)| name != k);
        params.push((k, v));
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let hop = browser
        .get(&format!("{}/oidc/authorize?{query}", provider.base()))
        .await;
    let login = match hop.location.clone() {
        Some(l) if hop.status == 303 && !l.starts_with(CLIENT_CB) => l,
        _ => return Err(hop),
    };
    let page = browser.get(&login).await;
    let (action, fields) = parse_form(&page.body);
    let hop = browser.post_form(&action, &fields).await;
    let Some(continue_at) = hop.location.clone().filter(|_| hop.status == 303) else {
        return Err(hop);
    };
    let confirmation = browser.get(&continue_at).await;
    if confirmation.status != 200 {
        return Err(confirmation);
    }
    let hop = confirm(browser, &confirmation, "continue").await;
    match hop.location.clone() {
        Some(l) if hop.status == 200 && l.starts_with(CLIENT_CB) => {
            let q = query_of(&l);
            Ok((q["code"].clone(), q))
        }
        _ => Err(hop),
    }
}

async fn token_request(
    base: &str,
    fields: &[(&str, String)],
    basic: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/oidc/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(fields)
                .finish(),
        );
    if let Some((id, secret)) = basic {
        request = request.header(
            "Authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A sign-in begun in `browser`, up to DAARION's answer (its form).
async fn daarion_answer(browser: &Browser, base: &str) -> (String, Vec<(String, String)>) {
    let hop = browser
        .get(&format!(
            "{base}/oidc/authorize?response_type=code&client_id=synapse&redirect_uri={}\
             &scope=openid&state=x",
            urlencode(CLIENT_CB)
        ))
        .await;
    let page = browser.get(hop.location.as_deref().unwrap()).await;
    parse_form(&page.body)
}

fn pkce() -> (String, String) {
    let verifier = format!("{}{}", unique("v"), "x".repeat(40));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Every refusal of section 7 and issue 11, each leaving nothing issued,
/// and the good path's ID token checked against the published keys.
async fn the_provider_refuses_what_it_must(backend: Backend) {
    let daarion = FakeDaarion::start();
    // DAARION's page and its login API both (Element X signs in with a
    // password through Synapse's module).
    let login = crate::fakes::FakeLoginApi::start(AUTH_SECRET);
    let provider = provider_with(
        backend,
        &daarion,
        TestDb::new(backend).await,
        shared_synapse(),
        &[("AUTH_PASSWORD_LOGIN_URL", &login.url)],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let base = provider.base();
    let secret = required_env("MP_TEST_OIDC_SECRET");
    let user_id = unique("u_");
    let username = unique("refuse");
    daarion.sign_in_as(&user_id, &username, "Refusals", Some("daarion-sid-1"));

    // Nobody to send back to: a page, no redirect.
    for (param, value) in [
        ("client_id", "stranger"),
        ("redirect_uri", "http://evil.test/cb"),
    ] {
        let hop = code_for(&Browser::new(), &provider, &[(param, value)])
            .await
            .unwrap_err();
        assert_eq!(hop.status, 400, "{param}");
        assert!(hop.location.is_none(), "{param}");
        assert!(hop.body.contains("<html"), "{param}: a page");
    }
    // Refusals the client hears about.
    for (extra, error) in [
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("scope", "profile")], "invalid_scope"),
        (
            vec![
                ("code_challenge", "abc"),
                ("code_challenge_method", "plain"),
            ],
            "invalid_request",
        ),
        (vec![("code_challenge_method", "S256")], "invalid_request"),
    ] {
        let hop = code_for(&Browser::new(), &provider, &extra)
            .await
            .unwrap_err();
        let back = hop.location.expect("sent back to the client");
        let q = query_of(&back);
        assert_eq!(q["error"], error, "{extra:?}");
        assert_eq!(q["state"], "client-state");
        assert!(!q.contains_key("code"));
    }

    // With DAARION's page, the service's own password page is no way round
    // it: the browser that began the sign-in gets no form there, and a
    // password posted there is not checked.
    let person = crate::fakes::FakeAccount::new("Обхід");
    login.add(&person);
    let browser = Browser::new();
    let (_, fields) = daarion_answer(&browser, &base).await;
    let state = fields.iter().find(|(k, _)| k == "state").unwrap().1.clone();
    let own_page = browser
        .get(&format!(
            "{base}/v1/sso/sign-in?state={}",
            urlencode(&state)
        ))
        .await;
    assert_eq!(own_page.status, 400, "{}", own_page.body);
    assert!(!own_page.body.contains("password"), "{}", own_page.body);
    // Posted as that page's form would be, with the form token of this
    // browser's cookie.
    let binding = browser
        .jar
        .lock()
        .unwrap()
        .iter()
        .find(|(name, _)| name.starts_with("mp_sso_"))
        .map(|(_, value)| value.clone())
        .expect("the sign-in's cookie");
    let hidden = [
        ("state".to_string(), state),
        (
            "form".to_string(),
            matrix_provisioner::oidc::Provider::form_token(&binding),
        ),
    ];
    let posted = browser
        .post_form(
            &format!("{base}/v1/sso/sign-in"),
            &filled(&hidden, &person.email, &person.password),
        )
        .await;
    assert_eq!(posted.status, 400, "{}", posted.body);
    assert_eq!(login.logins(), 0, "DAARION's login API was not asked");

    // The good path, with PKCE.
    let (verifier, challenge) = pkce();
    let pkce_params = [
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let (code, q) = code_for(&Browser::new(), &provider, &pkce_params)
        .await
        .unwrap();
    assert_eq!(q["state"], "client-state");
    let good = |code: &str, verifier: &str| {
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", CLIENT_CB.to_string()),
            ("code_verifier", verifier.to_string()),
        ]
    };
    // A wrong secret or an unknown client: refused, the code not spent.
    let form = good(&code, &verifier);
    let (status, body) = token_request(&base, &form, Some(("synapse", "wrong"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = token_request(&base, &form, Some(("stranger", &secret))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = token_request(&base, &form, Some(("synapse", &secret))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");

    // The ID token, checked as Synapse checks it, with the published keys.
    let id_token = body["id_token"].as_str().unwrap();
    let header = decode_header(id_token).unwrap();
    let jwks: Value = reqwest::get(format!("{base}/oidc/jwks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
        .expect("the ID token's kid is published");
    let key = DecodingKey::from_jwk(&serde_json::from_value::<Jwk>(jwk.clone()).unwrap()).unwrap();
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["synapse"]);
    validation.set_issuer(&[base.as_str()]);
    let claims = decode::<Value>(id_token, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], user_id);
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["preferred_username"], username);
    assert_eq!(claims["name"], "Refusals");
    assert!(claims["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(claims["auth_time"].as_i64().is_some());
    assert_eq!(admin.lookup(&user_id).await, Some(admin.user_id(&username)));

    // userinfo with the access token, and without.
    let info: Value = reqwest::Client::new()
        .get(format!("{base}/oidc/userinfo"))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], user_id);
    assert_eq!(info["preferred_username"], username);
    let refused = reqwest::Client::new()
        .get(format!("{base}/oidc/userinfo"))
        .bearer_auth("nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // The same code again, here and on another replica of the same database.
    let (status, body) = token_request(&base, &form, Some(("synapse", &secret))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let replica = TestApp::spawn_with(
        provider.app.db.shared(),
        shared_synapse(),
        &provider_overrides(backend, &daarion)
            .iter()
            .filter(|(k, _)| k != "BIND")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    let (code, _) = code_for(&Browser::new(), &provider, &pkce_params)
        .await
        .unwrap();
    let form = good(&code, &verifier);
    let (first, second) = tokio::join!(
        token_request(&base, &form, Some(("synapse", &secret))),
        token_request(&replica.client.base, &form, Some(("synapse", &secret))),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "one replica redeems the code, once");
    replica.shutdown().await;

    // PKCE: a wrong verifier, none, or one without a challenge.
    for (with_challenge, verifier_sent) in [
        (true, Some("y".repeat(50))),
        (true, None),
        (false, Some(verifier.clone())),
    ] {
        let extra: &[(&str, &str)] = if with_challenge { &pkce_params } else { &[] };
        let (code, _) = code_for(&Browser::new(), &provider, extra).await.unwrap();
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code),
            ("redirect_uri", CLIENT_CB.to_string()),
            ("client_id", "synapse".to_string()),
            ("client_secret", secret.clone()),
        ];
        if let Some(v) = &verifier_sent {
            form.push(("code_verifier", v.clone()));
        }
        let (status, body) = token_request(&base, &form, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "challenge {with_challenge}, verifier {verifier_sent:?}"
        );
    }
    // client_secret_post without PKCE works; an expired code does not.
    let (code, _) = code_for(&Browser::new(), &provider, &[]).await.unwrap();
    let post = |code: String| {
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code),
            ("redirect_uri", CLIENT_CB.to_string()),
            ("client_id", "synapse".to_string()),
            ("client_secret", secret.clone()),
        ]
    };
    let form = post(code);
    let (status, body) = token_request(&base, &form, None).await;
    assert_eq!(status, 200, "{body}");
    let (code, _) = code_for(&Browser::new(), &provider, &[]).await.unwrap();
    provider
        .app
        .db
        .execute("UPDATE oidc_codes SET expires_at = 1")
        .await;
    let form = post(code);
    let (status, body) = token_request(&base, &form, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Expired records are forgotten by the worker's hourly clean-up; the
    // rest stays.
    let (_, _) = daarion_answer(&Browser::new(), &base).await;
    let (_, _) = daarion_answer(&Browser::new(), &base).await;
    provider
        .app
        .db
        .execute(
            "UPDATE oidc_pending SET expires_at = 1 WHERE state_hash = \
             (SELECT MIN(state_hash) FROM oidc_pending)",
        )
        .await;
    let pending = provider.app.db.count("oidc_pending").await;
    let store = matrix_provisioner::store::Store::connect(
        &matrix_provisioner::secret::Secret::new(provider.app.db.url.clone()),
        1,
    )
    .await
    .unwrap();
    let forgotten = store
        .forget_expired_sign_ins(matrix_provisioner::now_ms())
        .await
        .unwrap();
    store.close().await;
    assert!(forgotten >= 1, "{forgotten}");
    assert_eq!(provider.app.db.count("oidc_pending").await, pending - 1);

    // A state is used once: DAARION's answer posted again is refused.
    let browser = Browser::new();
    let (action, fields) = daarion_answer(&browser, &base).await;
    let first = browser.post_form(&action, &fields).await;
    assert_eq!(first.status, 303);
    let replay = browser.post_form(&action, &fields).await;
    assert_eq!(replay.status, 400, "a replayed state: {}", replay.body);

    // Login CSRF: the state of a sign-in begun in one browser, finished in
    // another, gets nowhere.
    let (action, fields) = daarion_answer(&Browser::new(), &base).await;
    let victim = Browser::new();
    let hop = victim.post_form(&action, &fields).await;
    let hop = victim.get(hop.location.as_deref().unwrap()).await;
    assert_eq!(hop.status, 400, "no code for another browser's sign-in");
    assert!(hop.location.is_none());

    // DAARION refuses, hands back a token that is not DAARION's, or one of
    // its refresh tokens (signed with the same key).
    let mut refresh = daarion_claims(&user_id);
    refresh["type"] = json!("refresh");
    for answer in [
        Answer::Deny,
        Answer::BadToken(daarion_claims(&user_id)),
        Answer::Person(refresh),
    ] {
        daarion.answer(answer);
        let hop = code_for(&Browser::speaking("uk-UA,uk;q=0.9"), &provider, &[])
            .await
            .unwrap_err();
        assert_eq!(hop.status, 403, "{}", hop.body);
        assert!(hop.body.contains("lang=\"uk\""), "{}", hop.body);
    }

    // A deactivated person gets a page saying so, and no code.
    let (status, _) = provider
        .app
        .client
        .send_event(&event("user.deleted", &user_id, json!({})))
        .await;
    assert_eq!(status, 202);
    provider
        .app
        .client
        .wait_for_state(&user_id, "deactivated", DEADLINE)
        .await;
    daarion.sign_in_as(&user_id, &username, "Refusals", None);
    let hop = code_for(&Browser::speaking("uk"), &provider, &[])
        .await
        .unwrap_err();
    assert_eq!(hop.status, 403);
    assert!(hop.body.contains("деактивовано"), "{}", hop.body);

    provider.stop().await;
    daarion.stop().await;
}
on_both_backends!(the_provider_refuses_what_it_must);

/// Issue 24: a sign-in link sent to someone else. The attacker starts
/// Synapse's single sign-on in their own browser and stops at DAARION's
/// URL (they hold our `state` and the binding cookie); the victim, signed
/// in to DAARION, opens that URL, and DAARION answers with the victim's
/// token. Neither the attacker's browser (with the cookie, with or without
/// the victim's proof), nor the victim's (with the proof, without the
/// cookie), nor a third one with the victim's whole link gets a code, and
/// the victim's account gets no Matrix session.
async fn a_sign_in_link_sent_to_someone_else_signs_nobody_in(backend: Backend) {
    let daarion = FakeDaarion::start();
    let provider = provider(backend, &daarion).await;
    let admin = SynapseAdmin::shared().await;
    let synapse = &shared_synapse().url;
    let base = provider.base();
    let victim_id = unique("u_");
    let victim_name = unique("victim");
    provider
        .signed_up(
            &victim_id,
            json!({"username": victim_name, "display_name": "Victim"}),
        )
        .await;
    let victim_mxid = admin.user_id(&victim_name);
    let devices = || async {
        let (status, body) = admin
            .get(&format!("/_synapse/admin/v2/users/{victim_mxid}/devices"))
            .await;
        assert_eq!(status, 200, "{body}");
        body["total"].as_u64().unwrap()
    };
    let devices_before = devices().await;

    // 1. The attacker's browser, from Synapse's button to DAARION's URL.
    let attacker = Browser::new();
    let start = format!(
        "{synapse}/_matrix/client/v3/login/sso/redirect/oidc-{}?redirectUrl={}",
        idp(backend),
        urlencode(ELEMENT)
    );
    let authorize = redirected(&attacker.get(&start).await, "Synapse's SSO redirect");
    let daarion_url = redirected(&attacker.get(&authorize).await, "authorize");
    let state = query_of(&daarion_url)["state"].clone();
    let attacker_cookies = attacker.jar.lock().unwrap().clone();
    assert_eq!(
        attacker_cookies
            .keys()
            .filter(|k| k.starts_with("mp_sso_"))
            .count(),
        1,
        "the binding cookie, beside Synapse's own: {attacker_cookies:?}"
    );

    // 2. The victim's browser opens the link; DAARION uses its session.
    daarion.sign_in_as(&victim_id, &victim_name, "Victim", Some("victim-sid"));
    let victim = Browser::new();
    let page = victim.get(&daarion_url).await;
    let (action, fields) = parse_form(&page.body);
    let continue_at = redirected(&victim.post_form(&action, &fields).await, "return");
    let proof = query_of(&continue_at)["proof"].clone();

    // 3. The victim's browser has the proof but not the cookie: the
    //    sign-in is stopped, with a page that says why.
    let stopped = victim.get(&continue_at).await;
    assert_eq!(stopped.status, 400, "{}", stopped.body);
    assert!(stopped.location.is_none());
    assert!(stopped.body.contains("another browser"), "{}", stopped.body);

    // 4. The attacker's browser, its cookie put back before each try: no
    //    proof, a made-up one, the victim's own; by GET and by POST.
    for proof in [None, Some("made-up".to_string()), Some(proof.clone())] {
        let mut url = format!("{base}/v1/sso/continue?state={}", urlencode(&state));
        if let Some(p) = &proof {
            url.push_str(&format!("&proof={}", urlencode(p)));
        }
        *attacker.jar.lock().unwrap() = attacker_cookies.clone();
        let hop = attacker.get(&url).await;
        assert_eq!(hop.status, 400, "GET with proof {proof:?}: {}", hop.body);
        assert!(hop.location.is_none(), "{hop:?}");
        let mut fields = vec![
            ("state".to_string(), state.clone()),
            ("answer".to_string(), "continue".to_string()),
        ];
        if let Some(p) = proof.clone() {
            fields.push(("proof".to_string(), p));
        }
        *attacker.jar.lock().unwrap() = attacker_cookies.clone();
        let hop = attacker
            .post_form(&format!("{base}/v1/sso/continue"), &fields)
            .await;
        assert_eq!(hop.status, 400, "POST with proof {proof:?}: {}", hop.body);
        assert!(hop.location.is_none(), "{hop:?}");
    }

    // 5. A third browser with the victim's whole link: nothing either.
    let third = Browser::new();
    let hop = third.get(&continue_at).await;
    assert_eq!(hop.status, 400);
    assert!(hop.location.is_none());

    // The sign-in is gone, no code was ever issued, no session was opened.
    assert_eq!(provider.app.db.count("oidc_pending").await, 0);
    assert_eq!(provider.app.db.count("oidc_codes").await, 0);
    assert_eq!(provider.app.db.count("oidc_sessions").await, 0);
    assert_eq!(devices().await, devices_before);

    // The same victim signing in on their own, in one browser, still works.
    let login = element_sign_in(&Browser::new(), &provider, backend).await;
    assert_eq!(login["user_id"], victim_mxid);
    assert_eq!(devices().await, devices_before + 1);

    provider.stop().await;
    daarion.stop().await;
}
on_both_backends!(a_sign_in_link_sent_to_someone_else_signs_nobody_in);

/// Before any code is issued the person sees, on the service's origin,
/// whom DAARION signed in; "Not me" ends the sign-in with no code.
async fn the_person_confirms_whom_they_sign_in_as(backend: Backend) {
    let daarion = FakeDaarion::start();
    // Where people start (Element): the pages that end a sign-in link to it.
    let provider = provider_with(
        backend,
        &daarion,
        TestDb::new(backend).await,
        shared_synapse(),
        &[("SIGN_IN_START_URL", ELEMENT)],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let base = provider.base();
    let user_id = unique("u_");
    let username = unique("confirm");
    provider
        .signed_up(
            &user_id,
            json!({"username": username, "display_name": "Олена <Петренко>"}),
        )
        .await;
    daarion.sign_in_as(&user_id, &username, "Олена <Петренко>", None);

    let browser = Browser::speaking("uk");
    let (action, fields) = daarion_answer(&browser, &base).await;
    let continue_at = redirected(&browser.post_form(&action, &fields).await, "return");
    assert!(continue_at.starts_with(&format!("{base}/v1/sso/continue?")));
    let page = browser.get(&continue_at).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&admin.user_id(&username)),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Олена &lt;Петренко&gt;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Це не я"), "{}", page.body);
    // Looking again is fine; the sign-in is still there.
    assert_eq!(browser.get(&continue_at).await.status, 200);

    // No answer, or an unknown one: refused, and the sign-in stays.
    let (form_action, form_fields) = parse_form(&page.body);
    let hop = browser.post_form(&form_action, &form_fields).await;
    assert_eq!(hop.status, 400);
    // "Not me": a page, no code, and the sign-in is over.
    let cancelled = confirm(&browser, &page, "cancel").await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert!(cancelled.location.is_none());
    assert!(cancelled.body.contains("скасовано"), "{}", cancelled.body);
    assert!(
        cancelled.body.contains(&format!("href=\"{ELEMENT}\"")),
        "a way back to the start: {}",
        cancelled.body
    );
    let again = confirm(&browser, &page, "continue").await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.location.is_none());
    assert_eq!(provider.app.db.count("oidc_codes").await, 0);
    assert_eq!(provider.app.db.count("oidc_pending").await, 0);

    provider.stop().await;
    daarion.stop().await;
}
on_both_backends!(the_person_confirms_whom_they_sign_in_as);

/// Issue 24: nobody can fill the database through the unauthenticated
/// authorization request. `state` and `nonce` over 512 bytes are refused
/// before anything is stored; sign-ins under way are bounded per client
/// address (behind a trusted proxy: the forwarded one) and in all, and
/// beyond the bounds nothing is stored either.
async fn authorize_stores_little_and_not_without_bound(backend: Backend) {
    let daarion = FakeDaarion::start();
    let provider = provider_with(
        backend,
        &daarion,
        TestDb::new(backend).await,
        shared_synapse(),
        &[("TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    let base = provider.base();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let authorize = |state: String, nonce: String, from: &'static str| {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("response_type", "code"),
                ("client_id", "synapse"),
                ("redirect_uri", CLIENT_CB),
                ("scope", "openid"),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
            ])
            .finish();
        let request = http
            .get(format!("{base}/oidc/authorize?{query}"))
            .header("X-Forwarded-For", from);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry_after)
        }
    };
    let short = || "s".repeat(40);

    // 512 bytes is the most; one more, in state or nonce, is a 400.
    let (status, _) = authorize("x".repeat(512), "n".repeat(512), "198.51.100.1").await;
    assert_eq!(status, 303);
    for (state, nonce) in [("x".repeat(513), short()), (short(), "n".repeat(513))] {
        let (status, _) = authorize(state, nonce, "198.51.100.1").await;
        assert_eq!(status, 400);
    }
    // Kilobytes of state: still a 400, nothing stored.
    let (status, _) = authorize("y".repeat(8 * 1024), short(), "198.51.100.1").await;
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(provider.app.db.count("oidc_pending").await, 1);

    // One address: 100 sign-ins under way, then "too many", nothing stored.
    for _ in 0..99 {
        assert_eq!(authorize(short(), short(), "198.51.100.1").await.0, 303);
    }
    let (status, retry_after) = authorize(short(), short(), "198.51.100.1").await;
    assert_eq!(status, 429);
    assert!(retry_after.is_some());
    assert_eq!(provider.app.db.count("oidc_pending").await, 100);
    // Another address is not held back by it.
    assert_eq!(authorize(short(), short(), "198.51.100.2").await.0, 303);
    // Expired ones do not count.
    provider
        .app
        .db
        .execute("UPDATE oidc_pending SET expires_at = 1 WHERE client_addr = '198.51.100.1'")
        .await;
    assert_eq!(authorize(short(), short(), "198.51.100.1").await.0, 303);

    // In all: 20,000 under way (from many addresses) is the most.
    provider
        .app
        .db
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 19998) \
             INSERT INTO oidc_pending (state_hash, binding_hash, client_id, redirect_uri, \
             client_addr, expires_at) \
             SELECT 'filler-' || i, 'b', 'synapse', 'x', 'filler-' || (i % 1000), 9000000000000 \
             FROM n",
        )
        .await;
    let (status, _) = authorize(short(), short(), "198.51.100.3").await;
    assert_eq!(status, 429);
    let stored = provider.app.db.count("oidc_pending").await;
    assert_eq!(authorize(short(), short(), "198.51.100.4").await.0, 429);
    assert_eq!(provider.app.db.count("oidc_pending").await, stored);
    provider
        .app
        .db
        .execute("DELETE FROM oidc_pending WHERE state_hash LIKE 'filler-%'")
        .await;
    assert_eq!(authorize(short(), short(), "198.51.100.3").await.0, 303);

    provider.stop().await;
    daarion.stop().await;
}
on_both_backends!(authorize_stores_little_and_not_without_bound);

/// DAARION's sign-out of one session ends the Matrix sessions opened from
/// it, and only those, through back-channel logout; with Synapse down at
/// the time, once it is back. `user.deleted` ends them all.
async fn signing_out_of_daarion_signs_out_of_matrix(backend: Backend) {
    let daarion = FakeDaarion::start();
    let synapse = shared_synapse();
    let proxy = SynapseProxy::start(&synapse.url);
    let proxied = SynapseInfo {
        url: proxy.url.clone(),
        ..synapse.clone()
    };
    // The service reaches Synapse through the proxy; browsers do not.
    let provider = provider_with(
        backend,
        &daarion,
        TestDb::new(backend).await,
        proxied,
        &[("SYNAPSE_PUBLIC_URL", synapse.url.as_str())],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let user_id = unique("u_");
    let username = unique("bye");
    let mut tokens = Vec::new();
    for sid in ["phone", "laptop", "laptop"] {
        daarion.sign_in_as(&user_id, &username, "Bye", Some(sid));
        let login = element_sign_in(&Browser::new(), &provider, backend).await;
        tokens.push(login["access_token"].as_str().unwrap().to_string());
    }
    for token in &tokens {
        assert_eq!(admin.whoami(token).await, 200);
    }

    // Synapse is "down" for the first three logouts.
    let logout_path = "/_synapse/client/oidc/backchannel_logout";
    proxy.fail(logout_path, 3);
    let (status, _) = provider
        .app
        .client
        .send_event(&event(
            "user.signed_out",
            &user_id,
            json!({"session_id": "laptop"}),
        ))
        .await;
    assert_eq!(status, 202);
    eventually("the laptop's sessions to end", DEADLINE, || async {
        let (a, b) = (
            admin.whoami(&tokens[1]).await,
            admin.whoami(&tokens[2]).await,
        );
        (a == 401 && b == 401).then_some(())
    })
    .await;
    assert_eq!(admin.whoami(&tokens[0]).await, 200, "the phone stays");
    let attempts = proxy
        .seen()
        .iter()
        .filter(|(p, _)| p == logout_path)
        .count();
    assert!(attempts >= 5, "3 refused, then the 2 sessions: {attempts}");
    assert_eq!(provider.app.db.count("oidc_logouts").await, 0);

    // Deletion ends the rest.
    provider
        .app
        .client
        .send_event(&event("user.deleted", &user_id, json!({})))
        .await;
    eventually("the phone's session to end", DEADLINE, || async {
        (admin.whoami(&tokens[0]).await == 401).then_some(())
    })
    .await;
    provider.stop().await;
    proxy.stop().await;
    daarion.stop().await;
}
on_both_backends!(signing_out_of_daarion_signs_out_of_matrix);

/// Every replica and restart signs with the same generated key; a
/// configured key takes over, and the one it replaced stays published.
async fn signing_keys_are_shared_and_rotated(backend: Backend) {
    let daarion = FakeDaarion::start();
    let provider = provider(backend, &daarion).await;
    let base = provider.base();
    let discovery: Value = reqwest::get(format!("{base}/.well-known/openid-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], base);
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(
        discovery["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    let kids = |jwks: &Value| -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let jwks = |url: String| async move {
        reqwest::get(url)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let generated = kids(&jwks(format!("{base}/oidc/jwks")).await);
    assert_eq!(generated.len(), 1);

    let overrides = provider_overrides(backend, &daarion);
    let replica_env: Vec<(&str, &str)> = overrides
        .iter()
        .filter(|(k, _)| k != "BIND")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let replica =
        TestApp::spawn_with(provider.app.db.shared(), shared_synapse(), &replica_env).await;
    assert_eq!(
        kids(&jwks(format!("{}/oidc/jwks", replica.client.base)).await),
        generated,
        "a replica signs with the same key"
    );
    replica.shutdown().await;

    let pem = std::fs::read_to_string(repo().join("tests/fixtures/jwt/rsa-a.pem")).unwrap();
    let mut rotated_env = replica_env.clone();
    rotated_env.push(("OIDC_SIGNING_KEY", pem.as_str()));
    let rotated =
        TestApp::spawn_with(provider.app.db.shared(), shared_synapse(), &rotated_env).await;
    let published = jwks(format!("{}/oidc/jwks", rotated.client.base)).await;
    let now = kids(&published);
    assert_eq!(now.len(), 2, "{published}");
    assert!(
        now.contains(&generated[0]),
        "the replaced key stays published"
    );
    let discovery: Value = reqwest::get(format!(
        "{}/.well-known/openid-configuration",
        rotated.client.base
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"][0], "RS256",
        "the key in use comes first"
    );
    rotated.shutdown().await;
    provider.stop().await;
    daarion.stop().await;
}
on_both_backends!(signing_keys_are_shared_and_rotated);

/// The hidden fields and action of the service's own sign-in form.
pub(crate) fn own_form(html: &str) -> (String, Vec<(String, String)>) {
    let (action, fields) = parse_form(
        &html
            .split("<input ")
            .filter(|part| !part.contains("type=\"password\"") && !part.contains("id=\"email\""))
            .collect::<Vec<_>>()
            .join("<input "),
    );
    (action, fields)
}

/// The own form's `hidden` fields with an address and a password typed.
pub(crate) fn filled(
    hidden: &[(String, String)],
    email: &str,
    password: &str,
) -> Vec<(String, String)> {
    let mut fields = hidden.to_vec();
    fields.push(("email".into(), email.into()));
    fields.push(("password".into(), password.into()));
    fields
}

/// The own sign-in page loads nothing from elsewhere and may post only to
/// its own origin (`action`, the one outside address it names).
fn assert_self_contained(page: &Hop, action: &str) {
    assert_eq!(
        page.csp.as_deref(),
        Some(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; \
             form-action 'self'"
        ),
        "{}",
        page.body
    );
    let outside = page.body.replace(&format!("action=\"{action}\""), "");
    for loads in ["http", "src=", "<script", "<link", "url("] {
        assert!(!outside.contains(loads), "{loads}: {}", page.body);
    }
}

/// No DAARION page (`AUTH_LOGIN_URL` unset), DAARION Auth's login API
/// instead: Synapse's "Continue with DAARION" leads to the service's own
/// page, in the browser's language, bound to the browser that started; a
/// wrong password and DAARION being down show the form again with a note;
/// the right one goes on to the confirmation and into Matrix, and the
/// Matrix session carries the DAARION session of that login, so DAARION's
/// sign-out ends it. In English, a person DAARION knows as inactive and
/// one the service has deleted get the page saying they are deactivated,
/// and the sixth wrong password for one account a note to wait (`429`,
/// `Retry-After`, DAARION not asked); nobody is made an account.
async fn the_service_s_own_page_signs_in_with_a_daarion_password(backend: Backend) {
    use crate::fakes::{FakeAccount, FakeLoginApi};
    let daarion = FakeDaarion::start();
    let login = FakeLoginApi::start(AUTH_SECRET);
    let provider = provider_with(
        backend,
        &daarion,
        TestDb::new(backend).await,
        shared_synapse(),
        &[
            ("AUTH_LOGIN_URL", ""),
            ("AUTH_PASSWORD_LOGIN_URL", &login.url),
            ("AUTH_JWT_ISSUER", "daarion-auth"),
            ("AUTH_JWT_AUDIENCE", ""),
        ],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let person = FakeAccount::new(&format!("Марія {}", unique("")));
    login.add(&person);

    let browser = Browser::speaking("uk");
    let page_url = start_sign_in(&browser, &provider, backend).await;
    assert!(
        page_url.starts_with(&format!("{}/v1/sso/sign-in?state=", provider.base())),
        "{page_url}"
    );
    // Another browser (a link sent to someone) gets no form.
    let stranger = Browser::new();
    let elsewhere = stranger.get(&page_url).await;
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.body);
    assert!(!elsewhere.body.contains("password"));

    let page = browser.get(&page_url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Увійти через DAARION"), "{}", page.body);
    assert!(page.body.contains("<html lang=\"uk\">"), "{}", page.body);
    let (action, hidden) = own_form(&page.body);
    assert_eq!(action, format!("{}/v1/sso/sign-in", provider.base()));
    assert_self_contained(&page, &action);
    let with = |email: &str, password: &str| filled(&hidden, email, password);

    // The form token and state posted from the stranger's browser: refused.
    let stolen = stranger
        .post_form(&action, &with(&person.email, &person.password))
        .await;
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    assert_eq!(login.logins(), 0, "DAARION was not asked");

    let wrong = browser
        .post_form(&action, &with(&person.email, "not-it"))
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(
        wrong
            .body
            .contains("Неправильна електронна пошта або пароль"),
        "{}",
        wrong.body
    );
    assert!(wrong.body.contains(&person.email), "the address is kept");
    assert!(!wrong.body.contains("not-it"), "the password is not");
    login.set_down(true);
    let down = browser
        .post_form(&action, &with(&person.email, &person.password))
        .await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down
        .body
        .contains("DAARION зараз не може перевірити пароль"));
    login.set_down(false);
    assert_eq!(
        admin.lookup(&person.user_id).await,
        None,
        "nothing made yet"
    );

    let right = browser
        .post_form(&action, &with(&person.email, &person.password))
        .await;
    let continue_at = redirected(&right, "the own sign-in page");
    let matrix = finish_sign_in(&browser, &continue_at).await;
    let token = matrix["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        admin.lookup(&person.user_id).await.as_deref(),
        matrix["user_id"].as_str()
    );
    assert_eq!(admin.whoami(&token).await, 200);

    // DAARION signs the person out of the session that login opened.
    let session = login.sessions.lock().unwrap().last().unwrap().clone();
    let (status, _) = provider
        .app
        .client
        .send_event(&event(
            "user.signed_out",
            &person.user_id,
            json!({"session_id": session}),
        ))
        .await;
    assert_eq!(status, 202);
    eventually("the Matrix session to end", DEADLINE, || async {
        (admin.whoami(&token).await == 401).then_some(())
    })
    .await;

    // The page in English, for a browser that prefers it.
    let english = Browser::speaking("en-US,en;q=0.9,uk;q=0.5");
    let page_url = start_sign_in(&english, &provider, backend).await;
    let page = english.get(&page_url).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<html lang=\"en\">"), "{}", page.body);
    assert!(page.body.contains("Sign in with DAARION"), "{}", page.body);
    let (action, hidden) = own_form(&page.body);
    assert_self_contained(&page, &action);
    let with = |email: &str, password: &str| filled(&hidden, email, password);
    let deactivated = |hop: &Hop| {
        assert_eq!(hop.status, 403, "{}", hop.body);
        assert!(hop.body.contains("Account deactivated"), "{}", hop.body);
        assert!(hop.location.is_none(), "no step further");
    };

    // DAARION's login API says the person is inactive (its 403).
    let mut inactive = FakeAccount::new(&format!("Inactive {}", unique("")));
    inactive.active = false;
    login.add(&inactive);
    let asked = login.logins();
    deactivated(
        &english
            .post_form(&action, &with(&inactive.email, &inactive.password))
            .await,
    );
    assert_eq!(login.logins(), asked + 1);
    assert_eq!(admin.lookup(&inactive.user_id).await, None);

    // DAARION deletes Марія; its login API still lets her in. By address
    // DAARION is asked and the service refuses; by her Matrix localpart
    // (what the password module takes, typed into the form by a program)
    // the service refuses without asking.
    let (status, _) = provider
        .app
        .client
        .send_event(&event("user.deleted", &person.user_id, json!({})))
        .await;
    assert_eq!(status, 202);
    provider
        .app
        .client
        .wait_for_state(&person.user_id, "deactivated", DEADLINE)
        .await;
    let localpart = matrix["user_id"].as_str().unwrap()[1..]
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let asked = login.logins();
    deactivated(
        &english
            .post_form(&action, &with(&person.email, &person.password))
            .await,
    );
    assert_eq!(login.logins(), asked + 1);
    deactivated(
        &english
            .post_form(&action, &with(&localpart, &person.password))
            .await,
    );
    assert_eq!(login.logins(), asked + 1, "DAARION was not asked");

    // DAARION down, in English, with when to try again.
    let target = FakeAccount::new(&format!("Target {}", unique("")));
    login.add(&target);
    login.set_down(true);
    let down = english
        .post_form(&action, &with(&target.email, &target.password))
        .await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down
        .body
        .contains("DAARION cannot check passwords right now"));
    assert!(down.retry_after.is_some(), "Retry-After");
    login.set_down(false);

    // Five wrong passwords for one account; the sixth try, even the right
    // password, waits, and DAARION is not asked.
    for attempt in 1..=5 {
        let wrong = english
            .post_form(&action, &with(&target.email, &format!("guess-{attempt}")))
            .await;
        assert_eq!(wrong.status, 401, "attempt {attempt}: {}", wrong.body);
        assert!(
            wrong.body.contains("Wrong email or password."),
            "{}",
            wrong.body
        );
    }
    let asked = login.logins();
    let held = english
        .post_form(&action, &with(&target.email, &target.password))
        .await;
    assert_eq!(held.status, 429, "{}", held.body);
    let retry: u64 = held
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry > 0);
    let note = format!(
        "Too many failed attempts. Please try again in {} min.",
        retry.div_ceil(60)
    );
    assert!(held.body.contains(&note), "{note}: {}", held.body);
    assert!(held.body.contains(&target.email), "the address is kept");
    assert_eq!(
        own_form(&held.body),
        (action.clone(), hidden.clone()),
        "the form again, for this browser"
    );
    assert_self_contained(&held, &action);
    assert_eq!(login.logins(), asked, "DAARION was not asked");
    assert_eq!(admin.lookup(&target.user_id).await, None);

    provider.stop().await;
    daarion.stop().await;
}
on_both_backends!(the_service_s_own_page_signs_in_with_a_daarion_password);
