//! Shared-secret registration (`/_synapse/admin/v1/register`): a fresh
//! nonce for every attempt (Synapse forgets a nonce on first use, even a
//! failed one) and `mac = HMAC-SHA1(secret, nonce\0user\0password\0admin|notadmin)`.

use hmac::{Hmac, Mac};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::json;
use sha1::Sha1;

use super::{Body, Endpoint, Result, Synapse, SynapseError};
use crate::secret::Secret;

const PATH: &str = "/_synapse/admin/v1/register";

/// What a registration gives back (the token only without `inhibit_login`).
#[derive(Debug)]
pub struct Registered {
    pub user_id: String,
    pub access_token: Option<Secret>,
}

/// `hex(HMAC-SHA1(secret, nonce \0 username \0 password \0 admin|notadmin))`.
pub fn registration_mac(
    secret: &str,
    nonce: &str,
    username: &str,
    password: &str,
    admin: bool,
) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    for (i, part) in [nonce, username, password].iter().enumerate() {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    mac.update(b"\0");
    mac.update(if admin {
        b"admin" as &[u8]
    } else {
        b"notadmin"
    });
    hex::encode(mac.finalize().into_bytes())
}

/// A strong password nobody will ever type: DAARION people log in through
/// SSO. It is sent once to Synapse (which only keeps its bcrypt hash) and
/// never stored or logged by us.
pub fn random_password() -> Secret {
    Secret::new(
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(48)
            .map(char::from)
            .collect::<String>(),
    )
}

impl Synapse {
    /// Registers `localpart` (which must be lowercase). Errors of note:
    /// `M_USER_IN_USE`, `M_INVALID_USERNAME`, `M_EXCLUSIVE`.
    pub async fn register(
        &self,
        localpart: &str,
        password: &Secret,
        displayname: Option<&str>,
        admin: bool,
        inhibit_login: bool,
    ) -> Result<Registered> {
        debug_assert_eq!(localpart, localpart.to_lowercase());
        let (_, nonce) = self
            .send(Endpoint::RegisterNonce, PATH, Body::Empty, None)
            .await?;
        let nonce = nonce["nonce"]
            .as_str()
            .ok_or_else(|| SynapseError::unreadable("the register endpoint sent no nonce"))?;
        let mac = registration_mac(
            self.registration_secret.expose(),
            nonce,
            localpart,
            password.expose(),
            admin,
        );
        let mut body = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password.expose(),
            "mac": mac,
            "admin": admin,
            "inhibit_login": inhibit_login,
        });
        if let Some(name) = displayname {
            body["displayname"] = json!(name);
        }
        let (_, answer) = self
            .send(Endpoint::Register, PATH, Body::Json(&body), None)
            .await?;
        Ok(Registered {
            user_id: answer["user_id"].as_str().unwrap_or_default().to_string(),
            access_token: answer["access_token"].as_str().map(Secret::new),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_matches_synapse_documentation_layout() {
        // Computed independently with Python's hmac module:
        // hmac.new(b"secret", b"abc\x00olena\x00pw\x00notadmin", hashlib.sha1).hexdigest()
        assert_eq!(
            registration_mac("secret", "abc", "olena", "pw", false),
            "e2e734745e7c44692ffba0dc98febc74955d1c47"
        );
    }

    #[test]
    fn passwords_are_long_and_different() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.expose().len(), 48);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(format!("{a:?}"), "Secret(***)");
    }
}
