//! Running the service: metrics, request ids, the published API
//! description, the admin token's only door, and body limits.

use std::time::Duration;

use serde_json::{json, Value};

use crate::on_both_backends;
use crate::support::*;

const DEADLINE: Duration = Duration::from_secs(30);

async fn get(client: &Client, path: &str) -> reqwest::Response {
    client
        .http
        .get(format!("{}{path}", client.base))
        .send()
        .await
        .unwrap()
}

/// The value of the sample line that starts with `series` (name and labels).
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn metrics_show_what_happened(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let c = &app.client;
    let user_id = unique("u_");
    let (status, _) = c
        .send_event(&event(
            "user.registered",
            &user_id,
            json!({"username": unique("metric")}),
        ))
        .await;
    assert_eq!(status, 202);
    let (status, _) = c.post_webhook(b"{}", None).await.unwrap();
    assert_eq!(status, 401);
    c.wait_for_state(&user_id, "provisioned", DEADLINE).await;

    let response = get(c, "/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    // Counters are per process (tests share one), so: at least.
    for series in [
        r#"matrix_provisioner_webhooks_total{code="",outcome="accepted"}"#,
        r#"matrix_provisioner_webhooks_total{code="missing_signature",outcome="refused"}"#,
        r#"matrix_provisioner_synapse_requests_total{endpoint="register",outcome="ok"}"#,
        r#"matrix_provisioner_synapse_request_duration_seconds_count{endpoint="register",outcome="ok"}"#,
        r#"matrix_provisioner_provisioning_total{outcome="done",state="provisioned"}"#,
        r#"matrix_provisioner_http_requests_total{route="/v1/webhooks/auth",status="202"}"#,
    ] {
        let n = sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
        assert!(n >= 1.0, "{series} = {n}");
    }
    // Gauges come from this service's own database.
    assert_eq!(
        sample(&text, r#"matrix_provisioner_people{state="provisioned"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"matrix_provisioner_people{state="pending"}"#),
        Some(0.0)
    );
    for state in ["ready", "scheduled", "running", "failed"] {
        assert_eq!(
            sample(
                &text,
                &format!(r#"matrix_provisioner_queue_jobs{{state="{state}"}}"#)
            ),
            Some(0.0),
            "{state}"
        );
    }
    // No user ids in label values.
    assert!(!text.contains(&user_id));
    app.shutdown().await;
}
on_both_backends!(metrics_show_what_happened);

/// The caller's request id comes back and reaches Synapse; a bad one is
/// replaced; worker jobs send their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_returned_and_forwarded_to_synapse() {
    let synapse = shared_synapse();
    let proxy = SynapseProxy::start(&synapse.url);
    let proxied = SynapseInfo {
        url: proxy.url.clone(),
        ..synapse.clone()
    };
    let app = TestApp::spawn_with(TestDb::new(Backend::Sqlite).await, proxied, &[]).await;
    let c = &app.client;

    let ready = c
        .http
        .get(format!("{}/readyz", c.base))
        .header("X-Request-Id", "probe-42.A_b")
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.headers()["x-request-id"], "probe-42.A_b");
    assert!(proxy
        .seen()
        .contains(&("/health".to_string(), Some("probe-42.A_b".to_string()))));

    for bad in ["has space", "ü", &"x".repeat(65)] {
        let r = c
            .http
            .get(format!("{}/healthz", c.base))
            .header("X-Request-Id", bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 16, "{id}");
    }
    let a = get(c, "/healthz").await.headers()["x-request-id"].clone();
    let b = get(c, "/healthz").await.headers()["x-request-id"].clone();
    assert_ne!(a, b, "fresh ids differ");

    let user_id = unique("u_");
    c.send_event(&event(
        "user.registered",
        &user_id,
        json!({"username": unique("rid")}),
    ))
    .await;
    c.wait_for_state(&user_id, "provisioned", DEADLINE).await;
    let register: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|(path, _)| path == "/_synapse/admin/v1/register")
        .collect();
    assert!(!register.is_empty());
    for (_, id) in register {
        let id = id.expect("worker requests carry an id");
        assert!(id.starts_with("job-"), "{id}");
    }
    app.shutdown().await;
    proxy.stop().await;
}

/// The description served is the one checked in, and the UI is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_description_and_its_ui_are_served() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let c = &app.client;
    let served: Value = get(c, "/openapi.json").await.json().await.unwrap();
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("openapi/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(served, checked_in);
    for path in [
        "/v1/webhooks/auth",
        "/v1/users/{user_id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs/",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} undocumented");
    }

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(format!("{}/docs", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/docs/");
    let r = get(c, "/docs/").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("swagger-ui"));
    let init = get(c, "/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        assert_eq!(get(c, asset).await.status(), 200, "{asset}");
    }
    app.shutdown().await;
}

fn assert_error_body(body: &Value, code: &str) {
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// Only `Authorization: Bearer <token>` opens the admin endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_accepted_only_as_a_bearer_header() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let c = &app.client;
    let url = format!("{}/v1/users/u_nobody", c.base);
    let refused = [
        c.http.get(&url),
        c.http.get(format!("{url}?access_token={ADMIN_TOKEN}")),
        c.http.get(format!("{url}?token={ADMIN_TOKEN}")),
        c.http
            .get(&url)
            .header("Cookie", format!("token={ADMIN_TOKEN}")),
        c.http
            .get(&url)
            .header("Cookie", format!("access_token={ADMIN_TOKEN}")),
        c.http.get(&url).basic_auth("admin", Some(ADMIN_TOKEN)),
        c.http
            .get(&url)
            .header("Authorization", ADMIN_TOKEN.to_string()),
        c.http
            .get(&url)
            .header("X-Admin-Token", ADMIN_TOKEN.to_string()),
        c.http.get(&url).bearer_auth(format!("{ADMIN_TOKEN}x")),
        c.http
            .get(&url)
            .bearer_auth(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        c.http.get(&url).bearer_auth(""),
    ];
    for request in refused {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_error_body(&r.json().await.unwrap(), "unauthorized");
    }
    let r = c
        .http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the right token gets through");

    // Without ADMIN_API_TOKEN the admin endpoints are closed to everyone.
    let closed = TestApp::spawn_with(
        TestDb::new(Backend::Sqlite).await,
        shared_synapse(),
        &[("ADMIN_API_TOKEN", "")],
    )
    .await;
    let r = closed
        .client
        .http
        .get(format!("{}/v1/users/u_nobody", closed.client.base))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    closed.shutdown().await;
    app.shutdown().await;
}

/// Bodies over 64 KiB are refused on every route; other methods on known
/// paths are 405 with `Allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_methods_are_enforced_everywhere() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let c = &app.client;
    let big = vec![b'x'; 65 * 1024];
    for path in ["/v1/admin/users/u_1/retry", "/v1/webhooks/auth", "/nope"] {
        let r = c
            .http
            .post(format!("{}{path}", c.base))
            .bearer_auth(ADMIN_TOKEN)
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{path}");
        assert_error_body(&r.json().await.unwrap(), "payload_too_large");
    }
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/v1/users/u_1", "GET"),
        (reqwest::Method::GET, "/v1/webhooks/auth", "POST"),
        (reqwest::Method::PUT, "/healthz", "GET"),
    ] {
        let r = c
            .http
            .request(method, format!("{}{path}", c.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.headers()["allow"], allow);
        assert_error_body(&r.json().await.unwrap(), "method_not_allowed");
    }
    app.shutdown().await;
}

/// `/readyz` is about this process accepting work: with Synapse down it is
/// still ready (webhooks are queued), and says so in the body and metrics.
async fn ready_while_synapse_is_down(backend: Backend) {
    let synapse = SynapseInfo {
        url: format!("http://127.0.0.1:{}", free_port()),
        ..shared_synapse()
    };
    let app = TestApp::spawn_with(TestDb::new(backend).await, synapse, &[]).await;
    let r = get(&app.client, "/readyz").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body.get("error"), None, "{body}");
    assert_eq!(body["database"], "ok");
    // The service's words, not an answer's text (which stays in the log).
    assert_eq!(body["synapse"], "unavailable: cannot connect");
    let metrics = get(&app.client, "/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(&metrics, "matrix_provisioner_synapse_reachable"),
        Some(0.0)
    );
    // The work is taken and kept for later.
    let user_id = unique("u_");
    let (status, _) = app
        .client
        .send_event(&event(
            "user.registered",
            &user_id,
            json!({"username": unique("down")}),
        ))
        .await;
    assert_eq!(status, 202);
    assert_eq!(app.client.user(&user_id).await.1["state"], "pending");
    assert_eq!(get(&app.client, "/healthz").await.status(), 200);
    app.shutdown().await;
}
on_both_backends!(ready_while_synapse_is_down);

/// Without its database the service is not ready, and says so without
/// the driver's words (they name hosts, databases and users): those go to
/// the service's own log.
async fn not_ready_without_the_database_and_no_driver_text(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = get(&app.client, "/readyz").await;
    assert_eq!(r.status(), 200);
    let name = app.db.url.rsplit('/').next().unwrap().to_string();
    match backend {
        // Closed under the service: every query fails.
        Backend::Sqlite => app.store.close().await,
        // PostgreSQL refuses the database and drops the pool's connections.
        Backend::Postgres => {
            let admin = one_connection(&required_env("MP_TEST_POSTGRES_URL")).await;
            for sql in [
                format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ),
            ] {
                sqlx::query(&sql).execute(&admin).await.unwrap();
            }
            admin.close().await;
        }
    }
    let r = get(&app.client, "/readyz").await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_ready", "{body}");
    assert_eq!(body["database"], "database unavailable", "{body}");
    for field in ["database", "message"] {
        let text = body[field].as_str().unwrap();
        for driver in [
            "pool",
            "closed",
            "FATAL",
            "connection",
            "accepting",
            "sqlx",
            &name,
        ] {
            assert!(!text.contains(driver), "{driver:?} in {field}: {body}");
        }
    }
    // The service is stopped without its database: how that ends is not
    // what this test is about.
    app.abandon().await;
}
on_both_backends!(not_ready_without_the_database_and_no_driver_text);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_reachable_is_a_metric() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let metrics = get(&app.client, "/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(&metrics, "matrix_provisioner_synapse_reachable"),
        Some(1.0)
    );
    app.shutdown().await;
}
