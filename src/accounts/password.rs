//! Signing in with DAARION's email and password (CONTRACT.md sections 10
//! and 11): for Synapse's password module (Element X and every password
//! client) and for the service's own sign-in page. The person is found by
//! their Matrix localpart or their address, DAARION Auth's login API judges
//! the password, and the access token it hands out goes through the same
//! verification and the same "active account, created now if needed" as
//! every other sign-in. Failed attempts are counted per account and per
//! client address. The password is only passed on, never kept.

use std::net::IpAddr;
use std::time::Duration;

use super::{AccountError, Accounts, ActiveAccount};
use crate::daarion::{LoginAnswer, LoginApi};
use crate::domain::event::clean_email;
use crate::secret::Secret;
use crate::sso::{Claims, Refusal, Sso};

/// The window failed attempts are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Wrong passwords for one account within the window before it is held
/// back (for everyone: the account is what is protected).
pub const ACCOUNT_FAILURES: i64 = 5;
/// Wrong passwords from one client address within the window, whatever
/// the accounts, before that address is held back (password spraying).
pub const ADDRESS_FAILURES: i64 = 20;
/// What a person is told to wait when DAARION Auth cannot answer.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(5);

/// Why a password sign-in gives no account.
#[derive(Debug)]
pub enum PasswordError {
    /// `AUTH_PASSWORD_LOGIN_URL` is not set.
    NotConfigured,
    /// Not a DAARION person (Synapse goes on with its own checks).
    UnknownUser,
    /// DAARION Auth says the email or password is wrong.
    WrongPassword,
    /// DAARION Auth or we know the person as deactivated.
    Deactivated,
    /// Too many failed attempts for this account or from this address.
    Limited { retry_after: Duration },
    /// DAARION Auth, the database or Synapse cannot answer now: never
    /// "wrong password".
    Unavailable { retry_after: Duration },
    /// The account cannot be created; an operator has to look.
    Failed,
}

/// A password sign-in that went through.
#[derive(Debug)]
pub struct PasswordSignIn {
    pub account: ActiveAccount,
    /// The person as DAARION's access token names them (with the DAARION
    /// session of this login in `sid`).
    pub claims: Claims,
}

/// Whom a sign-in names: the address to ask DAARION with, and the DAARION
/// id the account belongs to when it was named by its Matrix id.
struct Target {
    email: String,
    user_id: Option<String>,
}

impl Accounts {
    /// Checks `password` for `user` (a localpart, a Matrix id of ours or an
    /// email address), from `client`, with DAARION Auth.
    pub async fn sign_in_with_password(
        &self,
        sso: &Sso,
        user: &str,
        password: &Secret,
        client: Option<IpAddr>,
    ) -> Result<PasswordSignIn, PasswordError> {
        // Who first: an account that is not a DAARION person's (the
        // service's own admin, a local account) goes on to Synapse's own
        // check even when password sign-in is not configured here.
        let target = self.target(user).await?;
        let login = self.login.as_ref().ok_or(PasswordError::NotConfigured)?;
        let account_key = format!("account:{}", target.email);
        let address_key = client.map(|ip| format!("address:{ip}"));
        let mut keys = vec![(account_key.as_str(), ACCOUNT_FAILURES)];
        if let Some(key) = &address_key {
            keys.push((key.as_str(), ADDRESS_FAILURES));
        }
        let now = self.worker.clock().now_ms();
        let window = FAILURE_WINDOW.as_millis() as i64;
        let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
        let counted = self
            .store
            .sign_in_failures(&names, window, now)
            .await
            .map_err(unavailable)?;
        let held_until = counted
            .iter()
            .filter(|(key, failures, _)| {
                keys.iter().any(|(k, limit)| k == key && failures >= limit)
            })
            .map(|(_, _, start)| start + window)
            .max();
        if let Some(until) = held_until {
            tracing::info!(user = %user, client = ?client, "password sign-in held back after failed attempts");
            return Err(PasswordError::Limited {
                retry_after: Duration::from_millis((until - now).max(1000) as u64),
            });
        }
        let account_failed_before = counted.iter().any(|(key, _, _)| *key == account_key);
        let wrong = || async {
            self.store
                .sign_in_failed(&names, window, now)
                .await
                .map_err(unavailable)?;
            Err(PasswordError::WrongPassword)
        };
        let (access_token, refresh_token, user_info) =
            match login.login(&target.email, password).await {
                LoginAnswer::SignedIn {
                    access_token,
                    refresh_token,
                    user,
                } => (access_token, refresh_token, user),
                LoginAnswer::WrongPassword => return wrong().await,
                LoginAnswer::Inactive => return Err(PasswordError::Deactivated),
                LoginAnswer::Unavailable(reason) => {
                    tracing::warn!("password sign-in: {reason}");
                    return Err(PasswordError::Unavailable {
                        retry_after: UNAVAILABLE_RETRY,
                    });
                }
            };
        if !user_info.is_active {
            return Err(PasswordError::Deactivated);
        }
        let mut claims = sso.verify(access_token.expose()).await.map_err(|refusal| {
            let reason = match refusal {
                Refusal::Invalid(reason) => reason,
                Refusal::KeysUnavailable => "its signing keys cannot be read".into(),
            };
            tracing::error!(
                "DAARION Auth's login API handed out an access token we do not accept \
                     ({reason}); do AUTH_JWT_SECRET and AUTH_JWT_ISSUER match DAARION Auth's?"
            );
            PasswordError::Unavailable {
                retry_after: Duration::from_secs(60),
            }
        })?;
        if target.user_id.as_ref().is_some_and(|id| *id != claims.sub) {
            // The address now belongs to someone else in DAARION: the
            // account named is not theirs to open.
            tracing::warn!(
                user = %user, daarion_user = %claims.sub,
                "a password sign-in named an account whose address DAARION gives to another person"
            );
            return wrong().await;
        }
        claims.email = claims.email.or(user_info.email);
        claims.name = claims.name.or(user_info.display_name);
        if claims.sid.is_none() {
            claims.sid = sso.refresh_session(refresh_token.expose(), &claims.sub);
        }
        // A right password clears the account's count; most sign-ins have
        // none to clear, and write nothing.
        if account_failed_before {
            self.store
                .sign_in_succeeded(&account_key)
                .await
                .map_err(unavailable)?;
        }
        let account = self.active(&claims).await.map_err(|e| match e {
            AccountError::Deactivated => PasswordError::Deactivated,
            AccountError::BadSubject => PasswordError::Unavailable {
                retry_after: Duration::from_secs(60),
            },
            AccountError::Unavailable { retry_after, .. } => PasswordError::Unavailable {
                retry_after: retry_after.unwrap_or(UNAVAILABLE_RETRY),
            },
            AccountError::Failed(_) => PasswordError::Failed,
        })?;
        Ok(PasswordSignIn { account, claims })
    }

    /// The person `user` names. An address is taken as it is (DAARION knows
    /// people we have not heard of yet); a Matrix id must be a DAARION
    /// person's whose address we know.
    async fn target(&self, user: &str) -> Result<Target, PasswordError> {
        let user = user.trim();
        if !user.starts_with('@') && user.contains('@') {
            let email = clean_email(user).ok_or(PasswordError::UnknownUser)?;
            return Ok(Target {
                email,
                user_id: None,
            });
        }
        let (localpart, server) = match user.strip_prefix('@') {
            Some(id) => id.split_once(':').ok_or(PasswordError::UnknownUser)?,
            None => (user, self.server_name.as_str()),
        };
        if server != self.server_name || localpart.is_empty() {
            return Err(PasswordError::UnknownUser);
        }
        let person = self
            .store
            .person_by_localpart(&localpart.to_lowercase())
            .await
            .map_err(unavailable)?
            .ok_or(PasswordError::UnknownUser)?;
        if person.wanted.deleted {
            return Err(PasswordError::Deactivated);
        }
        let Some(email) = person.wanted.email else {
            tracing::info!(
                user_id = %person.user_id,
                "a password sign-in named a DAARION person whose address we do not know"
            );
            return Err(PasswordError::UnknownUser);
        };
        Ok(Target {
            email,
            user_id: Some(person.user_id),
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> PasswordError {
    tracing::warn!("password sign-in: {e}");
    PasswordError::Unavailable {
        retry_after: UNAVAILABLE_RETRY,
    }
}

/// The login API, when `AUTH_PASSWORD_LOGIN_URL` is set.
pub fn login_api(settings: &crate::config::Settings) -> anyhow::Result<Option<LoginApi>> {
    settings
        .auth_password_login_url
        .clone()
        .map(LoginApi::new)
        .transpose()
}
