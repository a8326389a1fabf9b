//! One person's reconcile step: make Synapse hold what DAARION wants —
//! an account (registered once, linked to the DAARION id), deactivated or
//! not, with the wanted display name. Every step is safe to repeat, and
//! progress that matters across a crash is written down before the Synapse
//! call it protects.

use std::time::Duration;

use serde_json::json;

use crate::domain::localpart::Localpart;
use crate::now_ms;
use crate::store::{Account, LocalpartPolicy, Person, State, Store, StoreError};
use crate::synapse::{AdminUser, Synapse, SynapseError, AUTH_PROVIDER};

/// A registration we crashed in the middle of shows up as an unlinked
/// account created after we wrote down the attempt; this allows for the
/// clocks of the service and Synapse disagreeing a little.
const CLOCK_SLACK_MS: i64 = 60_000;
/// Suffixes tried before giving up on a name (`-2` … `-50`).
const MAX_CANDIDATES: u32 = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(State),
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Failed(String),
}

impl Outcome {
    pub fn retry(reason: impl Into<String>) -> Outcome {
        Outcome::Retry {
            reason: reason.into(),
            after: None,
        }
    }
}

impl From<SynapseError> for Outcome {
    fn from(e: SynapseError) -> Outcome {
        match e {
            SynapseError::Unavailable { retry_after, .. } => Outcome::Retry {
                reason: e.to_string(),
                after: retry_after,
            },
            SynapseError::Refused { .. } => Outcome::Failed(e.to_string()),
        }
    }
}

impl From<StoreError> for Outcome {
    fn from(e: StoreError) -> Outcome {
        Outcome::retry(e.to_string())
    }
}

pub async fn reconcile(
    store: &Store,
    synapse: &Synapse,
    policy: &LocalpartPolicy,
    person: Person,
) -> Outcome {
    let interrupted = match person.account {
        Account::Registering => person
            .register_started_at
            .map(|t| (person.localpart.clone(), t)),
        _ => None,
    };
    let mut step = Step {
        store,
        synapse,
        policy,
        interrupted,
        p: person,
    };
    match step.run().await {
        Ok(state) => Outcome::Done(state),
        Err(outcome) => outcome,
    }
}

struct Step<'a> {
    store: &'a Store,
    synapse: &'a Synapse,
    policy: &'a LocalpartPolicy,
    /// A registration an earlier run started and never saw the end of:
    /// (localpart, when it started).
    interrupted: Option<(String, i64)>,
    p: Person,
}

impl Step<'_> {
    async fn run(&mut self) -> Result<State, Outcome> {
        match self.p.account {
            // Deleted before we ever asked Synapse: nothing to create or remove.
            Account::None if self.p.wanted.deleted => return Ok(State::Deactivated),
            Account::None | Account::Registering => self.ensure_account().await?,
            Account::Active | Account::Deactivated => {}
        }
        if self.p.wanted.deleted {
            if self.p.account == Account::Active {
                self.synapse.deactivate(&self.p.localpart).await?;
                self.record(Account::Deactivated).await?;
            }
            return Ok(State::Deactivated);
        }
        if self.p.account == Account::Deactivated {
            // DAARION registered the person again. Synapse wants a password to
            // reactivate a local account; it is random and immediately forgotten.
            let password = crate::synapse::random_password();
            let body = json!({"deactivated": false, "password": password.expose()});
            self.synapse.put_user(&self.p.localpart, &body).await?;
            self.record(Account::Active).await?;
        }
        self.sync_display_name().await?;
        Ok(State::Provisioned)
    }

    /// Makes sure the person has exactly one account, registering it if needed.
    async fn ensure_account(&mut self) -> Result<(), Outcome> {
        if self.p.account == Account::Registering {
            // An earlier attempt may have got through before we crashed or
            // lost the answer: look for an account already linked to us.
            if let Some(user_id) = self.synapse.lookup_external_id(&self.p.user_id).await? {
                return self.adopt(&user_id).await;
            }
        }
        let (base, mut n) = split_suffix(&self.p.localpart);
        for _ in 0..MAX_CANDIDATES {
            let localpart = self.p.localpart.clone();
            self.store
                .mark_registering(&self.p.user_id, &localpart, now_ms())
                .await?;
            self.p.account = Account::Registering;

            let password = crate::synapse::random_password();
            let display_name = self.p.wanted.display_name.clone();
            match self
                .synapse
                .register(&localpart, &password, display_name.as_deref(), false, true)
                .await
            {
                Ok(_) => {
                    self.synapse
                        .link_external_id(&localpart, &self.p.user_id)
                        .await?;
                    self.p.applied_display_name = display_name;
                    return self.record(Account::Active).await;
                }
                Err(e) if e.errcode() == Some("M_USER_IN_USE") => {
                    let existing = self.synapse.user(&localpart).await?;
                    if self.is_ours(existing.as_ref()) {
                        let user = existing.expect("is_ours implies Some");
                        if !has_our_id(&user, &self.p.user_id) {
                            self.synapse
                                .link_external_id(&localpart, &self.p.user_id)
                                .await?;
                        }
                        return self.adopt(&user.name).await;
                    }
                    tracing::info!(
                        user_id = %self.p.user_id, taken = %localpart,
                        "localpart belongs to someone else in Synapse; trying the next"
                    );
                    loop {
                        n += 1;
                        let next = base.candidate(n, &self.policy.server_name);
                        if crate::domain::localpart::is_reserved(&next, &self.policy.reserved) {
                            continue;
                        }
                        if self
                            .store
                            .change_localpart(&self.p.user_id, next.as_str(), now_ms())
                            .await?
                        {
                            self.p.localpart = next.as_str().to_string();
                            self.p.account = Account::None;
                            break;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Outcome::Failed(format!(
            "no free localpart after {MAX_CANDIDATES} tries starting from {}",
            base.as_str()
        )))
    }

    /// An existing account is ours when it carries our DAARION id, or when it
    /// is the unlinked account our own interrupted registration created.
    fn is_ours(&self, user: Option<&AdminUser>) -> bool {
        let Some(user) = user else { return false };
        if has_our_id(user, &self.p.user_id) {
            return true;
        }
        let linked_elsewhere = user
            .external_ids
            .iter()
            .any(|e| e.auth_provider == AUTH_PROVIDER);
        let ours_interrupted = self.interrupted.as_ref().is_some_and(|(localpart, t)| {
            user.name == self.synapse.user_id(localpart) && user.created_ms >= t - CLOCK_SLACK_MS
        });
        ours_interrupted && !linked_elsewhere
    }

    /// Takes over the account `user_id` (full Matrix id) as the person's.
    async fn adopt(&mut self, user_id: &str) -> Result<(), Outcome> {
        let localpart = user_id
            .strip_prefix('@')
            .and_then(|s| s.split_once(':'))
            .map(|(lp, _)| lp.to_string())
            .ok_or_else(|| {
                Outcome::Failed(format!("Synapse returned a malformed user id {user_id:?}"))
            })?;
        if localpart != self.p.localpart
            && !self
                .store
                .change_localpart(&self.p.user_id, &localpart, now_ms())
                .await?
        {
            return Err(Outcome::Failed(format!(
                "the account {user_id} linked to this person has a localpart another person holds here"
            )));
        }
        self.p.localpart = localpart;
        let user = self.synapse.user(&self.p.localpart).await?;
        self.p.applied_display_name = user.as_ref().and_then(|u| u.displayname.clone());
        let account = match user {
            Some(u) if u.deactivated => Account::Deactivated,
            _ => Account::Active,
        };
        tracing::info!(user_id = %self.p.user_id, matrix_user_id = %user_id, "adopted existing account");
        self.record(account).await
    }

    async fn sync_display_name(&mut self) -> Result<(), Outcome> {
        let wanted = self.p.wanted.display_name.clone();
        if wanted == self.p.applied_display_name {
            return Ok(());
        }
        // Without a name Synapse shows the localpart, as it does after a
        // registration without one.
        let name = wanted.clone().unwrap_or_else(|| self.p.localpart.clone());
        self.synapse
            .put_user(&self.p.localpart, &json!({"displayname": name}))
            .await?;
        self.p.applied_display_name = wanted;
        self.record(self.p.account).await
    }

    async fn record(&mut self, account: Account) -> Result<(), Outcome> {
        self.p.account = account;
        self.store
            .record_account(
                &self.p.user_id,
                &self.p.localpart,
                account,
                self.p.applied_display_name.as_deref(),
                now_ms(),
            )
            .await?;
        Ok(())
    }
}

fn has_our_id(user: &AdminUser, daarion_id: &str) -> bool {
    user.external_ids
        .iter()
        .any(|e| e.auth_provider == AUTH_PROVIDER && e.external_id == daarion_id)
}

/// `olena-3` → (`olena`, 3); `olena` → (`olena`, 1).
fn split_suffix(localpart: &str) -> (Localpart, u32) {
    if let Some((base, n)) = localpart.rsplit_once('-') {
        if let (Ok(n), Ok(base)) = (n.parse::<u32>(), Localpart::parse(base, "x")) {
            if n >= 2 && !n.to_string().starts_with('0') {
                return (base, n);
            }
        }
    }
    let base = Localpart::parse(localpart, "x")
        .unwrap_or_else(|_| Localpart::derive(None, localpart, "x"));
    (base, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_recognised() {
        assert_eq!(split_suffix("olena-3").0.as_str(), "olena");
        assert_eq!(split_suffix("olena-3").1, 3);
        assert_eq!(split_suffix("olena").1, 1);
        assert_eq!(split_suffix("o-p").0.as_str(), "o-p");
        assert_eq!(split_suffix("olena-1").0.as_str(), "olena-1");
    }
}
