//! One person's reconcile step: make Synapse hold what DAARION wants —
//! an account (created once, by shared-secret registration or, for sync
//! backfills, the admin API; linked to the DAARION id), deactivated or not,
//! with the wanted display name and avatar, sending only what differs. Every step is safe to repeat, and
//! progress that matters across a crash is written down before the Synapse
//! call it protects.

use std::time::Duration;

use super::avatar::follow;
use super::outcome::Outcome;
use crate::avatar::AvatarFetcher;
use crate::clock::Clock;
use crate::domain::localpart::{Localpart, Names};
use crate::signing::Signer;
use crate::store::{
    Account, AppliedAvatar, CreateVia, JobKind, LocalpartPolicy, Person, State, Store,
};
use crate::synapse::{
    localpart_of, AdminUser, Refusal, Synapse, SynapseError, TakenLocalparts, AUTH_PROVIDER,
};

/// A registration we crashed in the middle of shows up as an unlinked
/// account created after we wrote down the attempt; this allows for the
/// clocks of the service and Synapse disagreeing a little.
const CLOCK_SLACK_MS: i64 = 60_000;
/// Suffixes tried before giving up on a name (`-2` … `-50`).
const MAX_CANDIDATES: u32 = 50;

/// What a reconcile step needs from outside.
pub struct Deps<'a> {
    pub store: &'a Store,
    pub synapse: &'a Synapse,
    pub policy: &'a LocalpartPolicy,
    pub avatars: &'a AvatarFetcher,
    pub taken: &'a TakenLocalparts,
    /// How long a person without a username waits for one.
    pub username_grace: Duration,
    /// Signs back-channel logouts, when the OpenID provider is on.
    pub oidc: Option<&'a Signer>,
    pub clock: &'a Clock,
}

/// `settle_now`: someone is waiting for the account (a sign-in), so its
/// name is settled with what is known now.
pub async fn reconcile(deps: &Deps<'_>, person: Person, settle_now: bool) -> Outcome {
    let interrupted = match person.account {
        Account::Registering => person
            .register_started_at
            .zip(person.localpart.clone())
            .map(|(t, localpart)| (localpart, t)),
        _ => None,
    };
    let mut step = Step {
        deps,
        interrupted,
        settle_now,
        p: person,
    };
    match step.run().await {
        Ok(state) => Outcome::Done(state),
        Err(outcome) => outcome,
    }
}

struct Step<'a> {
    deps: &'a Deps<'a>,
    /// A registration an earlier run started and never saw the end of:
    /// (localpart, when it started).
    interrupted: Option<(String, i64)>,
    settle_now: bool,
    p: Person,
}

/// What an attempt to create the account found.
enum Creation {
    Created,
    /// The localpart exists in Synapse (the account, if it still does).
    Taken(Option<AdminUser>),
    /// The DAARION id is already linked to this other account.
    LinkedElsewhere(String),
}

impl Step<'_> {
    async fn run(&mut self) -> Result<State, Outcome> {
        match self.p.account {
            // Deleted before we ever asked Synapse: nothing to create or remove.
            Account::None if self.p.wanted.deleted => return Ok(State::Deactivated),
            Account::None | Account::Registering => self.ensure_account().await?,
            Account::Active | Account::Deactivated => {}
        }
        // After drift was found or when an earlier attempt failed (a 429 can
        // come after Synapse saved a change), read what Synapse holds before
        // writing, so a retry does not write the same change twice.
        let verify = self.p.profile_verify;
        let observed = if verify != 0 || self.p.attempts > 0 {
            let user = self
                .deps
                .synapse
                .user(self.localpart())
                .await?
                .ok_or_else(|| {
                    Outcome::Failed(format!(
                        "the account {} is missing in Synapse",
                        self.deps.synapse.user_id(self.localpart())
                    ))
                })?;
            self.p.applied_display_name = user.displayname.clone();
            // Someone reactivated a deleted person's account by hand: deactivate again.
            if self.p.wanted.deleted && self.p.account == Account::Deactivated && !user.deactivated
            {
                self.p.account = Account::Active;
            }
            Some(user)
        } else {
            None
        };
        if self.p.wanted.deleted {
            if self.p.account == Account::Active {
                self.deps.synapse.deactivate(self.localpart()).await?;
                self.record(Account::Deactivated).await?;
            }
            // Deactivation ended every session: no logout is left to send.
            for sid in self.deps.store.pending_logouts(&self.p.user_id).await? {
                self.deps.store.logout_sent(&sid).await?;
            }
            return Ok(State::Deactivated);
        }
        if self.p.account == Account::Deactivated {
            // DAARION registered the person again.
            self.deps.synapse.reactivate(self.localpart()).await?;
            self.record(Account::Active).await?;
        }
        if !self.p.oidc_linked {
            self.link_for_oidc(observed.as_ref()).await?;
        }
        self.sync_display_name().await?;
        self.sync_avatar(observed.as_ref()).await?;
        self.send_logouts().await?;
        if verify != 0 {
            self.deps
                .store
                .clear_verify(&self.p.user_id, verify)
                .await?;
        }
        Ok(State::Provisioned)
    }

    /// Makes sure the person has exactly one account, creating it if needed.
    async fn ensure_account(&mut self) -> Result<(), Outcome> {
        if self.p.account == Account::Registering {
            // An earlier attempt may have got through before we crashed or
            // lost the answer: look for an account already linked to us.
            if let Some(user_id) = self
                .deps
                .synapse
                .lookup_external_id(&self.p.user_id)
                .await?
            {
                return self.adopt(&user_id).await;
            }
        }
        // Not named yet, or an adoption was interrupted.
        let adoptable = self.adoptable();
        if (self.p.localpart.is_none() || self.p.localpart == adoptable)
            && self.adopt_daarions_own(adoptable).await?
        {
            return Ok(());
        }
        if self.p.localpart.is_none() {
            self.wait_for_a_username()?;
        }
        let policy = self.deps.policy;
        let server_name = &policy.server_name;
        // The best name known now, from the first usable source.
        let derived = Localpart::choose(&policy.sources, &self.names(), server_name);
        let (base, n) = match &self.p.localpart {
            Some(localpart) => split_suffix(localpart, &derived, server_name),
            None => (derived.clone(), 1),
        };
        let mut candidates = policy.candidates(&base, n);
        for _ in 0..MAX_CANDIDATES {
            let localpart = candidates
                .next()
                .expect("the candidate iterator is endless")
                .as_str()
                .to_string();
            // Written down before Synapse is asked; the first time, this
            // settles the person's localpart for good.
            if !self
                .deps
                .store
                .mark_registering(&self.p.user_id, &localpart, self.deps.clock.now_ms())
                .await?
            {
                tracing::info!(
                    user_id = %self.p.user_id, taken = %localpart,
                    "localpart belongs to another DAARION person here; trying the next"
                );
                continue;
            }
            self.p.localpart = Some(localpart.clone());
            self.p.account = Account::Registering;

            let creation = match self.p.create_via {
                CreateVia::Register => self.create_by_registration(&localpart).await?,
                CreateVia::AdminApi => self.create_by_admin_api(&localpart).await?,
            };
            match creation {
                Creation::Created => {
                    // Created with both external ids.
                    self.p.oidc_linked = true;
                    // Without a name Synapse gives the account its localpart.
                    self.p.applied_display_name =
                        Some(self.p.wanted.display_name.clone().unwrap_or(localpart));
                    return self.record(Account::Active).await;
                }
                Creation::LinkedElsewhere(user_id) => return self.adopt(&user_id).await,
                Creation::Taken(existing) => {
                    if self.is_ours(existing.as_ref()) {
                        let user = existing.expect("is_ours implies Some");
                        if !has_our_id(&user, &self.p.user_id) {
                            self.deps
                                .synapse
                                .link_external_id(&localpart, &self.p.user_id)
                                .await?;
                        }
                        return self.adopt(&user.name).await;
                    }
                    tracing::info!(
                        user_id = %self.p.user_id, taken = %localpart,
                        "localpart belongs to someone else in Synapse; trying the next"
                    );
                }
            }
        }
        Err(Outcome::Failed(format!(
            "no free localpart after {MAX_CANDIDATES} tries starting from {}",
            base.as_str()
        )))
    }

    /// What the person can be named by (see `LOCALPART_SOURCES`).
    fn names(&self) -> Names<'_> {
        Names {
            username: self.p.wanted.username.as_deref(),
            display_name: self.p.wanted.display_name.as_deref(),
            email: self.p.wanted.email.as_deref(),
            user_id: &self.p.user_id,
        }
    }

    /// The localpart `ADOPT_LOCALPART_TEMPLATE` gives this person, if any.
    fn adoptable(&self) -> Option<String> {
        let policy = self.deps.policy;
        policy
            .adopt
            .as_ref()
            .and_then(|t| t.localpart(&self.p.user_id, &policy.server_name))
            .map(|l| l.as_str().to_string())
    }

    /// The account DAARION Auth made for the person before this service
    /// (`ADOPT_LOCALPART_TEMPLATE`), if there is one that no other DAARION
    /// person holds: it becomes theirs (linked to both external ids by
    /// [`Step::link_for_oidc`], then given the profile), its password and
    /// devices left as they are. True when adopted.
    async fn adopt_daarions_own(&mut self, localpart: Option<String>) -> Result<bool, Outcome> {
        let Some(localpart) = localpart else {
            return Ok(false);
        };
        let localpart = localpart.as_str();
        // A backfill's index of Synapse's accounts saves a lookup per person.
        if self.known_free(localpart).await {
            return Ok(false);
        }
        let Some(user) = self.deps.synapse.user(localpart).await? else {
            return Ok(false);
        };
        let linked_to_another = user
            .external_ids
            .iter()
            .any(|e| e.auth_provider == AUTH_PROVIDER && e.external_id != self.p.user_id);
        if linked_to_another {
            tracing::warn!(
                user_id = %self.p.user_id, account = %user.name,
                "the account to adopt is linked to another DAARION person; creating a new one"
            );
            return Ok(false);
        }
        // Settles the localpart here; false when another person of ours
        // holds it already.
        if !self
            .deps
            .store
            .mark_registering(&self.p.user_id, localpart, self.deps.clock.now_ms())
            .await?
        {
            tracing::warn!(
                user_id = %self.p.user_id, account = %user.name,
                "the account to adopt belongs to another DAARION person here; creating a new one"
            );
            return Ok(false);
        }
        self.p.localpart = Some(localpart.to_string());
        self.p.account = Account::Registering;
        tracing::info!(
            user_id = %self.p.user_id, matrix_user_id = %user.name,
            "adopting the account DAARION Auth made for this person"
        );
        self.adopt(&user.name).await?;
        Ok(true)
    }

    /// A person known only from events without a username (a `user.updated`
    /// can come before the `user.registered` that names them) gets a name
    /// from elsewhere (`LOCALPART_SOURCES`) only once
    /// [`Deps::username_grace`] has passed since they were first seen, at
    /// once when a sign-in needs the account, and at once when their
    /// registration has come: DAARION as it runs has no usernames, and a
    /// registration without one will not be followed by one. People from a
    /// sync pass's listing wait for nothing: it is DAARION's whole record
    /// of them.
    fn wait_for_a_username(&self) -> Result<(), Outcome> {
        if self.p.wanted.username.is_some()
            || self.settle_now
            || self.p.wanted.lifecycle_at != 0
            || self.p.create_via == CreateVia::AdminApi
        {
            return Ok(());
        }
        let until = self.p.created_at + self.deps.username_grace.as_millis() as i64;
        if self.deps.clock.now_ms() < until {
            return Err(Outcome::Wait {
                until,
                reason: "no username known yet".into(),
            });
        }
        Ok(())
    }

    /// Shared-secret registration, then the link to the DAARION id.
    async fn create_by_registration(&self, localpart: &str) -> Result<Creation, Outcome> {
        let password = crate::synapse::random_password();
        let display_name = self.p.wanted.display_name.as_deref();
        match self
            .deps
            .synapse
            .register(localpart, &password, display_name, false, true)
            .await
        {
            Ok(_) => {}
            Err(e) if e.refusal() == Some(Refusal::InUse) => {
                return Ok(Creation::Taken(self.deps.synapse.user(localpart).await?))
            }
            Err(e) => return Err(e.into()),
        }
        match self
            .deps
            .synapse
            .link_external_id(localpart, &self.p.user_id)
            .await
        {
            Ok(()) => Ok(Creation::Created),
            Err(e) if e.is_external_id_conflict() => self.linked_elsewhere(localpart, e).await,
            Err(e) => Err(e.into()),
        }
    }

    /// The admin API's PUT, created and linked in one request with no
    /// password hash. That PUT is an upsert, so we look first (in the index
    /// of a backfill, else in Synapse): an existing account is handled
    /// exactly like a taken localpart at registration. After an interrupted attempt we always
    /// ask Synapse, which knows whether that attempt got through.
    async fn create_by_admin_api(&self, localpart: &str) -> Result<Creation, Outcome> {
        if !self.known_free(localpart).await {
            if let Some(existing) = self.deps.synapse.user(localpart).await? {
                return Ok(Creation::Taken(Some(existing)));
            }
        }
        let display_name = self.p.wanted.display_name.as_deref();
        match self
            .deps
            .synapse
            .create_user(localpart, display_name, &self.p.user_id)
            .await
        {
            Ok(true) => Ok(Creation::Created),
            // Created by someone else between our look and our PUT, which
            // then changed it: only a person can sort that out.
            Ok(false) => Err(Outcome::Failed(format!(
                "the account {} appeared while we created it and was modified; check it by hand",
                self.deps.synapse.user_id(localpart)
            ))),
            Err(e) if e.is_external_id_conflict() => self.linked_elsewhere(localpart, e).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a backfill's index of Synapse's accounts says `localpart` is
    /// free (false when there is no index or it cannot be read).
    async fn known_free(&self, localpart: &str) -> bool {
        if self.interrupted.is_some() {
            return false;
        }
        match self.deps.taken.is_free(self.deps.synapse, localpart).await {
            Ok(free) => free == Some(true),
            Err(e) => {
                tracing::debug!("cannot refresh the index of Synapse's accounts: {e}");
                false
            }
        }
    }

    /// Synapse refused to link the account just created because the DAARION
    /// id is linked to another account: that one is the person's. The new,
    /// unlinked account is deactivated so nobody ends up using it.
    async fn linked_elsewhere(
        &self,
        created: &str,
        conflict: SynapseError,
    ) -> Result<Creation, Outcome> {
        let Some(linked) = self
            .deps
            .synapse
            .lookup_external_id(&self.p.user_id)
            .await?
        else {
            return Err(conflict.into());
        };
        tracing::warn!(
            user_id = %self.p.user_id, linked = %linked,
            "the DAARION id is already linked to another account; adopting it and deactivating the one just created"
        );
        self.deps.synapse.deactivate(created).await?;
        Ok(Creation::LinkedElsewhere(linked))
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
            user.name == self.deps.synapse.user_id(localpart)
                && user.created_ms >= t - CLOCK_SLACK_MS
        });
        ours_interrupted && !linked_elsewhere
    }

    /// Takes over the account `user_id` (full Matrix id) as the person's.
    async fn adopt(&mut self, user_id: &str) -> Result<(), Outcome> {
        let localpart = localpart_of(user_id).map(str::to_string).ok_or_else(|| {
            Outcome::Failed(format!("Synapse returned a malformed user id {user_id:?}"))
        })?;
        if self.p.localpart.as_deref() != Some(localpart.as_str())
            && !self
                .deps
                .store
                .change_localpart(&self.p.user_id, &localpart, self.deps.clock.now_ms())
                .await?
        {
            return Err(Outcome::Failed(format!(
                "the account {user_id} linked to this person has a localpart another person holds here"
            )));
        }
        self.p.localpart = Some(localpart);
        let user = self.deps.synapse.user(self.localpart()).await?;
        self.p.applied_display_name = user.as_ref().and_then(|u| u.displayname.clone());
        self.p.oidc_linked = user
            .as_ref()
            .is_some_and(|u| self.deps.synapse.fully_linked(u, &self.p.user_id));
        let account = match user {
            Some(u) if u.deactivated => Account::Deactivated,
            _ => Account::Active,
        };
        tracing::info!(user_id = %self.p.user_id, matrix_user_id = %user_id, "adopted existing account");
        self.record(account).await
    }

    /// Accounts linked before the OpenID provider existed carry only the
    /// `daarion` external id; Synapse's OpenID login finds people by
    /// `oidc-<idp>`. Both are written (Synapse replaces the whole list),
    /// once, and not at all when Synapse has them already.
    async fn link_for_oidc(&mut self, observed: Option<&AdminUser>) -> Result<(), Outcome> {
        let read;
        let user = match observed {
            Some(user) => Some(user),
            None => {
                read = self.deps.synapse.user(self.localpart()).await?;
                read.as_ref()
            }
        };
        let Some(user) = user else {
            return Err(Outcome::Failed(format!(
                "the account {} is missing in Synapse",
                self.deps.synapse.user_id(self.localpart())
            )));
        };
        if !self.deps.synapse.fully_linked(user, &self.p.user_id) {
            self.deps
                .synapse
                .link_external_id(self.localpart(), &self.p.user_id)
                .await?;
        }
        self.p.oidc_linked = true;
        self.deps.store.mark_oidc_linked(&self.p.user_id).await?;
        Ok(())
    }

    /// Ends the Matrix sessions DAARION signed out of (back-channel logout
    /// to Synapse, one per session); each is forgotten once Synapse took it.
    async fn send_logouts(&mut self) -> Result<(), Outcome> {
        let Some(signer) = self.deps.oidc else {
            return Ok(());
        };
        for sid in self.deps.store.pending_logouts(&self.p.user_id).await? {
            let token = signer.logout_token(&self.p.user_id, &sid);
            self.deps.synapse.backchannel_logout(&token).await?;
            tracing::info!(user_id = %self.p.user_id, "ended a Matrix session DAARION signed out of");
            self.deps.store.logout_sent(&sid).await?;
        }
        Ok(())
    }

    /// Sends the display name only when Synapse does not hold it already.
    /// Without a DAARION display name the account shows its localpart, as
    /// every account Synapse creates without a name does (see README).
    async fn sync_display_name(&mut self) -> Result<(), Outcome> {
        let name = self
            .p
            .wanted
            .display_name
            .clone()
            .unwrap_or_else(|| self.localpart().to_string());
        if self.p.applied_display_name.as_deref() == Some(name.as_str()) {
            return Ok(());
        }
        self.deps
            .synapse
            .set_displayname(self.localpart(), &name)
            .await?;
        self.p.applied_display_name = Some(name);
        self.record(self.p.account).await
    }

    /// Makes the profile's avatar follow DAARION's `avatar_url`, as a City
    /// Room's and an agent's do ([`follow`]: fetched only when the URL
    /// changed, uploaded only when the bytes differ from the image shown,
    /// recorded before the profile points at it), then points the profile
    /// at the recorded image. A refused image leaves the profile without
    /// avatar; one not fetched now (its host is down) leaves it as it is.
    /// `observed`: the account as just read from Synapse, if it was.
    async fn sync_avatar(&mut self, observed: Option<&AdminUser>) -> Result<(), Outcome> {
        let wanted = self.p.wanted.avatar_url.clone();
        // What the profile shows now, as far as we know.
        let shown = match observed {
            Some(user) => user.avatar_url.clone().filter(|u| !u.is_empty()),
            None => self.p.avatar_mxc.clone(),
        };
        // Settled for this URL: at most point the profile back at our image.
        let settled = wanted == self.p.applied_avatar_url;
        let current = AppliedAvatar {
            url: self.p.applied_avatar_url.clone(),
            mxc: self.p.avatar_mxc.clone(),
            sha256: self.p.avatar_sha256.clone(),
            error: self.p.avatar_error.clone(),
        };
        let deps = (self.deps.avatars, self.deps.synapse, self.deps.store);
        let user_id = self.p.user_id.clone();
        let applied = follow(deps, JobKind::Person, &user_id, wanted.clone(), current).await?;
        self.p.applied_avatar_url = applied.url;
        self.p.avatar_mxc = applied.mxc;
        self.p.avatar_sha256 = applied.sha256;
        self.p.avatar_error = applied.error;
        if !settled {
            if self.p.applied_avatar_url != wanted {
                // Not fetched now: keep what the profile shows; a full sync
                // pass tries again.
                return Ok(());
            }
            if let Some(reason) = &self.p.avatar_error {
                tracing::warn!(user_id = %self.p.user_id, "avatar refused: {reason}");
            }
        }
        let target = self.p.avatar_mxc.clone();
        if shown == target {
            return Ok(());
        }
        match self
            .deps
            .synapse
            .set_avatar(self.localpart(), target.as_deref())
            .await
        {
            Err(e @ SynapseError::Refused { .. }) if !settled && target.is_some() => {
                let reason = format!("Synapse refused the avatar: {e}");
                self.refuse_avatar(shown, reason).await
            }
            result => Ok(result?),
        }
    }

    /// Synapse refused to show the image: Matrix shows none rather than an
    /// image DAARION no longer has. Fetched again only when the URL changes.
    async fn refuse_avatar(
        &mut self,
        shown: Option<String>,
        reason: String,
    ) -> Result<(), Outcome> {
        tracing::warn!(user_id = %self.p.user_id, "avatar refused: {reason}");
        if shown.is_some() {
            self.deps.synapse.set_avatar(self.localpart(), None).await?;
        }
        self.p.avatar_mxc = None;
        self.p.avatar_sha256 = None;
        self.p.avatar_error = Some(reason);
        self.p.upload_mxc = None;
        self.p.upload_sha256 = None;
        self.deps
            .store
            .record_avatar(&self.p, self.deps.clock.now_ms())
            .await?;
        Ok(())
    }

    /// The person's localpart, once settled (every path that talks to
    /// Synapse about the account runs after [`Step::ensure_account`]).
    fn localpart(&self) -> &str {
        self.p
            .localpart
            .as_deref()
            .expect("the localpart is settled before the account is used")
    }

    async fn record(&mut self, account: Account) -> Result<(), Outcome> {
        self.p.account = account;
        self.deps
            .store
            .record_account(
                &self.p.user_id,
                self.localpart(),
                account,
                self.p.applied_display_name.as_deref(),
                self.p.oidc_linked,
                self.deps.clock.now_ms(),
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

/// Which candidate `localpart` is: `olena-3` → (`olena`, 3); `olena` →
/// (`olena`, 1). The localpart derived from the person's username settles
/// the doubt when that username itself ends in `-N`: `room-7` derived from
/// `room-7` is (`room-7`, 1), so its next candidate is `room-7-2`.
fn split_suffix(localpart: &str, derived: &Localpart, server_name: &str) -> (Localpart, u32) {
    if localpart == derived.as_str() {
        return (derived.clone(), 1);
    }
    if let Some((base, n)) = localpart.rsplit_once('-') {
        if let Ok(n) = n.parse::<u32>() {
            if n >= 2 && derived.candidate(n, server_name).as_str() == localpart {
                return (derived.clone(), n);
            }
            if let (true, Ok(base)) = (
                n >= 2 && !n.to_string().starts_with('0'),
                Localpart::parse(base, "x"),
            ) {
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
        let split = |localpart: &str, username: &str| {
            let derived = Localpart::derive(Some(username), "u_1", "x");
            let (base, n) = split_suffix(localpart, &derived, "x");
            (base.as_str().to_string(), n)
        };
        assert_eq!(split("olena-3", "olena"), ("olena".into(), 3));
        assert_eq!(split("olena", "olena"), ("olena".into(), 1));
        assert_eq!(split("o-p", "o-p"), ("o-p".into(), 1));
        assert_eq!(split("olena-1", "olena-1"), ("olena-1".into(), 1));
        // A username ending in a number is not a suffix…
        assert_eq!(split("room-7", "room-7"), ("room-7".into(), 1));
        assert_eq!(split("room-7-2", "room-7"), ("room-7".into(), 2));
        // …unless the localpart no longer comes from the username.
        assert_eq!(split("olena-3", "mykola"), ("olena".into(), 3));
        assert_eq!(split("olena", "mykola"), ("olena".into(), 1));
    }
}
