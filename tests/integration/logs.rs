//! The service's logs at debug level, of a full run, hold no secret, no
//! password, no token and no signature; they are JSON when asked, and the
//! lines of a request carry its id.

use std::collections::HashSet;
use std::time::Duration;

use matrix_provisioner::domain::signature;
use matrix_provisioner::secret::Secret;
use matrix_provisioner::synapse::admin_account_password;
use serde_json::{json, Value};
use sqlx::Row;

use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(60);
const ADMIN_USER: &str = "matrix-provisioner";

/// Every access token Synapse has for the service's own admin account,
/// read from Synapse's database.
async fn service_admin_tokens(synapse: &PrivateSynapse) -> HashSet<String> {
    let url = format!("sqlite://{}?mode=ro", synapse.database().display());
    let pool = one_connection(&url).await;
    let user = format!("@{ADMIN_USER}:{}", synapse.info.server_name);
    let tokens = sqlx::query("SELECT token FROM access_tokens WHERE user_id = $1")
        .bind(&user)
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String, _>("token").unwrap())
        .collect();
    pool.close().await;
    tokens
}

/// authorize → DAARION's return → continue → token → userinfo, straight
/// against the service (DAARION's page skipped); returns what was handed
/// out on the way, by name.
async fn sign_in_through_the_provider(
    base: &str,
    auth_jwt: &str,
    client_secret: &str,
    user_id: &str,
) -> Vec<(&'static str, String)> {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let location = |r: &reqwest::Response| r.headers()["location"].to_str().unwrap().to_string();
    let param = |url: &str, name: &str| {
        url::Url::parse(url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let r = http
        .get(format!(
            "{base}/oidc/authorize?response_type=code&client_id=synapse&scope=openid\
             &redirect_uri=http%3A%2F%2Fclient.test%2Fcb&state=st&nonce=nn"
        ))
        .send()
        .await
        .unwrap();
    let state = param(&location(&r), "state");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let now = chrono::Utc::now().timestamp();
    let daarion_token = encode(
        &Header::default(),
        &json!({"sub": user_id, "iat": now, "exp": now + 300, "sid": "daarion-sess-9e2"}),
        &EncodingKey::from_secret(auth_jwt.as_bytes()),
    )
    .unwrap();
    let r = http
        .post(format!("{base}/v1/sso/return"))
        .form(&[("access_token", daarion_token.as_str()), ("state", &state)])
        .send()
        .await
        .unwrap();
    let review = location(&r);
    let proof = param(&review, "proof");
    let r = http
        .get(&review)
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the confirmation");
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
        .unwrap();
    // A page that moves on by itself (Refresh), with Location for programs.
    assert_eq!(r.status(), 200, "continue");
    let code = param(&location(&r), "code");
    let tokens: Value = http
        .post(format!("{base}/oidc/token"))
        .basic_auth("synapse", Some(client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://client.test/cb"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access_token = tokens["access_token"].as_str().unwrap().to_string();
    let info = http
        .get(format!("{base}/oidc/userinfo"))
        .bearer_auth(&access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    vec![
        ("DAARION access token", daarion_token),
        ("sign-in state", state),
        ("sign-in proof", proof),
        (
            "sign-in cookie",
            cookie.split_once('=').unwrap().1.to_string(),
        ),
        ("authorization code", code),
        ("OpenID access token", access_token),
        ("ID token", tokens["id_token"].as_str().unwrap().to_string()),
    ]
}

/// Runs `event` through the service, signed with `secret`; returns the
/// signature header sent.
async fn deliver(client: &Client, secret: &str, event: &Value, request_id: &str) -> String {
    let body = serde_json::to_vec(event).unwrap();
    let sig = signature::sign(secret, chrono::Utc::now().timestamp(), &body);
    let r = client
        .http
        .post(format!("{}/v1/webhooks/auth", client.base))
        .header("Content-Type", "application/json")
        .header("X-Daarion-Signature", &sig)
        .header("X-Request-Id", request_id)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status() == 401,
        "{}",
        r.status()
    );
    sig
}

async fn a_full_run_logs_no_secret(backend: Backend) {
    let synapse = PrivateSynapse::start();
    let admin = SynapseAdmin::new(synapse.info.clone()).await;
    let db = TestDb::new(backend).await;
    let mut env = base_env(&db, &synapse.info);
    // The service reaches Synapse through a proxy that keeps every password
    // it sends, to look for them in the logs.
    let proxy = SynapseProxy::start(&synapse.info.url);
    env.insert("SYNAPSE_URL".into(), proxy.url.clone());
    // Secrets of a deployment, each distinctive enough to grep for.
    let webhook_new = WEBHOOK_SECRET;
    let webhook_old = "whsec-old-4e8a6b3c5d";
    let admin_token = ADMIN_TOKEN;
    let auth_jwt = "auth-jwt-5d2c8e1f7a";
    let auth_api_token = "auth-api-tok-61f0a9c3";
    let synapse_jwt = synapse.info.jwt_secret.clone();
    let registration = synapse.info.registration_secret.clone();
    env.insert(
        "AUTH_WEBHOOK_SECRET".into(),
        format!("{webhook_new},{webhook_old}"),
    );
    env.insert("AUTH_JWT_SECRET".into(), auth_jwt.into());
    env.insert("AUTH_API_TOKEN".into(), auth_api_token.into());
    env.insert("AUTH_API_URL".into(), "http://127.0.0.1:9/".into());
    env.insert("RUST_LOG".into(), "debug".into());
    env.insert("LOG_FORMAT".into(), "json".into());
    let mut db_password = None;
    if backend == Backend::Postgres {
        // The test cluster trusts local connections, so a password in the
        // URL is never sent, only (perhaps) printed.
        let password = "db-pw-8f3e2a1b9c";
        let url = db.url.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{password}@"),
            1,
        );
        assert_ne!(url, db.url, "unexpected test database URL");
        env.insert("DATABASE_URL".into(), url);
        db_password = Some(password);
    }
    let port = free_port();
    let oidc_client_secret = "oidc-client-sec-3b9a7e";
    env.insert("PUBLIC_URL".into(), format!("http://127.0.0.1:{port}"));
    env.insert("OIDC_CLIENT_SECRET".into(), oidc_client_secret.into());
    env.insert("OIDC_REDIRECT_URIS".into(), "http://client.test/cb".into());
    // No DAARION page: the service's own sign-in page takes passwords too.
    env.insert("AUTH_LOGIN_URL".into(), "".into());
    // Password sign-in (Element X through Synapse's module, and the own
    // page).
    let login = crate::fakes::FakeLoginApi::start(auth_jwt);
    let module_secret = "pw-module-sec-9d4f1a";
    env.insert("AUTH_PASSWORD_LOGIN_URL".into(), login.url.clone());
    env.insert("PASSWORD_MODULE_SECRET".into(), module_secret.into());
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut service = ChildService::start(&env, port, log.path()).await;
    let c = service.client.clone();
    let tag = unique("sec");
    let mut signatures = Vec::new();

    // Signups (one redelivered, one signed with the old key), an update, a
    // deletion, and refused deliveries.
    let ids: Vec<String> = (0..3).map(|i| format!("u_{tag}_{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let ev = event(
            "user.registered",
            id,
            json!({"username": format!("{tag}-{i}"), "display_name": format!("Людина {i}"),
                   "email": format!("{tag}{i}@example.com")}),
        );
        let key = if i == 1 { webhook_old } else { webhook_new };
        signatures.push(deliver(&c, key, &ev, &format!("scenario-signup-{i}")).await);
        if i == 0 {
            signatures.push(deliver(&c, key, &ev, "scenario-redelivery").await);
        }
    }
    let ev = event("user.registered", &ids[0], json!({}));
    signatures.push(deliver(&c, "wrong-secret-key", &ev, "scenario-bad-signature").await);
    let body = serde_json::to_vec(&ev).unwrap();
    let stale = signature::sign(webhook_new, chrono::Utc::now().timestamp() - 600, &body);
    assert_eq!(c.post_webhook(&body, Some(&stale)).await.unwrap().0, 401);
    signatures.push(stale);
    for id in &ids {
        c.wait_for_state(id, "provisioned", DEADLINE).await;
    }
    let mut tokens = service_admin_tokens(&synapse).await;
    assert!(
        !tokens.is_empty(),
        "the service logged in as its admin account"
    );

    // Synapse forgets the service's token: it logs in again (with its
    // password) on the next job.
    let device_path = format!(
        "/_synapse/admin/v2/users/@{ADMIN_USER}:{}/devices/MATRIX_PROVISIONER",
        synapse.info.server_name
    );
    assert_eq!(admin.delete(&device_path).await.0, 200);
    signatures.push(
        deliver(
            &c,
            webhook_new,
            &event(
                "user.updated",
                &ids[1],
                json!({"display_name": "Нове Ім'я"}),
            ),
            "scenario-update",
        )
        .await,
    );
    signatures.push(
        deliver(
            &c,
            webhook_new,
            &event("user.deleted", &ids[2], json!({})),
            "scenario-delete",
        )
        .await,
    );
    c.wait_for_state(&ids[2], "deactivated", DEADLINE).await;
    eventually("the new display name", DEADLINE, || async {
        let user = admin.user(&admin.user_id(&format!("{tag}-1"))).await?;
        (user["displayname"] == "Нове Ім'я").then_some(())
    })
    .await;
    tokens.extend(service_admin_tokens(&synapse).await);

    // Operators' calls, right and wrong.
    for token in [admin_token, "not-the-admin-token"] {
        c.http
            .get(format!("{}/v1/users/{}", c.base, ids[0]))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    c.http
        .get(format!(
            "{}/v1/users/{}?access_token={admin_token}",
            c.base, ids[0]
        ))
        .send()
        .await
        .unwrap();
    c.http
        .post(format!("{}/v1/admin/users/{}/retry", c.base, ids[0]))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap();
    // A download link of a person's file: its token is the credential.
    let media_token = format!("media-link-token-{tag}");
    let answer = c
        .http
        .get(format!("{}/v1/media/{media_token}", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    // A sign-in through the OpenID provider: every secret it hands out
    // (state, browser cookie, code, tokens) and the DAARION token it took
    // (posted to DAARION's return straight away).
    let mut handed_out =
        sign_in_through_the_provider(&c.base, auth_jwt, oidc_client_secret, &ids[1]).await;

    // Passwords typed: right, wrong, in a malformed body, with a wrong
    // module secret.
    let typist = crate::fakes::FakeAccount::new("Друкарка");
    login.add(&typist);
    let wrong_password = "typed-wrong-pw-71c2";
    let malformed_password = "typed-in-bad-body-pw-3e9";
    let mut typed = vec![typist.password.clone(), wrong_password.to_string()];
    let password_call = |secret: &str, body: String| {
        c.http
            .post(format!("{}/v1/sso/password", c.base))
            .bearer_auth(secret)
            .header("Content-Type", "application/json")
            .body(body)
    };
    for (secret, password, expected) in [
        (module_secret, typist.password.as_str(), 200),
        (module_secret, wrong_password, 401),
        ("not-the-module-secret", typist.password.as_str(), 401),
    ] {
        let body = json!({"user": typist.email, "password": password, "client_ip": "203.0.113.5"});
        let answer = password_call(secret, body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), expected);
    }
    let bad = format!(r#"{{"user": 5, "password": "{malformed_password}"}}"#);
    let answer = password_call(module_secret, bad).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    typed.push(malformed_password.to_string());

    // Passwords typed into the service's own sign-in page: from a browser
    // that did not start the sign-in, wrong, then right.
    {
        use crate::oidc::{filled, own_form, Browser};
        let writer = crate::fakes::FakeAccount::new("Письменниця");
        login.add(&writer);
        let form_wrong_password = "form-typed-wrong-pw-5a8d";
        let browser = Browser::new();
        let authorize = browser
            .get(&format!(
                "{}/oidc/authorize?response_type=code&client_id=synapse&scope=openid\
                 &redirect_uri=http%3A%2F%2Fclient.test%2Fcb&state=st2&nonce=nn2",
                c.base
            ))
            .await;
        let page = browser.get(authorize.location.as_deref().unwrap()).await;
        assert_eq!(page.status, 200, "the own sign-in page: {}", page.body);
        let (action, hidden) = own_form(&page.body);
        assert_eq!(action, format!("{}/v1/sso/sign-in", c.base));
        let stranger = Browser::new()
            .post_form(&action, &filled(&hidden, &writer.email, &writer.password))
            .await;
        assert_eq!(stranger.status, 400, "{}", stranger.body);
        let wrong = browser
            .post_form(
                &action,
                &filled(&hidden, &writer.email, form_wrong_password),
            )
            .await;
        assert_eq!(wrong.status, 401, "{}", wrong.body);
        let right = browser
            .post_form(&action, &filled(&hidden, &writer.email, &writer.password))
            .await;
        assert_eq!(right.status, 303, "{}", right.body);
        let review = right.location.unwrap();
        assert!(review.contains("/v1/sso/continue?"), "{review}");
        typed.push(writer.password.clone());
        typed.push(form_wrong_password.to_string());
        for (name, value) in hidden {
            let what = match name.as_str() {
                "state" => "own page's sign-in state",
                "form" => "own page's form token",
                other => panic!("an unexpected hidden field {other}"),
            };
            handed_out.push((what, value));
        }
        let proof = url::Url::parse(&review)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "proof")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        handed_out.push(("own page's sign-in proof", proof));
    }

    for path in ["/metrics", "/readyz", "/openapi.json", "/docs/"] {
        c.http
            .get(format!("{}{path}", c.base))
            .send()
            .await
            .unwrap();
    }
    c.wait_for_state(&ids[0], "provisioned", DEADLINE).await;
    service.terminate();
    assert!(service.wait_exit(DEADLINE).await.success());

    let logs = std::fs::read_to_string(log.path()).unwrap();
    let mut forbidden: Vec<(String, String)> = vec![
        ("webhook secret".into(), webhook_new.into()),
        ("old webhook secret".into(), webhook_old.into()),
        ("admin API token".into(), admin_token.into()),
        ("DAARION JWT secret".into(), auth_jwt.into()),
        ("DAARION API token".into(), auth_api_token.into()),
        ("Synapse JWT secret".into(), synapse_jwt),
        ("registration secret".into(), registration.clone()),
        (
            "admin account password".into(),
            admin_account_password(&Secret::new(registration), ADMIN_USER)
                .expose()
                .to_string(),
        ),
    ];
    if let Some(pw) = db_password {
        forbidden.push(("database password".into(), pw.into()));
    }
    forbidden.push(("OpenID client secret".into(), oidc_client_secret.into()));
    forbidden.push(("password module secret".into(), module_secret.into()));
    forbidden.push(("download link token".into(), media_token));
    for password in &typed {
        forbidden.push(("password typed at sign-in".into(), password.clone()));
    }
    for (what, value) in handed_out {
        forbidden.push((what.into(), value));
    }
    for token in &tokens {
        forbidden.push(("Synapse admin access token".into(), token.clone()));
    }
    for sig in &signatures {
        forbidden.push(("signature header".into(), sig.clone()));
        for part in sig.split(',').filter_map(|p| p.strip_prefix("v1=")) {
            forbidden.push(("signature".into(), part.to_string()));
        }
    }
    for (what, value) in &forbidden {
        assert!(
            !logs.contains(value.as_str()),
            "the logs contain the {what}"
        );
    }
    // People's passwords are random and never stored by us: the proxy in
    // front of Synapse saw every one the service sent.
    let passwords = proxy.passwords();
    assert!(
        passwords.len() >= ids.len(),
        "the proxy saw {} passwords for {} accounts",
        passwords.len(),
        ids.len()
    );
    for password in &passwords {
        assert!(
            !logs.contains(password.as_str()),
            "the logs contain a password sent to Synapse"
        );
    }

    // The logs are JSON lines, at debug level, and carry request ids.
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "DEBUG"));
    assert!(lines.iter().any(|l| l["message"] == "synapse call"));
    let accepted = lines
        .iter()
        .find(|l| {
            l["message"] == "webhook accepted" && l["span"]["request_id"] == "scenario-signup-2"
        })
        .expect("the webhook's log line carries the caller's request id");
    assert_eq!(accepted["span"]["name"], "request");
    for l in &lines {
        if l["message"] == "request answered" {
            assert!(l["span"]["request_id"].is_string(), "{l}");
        }
        if l["message"] == "synapse call" {
            assert!(l["span"]["request_id"].is_string(), "no request id: {l}");
        }
    }
    proxy.stop().await;
}
on_both_backends!(a_full_run_logs_no_secret);
