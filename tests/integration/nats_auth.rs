//! The rest of issue 23's "with credentials: user/password, token or an
//! .creds file, and TLS" (nats.rs has user/password and token), against a
//! real `nats-server -js` on 127.0.0.1, on both back ends:
//!
//! - TLS: a CA and a certificate for 127.0.0.1 made here (rcgen), a server
//!   that requires TLS, the service on `tls://` with `NATS_TLS_CA_FILE`.
//!
//! The service connects and takes a published event (stored,
//! acknowledged); with a CA that did not sign the server's certificate it
//! is refused, says so at `/readyz` (still 200) and in its gauge, and takes
//! webhooks.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::nats::*;
use crate::on_both_backends;
use crate::rooms::WAIT;
use crate::support::*;

// ------------------------------------------------------------ what both need

/// The service's settings for `nats` (nats.rs' `nats_env`) and `more`.
fn env_with(nats: &NatsServer, more: &[(&str, &Path)]) -> Vec<(String, String)> {
    let mut env = nats_env(nats);
    for (k, v) in more {
        env.push((k.to_string(), v.to_str().unwrap().to_string()));
    }
    env
}

/// A user registered on JetStream is stored by `app` and its message
/// acknowledged; `/readyz` and the gauge then say NATS is connected.
async fn takes_an_event(app: &TestApp, nats: &NatsServer) {
    let js = nats.js().await;
    wait_for_streams(&js).await;
    let e = event(
        "user.registered",
        &unique("u_"),
        json!({"username": unique("auth")}),
    );
    publish_all(&js, &[(To::Auth, e.clone())]).await;
    consumer_drained(&js, "DAARION_AUTH").await;
    let stored = format!(
        "SELECT COUNT(*) FROM events WHERE id = '{}'",
        e["id"].as_str().unwrap()
    );
    assert_eq!(scalar(&app.db, &stored).await, 1);
    let (status, body) = readiness(&app.client).await;
    assert_eq!(
        (status, &body["nats"]),
        (200, &json!("connected")),
        "{body}"
    );
    assert!(
        metrics(app)
            .await
            .contains("matrix_provisioner_nats_connected 1"),
        "the gauge says connected"
    );
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .http
        .get(format!("{}/metrics", app.client.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// How many times nats-server's log has `words` (its words for a refused
/// connection).
fn refusals(nats: &NatsServer, words: &str) -> usize {
    nats.log().matches(words).count()
}

/// Waits until nats-server refused the service twice more than `before`
/// (the first attempt and a retry), then: `/readyz` still 200 and says NATS
/// is not connected, the gauge says 0, and a webhook is still taken.
async fn refused_and_still_ready(app: &TestApp, nats: &NatsServer, words: &str, before: usize) {
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

// ------------------------------------------------------------ TLS

/// A CA and the server's certificate for 127.0.0.1 it signed, and another
/// CA that signed nothing the server has; PEM files in a directory of their
/// own.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_pem) = Pki::ca("matrix-provisioner test CA");
        let (_, other_pem) = Pki::ca("a CA that signed nothing of the server's");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).unwrap();
        let pki = Pki {
            ca: dir.path().join("ca.pem"),
            other_ca: dir.path().join("other-ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server-key.pem"),
            _dir: dir,
        };
        std::fs::write(&pki.ca, ca_pem).unwrap();
        std::fs::write(&pki.other_ca, other_pem).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// A self-signed CA: what signs with it, and its certificate (PEM).
    fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        (rcgen::Issuer::new(params, key), pem)
    }

    /// nats-server's settings: TLS with this certificate, required of
    /// every client.
    fn server_config(&self) -> String {
        format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 5\n}}\n",
            quoted(&self.cert),
            quoted(&self.key)
        )
    }
}

fn quoted(path: &Path) -> String {
    serde_json::to_string(path.to_str().unwrap()).unwrap()
}

/// What nats-server says first to a plain TCP client: its INFO.
fn server_info(nats: &NatsServer) -> Value {
    use std::io::BufRead;
    let address = nats.url.split_once("://").unwrap().1;
    let stream = std::net::TcpStream::connect(address).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .unwrap();
    let info = line.strip_prefix("INFO ").expect("INFO first");
    serde_json::from_str(info.trim_end()).unwrap()
}

/// A nats-server that requires TLS, its certificate signed by a CA made
/// here: with `tls://` and that CA as NATS_TLS_CA_FILE the service
/// connects and takes its messages. With another CA as NATS_TLS_CA_FILE it
/// refuses the server's certificate, is never connected, says so at
/// `/readyz` (200) and in its gauge, and still takes webhooks.
async fn the_service_connects_to_nats_over_tls(backend: Backend) {
    let pki = Pki::new();
    let nats = NatsServer::start_with_config(
        &pki.server_config(),
        ClientSide {
            tls_ca: Some(pki.ca.clone()),
            creds: None,
        },
    )
    .await;
    assert!(nats.url.starts_with("tls://"), "{}", nats.url);
    assert_eq!(
        server_info(&nats)["tls_required"],
        true,
        "no client gets in without TLS"
    );

    let env = env_with(&nats, &[("NATS_TLS_CA_FILE", pki.ca.as_path())]);
    let app = TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
    takes_an_event(&app, &nats).await;
    app.shutdown().await;

    let words = "TLS handshake error";
    let before = refusals(&nats, words);
    let env = env_with(&nats, &[("NATS_TLS_CA_FILE", pki.other_ca.as_path())]);
    let app = TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
    refused_and_still_ready(&app, &nats, words, before).await;
    app.abandon().await;
}
on_both_backends!(the_service_connects_to_nats_over_tls);
