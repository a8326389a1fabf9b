//! What the OpenID provider signs with, and signs: its key (given, or
//! generated once and shared by every replica through the database), ID
//! tokens' signatures and back-channel logout tokens. Below both the
//! provider (`oidc`) and the worker (`jobs`, which sends the logouts), so
//! neither reaches up to the other.

pub mod keys;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::config::Settings;
use crate::secret::Secret;
use crate::store::Store;
use keys::SigningKey;

/// ID tokens and logout tokens live this long.
pub const ID_TOKEN_TTL_S: i64 = 5 * 60;
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Signs what the provider issues: ID tokens and back-channel logout
/// tokens. Shared with the worker, which sends the logouts.
#[derive(Debug)]
pub struct Signer {
    issuer: String,
    client_id: String,
    key: SigningKey,
    clock: Clock,
}

impl Signer {
    /// The key in use: `OIDC_SIGNING_KEY`, else the generated one every
    /// replica shares (made now if there is none), published in the JWKS.
    /// None when the provider is not configured.
    pub async fn load(
        settings: &Settings,
        store: &Store,
        clock: &Clock,
    ) -> anyhow::Result<Option<Signer>> {
        let oidc = &settings.oidc;
        let Some(public_url) = oidc
            .public_url
            .as_ref()
            .filter(|_| oidc.missing_setting().is_none())
        else {
            return Ok(None);
        };
        let key = match &oidc.signing_key {
            Some(pem) => SigningKey::from_pem(pem)
                .map_err(|reason| anyhow::anyhow!("OIDC_SIGNING_KEY {reason}"))?,
            None => generated_key(store).await?,
        };
        let jwk = key.public_jwk().to_string();
        store
            .use_signing_key(key.kid(), &jwk, clock.now_ms())
            .await?;
        tracing::info!(
            kid = key.kid(),
            alg = key.alg_name(),
            "OpenID provider signing key"
        );
        Ok(Some(Signer {
            issuer: public_url.as_str().trim_end_matches('/').to_string(),
            client_id: oidc.client_id.clone(),
            key,
            clock: clock.clone(),
        }))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The JWS algorithm of the key in use (`ES256`, `RS256`, `EdDSA`).
    pub fn alg_name(&self) -> &'static str {
        self.key.alg_name()
    }

    /// The clock tokens are dated by (the provider's too).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// `claims` signed with the key in use (`typ`: the header's, if not JWT).
    pub fn sign(&self, claims: &Value, typ: Option<&str>) -> String {
        self.key.sign(claims, typ)
    }

    /// A back-channel logout token for one Matrix session (OpenID
    /// Back-Channel Logout 1.0, section 2.4).
    pub fn logout_token(&self, user_id: &str, sid: &str) -> Secret {
        let now = self.clock.now_ms() / 1000;
        let claims = json!({
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + ID_TOKEN_TTL_S,
            "jti": random_secret(),
            "sub": user_id,
            "sid": sid,
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        });
        Secret::new(self.key.sign(&claims, Some("logout+jwt")))
    }
}

async fn generated_key(store: &Store) -> anyhow::Result<SigningKey> {
    let stored = store.generated_signing_key().await?;
    if let Some(pem) = stored.token {
        return SigningKey::from_pem(&pem)
            .map_err(|reason| anyhow::anyhow!("the stored OpenID signing key {reason}"));
    }
    let (key, pem) = SigningKey::generate();
    if store
        .keep_generated_signing_key(stored.version, &pem)
        .await?
    {
        tracing::info!("generated the OpenID provider's signing key");
        return Ok(key);
    }
    // Another replica kept one first: everyone signs with that one.
    let pem = store
        .generated_signing_key()
        .await?
        .token
        .ok_or_else(|| anyhow::anyhow!("the OpenID signing key vanished"))?;
    SigningKey::from_pem(&pem).map_err(|reason| anyhow::anyhow!("the stored key {reason}"))
}

/// 256 random bits, URL-safe.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
