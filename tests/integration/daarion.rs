//! DAARION Auth as it runs (CONTRACT.md sections 10 and 11): people without
//! usernames, named after what they call themselves; the `daarion_<hex8>`
//! accounts DAARION made before the service, adopted and never doubled, on
//! every path; and password sign-in, straight against the service and
//! through the real Synapse with the module from `synapse-module/` and
//! matrix-nio signing in as Element X does. DAARION Auth's login API is a
//! fake that speaks section 10 exactly.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fakes::{uuid, FakeAccount, FakeLoginApi, FakeUser, FakeUserApi};
use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(60);
const AUTH_SECRET: &str = "daarion-auth-shared-key";
const MODULE_SECRET: &str = "password-module-secret-7c1e";
const ADOPT: &str = "daarion_{user_id_hex8}";

fn daarion_env<'a>(
    login: &'a FakeLoginApi,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("AUTH_JWT_SECRET", AUTH_SECRET),
        ("AUTH_JWT_ISSUER", "daarion-auth"),
        ("AUTH_PASSWORD_LOGIN_URL", login.url.as_str()),
        ("PASSWORD_MODULE_SECRET", MODULE_SECRET),
        ("ADOPT_LOCALPART_TEMPLATE", ADOPT),
    ];
    env.extend_from_slice(extra);
    env
}

/// `daarion_<first 8 hex digits>` of a UUID, as DAARION Auth named them.
fn daarion_localpart(user_id: &str) -> String {
    format!("daarion_{}", &user_id.replace('-', "")[..8])
}

/// A DAARION access token as its login API issues them.
fn access_token(account: &FakeAccount) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": account.user_id, "email": account.email, "name": account.display_name,
                "roles": ["member"], "type": "access", "iss": "daarion-auth",
                "iat": now, "exp": now + 1800}),
        &jsonwebtoken::EncodingKey::from_secret(AUTH_SECRET.as_bytes()),
    )
    .unwrap()
}

/// `POST /v1/sso/password` as the module sends it.
async fn ask(app: &TestApp, secret: Option<&str>, body: &Value) -> (u16, Option<String>, Value) {
    let mut request = app
        .client
        .http
        .post(format!("{}/v1/sso/password", app.client.base))
        .json(body);
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn sign_in(
    app: &TestApp,
    user: &str,
    password: &str,
    ip: &str,
) -> (u16, Option<String>, Value) {
    ask(
        app,
        Some(MODULE_SECRET),
        &json!({"user": user, "password": password, "client_ip": ip}),
    )
    .await
}

// ---------------------------------------------------------------- names

/// DAARION sends no username: the registration names the account at once
/// (no grace period: the registration is DAARION's whole record) after the
/// display name, transliterated; the second person of the same name gets
/// `-2`. With `LOCALPART_SOURCES=email,user_id` the address's local part
/// names them instead.
async fn people_without_usernames_are_named_after_their_names(backend: Backend) {
    let app = TestApp::spawn_with(
        TestDb::new(backend).await,
        shared_synapse(),
        &[("USERNAME_GRACE_SECONDS", "3600")],
    )
    .await;
    let admin = SynapseAdmin::shared().await;
    let tag = unique("");
    let name = format!("Олена Петренко {tag}");
    let expected = format!("olena.petrenko.{tag}");
    let first = uuid();
    let second = uuid();
    for id in [&first, &second] {
        let (status, body) = app
            .client
            .send_event(&event(
                "user.registered",
                id,
                json!({"display_name": name, "email": format!("{id}@example.test")}),
            ))
            .await;
        assert_eq!(status, 202, "{body}");
        // One at a time, so that the first is first.
        app.client.wait_for_state(id, "provisioned", DEADLINE).await;
    }
    let (_, one) = app.client.user(&first).await;
    let (_, two) = app.client.user(&second).await;
    assert_eq!(one["matrix_user_id"], admin.user_id(&expected));
    assert_eq!(
        two["matrix_user_id"],
        admin.user_id(&format!("{expected}-2"))
    );
    assert_eq!(admin.lookup(&first).await, Some(admin.user_id(&expected)));
    let user = admin.user(&admin.user_id(&expected)).await.unwrap();
    assert_eq!(user["displayname"], name.as_str());
    assert_eq!(
        admin.count_users(&first).await,
        0,
        "nothing named after the UUID"
    );
    let db = app.shutdown().await;

    // The operator chose the address.
    let app = TestApp::spawn_with(
        db,
        shared_synapse(),
        &[("LOCALPART_SOURCES", "email,user_id")],
    )
    .await;
    let third = uuid();
    let local = unique("o.petrenko.");
    app.client
        .send_event(&event(
            "user.registered",
            &third,
            json!({"display_name": name, "email": format!("{}@Example.COM", local.to_uppercase())}),
        ))
        .await;
    let record = app
        .client
        .wait_for_state(&third, "provisioned", DEADLINE)
        .await;
    assert_eq!(record["matrix_user_id"], admin.user_id(&local));
    app.shutdown().await;
}
on_both_backends!(people_without_usernames_are_named_after_their_names);

// ---------------------------------------------------------------- adoption

/// The accounts DAARION Auth made (`@daarion_<hex8>`, a password of its
/// own, no external id) become their people's on the webhook path, the
/// sign-in path and the backfill, with both external ids and the profile;
/// never a second account. One already linked to another DAARION person is
/// not taken: that person gets a new account.
async fn daarion_s_own_accounts_are_adopted_never_doubled(backend: Backend) {
    let admin = SynapseAdmin::shared().await;
    let login = FakeLoginApi::start(AUTH_SECRET);
    let users = FakeUserApi::start("user-api-token");
    let people: Vec<FakeAccount> = (0..4)
        .map(|i| FakeAccount::new(&format!("Адоптована {i} {}", unique(""))))
        .collect();
    for p in &people {
        let localpart = daarion_localpart(&p.user_id);
        admin
            .register_with_password(&localpart, "daarion-old-password", false, true)
            .await
            .unwrap();
    }
    // The fourth is already linked to somebody else.
    let taken = daarion_localpart(&people[3].user_id);
    let someone_else = unique("someone-else-");
    let (status, body) = admin
        .put(
            &format!("/_synapse/admin/v2/users/{}", admin.user_id(&taken)),
            &json!({"external_ids": [{"auth_provider": "daarion", "external_id": someone_else}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let env = daarion_env(
        &login,
        &[
            ("AUTH_API_URL", users.url.as_str()),
            ("AUTH_API_TOKEN", "user-api-token"),
        ],
    );
    let app = TestApp::spawn_with(TestDb::new(backend).await, shared_synapse(), &env).await;

    // Webhook.
    let webhook = &people[0];
    app.client
        .send_event(&event(
            "user.registered",
            &webhook.user_id,
            json!({"display_name": webhook.display_name, "email": webhook.email}),
        ))
        .await;
    // Sign-in with DAARION's token, webhook never seen.
    let signing_in = &people[1];
    let response = app
        .client
        .http
        .post(format!("{}/v1/sso/login-token", app.client.base))
        .bearer_auth(access_token(signing_in))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["matrix_user_id"],
        admin.user_id(&daarion_localpart(&signing_in.user_id))
    );
    // Backfill from DAARION's user API.
    let listed = &people[2];
    let mut user = FakeUser::new(&listed.user_id, "", &listed.display_name, 1_000);
    user.username = None;
    user.email = Some(listed.email.clone());
    users.put(user);
    let mut linked_elsewhere =
        FakeUser::new(&people[3].user_id, "", &people[3].display_name, 1_000);
    linked_elsewhere.username = None;
    users.put(linked_elsewhere);
    let (status, summary) = app.client.profile_sync(true).await;
    assert_eq!(status, 200, "{summary}");

    for p in &people[..3] {
        let record = app
            .client
            .wait_for_state(&p.user_id, "provisioned", DEADLINE)
            .await;
        let adopted = admin.user_id(&daarion_localpart(&p.user_id));
        assert_eq!(record["matrix_user_id"], adopted, "{record}");
        assert_eq!(admin.lookup(&p.user_id).await.as_ref(), Some(&adopted));
        let account = admin.user(&adopted).await.unwrap();
        assert_eq!(account["displayname"], p.display_name.as_str());
        assert_eq!(account["deactivated"], false);
        let providers: Vec<&str> = account["external_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["auth_provider"].as_str().unwrap())
            .collect();
        assert!(providers.contains(&"daarion"), "{providers:?}");
        assert!(
            providers.iter().any(|p| p.starts_with("oidc-")),
            "{providers:?}"
        );
        // No second account: nothing named after the display name.
        let named = p.display_name.rsplit(' ').next().unwrap();
        assert_eq!(admin.count_users(named).await, 1, "one account for {named}");
    }
    let record = app
        .client
        .wait_for_state(&people[3].user_id, "provisioned", DEADLINE)
        .await;
    assert_ne!(record["matrix_user_id"], admin.user_id(&taken));
    assert_eq!(
        admin.lookup(&someone_else).await,
        Some(admin.user_id(&taken)),
        "the other person's link is untouched"
    );

    // Everything again: nothing changes, nothing doubles.
    let (status, _) = app.client.profile_sync(true).await;
    assert_eq!(status, 200);
    for p in &people[..3] {
        let (_, record) = app.client.user(&p.user_id).await;
        assert_eq!(
            record["matrix_user_id"],
            admin.user_id(&daarion_localpart(&p.user_id))
        );
    }
    app.shutdown().await;
}
on_both_backends!(daarion_s_own_accounts_are_adopted_never_doubled);

// ---------------------------------------------------------------- the password endpoint

/// `POST /v1/sso/password`, straight: the module's secret, bad bodies, and
/// every refusal with nothing provisioned; a right password by address
/// makes the account on the spot, by Matrix id finds it again.
async fn the_password_endpoint_refuses_what_it_must(backend: Backend) {
    let login = FakeLoginApi::start(AUTH_SECRET);
    let db = TestDb::new(backend).await;
    // Not configured: no secret, no login API.
    let bare = TestApp::spawn_with(db.shared(), shared_synapse(), &[]).await;
    let body = json!({"user": "a@b.c", "password": "x"});
    let (status, _, answer) = ask(&bare, Some(MODULE_SECRET), &body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("password_login_not_configured"))
    );
    bare.shutdown().await;
    // The module's secret but no login API: accounts that are not DAARION
    // people (the service's own admin) still go on to Synapse's own check.
    let half = TestApp::spawn_with(
        db.shared(),
        shared_synapse(),
        &[("PASSWORD_MODULE_SECRET", MODULE_SECRET)],
    )
    .await;
    let (status, _, answer) = sign_in(&half, "matrix-provisioner", "x", "198.51.100.9").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (404, Some("unknown_user"))
    );
    let (status, _, answer) = ask(&half, Some(MODULE_SECRET), &body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("password_login_not_configured"))
    );
    half.shutdown().await;

    let app = TestApp::spawn_with(db, shared_synapse(), &daarion_env(&login, &[])).await;
    let admin = SynapseAdmin::shared().await;
    let olena = FakeAccount::new(&format!("Олена {}", unique("")));
    login.add(&olena);
    let right = json!({"user": olena.email, "password": olena.password});
    for secret in [None, Some("wrong-secret"), Some("")] {
        let (status, _, answer) = ask(&app, secret, &right).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (401, Some("invalid_module_secret")),
            "{secret:?}"
        );
    }
    for bad in [
        json!("not an object"),
        json!({"user": olena.email}),
        json!({"password": olena.password}),
        json!({"user": " ", "password": olena.password}),
        json!({"user": olena.email, "password": ""}),
        json!({"user": olena.email, "password": "x".repeat(1025)}),
        json!({"user": olena.email, "password": 5}),
    ] {
        let (status, _, answer) = ask(&app, Some(MODULE_SECRET), &bad).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
        assert!(!answer.to_string().contains(&olena.password), "{answer}");
    }
    // Not DAARION people: Synapse goes on with its own checks.
    for user in [
        "matrix-provisioner",
        "@stranger:elsewhere.test",
        "@nobody-here:x",
    ] {
        let (status, _, answer) = sign_in(&app, user, "whatever", "198.51.100.1").await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (404, Some("unknown_user")),
            "{user}"
        );
    }
    assert_eq!(login.logins(), 0, "DAARION was not asked");

    // Refusals leave nothing behind.
    let (status, _, answer) = sign_in(&app, &olena.email, "wrong", "198.51.100.2").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let mut inactive = FakeAccount::new("Неактивна");
    inactive.active = false;
    login.add(&inactive);
    let (status, _, answer) =
        sign_in(&app, &inactive.email, &inactive.password, "198.51.100.2").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("user_deactivated"))
    );
    login.set_down(true);
    let (status, retry, answer) =
        sign_in(&app, &olena.email, &olena.password, "198.51.100.2").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("auth_unavailable"))
    );
    assert!(retry.is_some(), "Retry-After");
    login.set_down(false);
    assert_eq!(app.db.count("people").await, 0, "nobody stored");
    assert_eq!(admin.lookup(&olena.user_id).await, None);
    assert_eq!(admin.lookup(&inactive.user_id).await, None);

    // The right password, by address in any case: the account on the spot,
    // named after the display name; then by Matrix id and localpart.
    let shouted = olena.email.to_uppercase();
    let (status, _, answer) = sign_in(&app, &shouted, &olena.password, "198.51.100.2").await;
    assert_eq!(status, 200, "{answer}");
    let matrix_id = answer["matrix_user_id"].as_str().unwrap().to_string();
    assert!(matrix_id.starts_with("@olena."), "{matrix_id}");
    assert_eq!(
        admin.lookup(&olena.user_id).await.as_deref(),
        Some(matrix_id.as_str())
    );
    let localpart = matrix_id[1..].split(':').next().unwrap().to_string();
    for user in [
        matrix_id.clone(),
        localpart.clone(),
        localpart.to_uppercase(),
    ] {
        let (status, _, answer) = sign_in(&app, &user, &olena.password, "198.51.100.2").await;
        assert_eq!(
            (status, &answer["matrix_user_id"]),
            (200, &json!(matrix_id)),
            "{user}"
        );
    }
    let (status, _, _) = sign_in(&app, &localpart, "wrong", "198.51.100.2").await;
    assert_eq!(status, 401);
    app.shutdown().await;
}
on_both_backends!(the_password_endpoint_refuses_what_it_must);

/// Password spraying: five wrong passwords hold one account back (even
/// with the right password, from anywhere) while others sign in; twenty
/// wrong from one address hold that address back, whatever the account;
/// both end when the window does.
async fn failed_passwords_are_limited_per_account_and_address(backend: Backend) {
    let login = FakeLoginApi::start(AUTH_SECRET);
    let app = TestApp::spawn_with(
        TestDb::new(backend).await,
        shared_synapse(),
        &daarion_env(&login, &[]),
    )
    .await;
    let target = FakeAccount::new("Ціль");
    let other = FakeAccount::new("Інша");
    login.add(&target);
    login.add(&other);
    for i in 0..5 {
        let ip = format!("203.0.113.{i}");
        let (status, _, _) = sign_in(&app, &target.email, "guess", &ip).await;
        assert_eq!(status, 401, "attempt {i}");
    }
    let (status, retry, answer) =
        sign_in(&app, &target.email, &target.password, "192.0.2.77").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (429, Some("rate_limited"))
    );
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    let asked = login.logins();
    let (status, _, _) = sign_in(&app, &other.email, &other.password, "203.0.113.1").await;
    assert_eq!(status, 200, "another account is not held up");
    assert_eq!(
        login.logins(),
        asked + 1,
        "a held-back account is not even tried"
    );

    // One address spraying many accounts.
    for i in 0..20 {
        let (status, _, _) = sign_in(
            &app,
            &format!("spray{i}@example.test"),
            "guess",
            "198.51.100.66",
        )
        .await;
        assert_eq!(status, 401, "spray {i}");
    }
    let (status, _, _) = sign_in(&app, &other.email, &other.password, "198.51.100.66").await;
    assert_eq!(status, 429, "the address is held back");
    let (status, _, _) = sign_in(&app, &other.email, &other.password, "198.51.100.67").await;
    assert_eq!(status, 200, "other addresses are not");

    app.clock.advance(Duration::from_secs(15 * 60 + 1));
    let (status, _, _) = sign_in(&app, &target.email, &target.password, "192.0.2.77").await;
    assert_eq!(status, 200, "the window is over");
    let (status, _, _) = sign_in(&app, &other.email, &other.password, "198.51.100.66").await;
    assert_eq!(status, 200);
    app.shutdown().await;
}
on_both_backends!(failed_passwords_are_limited_per_account_and_address);

// ---------------------------------------------------------------- Element X

/// One password login with matrix-nio (tests/clients/nio_password_login.py),
/// then a sync: what Element X does.
async fn nio_login(homeserver: &str, kind: &str, identifier: &str, password: &str) -> Value {
    let output = tokio::process::Command::new(venv_python())
        .arg(repo().join("tests/clients/nio_password_login.py"))
        .arg(homeserver)
        .arg(kind)
        .arg(identifier)
        .env("NIO_PASSWORD", password)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "matrix-nio crashed");
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Through the real Synapse with the module installed from this
/// repository: matrix-nio signs in with a DAARION password by localpart and
/// by address, and syncs; a brand-new person gets the account on the spot;
/// an adopted `daarion_…` account signs in with DAARION's password; wrong
/// passwords are Synapse's `M_FORBIDDEN`, a deactivated person
/// `M_USER_DEACTIVATED`, DAARION down a 503 (never "wrong password"), and
/// spraying `M_LIMIT_EXCEEDED`; accounts that are not DAARION people keep
/// their local passwords.
async fn element_x_signs_in_with_a_daarion_password(backend: Backend) {
    let login = FakeLoginApi::start(AUTH_SECRET);
    let port = free_port();
    let synapse = PrivateSynapse::start_with_password_module(
        &format!("http://127.0.0.1:{port}"),
        MODULE_SECRET,
    );
    let hs = synapse.info.url.clone();
    let bind = format!("127.0.0.1:{port}");
    let app = TestApp::spawn_with(
        TestDb::new(backend).await,
        synapse.info.clone(),
        &daarion_env(&login, &[("BIND", &bind)]),
    )
    .await;
    let admin = SynapseAdmin::new(synapse.info.clone()).await;

    // Known from DAARION's webhook (no username), signs in by localpart.
    let known = FakeAccount::new("Тарас Шевченко");
    login.add(&known);
    app.client
        .send_event(&event(
            "user.registered",
            &known.user_id,
            json!({"display_name": known.display_name, "email": known.email}),
        ))
        .await;
    let record = app
        .client
        .wait_for_state(&known.user_id, "provisioned", DEADLINE)
        .await;
    let known_id = record["matrix_user_id"].as_str().unwrap().to_string();
    assert_eq!(known_id, admin.user_id("taras.shevchenko"));
    let by_localpart = nio_login(&hs, "user", "taras.shevchenko", &known.password).await;
    assert_eq!(by_localpart["user_id"], known_id.as_str(), "{by_localpart}");
    assert_eq!(by_localpart["synced"], true);
    let by_email = nio_login(&hs, "email", &known.email.to_uppercase(), &known.password).await;
    assert_eq!(by_email["user_id"], known_id.as_str(), "{by_email}");
    assert_eq!(by_email["synced"], true);
    assert_ne!(
        by_email["device_id"], by_localpart["device_id"],
        "a device each"
    );

    // Brand new: the account is made on the spot.
    let newcomer = FakeAccount::new("Леся Українка");
    login.add(&newcomer);
    let first = nio_login(&hs, "email", &newcomer.email, &newcomer.password).await;
    assert_eq!(
        first["user_id"],
        admin.user_id("lesia.ukrainka").as_str(),
        "{first}"
    );
    assert_eq!(
        admin.lookup(&newcomer.user_id).await,
        Some(admin.user_id("lesia.ukrainka"))
    );

    // DAARION's own account: adopted, opened with DAARION's password (its
    // old local password is left alone).
    let old = FakeAccount::new("Стара Обліковка");
    login.add(&old);
    let old_localpart = daarion_localpart(&old.user_id);
    admin
        .register_with_password(&old_localpart, "daarion-old-password", false, true)
        .await
        .unwrap();
    let adopted = nio_login(&hs, "email", &old.email, &old.password).await;
    assert_eq!(
        adopted["user_id"],
        admin.user_id(&old_localpart).as_str(),
        "{adopted}"
    );
    let again = nio_login(&hs, "user", &old_localpart, &old.password).await;
    assert_eq!(
        again["user_id"],
        admin.user_id(&old_localpart).as_str(),
        "{again}"
    );
    assert_eq!(
        admin.lookup(&old.user_id).await,
        Some(admin.user_id(&old_localpart))
    );
    assert_eq!(admin.count_users("obliko").await, 0, "no second account");

    // Refusals, as the client sees them.
    let wrong = nio_login(&hs, "user", "taras.shevchenko", "not-it").await;
    assert_eq!(
        (wrong["status"].as_u64(), wrong["error"].as_str()),
        (Some(403), Some("M_FORBIDDEN"))
    );
    let stranger = FakeAccount::new("Чужа Людина");
    login.add(&stranger);
    let wrong_new = nio_login(&hs, "email", &stranger.email, "not-it").await;
    assert_eq!(wrong_new["error"], "M_FORBIDDEN");
    assert_eq!(admin.lookup(&stranger.user_id).await, None, "nothing made");
    let mut gone = FakeAccount::new("Вибула Людина");
    gone.active = false;
    login.add(&gone);
    let deactivated = nio_login(&hs, "email", &gone.email, &gone.password).await;
    assert_eq!(deactivated["error"], "M_USER_DEACTIVATED", "{deactivated}");
    login.set_down(true);
    let down = nio_login(&hs, "user", "taras.shevchenko", &known.password).await;
    assert_eq!(down["status"], 503, "{down}");
    assert_ne!(down["error"], "M_FORBIDDEN");
    login.set_down(false);

    // Not DAARION people: Synapse's own passwords still work.
    admin
        .register_with_password("local-admin", "local-password-1", true, true)
        .await
        .unwrap();
    let local = nio_login(&hs, "user", "local-admin", "local-password-1").await;
    assert_eq!(
        local["user_id"],
        admin.user_id("local-admin").as_str(),
        "{local}"
    );

    // Spraying one account: held back, as the client sees it.
    for _ in 0..5 {
        nio_login(&hs, "user", "lesia.ukrainka", "guess").await;
    }
    let limited = nio_login(&hs, "email", &newcomer.email, &newcomer.password).await;
    assert_eq!(limited["error"], "M_LIMIT_EXCEEDED", "{limited}");
    assert!(
        limited["retry_after_ms"].as_u64().unwrap_or(0) >= 1000,
        "{limited}"
    );
    let still = nio_login(&hs, "user", "taras.shevchenko", &known.password).await;
    assert_eq!(
        still["user_id"],
        known_id.as_str(),
        "others are not held up"
    );

    app.shutdown().await;
    drop(synapse);
}
on_both_backends!(element_x_signs_in_with_a_daarion_password);
