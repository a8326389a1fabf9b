//! The admin access token for Synapse's admin API, obtained without asking
//! the operator for another secret: the service runs its own admin account
//! (`SYNAPSE_ADMIN_USER`, default `@matrix-provisioner`) created through the
//! same shared-secret registration. Its password is derived from the
//! registration secret, so any replica, after any restart, can log in again;
//! anyone who could learn it could already create admins with that secret.
//!
//! The token is shared through the database by every process of the
//! deployment and replaced only when Synapse refuses it (see
//! [`TokenStore`]). An operator may instead pass `SYNAPSE_ADMIN_TOKEN`; it
//! is then used as is and never stored.

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::{Mutex, RwLock};

use super::{Body, Endpoint, Result, Synapse, SynapseError};
use crate::config::Settings;
use crate::secret::Secret;

/// The admin token as the deployment keeps it (see [`TokenStore`]).
#[derive(Debug, Clone, Default)]
pub struct StoredToken {
    pub token: Option<Secret>,
    /// Bumped by every replacement: a replacement names the version it
    /// replaces, so of two processes replacing at once only one succeeds.
    pub version: i64,
}

/// Where every process of one deployment (replicas, cron runs) finds the
/// admin token: the database. Synapse keeps every token a login creates
/// alive, so a process that logged in for itself each time it started would
/// leave one live admin token per start (a `*/10` cron: 52,000 a year).
pub trait TokenStore: Send + Sync {
    fn load(&self) -> BoxFuture<'_, anyhow::Result<StoredToken>>;
    /// Stores `token` if the stored version is still `version`; false when
    /// another process replaced it first.
    fn replace<'a>(
        &'a self,
        version: i64,
        token: &'a Secret,
    ) -> BoxFuture<'a, anyhow::Result<bool>>;
}

pub(super) struct AdminToken {
    /// `SYNAPSE_ADMIN_TOKEN`: used as is and never stored.
    configured: Option<Secret>,
    localpart: String,
    password: Secret,
    store: std::sync::Arc<dyn TokenStore>,
    cached: RwLock<Option<Secret>>,
    /// Held while finding or obtaining a token, so a burst of requests in
    /// this process reads the database or logs in once.
    refresh: Mutex<()>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("configured", &self.configured.is_some())
            .field("localpart", &self.localpart)
            .finish_non_exhaustive()
    }
}

impl AdminToken {
    pub(super) fn new(settings: &Settings, store: std::sync::Arc<dyn TokenStore>) -> AdminToken {
        AdminToken {
            configured: settings.synapse_admin_token.clone(),
            localpart: settings.synapse_admin_user.to_lowercase(),
            password: derived_password(&settings.registration_secret, &settings.synapse_admin_user),
            store,
            cached: RwLock::new(None),
            refresh: Mutex::new(()),
        }
    }

    /// The token to use: the operator's, else the one this process holds,
    /// else the deployment's (from the database), else a new one (a login,
    /// stored for every other process).
    pub(super) async fn get(&self, synapse: &Synapse) -> Result<Secret> {
        if let Some(token) = &self.configured {
            return Ok(token.clone());
        }
        if let Some(token) = self.cached.read().await.clone() {
            return Ok(token);
        }
        let _guard = self.refresh.lock().await;
        if let Some(token) = self.cached.read().await.clone() {
            return Ok(token);
        }
        self.shared_or_new(synapse, None).await
    }

    /// Synapse refused `refused` (`M_UNKNOWN_TOKEN`): the token to use now.
    /// Another task or process may have replaced it already; only when the
    /// database still holds the refused one does this process log in.
    pub(super) async fn replace(&self, synapse: &Synapse, refused: &Secret) -> Result<Secret> {
        if let Some(token) = &self.configured {
            return Ok(token.clone());
        }
        let _guard = self.refresh.lock().await;
        if let Some(token) = self.cached.read().await.clone() {
            if token != *refused {
                return Ok(token);
            }
        }
        self.shared_or_new(synapse, Some(refused)).await
    }

    async fn shared_or_new(&self, synapse: &Synapse, refused: Option<&Secret>) -> Result<Secret> {
        let stored = self.store.load().await.map_err(store_unavailable)?;
        if let Some(token) = stored.token.filter(|t| Some(t) != refused) {
            *self.cached.write().await = Some(token.clone());
            return Ok(token);
        }
        let fresh = self.obtain(synapse).await?;
        let won = match self.store.replace(stored.version, &fresh).await {
            Ok(won) => won,
            Err(e) => {
                // Nobody will find this token again: do not leave it alive.
                self.discard(synapse, &fresh).await;
                return Err(store_unavailable(e));
            }
        };
        if won {
            tracing::info!("logged in to Synapse as the service's admin account; token shared through the database");
            *self.cached.write().await = Some(fresh.clone());
            return Ok(fresh);
        }
        // Another process stored a token meanwhile: use theirs, end ours.
        self.discard(synapse, &fresh).await;
        let stored = self.store.load().await.map_err(store_unavailable)?;
        let token = stored
            .token
            .ok_or_else(|| store_unavailable(anyhow::anyhow!("the admin token vanished")))?;
        *self.cached.write().await = Some(token.clone());
        Ok(token)
    }

    /// Logs a surplus token out, so the service leaves one live token.
    async fn discard(&self, synapse: &Synapse, token: &Secret) {
        let outcome = synapse
            .send(
                Endpoint::Logout,
                "/_matrix/client/v3/logout",
                Body::Json(&json!({})),
                Some(token),
            )
            .await;
        if let Err(e) = outcome {
            tracing::warn!("cannot log a surplus admin token out: {e}");
        }
    }

    /// Logs in; on the very first start, registers the admin account first.
    /// A refusal is counted: without a token the admin API is out of reach.
    async fn obtain(&self, synapse: &Synapse) -> Result<Secret> {
        let obtained = self.login_or_register(synapse).await;
        if let Err(SynapseError::Refused { .. }) = &obtained {
            crate::metrics::admin_token_refused("login_refused");
        }
        obtained
    }

    async fn login_or_register(&self, synapse: &Synapse) -> Result<Secret> {
        match self.login(synapse).await {
            Ok(token) => return Ok(token),
            // 403: no such user yet (or another password, handled below).
            Err(SynapseError::Refused { status: 403, .. }) => {}
            Err(e) => return Err(e),
        }
        match synapse
            .register(
                &self.localpart,
                &self.password,
                Some("DAARION provisioner"),
                true,
                false,
            )
            .await
        {
            Ok(registered) => {
                tracing::info!(user = %registered.user_id, "created the service's Synapse admin account");
                registered.access_token.ok_or_else(|| {
                    SynapseError::unreadable("registration returned no access token")
                })
            }
            // Another replica (or the cron command) may have registered it a
            // moment ago: its password is ours too, so log in again.
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => match self.login(synapse).await {
                Ok(token) => Ok(token),
                Err(SynapseError::Refused { status: 403, .. }) => Err(SynapseError::refused(
                    403,
                    "M_FORBIDDEN",
                    format!(
                        "the admin account @{} exists but does not accept the password derived \
                         from SYNAPSE_REGISTRATION_SECRET; set SYNAPSE_ADMIN_TOKEN or \
                         SYNAPSE_ADMIN_USER",
                        self.localpart
                    ),
                )),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn login(&self, synapse: &Synapse) -> Result<Secret> {
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.localpart},
            "password": self.password.expose(),
            // A device of its own (no fixed `device_id`): logging a surplus
            // token out deletes its device, and with it every token of that
            // device, so two logins must never share one.
            "initial_device_display_name": "matrix-provisioner",
        });
        let (_, answer) = synapse
            .send(
                Endpoint::Login,
                "/_matrix/client/v3/login",
                Body::Json(&body),
                None,
            )
            .await?;
        answer["access_token"]
            .as_str()
            .map(Secret::new)
            .ok_or_else(|| SynapseError::unreadable("login returned no access token"))
    }
}

fn store_unavailable(e: anyhow::Error) -> SynapseError {
    SynapseError::Unavailable {
        reason: format!("cannot read or store the shared admin token: {e:#}"),
        retry_after: None,
        rate_limited: false,
    }
}

/// The service admin account's password: anyone holding the registration
/// secret can compute it (operators, to log in as that account; tests, to
/// check it never appears in logs).
pub fn derived_password(registration_secret: &Secret, localpart: &str) -> Secret {
    let mut mac = Hmac::<Sha256>::new_from_slice(registration_secret.expose().as_bytes())
        .expect("HMAC takes any key");
    mac.update(b"matrix-provisioner admin password v1\0");
    mac.update(localpart.as_bytes());
    Secret::new(hex::encode(mac.finalize().into_bytes()))
}
