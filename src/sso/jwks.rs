//! DAARION Auth's public signing keys (`AUTH_JWKS_URL`), cached by `kid`.
//! A token with a `kid` we do not know starts a download (DAARION rotated
//! its keys), but downloads never overlap and never come closer together
//! than `AUTH_JWKS_MIN_REFRESH_SECONDS`, so a flood of forged tokens costs
//! DAARION Auth at most one request per interval. Keys older than
//! [`MAX_AGE`] are refreshed on use, and kept while DAARION Auth is away.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

/// After this long, the next token looks for new (or withdrawn) keys.
pub const MAX_AGE: Duration = Duration::from_secs(600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// 2048-bit RSA moduli, in unpadded base64url characters (256 bytes).
const MIN_RSA_MODULUS_B64: usize = 342;

/// A verification key and the one algorithm it may be used with.
#[derive(Clone)]
pub struct Key {
    pub alg: Algorithm,
    pub key: Arc<DecodingKey>,
}

pub enum Lookup {
    Found(Key),
    /// Not among DAARION's keys: the token was not signed by DAARION.
    Unknown,
    /// Not among the keys we have, and DAARION Auth did not answer when we
    /// asked for new ones: we cannot tell.
    Unavailable,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Key>,
    fetched_at: Option<Instant>,
    /// The last download failed.
    failed: bool,
    /// Counts download attempts, so a waiter can tell one happened.
    generation: u64,
}

impl KeySet {
    fn lookup(&self, kid: &str) -> Lookup {
        match self.keys.get(kid) {
            Some(key) => Lookup::Found(key.clone()),
            None if self.failed => Lookup::Unavailable,
            None => Lookup::Unknown,
        }
    }
}

pub struct Jwks {
    url: Url,
    http: reqwest::Client,
    min_refresh: Duration,
    current: RwLock<Arc<KeySet>>,
    /// Held during a download; holds when the last one started.
    fetching: Mutex<Option<Instant>>,
}

impl Jwks {
    pub fn new(url: Url, min_refresh: Duration) -> anyhow::Result<Jwks> {
        let http = crate::outbound::client(FETCH_TIMEOUT).build()?;
        Ok(Jwks {
            url,
            http,
            min_refresh,
            current: RwLock::new(Arc::new(KeySet::default())),
            fetching: Mutex::new(None),
        })
    }

    fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(
            &self
                .current
                .read()
                .expect("the key set lock is never poisoned"),
        )
    }

    /// The key named `kid`, downloading the key set first if needed and allowed.
    pub async fn key(&self, kid: &str) -> Lookup {
        let seen = self.snapshot();
        let fresh = seen.fetched_at.is_some_and(|t| t.elapsed() < MAX_AGE);
        if fresh {
            if let Some(key) = seen.keys.get(kid) {
                return Lookup::Found(key.clone());
            }
        }
        // One download at a time; whoever waited for it uses its result.
        // A known key that is merely old does not wait for someone else's
        // download (DAARION Auth may be slow): it is still good.
        let mut last_attempt = match (seen.keys.get(kid), self.fetching.try_lock()) {
            (_, Ok(guard)) => guard,
            (Some(key), Err(_)) => return Lookup::Found(key.clone()),
            (None, Err(_)) => self.fetching.lock().await,
        };
        let now = self.snapshot();
        if now.generation != seen.generation {
            return now.lookup(kid);
        }
        if last_attempt.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return now.lookup(kid);
        }
        *last_attempt = Some(Instant::now());
        let next = match self.download().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "downloaded DAARION Auth's signing keys");
                KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                    failed: false,
                    generation: now.generation + 1,
                }
            }
            Err(reason) => {
                tracing::warn!("cannot download DAARION Auth's signing keys: {reason}");
                KeySet {
                    keys: now.keys.clone(),
                    fetched_at: now.fetched_at,
                    failed: true,
                    generation: now.generation + 1,
                }
            }
        };
        let next = Arc::new(next);
        *self
            .current
            .write()
            .expect("the key set lock is never poisoned") = Arc::clone(&next);
        next.lookup(kid)
    }

    async fn download(&self) -> Result<HashMap<String, Key>, String> {
        let response = self
            .http
            .get(self.url.clone())
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "request timed out".to_string()
                } else {
                    "cannot connect".to_string()
                }
            })?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = read_capped(response, MAX_JWKS_BYTES).await?;
        parse_key_set(&body)
    }
}

/// The key set's body, at most `limit` bytes of it.
async fn read_capped(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    crate::outbound::read_capped(response, limit)
        .await
        .map_err(|e| format!("the key set {e}"))
}

/// The usable keys of a JWKS document. A key we cannot use (no `kid`, not
/// for signatures, an unsupported type or curve, a symmetric key, RSA under
/// 2048 bits, a declared `alg` that does not fit) is skipped, not fatal:
/// DAARION may publish keys for other purposes.
pub fn parse_key_set(body: &[u8]) -> Result<HashMap<String, Key>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "the key set is not JSON")?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err("the key set has no `keys` array".into());
    };
    let mut keys = HashMap::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            tracing::debug!("skipping a malformed JWK");
            continue;
        };
        match usable_key(&jwk) {
            Some((kid, key)) => {
                keys.insert(kid, key);
            }
            None => tracing::debug!(kid = ?jwk.common.key_id, "skipping an unusable JWK"),
        }
    }
    Ok(keys)
}

fn usable_key(jwk: &Jwk) -> Option<(String, Key)> {
    let kid = jwk.common.key_id.clone()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    // The allow-list: one algorithm per key type. Symmetric (`oct`) keys are
    // never taken from a key set, so a public key cannot become an HMAC secret.
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa)
            if rsa.n.trim_end_matches('=').len() >= MIN_RSA_MODULUS_B64 =>
        {
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    if let Some(declared) = jwk.common.key_algorithm {
        if Algorithm::try_from(declared).ok() != Some(alg) {
            return None;
        }
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((
        kid,
        Key {
            alg,
            key: Arc::new(key),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn keys(json: &str) -> HashMap<String, Key> {
        parse_key_set(json.as_bytes()).unwrap()
    }

    #[test]
    fn each_key_type_gets_its_one_algorithm() {
        let set = keys(&format!(
            r#"{{"keys":[
            {{"kty":"RSA","kid":"r","use":"sig","n":"{RSA_N}","e":"AQAB"}},
            {{"kty":"EC","kid":"e","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
            {{"kty":"OKP","kid":"o","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}}
            ]}}"#
        ));
        assert_eq!(set["r"].alg, Algorithm::RS256);
        assert_eq!(set["e"].alg, Algorithm::ES256);
        assert_eq!(set["o"].alg, Algorithm::EdDSA);
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let set = keys(&format!(
            r#"{{"keys":[
            {{"kty":"oct","kid":"secret","k":"c2VjcmV0"}},
            {{"kty":"RSA","n":"{RSA_N}","e":"AQAB"}},
            {{"kty":"RSA","kid":"enc","use":"enc","n":"{RSA_N}","e":"AQAB"}},
            {{"kty":"RSA","kid":"hs","alg":"HS256","n":"{RSA_N}","e":"AQAB"}},
            {{"kty":"RSA","kid":"ps","alg":"PS256","n":"{RSA_N}","e":"AQAB"}},
            {{"kty":"RSA","kid":"short","n":"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbw","e":"AQAB"}},
            {{"kty":"EC","kid":"p384","crv":"P-384","x":"AAAA","y":"AAAA"}},
            {{"kty":"weird","kid":"w"}},
            "not a key",
            {{"kty":"RSA","kid":"ok","alg":"RS256","n":"{RSA_N}","e":"AQAB"}}
            ]}}"#
        ));
        assert_eq!(set.keys().collect::<Vec<_>>(), ["ok"]);
    }

    /// A server that answers one request with `prefix` and then chunks of
    /// spaces (`chunks` of them, or until the client hangs up); gives the
    /// URL, and how many bytes it got out once done.
    fn chunked_server(
        prefix: &'static [u8],
        chunks: usize,
    ) -> (Url, std::thread::JoinHandle<usize>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/jwks", listener.local_addr().unwrap())).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while request.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            stream.write_all(head.as_bytes()).unwrap();
            let mut sent = 0;
            let chunk = vec![b' '; 4096];
            // A chunk; the empty one ends the body.
            let mut write = |data: &[u8]| -> std::io::Result<()> {
                write!(stream, "{:x}\r\n", data.len())?;
                stream.write_all(data)?;
                stream.write_all(b"\r\n")?;
                sent += data.len();
                Ok(())
            };
            let outcome = (|| {
                write(prefix)?;
                (0..chunks).try_for_each(|_| write(&chunk))?;
                write(b"")
            })();
            drop(outcome); // a client that hung up is what some tests want
            sent
        });
        (url, server)
    }

    async fn get(url: Url) -> reqwest::Response {
        reqwest::get(url).await.unwrap()
    }

    #[tokio::test]
    async fn a_chunked_body_is_read_up_to_the_limit_only() {
        // Within the limit: read whole.
        let (url, server) = chunked_server(br#"{"keys":[]}"#, 3);
        let body = read_capped(get(url).await, 64 * 1024).await.unwrap();
        assert_eq!(body.len(), 11 + 3 * 4096);
        assert_eq!(parse_key_set(&body).unwrap().len(), 0);
        server.join().unwrap();

        // 32 MiB on offer: given up at the limit, the connection closed.
        let (url, server) = chunked_server(br#"{"keys":["#, 8 * 1024);
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            read_capped(get(url).await, 64 * 1024),
        )
        .await
        .expect("the reader gives up, it does not read on");
        assert_eq!(refused.unwrap_err(), "the key set is too large");
        let sent = tokio::task::spawn_blocking(move || server.join().unwrap())
            .await
            .unwrap();
        assert!(sent < 16 * 1024 * 1024, "{sent} bytes sent");
    }

    #[test]
    fn a_document_without_keys_is_an_error() {
        assert!(parse_key_set(b"[]").is_err());
        assert!(parse_key_set(b"<html>").is_err());
        assert!(parse_key_set(br#"{"keys":[]}"#).unwrap().is_empty());
    }
}
