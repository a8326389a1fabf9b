//! The rest of issue 23's "with credentials: user/password, token or an
//! .creds file, and TLS" (nats.rs has user/password and token), against a
//! real `nats-server -js` on 127.0.0.1, on both back ends:
//!
//! - TLS: a CA and a certificate for 127.0.0.1 made here (rcgen), a server
//!   that requires TLS, the service on `tls://` with `NATS_TLS_CA_FILE`;
//! - `NATS_CREDS_FILE`: a server in operator mode (decentralised JWT
//!   authentication, memory resolver), its operator, system account, an
//!   account with JetStream and its user made here (nkeys), the user's JWT
//!   and seed in a `.creds` file.
//!
//! Either way the service connects and takes a published event (stored,
//! acknowledged); with a CA that did not sign the server's certificate, or
//! a `.creds` file of an operator the server does not trust, it is refused,
//! says so at `/readyz` (still 200) and in its gauge, and takes webhooks.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Value};
use sha2::Digest;

use crate::nats::*;
use crate::on_both_backends;
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

// ------------------------------------------------------------ .creds

/// A NATS JWT as nats-io/jwt (v2) encodes one: header and claims in
/// base64url without padding, signed (ed25519) by `issuer`; `jti` is the
/// base32 (no padding) SHA-512/256 of the standard claims without it, in
/// the Go library's field order (the empty ones left out, as it does).
fn nats_jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    #[derive(serde::Serialize)]
    struct Standard<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        jti: Option<String>,
        iat: u64,
        iss: &'a str,
        name: &'a str,
        sub: &'a str,
    }
    let iss = issuer.public_key();
    let mut standard = Standard {
        jti: None,
        iat: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        iss: &iss,
        name,
        sub: subject,
    };
    let hash = sha2::Sha512_256::digest(serde_json::to_vec(&standard).unwrap());
    standard.jti = Some(data_encoding::BASE32_NOPAD.encode(&hash));
    let mut claims = serde_json::to_value(&standard).unwrap();
    claims["nats"] = nats;
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let signed = format!("{header}.{claims}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An operator of its own: its JWT, its system account and an account
/// with JetStream (unlimited), both JWTs signed by the operator.
struct Operator {
    jwt: String,
    system: (String, String),
    account: KeyPair,
    account_jwt: String,
}

impl Operator {
    fn new() -> Operator {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "test-operator",
            json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
        );
        let limits = json!({
            "subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
        });
        let mut with_jetstream = limits.clone();
        for (k, v) in [
            ("mem_storage", -1),
            ("disk_storage", -1),
            ("streams", -1),
            ("consumer", -1),
        ] {
            with_jetstream[k] = json!(v);
        }
        let account_claims = |limits: Value| {
            json!({
                "limits": limits,
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account",
                "version": 2,
            })
        };
        let system_jwt = nats_jwt(
            &operator,
            &system.public_key(),
            "SYS",
            account_claims(limits),
        );
        let account_jwt = nats_jwt(
            &operator,
            &account.public_key(),
            "DAARION",
            account_claims(with_jetstream),
        );
        Operator {
            jwt,
            system: (system.public_key(), system_jwt),
            account,
            account_jwt,
        }
    }

    /// A new user of the account, as a `.creds` file's text (the format
    /// `nsc generate creds` writes).
    fn creds(&self, name: &str) -> String {
        let user = KeyPair::new_user();
        let jwt = nats_jwt(
            &self.account,
            &user.public_key(),
            name,
            json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            }),
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            user.seed().unwrap()
        )
    }

    /// nats-server's settings: trusts this operator only, its accounts'
    /// JWTs preloaded in a memory resolver.
    fn server_config(&self, dir: &Path) -> String {
        let operator = dir.join("operator.jwt");
        std::fs::write(&operator, &self.jwt).unwrap();
        format!(
            "operator: {}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n  {}: {}\n}}\n",
            quoted(&operator),
            self.system.0,
            self.system.0,
            serde_json::to_string(&self.system.1).unwrap(),
            self.account.public_key(),
            serde_json::to_string(&self.account_jwt).unwrap(),
        )
    }
}

/// A nats-server in operator mode: with NATS_CREDS_FILE holding a user of
/// the operator's account the service connects and takes its messages.
/// With a `.creds` file of another operator (its user signed by an account
/// the server does not trust) it is refused, never connected, says so at
/// `/readyz` (200) and in its gauge, and still takes webhooks.
async fn the_service_authenticates_to_nats_with_a_creds_file(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Operator::new();
    let creds = dir.path().join("service.creds");
    std::fs::write(&creds, trusted.creds("matrix-provisioner")).unwrap();
    let tests_creds = dir.path().join("test.creds");
    std::fs::write(&tests_creds, trusted.creds("the-test")).unwrap();
    let nats = NatsServer::start_with_config(
        &trusted.server_config(dir.path()),
        ClientSide {
            tls_ca: None,
            creds: Some(tests_creds),
        },
    )
    .await;
    assert_eq!(
        server_info(&nats)["auth_required"],
        true,
        "no client gets in without credentials"
    );

    let env = env_with(&nats, &[("NATS_CREDS_FILE", creds.as_path())]);
    let app = TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
    takes_an_event(&app, &nats).await;
    app.shutdown().await;

    let stranger = dir.path().join("stranger.creds");
    std::fs::write(&stranger, Operator::new().creds("matrix-provisioner")).unwrap();
    let words = "authentication error";
    let before = refusals(&nats, words);
    let env = env_with(&nats, &[("NATS_CREDS_FILE", stranger.as_path())]);
    let app = TestApp::spawn_with(TestDb::new(backend).await, no_synapse(), &overrides(&env)).await;
    refused_and_still_ready(&app, &nats, words, before).await;
    app.abandon().await;
}
on_both_backends!(the_service_authenticates_to_nats_with_a_creds_file);
