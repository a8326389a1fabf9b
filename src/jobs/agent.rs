//! One agent's reconcile step: its puppet `@<AGENT_LOCALPART_PREFIX><slug>`
//! exists once (registered through the application service), shows the
//! agent's display name and avatar, and carries the presence DAARION.city
//! last gave; a deleted agent's puppet is deactivated (which also makes it
//! leave its rooms), and reactivated when the agent is created again. Sends only what differs from what Synapse shows.

use super::avatar::follow;
use super::outcome::Outcome;
use crate::avatar::AvatarFetcher;
use crate::clock::Clock;
use crate::store::{Agent, AgentState, AppliedAvatar, JobKind, Store};
use crate::synapse::Synapse;

pub struct AgentDeps<'a> {
    pub store: &'a Store,
    pub synapse: &'a Synapse,
    pub avatars: &'a AvatarFetcher,
    pub agent_prefix: &'a str,
    pub clock: &'a Clock,
}

type StepResult<T> = Result<T, Outcome<AgentState>>;

pub async fn reconcile(deps: &AgentDeps<'_>, agent: Agent) -> Outcome<AgentState> {
    match run(deps, agent).await {
        Ok(state) => Outcome::Done(state),
        Err(outcome) => outcome,
    }
}

async fn run(deps: &AgentDeps<'_>, mut a: Agent) -> StepResult<AgentState> {
    let synapse = deps.synapse;
    if a.wanted.deleted {
        if let (Some(localpart), true) = (&a.localpart, a.registered) {
            let deactivated = synapse.user(localpart).await?.is_none_or(|u| u.deactivated);
            if !deactivated {
                synapse.deactivate(localpart).await?;
                tracing::info!(agent_id = %a.agent_id, "deactivated the agent's puppet");
            }
        }
        return Ok(AgentState::Deactivated);
    }
    // Known only from a membership, a message or its presence so far: the
    // puppet is created when `agent.created` brings the slug.
    let Some(slug) = a.wanted.slug.clone() else {
        return Ok(AgentState::Pending);
    };
    let localpart = settle_localpart(deps, &mut a, &slug).await?;
    if !a.registered {
        if synapse.register_puppet(&localpart).await? {
            tracing::info!(agent_id = %a.agent_id, %localpart, "registered the agent's puppet");
        }
        deps.store.mark_agent_registered(&a.agent_id).await?;
        usable_now(deps, &a.agent_id).await?;
    }
    let user = synapse.user(&localpart).await?.ok_or_else(|| {
        Outcome::retry("the puppet's account is not visible yet after its registration")
    })?;
    if user.deactivated {
        // DAARION.city created the agent again.
        synapse.reactivate(&localpart).await?;
        tracing::info!(agent_id = %a.agent_id, "reactivated the agent's puppet");
        usable_now(deps, &a.agent_id).await?;
    }
    let name = a.wanted.display_name.clone().unwrap_or(slug);
    if user.displayname.as_deref() != Some(name.as_str()) {
        synapse.set_displayname(&localpart, &name).await?;
    }
    sync_avatar(deps, &mut a, &localpart, user.avatar_url.as_deref()).await?;
    if let Some(presence) = a.wanted.presence {
        if a.applied_presence != Some(presence) {
            synapse
                .set_presence(
                    &synapse.user_id(&localpart),
                    presence.as_str(),
                    a.wanted.status_msg.as_deref(),
                )
                .await?;
            deps.store
                .record_agent_presence(&a.agent_id, presence)
                .await?;
        }
    }
    Ok(AgentState::Ready)
}

/// The puppet exists (registered or reactivated just now): its City Rooms'
/// jobs join it, and its messages that waited for it can go. Queued at once,
/// before anything later in the run can fail.
async fn usable_now(deps: &AgentDeps<'_>, agent_id: &str) -> StepResult<()> {
    deps.store
        .queue_rooms_of(agent_id, deps.clock.now_ms())
        .await?;
    deps.store
        .queue_sends_of(agent_id, true, deps.clock.now_ms())
        .await?;
    Ok(())
}

/// `<prefix><slug>`, written down once: a later slug does not rename the
/// puppet (a Matrix id never changes).
async fn settle_localpart(deps: &AgentDeps<'_>, a: &mut Agent, slug: &str) -> StepResult<String> {
    if let Some(localpart) = &a.localpart {
        return Ok(localpart.clone());
    }
    let localpart = format!("{}{slug}", deps.agent_prefix);
    if !deps
        .store
        .settle_agent_localpart(&a.agent_id, &localpart)
        .await?
    {
        return Err(Outcome::Failed(format!(
            "another agent's puppet is already @{localpart}"
        )));
    }
    // Another replica may have settled first: theirs counts.
    let settled = deps
        .store
        .agent(&a.agent_id)
        .await?
        .and_then(|a| a.localpart)
        .unwrap_or(localpart);
    a.localpart = Some(settled.clone());
    Ok(settled)
}

async fn sync_avatar(
    deps: &AgentDeps<'_>,
    a: &mut Agent,
    localpart: &str,
    shown: Option<&str>,
) -> StepResult<()> {
    let current = AppliedAvatar {
        url: a.applied_avatar_url.clone(),
        mxc: a.avatar_mxc.clone(),
        sha256: a.avatar_sha256.clone(),
        error: a.avatar_error.clone(),
    };
    let wanted = a.wanted.avatar_url.clone();
    let fetch = (deps.avatars, deps.synapse, deps.store);
    let applied = follow(fetch, JobKind::Agent, &a.agent_id, wanted, current).await?;
    let shown = shown.filter(|s| !s.is_empty());
    if shown != applied.mxc.as_deref() {
        deps.synapse
            .set_avatar(localpart, applied.mxc.as_deref())
            .await?;
    }
    Ok(())
}
