//! "This person has an active account now, creating it if needed": the one
//! answer every sign-in needs (section 3's token exchange, and the OpenID
//! provider). A person we have no active account for yet (their webhook was
//! lost or is late) is stored from the token's claims through the same
//! intake as a webhook and provisioned on the spot by the same reconcile
//! step, under the same lease, so there is still one account per person.
//! The HTTP layer turns an [`AccountError`] into its own answer. Password
//! sign-ins (DAARION's email and password) come through [`password`].

pub mod password;
mod ready;

use std::sync::Arc;
use std::time::Duration;

use crate::daarion::LoginApi;
use crate::domain::event::Event;
use crate::jobs::{AccountCheck, Worker};
use crate::sso::Claims;
use crate::store::Store;

pub use password::{PasswordError, PasswordSignIn};
pub use ready::ReadyCache;

/// How long a sign-in waits for another worker that is creating the same
/// person's account right now.
const PROVISION_WAIT: Duration = Duration::from_secs(10);
/// The job a sign-in queues is left to the sign-in this long (it runs it
/// at once); background workers take it up after that.
const SIGN_IN_HOLD: Duration = Duration::from_secs(5);

/// Why a verified DAARION person cannot be signed in now.
#[derive(Debug)]
pub enum AccountError {
    /// `sub` is not an id DAARION could have issued.
    BadSubject,
    /// DAARION deleted the person, or their account is deactivated.
    Deactivated,
    /// The database or Synapse is unavailable; the work is queued.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Provisioning failed permanently; an operator has to look.
    Failed(String),
}

/// A person's active account, as sign-ins hand it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveAccount {
    pub localpart: String,
    /// DAARION's display name of the person, if any.
    pub display_name: Option<String>,
}

pub struct Accounts {
    store: Store,
    worker: Arc<Worker>,
    /// People seen with an active account a moment ago.
    ready: ReadyCache,
    /// DAARION Auth's login API, for password sign-ins.
    login: Option<LoginApi>,
    server_name: String,
}

impl Accounts {
    pub fn new(
        store: Store,
        worker: Arc<Worker>,
        login: Option<LoginApi>,
        server_name: &str,
    ) -> Accounts {
        Accounts {
            store,
            worker,
            ready: ReadyCache::new(ready::TTL),
            login,
            server_name: server_name.to_string(),
        }
    }

    /// Something about the person changed (a webhook): read the database
    /// at their next sign-in, so a deletion stops sign-ins at once here.
    pub fn forget(&self, user_id: &str) {
        self.ready.forget(user_id);
    }

    /// The person's active account, linked to their DAARION id (for
    /// Synapse's JWT login and its OpenID login alike), created now if
    /// needed. The token's `preferred_username` counts as a username: a
    /// person known only from events without one is named from it at once.
    pub async fn active(&self, claims: &Claims) -> Result<ActiveAccount, AccountError> {
        if let Some(account) = self.ready.get(&claims.sub) {
            return Ok(account);
        }
        let known = self.store.person(&claims.sub).await.map_err(unavailable)?;
        if let Some(person) = known {
            if person.wanted.deleted {
                return Err(AccountError::Deactivated);
            }
            if let (true, Some(localpart)) = (person.ready_for_sign_in(), person.localpart) {
                let account = ActiveAccount {
                    localpart,
                    display_name: person.wanted.display_name,
                };
                self.ready.remember(&person.user_id, &account);
                return Ok(account);
            }
        }
        // Unknown (the webhook was lost or is late) or not provisioned yet.
        let event = Event::sso_registration(
            &claims.sub,
            claims.preferred_username.as_deref(),
            claims.name.as_deref(),
            claims.picture.as_deref(),
            claims.email.as_deref(),
        )
        .ok_or(AccountError::BadSubject)?;
        let now = self.worker.clock().now_ms();
        self.store
            .accept_for_sign_in(&event, now, now + SIGN_IN_HOLD.as_millis() as i64)
            .await
            .map_err(unavailable)?;
        // A task of its own: a caller who hangs up must not abandon the job
        // half-way (its lease would hold the person back until it runs out).
        let worker = Arc::clone(&self.worker);
        let user_id = claims.sub.clone();
        let check =
            crate::telemetry::spawn(
                async move { worker.provision_now(&user_id, PROVISION_WAIT).await },
            )
            .await
            .map_err(|e| unavailable(format!("the provisioning task failed: {e}")))?
            .map_err(|e| unavailable(format!("{e:#}")))?;
        match check {
            AccountCheck::Ready(person) => {
                let localpart = person
                    .localpart
                    .ok_or_else(|| unavailable("the account has no localpart yet"))?;
                tracing::info!(user_id = %claims.sub, %localpart, "provisioned at sign-in");
                let account = ActiveAccount {
                    localpart,
                    display_name: person.wanted.display_name,
                };
                self.ready.remember(&person.user_id, &account);
                Ok(account)
            }
            AccountCheck::Deactivated => Err(AccountError::Deactivated),
            AccountCheck::Unavailable {
                reason,
                retry_after,
            } => {
                tracing::warn!(user_id = %claims.sub, "cannot provision at sign-in: {reason}");
                Err(AccountError::Unavailable {
                    reason,
                    retry_after,
                })
            }
            AccountCheck::Failed(reason) => {
                tracing::error!(user_id = %claims.sub, "provisioning at sign-in failed: {reason}");
                Err(AccountError::Failed(reason))
            }
            AccountCheck::Unknown => Err(unavailable("the person vanished during sign-in")),
        }
    }
}

fn unavailable(reason: impl ToString) -> AccountError {
    AccountError::Unavailable {
        reason: reason.to_string(),
        retry_after: None,
    }
}
