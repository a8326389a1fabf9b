//! The admin access token for Synapse's admin API, obtained without asking
//! the operator for another secret: the service runs its own admin account
//! (`SYNAPSE_ADMIN_USER`, default `@matrix-provisioner`) created through the
//! same shared-secret registration. Its password is derived from the
//! registration secret, so any replica, after any restart, can log in again;
//! anyone who could learn it could already create admins with that secret.
//!
//! An operator may instead pass `SYNAPSE_ADMIN_TOKEN`; it is then used as is.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::{Mutex, RwLock};

use super::{Body, Endpoint, Result, Synapse, SynapseError};
use crate::config::{Secret, Settings};

/// One device for the service account, so logins after restarts replace
/// its token instead of piling up devices.
const DEVICE_ID: &str = "MATRIX_PROVISIONER";

#[derive(Debug)]
pub(super) struct AdminToken {
    configured: Option<Secret>,
    localpart: String,
    password: Secret,
    cached: RwLock<Option<Secret>>,
    /// Held while obtaining a token, so a burst of requests logs in once.
    refresh: Mutex<()>,
}

impl AdminToken {
    pub(super) fn new(settings: &Settings) -> AdminToken {
        AdminToken {
            configured: settings.synapse_admin_token.clone(),
            localpart: settings.synapse_admin_user.to_lowercase(),
            password: derived_password(&settings.registration_secret, &settings.synapse_admin_user),
            cached: RwLock::new(None),
            refresh: Mutex::new(()),
        }
    }

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
        let token = self.obtain(synapse).await?;
        *self.cached.write().await = Some(token.clone());
        Ok(token)
    }

    pub(super) async fn invalidate(&self) {
        *self.cached.write().await = None;
    }

    /// Logs in; on the very first start, registers the admin account first.
    async fn obtain(&self, synapse: &Synapse) -> Result<Secret> {
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
                    SynapseError::refused(
                        200,
                        "M_BAD_JSON",
                        "registration returned no access token",
                    )
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
            "device_id": DEVICE_ID,
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
            .ok_or_else(|| {
                SynapseError::refused(200, "M_BAD_JSON", "login returned no access token")
            })
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
