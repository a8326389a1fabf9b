//! Direct chats with agents (CONTRACT.md section 13): a person invites an
//! agent's puppet into a Matrix room, and the room becomes a conversation,
//! a place of its own (`conversation:<id>`) with its outbox into Matrix and
//! its stream back to DAARION.city.
//!
//! The intake of Synapse's transactions notes the invitation (`invited`)
//! and queues the place's `send` job, which joins the puppet or turns the
//! invitation down (`joined`, `refused`); the person leaving (or removing
//! the puppet) ends it (`ended`, told to DAARION.city), and the job then
//! takes the puppet out (`closed`).

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::intake::{log_events, Logged};
use super::outbox::{insert_outbox, MATRIX_EVENT, PEOPLE_BY_LOCALPART};
use super::{JobKind, Result, Store};
use crate::domain::agent::{conversation_id, Place};
use crate::domain::matrix::{self, conversation_envelope};

/// A direct chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub conversation_id: String,
    pub matrix_room_id: String,
    pub agent_id: String,
    /// Who invited the agent.
    pub person_mxid: String,
    /// `invited`, `joined`, `refused`, `ended`, `closed`.
    pub state: String,
    pub reason: Option<String>,
}

const COLUMNS: &str = "conversation_id, matrix_room_id, agent_id, person_mxid, state, reason";

fn from_row(row: &AnyRow) -> Result<Conversation> {
    Ok(Conversation {
        conversation_id: row.try_get("conversation_id")?,
        matrix_room_id: row.try_get("matrix_room_id")?,
        agent_id: row.try_get("agent_id")?,
        person_mxid: row.try_get("person_mxid")?,
        state: row.try_get("state")?,
        reason: row.try_get("reason")?,
    })
}

impl Store {
    /// The transaction's invitations of agents' puppets and departures
    /// from direct chats, each once (inside its intake).
    pub(super) async fn accept_members(
        &self,
        tx: &mut Transaction<'static, Any>,
        txn: &matrix::Transaction,
        intake: &mut super::outbox::TxnIntake<'_>,
    ) -> Result<()> {
        if txn.members.is_empty() {
            return Ok(());
        }
        let logged: Vec<Logged> = txn
            .members
            .iter()
            .map(|m| Logged {
                id: &m.event_id,
                subject: &m.room_id,
                kind: "m.room.member",
                created_at: m.origin_server_ts,
            })
            .collect();
        let fresh = log_events(tx, self.backend, MATRIX_EVENT, &logged, intake.now).await?;
        let names = intake.names;
        for m in txn.members.iter().filter(|m| fresh.contains(&m.event_id)) {
            if m.membership == "invite" {
                let Some(localpart) = names.agent(&m.user_id) else {
                    continue;
                };
                let agent_id: Option<String> =
                    sqlx::query_scalar("SELECT agent_id FROM agents WHERE localpart = $1")
                        .bind(localpart)
                        .fetch_optional(&mut **tx)
                        .await?;
                let Some(agent_id) = agent_id else {
                    continue;
                };
                let id = conversation_id(&m.room_id, &agent_id);
                sqlx::query(
                    "INSERT INTO conversations (conversation_id, matrix_room_id, agent_id, \
                     person_mxid, state, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'invited', $5, $5) \
                     ON CONFLICT (conversation_id) DO UPDATE SET state = 'invited', \
                     person_mxid = excluded.person_mxid, reason = NULL, updated_at = excluded.updated_at \
                     WHERE conversations.state IN ('refused', 'ended', 'closed')",
                )
                .bind(&id)
                .bind(&m.room_id)
                .bind(&agent_id)
                .bind(&m.sender)
                .bind(intake.now)
                .execute(&mut **tx)
                .await?;
                let place = Place::Conversation(id).key();
                self.enqueue(tx, JobKind::Send, &[place.as_str()], intake.now)
                    .await?;
                continue;
            }
            // Someone left: the person, or the puppet removed by someone.
            let sql = format!(
                "SELECT {COLUMNS} FROM conversations WHERE matrix_room_id = $1 \
                 AND state IN ('invited', 'joined')"
            );
            let open = sqlx::query(&sql)
                .bind(&m.room_id)
                .fetch_all(&mut **tx)
                .await?;
            for row in &open {
                let c = from_row(row)?;
                // The puppet of this conversation's agent, removed by someone.
                let puppet_removed = match names.agent(&m.user_id) {
                    Some(lp) => {
                        let localpart: Option<Option<String>> =
                            sqlx::query_scalar("SELECT localpart FROM agents WHERE agent_id = $1")
                                .bind(&c.agent_id)
                                .fetch_optional(&mut **tx)
                                .await?;
                        localpart.flatten().as_deref() == Some(lp)
                    }
                    None => false,
                };
                if m.user_id != c.person_mxid && !puppet_removed {
                    continue;
                }
                sqlx::query(
                    "UPDATE conversations SET state = 'ended', reason = $2, updated_at = $3 \
                     WHERE conversation_id = $1",
                )
                .bind(&c.conversation_id)
                .bind(format!("{} {}", m.user_id, m.membership))
                .bind(intake.now)
                .execute(&mut **tx)
                .await?;
                let place = Place::Conversation(c.conversation_id.clone());
                if c.state == "joined" && intake.outbox {
                    let sender_id = self.person_of(tx, names, &c.person_mxid).await?;
                    let envelope = conversation_envelope(
                        &m.event_id,
                        "matrix.conversation_ended",
                        &c.conversation_id,
                        &c.agent_id,
                        sender_id.as_deref(),
                        &c.matrix_room_id,
                        m.origin_server_ts,
                    );
                    intake
                        .insert(
                            tx,
                            &place,
                            &m.event_id,
                            "matrix.conversation_ended",
                            &envelope,
                        )
                        .await?;
                }
                self.enqueue(tx, JobKind::Send, &[place.key().as_str()], intake.now)
                    .await?;
            }
        }
        Ok(())
    }

    async fn person_of(
        &self,
        tx: &mut Transaction<'static, Any>,
        names: &matrix::Names<'_>,
        mxid: &str,
    ) -> Result<Option<String>> {
        let Some(localpart) = names.local(mxid) else {
            return Ok(None);
        };
        let keys = [localpart].into_iter().collect();
        let mut found = self.pairs(tx, PEOPLE_BY_LOCALPART, &keys).await?;
        Ok(found.remove(localpart))
    }

    pub async fn conversation(&self, conversation_id: &str) -> Result<Option<Conversation>> {
        let sql = format!("SELECT {COLUMNS} FROM conversations WHERE conversation_id = $1");
        let row = sqlx::query(&sql)
            .bind(conversation_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The DAARION user id of a person of this server, by Matrix id.
    pub async fn person_by_mxid(
        &self,
        names: &matrix::Names<'_>,
        mxid: &str,
    ) -> Result<Option<String>> {
        let mut tx = self.pool.begin().await?;
        let found = self.person_of(&mut tx, names, mxid).await?;
        tx.commit().await?;
        Ok(found)
    }

    /// The puppet joined: the conversation is open, and DAARION.city hears
    /// of it (with `outbox` on).
    pub async fn conversation_joined(
        &self,
        c: &Conversation,
        sender_id: Option<&str>,
        outbox: bool,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE conversations SET state = 'joined', updated_at = $2 \
             WHERE conversation_id = $1 AND state = 'invited'",
        )
        .bind(&c.conversation_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 && outbox {
            let place = Place::Conversation(c.conversation_id.clone()).key();
            let id = format!("{}:started:{now}", c.conversation_id);
            let envelope = conversation_envelope(
                &id,
                "matrix.conversation_started",
                &c.conversation_id,
                &c.agent_id,
                sender_id,
                &c.matrix_room_id,
                now,
            );
            insert_outbox(
                &mut tx,
                &place,
                &id,
                "matrix.conversation_started",
                &envelope,
                now,
            )
            .await?;
            self.enqueue(&mut tx, JobKind::Deliver, &[place.as_str()], now)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The conversation moves from `from` to `to` (refused, closed), with
    /// the reason.
    pub async fn conversation_moved(
        &self,
        conversation_id: &str,
        from: &str,
        to: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE conversations SET state = $3, reason = COALESCE($4, reason), updated_at = $5 \
             WHERE conversation_id = $1 AND state = $2",
        )
        .bind(conversation_id)
        .bind(from)
        .bind(to)
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
