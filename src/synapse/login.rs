//! Logging a person in at Synapse with a login token we minted
//! (`org.matrix.login.jwt`), for callers that want a session, not a token.

use std::net::IpAddr;

use serde_json::json;

use super::{Body, Endpoint, Result, Synapse, SynapseError};
use crate::secret::Secret;

/// A fresh Matrix session on a new device.
#[derive(Debug)]
pub struct Session {
    pub user_id: String,
    pub access_token: Secret,
    pub device_id: String,
}

impl Synapse {
    /// `POST /_matrix/client/v3/login` with a JWT login token, on behalf of
    /// the client at `client` (so Synapse's per-address login limit counts
    /// that client, not this service). Each call creates a new device.
    #[tracing::instrument(name = "synapse.login_jwt", skip_all, err(level = "warn"))]
    pub async fn login_jwt(
        &self,
        token: &Secret,
        device_name: Option<&str>,
        client: IpAddr,
    ) -> Result<Session> {
        let mut body = json!({"type": "org.matrix.login.jwt", "token": token.expose()});
        if let Some(name) = device_name {
            body["initial_device_display_name"] = json!(name);
        }
        let (_, answer) = self
            .send_for(
                Endpoint::Login,
                "/_matrix/client/v3/login",
                Body::Json(&body),
                None,
                Some(client),
            )
            .await?;
        let field = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| SynapseError::unreadable(format!("login answer has no {name}")))
        };
        Ok(Session {
            user_id: field("user_id")?,
            access_token: Secret::new(field("access_token")?),
            device_id: field("device_id")?,
        })
    }
}
