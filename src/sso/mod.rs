//! Single sign-on: DAARION access tokens in (verified in `verify`, with
//! DAARION's public keys from `jwks`), Synapse login tokens out (minted
//! here: `org.matrix.login.jwt`, HS256 with `SYNAPSE_JWT_SECRET`). Who may
//! get one, and the provisioning it may need first, is `accounts`'s
//! business; this module only speaks JWT.

pub mod jwks;
pub mod verify;

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::config::Settings;
use crate::secret::Secret;

pub use verify::{Claims, Refusal, Verifier};

/// Lifetime of a Synapse login token. Synapse adds 120 s of leeway to
/// `exp`, so a token is accepted for up to four minutes; it is meant to be
/// used at once.
pub const LOGIN_TOKEN_LIFETIME: TimeDelta = TimeDelta::seconds(120);

/// A token Synapse's `jwt_config` accepts as `org.matrix.login.jwt`.
pub struct LoginToken {
    pub token: Secret,
    pub expires_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct SynapseClaims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

pub struct Sso {
    verifier: Verifier,
    synapse_key: Option<EncodingKey>,
    synapse_issuer: Option<String>,
    synapse_audience: Option<String>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso")
            .field("enabled", &self.missing_setting().is_none())
            .finish_non_exhaustive()
    }
}

impl Sso {
    pub fn new(settings: &Settings) -> anyhow::Result<Sso> {
        Ok(Sso {
            verifier: Verifier::new(settings)?,
            synapse_key: settings
                .synapse_jwt_secret
                .as_ref()
                .map(|s| EncodingKey::from_secret(s.expose().as_bytes())),
            synapse_issuer: settings.synapse_jwt_issuer.clone(),
            synapse_audience: settings.synapse_jwt_audience.clone(),
        })
    }

    /// The setting SSO cannot work without, if it is missing.
    pub fn missing_setting(&self) -> Option<&'static str> {
        if self.synapse_key.is_none() {
            Some("SYNAPSE_JWT_SECRET")
        } else if !self.verifier.has_keys() {
            Some("AUTH_JWT_SECRET or AUTH_JWKS_URL")
        } else {
            None
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        self.verifier.verify(token).await
    }

    /// See [`Verifier::refresh_session`].
    pub fn refresh_session(&self, token: &str, sub: &str) -> Option<String> {
        self.verifier.refresh_session(token, sub)
    }

    /// A login token for `@localpart`, valid from `now` for
    /// [`LOGIN_TOKEN_LIFETIME`]. None when `SYNAPSE_JWT_SECRET` is not set.
    pub fn login_token(&self, localpart: &str, now: DateTime<Utc>) -> Option<LoginToken> {
        let key = self.synapse_key.as_ref()?;
        let expires_at = now + LOGIN_TOKEN_LIFETIME;
        let claims = SynapseClaims {
            sub: localpart,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            iss: self.synapse_issuer.as_deref(),
            aud: self.synapse_audience.as_deref(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, key)
            .expect("HS256 signing of plain claims cannot fail");
        Some(LoginToken {
            token: Secret::new(token),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};
    use serde_json::Value;

    fn sso(extra: &[(&str, &str)]) -> Sso {
        let mut env = vec![
            ("SYNAPSE_SERVER_NAME", "daarion.space"),
            ("SYNAPSE_REGISTRATION_SECRET", "x"),
        ];
        env.extend_from_slice(extra);
        let settings = Settings::from_lookup(|k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        Sso::new(&settings).unwrap()
    }

    #[test]
    fn login_tokens_are_what_synapse_expects() {
        let sso = sso(&[("SYNAPSE_JWT_SECRET", "hs"), ("AUTH_JWT_SECRET", "a")]);
        assert_eq!(sso.missing_setting(), None);
        let now = Utc::now();
        let minted = sso.login_token("olena", now).unwrap();
        assert_eq!(minted.expires_at.timestamp(), now.timestamp() + 120);
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        let claims = decode::<Value>(minted.token.expose(), &DecodingKey::from_secret(b"hs"), &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "olena");
        assert_eq!(claims["iat"], now.timestamp());
        // Synapse refuses an `aud` it was not configured for.
        assert!(claims.get("aud").is_none() && claims.get("iss").is_none());

        let sso = self::sso(&[
            ("SYNAPSE_JWT_SECRET", "hs"),
            ("SYNAPSE_JWT_ISSUER", "provisioner"),
            ("SYNAPSE_JWT_AUDIENCE", "synapse"),
            ("AUTH_JWT_SECRET", "a"),
        ]);
        let minted = sso.login_token("olena", now).unwrap();
        let claims = decode::<Value>(minted.token.expose(), &DecodingKey::from_secret(b"hs"), &v)
            .unwrap()
            .claims;
        assert_eq!(claims["iss"], "provisioner");
        assert_eq!(claims["aud"], "synapse");
    }

    #[test]
    fn missing_settings_are_named() {
        assert_eq!(
            sso(&[("AUTH_JWT_SECRET", "a")]).missing_setting(),
            Some("SYNAPSE_JWT_SECRET")
        );
        assert_eq!(
            sso(&[("SYNAPSE_JWT_SECRET", "a")]).missing_setting(),
            Some("AUTH_JWT_SECRET or AUTH_JWKS_URL")
        );
    }
}
