//! Verification of DAARION access tokens: which key may check which
//! algorithm (HS256 only with `AUTH_JWT_SECRET`; RS256, ES256 and EdDSA only
//! with the JWKS key named by `kid`, each key fixed to one algorithm), then
//! signature, `exp`/`nbf` with [`LEEWAY_SECONDS`], and `iss`/`aud` when
//! configured. Anything else (`none`, HS384, embedded keys…) is refused, and
//! so is a token that says it is not an access token (CONTRACT.md section
//! 10: DAARION Auth signs its refresh tokens with the same key).

use std::sync::Arc;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Jwks, Lookup};
use crate::config::Settings;
use crate::domain::event::valid_id;

/// Clock skew tolerated between DAARION Auth and this service.
pub const LEEWAY_SECONDS: u64 = 30;
/// Longer tokens are refused unread.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What we use from a verified DAARION access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The DAARION `user_id`.
    pub sub: String,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    pub picture: Option<String>,
    /// DAARION Auth's tokens carry the person's address.
    pub email: Option<String>,
    /// DAARION's session id, when the token carries one (sign-out ends the
    /// Matrix sessions opened from that session).
    pub sid: Option<String>,
}

/// Why a token is not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A 401: the token is not a valid DAARION token. The reason is for
    /// logs, not for the caller.
    Invalid(String),
    /// The token names a key we do not have and DAARION Auth's key set
    /// cannot be downloaded now: a 503, the token may well be fine.
    KeysUnavailable,
}

fn invalid(reason: impl Into<String>) -> Refusal {
    Refusal::Invalid(reason.into())
}

/// The claims as sent; optional ones of an unexpected type are ignored
/// rather than failing the login.
#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    #[serde(default)]
    preferred_username: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    picture: Option<Value>,
    #[serde(default)]
    email: Option<Value>,
    #[serde(default)]
    sid: Option<Value>,
    /// What kind of token it says it is, under any of the names issuers
    /// use (DAARION Auth's `type`, Keycloak's `typ`, Cognito's
    /// `token_use`).
    #[serde(default, rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    typ: Option<Value>,
    #[serde(default)]
    token_use: Option<Value>,
}

/// Whether what a token says of its kind allows it as an access token: a
/// token that says nothing is judged as before; one that names anything
/// but an access token (`refresh`, `id`, …) is refused.
fn says_access(kind: &Value) -> bool {
    let Value::String(kind) = kind else {
        return false;
    };
    [
        "access",
        "access_token",
        "bearer",
        "at+jwt",
        "application/at+jwt",
    ]
    .iter()
    .any(|word| kind.eq_ignore_ascii_case(word))
}

pub struct Verifier {
    secret: Option<DecodingKey>,
    jwks: Option<Jwks>,
    /// One per accepted algorithm, each allowing only that algorithm.
    validations: Vec<(Algorithm, Validation)>,
}

impl Verifier {
    pub fn new(settings: &Settings) -> anyhow::Result<Verifier> {
        let secret = settings
            .auth_jwt_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let jwks = settings
            .auth_jwks_url
            .clone()
            .map(|url| Jwks::new(url, settings.auth_jwks_min_refresh))
            .transpose()?;
        let validations = [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ]
        .into_iter()
        .map(|alg| (alg, validation(alg, settings)))
        .collect();
        Ok(Verifier {
            secret,
            jwks,
            validations,
        })
    }

    /// Whether any key is configured at all.
    pub fn has_keys(&self) -> bool {
        self.secret.is_some() || self.jwks.is_some()
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is too long"));
        }
        let header = decode_header(token).map_err(|e| invalid(format!("bad header: {e}")))?;
        if header.crit.is_some() {
            return Err(invalid("the token has critical header extensions"));
        }
        let jwks_key;
        let key: &DecodingKey = match header.alg {
            Algorithm::HS256 => self
                .secret
                .as_ref()
                .ok_or_else(|| invalid("an HS256 token, but AUTH_JWT_SECRET is not configured"))?,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                let jwks = self.jwks.as_ref().ok_or_else(|| {
                    invalid("a public-key token, but AUTH_JWKS_URL is not configured")
                })?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid("the token names no key (`kid`)"))?;
                jwks_key = match jwks.key(kid).await {
                    Lookup::Found(key) if key.alg == header.alg => key.key,
                    Lookup::Found(key) => {
                        return Err(invalid(format!(
                            "key {kid:?} is for {:?}, the token says {:?}",
                            key.alg, header.alg
                        )))
                    }
                    Lookup::Unknown => return Err(invalid(format!("unknown key {kid:?}"))),
                    Lookup::Unavailable => return Err(Refusal::KeysUnavailable),
                };
                Arc::as_ref(&jwks_key)
            }
            other => return Err(invalid(format!("algorithm {other:?} is not accepted"))),
        };
        let validation = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, v)| v)
            .expect("every accepted algorithm has a validation");
        let data = decode::<RawClaims>(token, key, validation)
            .map_err(|e| invalid(format!("rejected: {e}")))?;
        let raw = data.claims;
        if let Some(kind) = [&raw.kind, &raw.typ, &raw.token_use]
            .into_iter()
            .flatten()
            .find(|kind| !says_access(kind))
        {
            return Err(invalid(format!("not an access token (it says {kind})")));
        }
        if !valid_id(&raw.sub) {
            return Err(invalid("`sub` is not an acceptable DAARION user id"));
        }
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
            _ => None,
        };
        Ok(Claims {
            sub: raw.sub,
            preferred_username: text(raw.preferred_username),
            name: text(raw.name),
            picture: text(raw.picture),
            email: text(raw.email),
            sid: text(raw.sid).filter(|s| s.len() <= 255),
        })
    }
}

/// A DAARION refresh token as its login API hands it out.
#[derive(Deserialize)]
struct RefreshClaims {
    sub: String,
    #[serde(default, rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    session_id: Option<Value>,
}

impl Verifier {
    /// The DAARION session a refresh token from DAARION Auth's login API
    /// names (its `session_id`), for `sub`. Only an HS256 token signed with
    /// `AUTH_JWT_SECRET`, unexpired, of DAARION's issuer, that says it is a
    /// refresh token: anything else names no session. Never used as a
    /// credential: it only labels the Matrix sessions a sign-in opens, so
    /// that DAARION's sign-out ends them.
    pub fn refresh_session(&self, token: &str, sub: &str) -> Option<String> {
        let key = self.secret.as_ref()?;
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let (_, validation) = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == Algorithm::HS256)?;
        let claims = decode::<RefreshClaims>(token, key, validation).ok()?.claims;
        let refresh =
            matches!(&claims.kind, Some(Value::String(k)) if k.eq_ignore_ascii_case("refresh"));
        match claims.session_id {
            Some(Value::String(sid)) if refresh && claims.sub == sub && valid_session(&sid) => {
                Some(sid)
            }
            _ => None,
        }
    }
}

fn valid_session(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= 255 && !sid.chars().any(char::is_control)
}

fn validation(alg: Algorithm, settings: &Settings) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECONDS;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &settings.auth_jwt_issuer {
        v.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &settings.auth_jwt_audience {
        Some(audience) => {
            v.set_audience(&[audience]);
            required.push("aud");
        }
        // Without a configured audience, tokens for any audience are taken.
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::collections::HashMap;

    const SECRET: &str = "daarion-test-secret";

    fn verifier(extra: &[(&str, &str)]) -> Verifier {
        let mut env: HashMap<&str, &str> = [
            ("SYNAPSE_SERVER_NAME", "daarion.space"),
            ("SYNAPSE_REGISTRATION_SECRET", "x"),
            ("AUTH_JWT_SECRET", SECRET),
        ]
        .into_iter()
        .collect();
        env.extend(extra.iter().copied());
        let settings = Settings::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        Verifier::new(&settings).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn hs256(claims: Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn refused(v: &Verifier, token: &str) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        matches!(rt.block_on(v.verify(token)), Err(Refusal::Invalid(_)))
    }

    #[tokio::test]
    async fn a_good_token_gives_its_claims() {
        let v = verifier(&[]);
        let token = hs256(
            json!({"sub": "u_1", "exp": now() + 60, "preferred_username": "olena",
                   "name": "Олена", "picture": 5, "aud": "anything"}),
            SECRET,
        );
        let claims = v.verify(&token).await.unwrap();
        assert_eq!(claims.sub, "u_1");
        assert_eq!(claims.preferred_username.as_deref(), Some("olena"));
        assert_eq!(claims.name.as_deref(), Some("Олена"));
        assert_eq!(claims.picture, None);
    }

    #[test]
    fn bad_tokens_are_refused() {
        let v = verifier(&[
            ("AUTH_JWT_ISSUER", "https://auth"),
            ("AUTH_JWT_AUDIENCE", "matrix"),
        ]);
        let good = json!({"sub": "u_1", "exp": now() + 60, "iss": "https://auth", "aud": "matrix"});
        assert!(!refused(&v, &hs256(good.clone(), SECRET)));
        let with = |k: &str, val: Value| {
            let mut c = good.clone();
            c[k] = val;
            hs256(c, SECRET)
        };
        let without = |k: &str| {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove(k);
            hs256(c, SECRET)
        };
        for token in [
            hs256(good.clone(), "another-secret"),
            with("exp", json!(now() - 60)),
            with("nbf", json!(now() + 60)),
            with("iss", json!("https://evil")),
            with("aud", json!("other")),
            with("sub", json!("")),
            with("sub", json!(42)),
            without("exp"),
            without("iss"),
            without("aud"),
            without("sub"),
            "garbage".into(),
            "a.b.c".into(),
            String::new(),
        ] {
            assert!(refused(&v, &token), "{token}");
        }
        // Within the leeway: accepted.
        assert!(!refused(&v, &with("exp", json!(now() - 10))));
        assert!(!refused(&v, &with("nbf", json!(now() + 10))));
    }

    /// DAARION Auth as it runs (CONTRACT.md section 10): its access token
    /// works with `AUTH_JWT_ISSUER=daarion-auth` and no audience; its
    /// refresh token, signed with the same key, does not, and neither does
    /// any token that says it is something else.
    #[test]
    fn daarion_s_own_tokens_and_only_its_access_tokens() {
        let v = verifier(&[("AUTH_JWT_ISSUER", "daarion-auth")]);
        let sub = "3f2a9c1e-7b4d-4e8a-9c0f-1a2b3c4d5e6f";
        let access = json!({"sub": sub, "email": "olena@daarion.city",
            "name": "Олена Петренко", "roles": ["member"], "type": "access",
            "iss": "daarion-auth", "iat": now(), "exp": now() + 1800});
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let claims = rt
            .block_on(v.verify(&hs256(access.clone(), SECRET)))
            .unwrap();
        assert_eq!(claims.sub, sub);
        assert_eq!(claims.name.as_deref(), Some("Олена Петренко"));
        assert_eq!(claims.preferred_username, None);
        assert_eq!(claims.email.as_deref(), Some("olena@daarion.city"));
        let refresh = json!({"sub": sub, "type": "refresh", "session_id": "s-1",
            "iss": "daarion-auth", "iat": now(), "exp": now() + 86400 * 30});
        assert!(refused(&v, &hs256(refresh.clone(), SECRET)));
        // It names the session its login opened, and only for its person.
        let refresh = hs256(refresh, SECRET);
        assert_eq!(v.refresh_session(&refresh, sub).as_deref(), Some("s-1"));
        assert_eq!(v.refresh_session(&refresh, "someone-else"), None);
        assert_eq!(v.refresh_session(&hs256(access.clone(), SECRET), sub), None);
        let forged = json!({"sub": sub, "type": "refresh", "session_id": "s-1",
            "iss": "daarion-auth", "iat": now(), "exp": now() + 60});
        assert_eq!(v.refresh_session(&hs256(forged, "other-key"), sub), None);
        let with = |k: &str, val: Value| {
            let mut c = access.clone();
            c.as_object_mut().unwrap().remove("type");
            c[k] = val;
            hs256(c, SECRET)
        };
        for (claim, kind) in [
            ("type", json!("refresh")),
            ("type", json!("id")),
            ("type", json!(1)),
            ("typ", json!("Refresh")),
            ("typ", json!("ID")),
            ("token_use", json!("id")),
        ] {
            assert!(refused(&v, &with(claim, kind.clone())), "{claim}: {kind}");
        }
        for (claim, kind) in [
            ("type", json!("ACCESS")),
            ("typ", json!("Bearer")),
            ("typ", json!("at+jwt")),
            ("token_use", json!("access")),
        ] {
            assert!(!refused(&v, &with(claim, kind.clone())), "{claim}: {kind}");
        }
        // Two claims, one of them not an access token's: refused.
        let mut both = access.clone();
        both["token_use"] = json!("id");
        assert!(refused(&v, &hs256(both, SECRET)));
        // Saying nothing of its kind: judged as before.
        let mut plain = access;
        plain.as_object_mut().unwrap().remove("type");
        assert!(!refused(&v, &hs256(plain, SECRET)));
        // The issuer is still checked.
        let mut other = json!({"sub": sub, "exp": now() + 60, "iss": "someone-else"});
        assert!(refused(&v, &hs256(other.take(), SECRET)));
    }

    #[test]
    fn unsigned_and_unlisted_algorithms_are_refused() {
        use base64::Engine;
        let b64 = |v: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let claims = b64(json!({"sub": "u_1", "exp": now() + 60}));
        let v = verifier(&[]);
        for header in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "None"}),
            json!({"typ": "JWT"}),
        ] {
            assert!(refused(&v, &format!("{}.{claims}.", b64(header))));
        }
        // HS512 with the right secret: not on the list.
        let token = encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub": "u_1", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(refused(&v, &token));
        // A public-key token without a JWKS configured.
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k".into());
        let token = format!(
            "{}.{claims}.c2ln",
            b64(serde_json::to_value(&header).unwrap())
        );
        assert!(refused(&v, &token));
    }
}
