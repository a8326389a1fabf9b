//! DAARION.city's agents in the database: their intake (inside the city
//! intake's transaction, see `rooms`), and what an agent's job reads and
//! writes down: the puppet's localpart (settled once), its avatar and the
//! presence last set.

use std::collections::{BTreeSet, HashMap};

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{parse_column, JobKind, Result, Store};
use crate::domain::agent::{AgentChange, AgentWanted, Presence};
use crate::domain::city::CityEvent;

/// Where an agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Work for Synapse is queued (or the agent is known only from a
    /// membership or presence so far, waiting for `agent.created`).
    Pending,
    /// The puppet exists and shows what DAARION.city wants.
    Ready,
    /// Deleted in DAARION.city: the puppet is deactivated.
    Deactivated,
    /// The last attempt failed permanently; see the job's last error.
    Failed,
}

column_words!(AgentState {
    Pending => "pending",
    Ready => "ready",
    Deactivated => "deactivated",
    Failed => "failed",
});

/// An agent: what DAARION.city wants and what has been applied.
#[derive(Debug, Clone)]
pub struct Agent {
    pub agent_id: String,
    pub wanted: AgentWanted,
    pub state: AgentState,
    /// The puppet's localpart, once settled.
    pub localpart: Option<String>,
    /// Whether Synapse has the puppet's account.
    pub registered: bool,
    pub applied_avatar_url: Option<String>,
    pub avatar_mxc: Option<String>,
    pub avatar_sha256: Option<String>,
    pub avatar_error: Option<String>,
    pub applied_presence: Option<Presence>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const AGENT_COLUMNS: &str = "agent_id, slug, slug_at, display_name, display_name_at, \
    avatar_url, avatar_url_at, accepts_direct_chats, accepts_direct_chats_at, deleted, lifecycle_at, presence, status_msg, presence_at, state, \
    localpart, registered, applied_avatar_url, avatar_mxc, avatar_sha256, avatar_error, \
    applied_presence, created_at, updated_at, \
    COALESCE((SELECT j.attempts FROM jobs j WHERE j.kind = 'agent' AND j.subject = agent_id), 0) \
    AS attempts, \
    (SELECT j.last_error FROM jobs j WHERE j.kind = 'agent' AND j.subject = agent_id) AS last_error";

impl Agent {
    fn new(agent_id: &str, now: i64) -> Agent {
        Agent {
            agent_id: agent_id.to_string(),
            wanted: AgentWanted::default(),
            state: AgentState::Pending,
            localpart: None,
            registered: false,
            applied_avatar_url: None,
            avatar_mxc: None,
            avatar_sha256: None,
            avatar_error: None,
            applied_presence: None,
            attempts: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn from_row(row: &AnyRow) -> Result<Agent> {
        let presence: Option<String> = row.try_get("presence")?;
        let applied: Option<String> = row.try_get("applied_presence")?;
        Ok(Agent {
            agent_id: row.try_get("agent_id")?,
            wanted: AgentWanted {
                slug: row.try_get("slug")?,
                slug_at: row.try_get("slug_at")?,
                display_name: row.try_get("display_name")?,
                display_name_at: row.try_get("display_name_at")?,
                avatar_url: row.try_get("avatar_url")?,
                avatar_url_at: row.try_get("avatar_url_at")?,
                accepts_direct_chats: row.try_get::<i64, _>("accepts_direct_chats")? != 0,
                accepts_direct_chats_at: row.try_get("accepts_direct_chats_at")?,
                deleted: row.try_get::<i64, _>("deleted")? != 0,
                lifecycle_at: row.try_get("lifecycle_at")?,
                presence: presence.and_then(|p| p.parse().ok()),
                status_msg: row.try_get("status_msg")?,
                presence_at: row.try_get("presence_at")?,
            },
            state: parse_column(row, "state")?,
            localpart: row.try_get("localpart")?,
            registered: row.try_get::<i64, _>("registered")? != 0,
            applied_avatar_url: row.try_get("applied_avatar_url")?,
            avatar_mxc: row.try_get("avatar_mxc")?,
            avatar_sha256: row.try_get("avatar_sha256")?,
            avatar_error: row.try_get("avatar_error")?,
            applied_presence: applied.and_then(|p| p.parse().ok()),
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// An agent whose puppet should look present (online or unavailable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentAgent {
    pub agent_id: String,
    pub localpart: String,
    pub presence: Presence,
    pub status_msg: Option<String>,
}

impl Store {
    /// Applies agent events (`(event, change)`, in order) inside the city
    /// intake's transaction; marks in `work` those that queued a job.
    /// False when another replica stored one of our new agents meanwhile.
    pub(super) async fn accept_agent_changes(
        &self,
        tx: &mut Transaction<'static, Any>,
        changes: &[(usize, &CityEvent, &AgentChange)],
        work: &mut [bool],
        now: i64,
    ) -> Result<bool> {
        if changes.is_empty() {
            return Ok(true);
        }
        let ids: BTreeSet<&str> = changes.iter().map(|(_, e, _)| e.subject.as_str()).collect();
        let mut agents: HashMap<String, Agent> = self
            .locked_rows(
                tx,
                ("agents", AGENT_COLUMNS, "agent_id"),
                &ids,
                Agent::from_row,
            )
            .await?
            .into_iter()
            .map(|a| (a.agent_id.clone(), a))
            .collect();
        let mut created = Vec::new();
        let mut changed: BTreeSet<&str> = BTreeSet::new();
        for (i, event, change) in changes {
            let agent = agents.entry(event.subject.clone()).or_insert_with(|| {
                created.push(event.subject.clone());
                Agent::new(&event.subject, now)
            });
            if agent
                .wanted
                .apply(event.kind == "agent.created", change, event.created_at_ms)
            {
                changed.insert(event.subject.as_str());
                work[*i] = true;
            }
        }
        for id in &created {
            let inserted = sqlx::query(
                "INSERT INTO agents (agent_id, state, created_at, updated_at) \
                 VALUES ($1, 'pending', $2, $2) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Ok(false);
            }
        }
        for id in &changed {
            let w = &agents[*id].wanted;
            sqlx::query(
                "UPDATE agents SET slug = $2, slug_at = $3, display_name = $4, \
                 display_name_at = $5, avatar_url = $6, avatar_url_at = $7, deleted = $8, \
                 lifecycle_at = $9, presence = $10, status_msg = $11, presence_at = $12, \
                 updated_at = $13, accepts_direct_chats = $14, accepts_direct_chats_at = $15 \
                 WHERE agent_id = $1",
            )
            .bind(*id)
            .bind(&w.slug)
            .bind(w.slug_at)
            .bind(&w.display_name)
            .bind(w.display_name_at)
            .bind(&w.avatar_url)
            .bind(w.avatar_url_at)
            .bind(w.deleted as i64)
            .bind(w.lifecycle_at)
            .bind(w.presence.map(Presence::as_str))
            .bind(&w.status_msg)
            .bind(w.presence_at)
            .bind(now)
            .bind(w.accepts_direct_chats as i64)
            .bind(w.accepts_direct_chats_at)
            .execute(&mut **tx)
            .await?;
        }
        let keys: Vec<&str> = changed.into_iter().collect();
        self.enqueue(tx, JobKind::Agent, &keys, now).await?;
        Ok(true)
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Option<Agent>> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE agent_id = $1");
        let row = sqlx::query(&sql)
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Agent::from_row).transpose()
    }

    /// Writes the puppet's localpart down before its account is created;
    /// false when another agent holds it.
    pub async fn settle_agent_localpart(&self, agent_id: &str, localpart: &str) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE agents SET localpart = $2 WHERE agent_id = $1 AND localpart IS NULL",
        )
        .bind(agent_id)
        .bind(localpart)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn mark_agent_registered(&self, agent_id: &str) -> Result<()> {
        sqlx::query("UPDATE agents SET registered = 1 WHERE agent_id = $1")
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn record_agent_presence(&self, agent_id: &str, presence: Presence) -> Result<()> {
        sqlx::query("UPDATE agents SET applied_presence = $2 WHERE agent_id = $1")
            .bind(agent_id)
            .bind(presence.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ready agents whose presence is online or unavailable: Synapse
    /// forgets it after 30 s without activity, so it is set again.
    pub async fn present_agents(&self) -> Result<Vec<PresentAgent>> {
        let rows = sqlx::query(
            "SELECT agent_id, localpart, presence, status_msg FROM agents \
             WHERE presence IN ('online', 'unavailable') AND state = 'ready' AND deleted = 0 \
             AND registered = 1 AND localpart IS NOT NULL ORDER BY agent_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let presence: String = r.try_get("presence")?;
                Ok(PresentAgent {
                    agent_id: r.try_get("agent_id")?,
                    localpart: r.try_get("localpart")?,
                    presence: presence.parse().unwrap_or(Presence::Offline),
                    status_msg: r.try_get("status_msg")?,
                })
            })
            .collect()
    }

    /// Agents by state, for `/metrics` and operators.
    pub async fn agents_by_state(&self) -> Result<Vec<(String, i64)>> {
        self.subjects_by_state(JobKind::Agent).await
    }
}
