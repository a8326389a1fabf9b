//! City Rooms in the database: what a room's job reads and writes down
//! (their intake is `intake::city`).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::intake::CHUNK;
use super::{parse_column, JobKind, Result, Store};
use crate::domain::city::{MemberWanted, Role, RoomWanted};

/// Where a room stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomState {
    /// Work for Synapse is queued.
    Pending,
    /// The Matrix room is what DAARION.city wants.
    Ready,
    /// Deleted in DAARION.city: members removed, alias freed, closed.
    Closed,
    /// The last attempt failed permanently; see the job's last error.
    Failed,
}

column_words!(RoomState {
    Pending => "pending",
    Ready => "ready",
    Closed => "closed",
    Failed => "failed",
});

/// A City Room: what DAARION.city wants and what has been applied.
#[derive(Debug, Clone)]
pub struct Room {
    pub room_id: String,
    pub wanted: RoomWanted,
    pub state: RoomState,
    /// The alias localpart, once settled (before the room is created).
    pub alias: Option<String>,
    pub matrix_room_id: Option<String>,
    pub applied_avatar_url: Option<String>,
    pub avatar_mxc: Option<String>,
    pub avatar_sha256: Option<String>,
    pub avatar_error: Option<String>,
    pub applied_directory: Option<String>,
    /// Of the room's job: failed attempts and the last error.
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A member of a room as Matrix knows them: a person with an active account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAccount {
    pub member_id: String,
    pub localpart: String,
}

pub(super) const ROOM_COLUMNS: &str = "room_id, slug, slug_at, name, name_at, topic, topic_at, \
    avatar_url, avatar_url_at, visibility, visibility_at, deleted, lifecycle_at, state, alias, \
    matrix_room_id, applied_avatar_url, avatar_mxc, avatar_sha256, avatar_error, \
    applied_directory, created_at, updated_at, \
    COALESCE((SELECT j.attempts FROM jobs j WHERE j.kind = 'room' AND j.subject = room_id), 0) \
    AS attempts, \
    (SELECT j.last_error FROM jobs j WHERE j.kind = 'room' AND j.subject = room_id) AS last_error";

impl Room {
    pub(super) fn new(room_id: &str, now: i64) -> Room {
        Room {
            room_id: room_id.to_string(),
            wanted: RoomWanted::default(),
            state: RoomState::Pending,
            alias: None,
            matrix_room_id: None,
            applied_avatar_url: None,
            avatar_mxc: None,
            avatar_sha256: None,
            avatar_error: None,
            applied_directory: None,
            attempts: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub(super) fn from_row(row: &AnyRow) -> Result<Room> {
        let visibility: Option<String> = row.try_get("visibility")?;
        Ok(Room {
            room_id: row.try_get("room_id")?,
            wanted: RoomWanted {
                slug: row.try_get("slug")?,
                slug_at: row.try_get("slug_at")?,
                name: row.try_get("name")?,
                name_at: row.try_get("name_at")?,
                topic: row.try_get("topic")?,
                topic_at: row.try_get("topic_at")?,
                avatar_url: row.try_get("avatar_url")?,
                avatar_url_at: row.try_get("avatar_url_at")?,
                visibility: visibility.and_then(|v| v.parse().ok()),
                visibility_at: row.try_get("visibility_at")?,
                deleted: row.try_get::<i64, _>("deleted")? != 0,
                lifecycle_at: row.try_get("lifecycle_at")?,
            },
            state: parse_column(row, "state")?,
            alias: row.try_get("alias")?,
            matrix_room_id: row.try_get("matrix_room_id")?,
            applied_avatar_url: row.try_get("applied_avatar_url")?,
            avatar_mxc: row.try_get("avatar_mxc")?,
            avatar_sha256: row.try_get("avatar_sha256")?,
            avatar_error: row.try_get("avatar_error")?,
            applied_directory: row.try_get("applied_directory")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

impl Store {
    pub async fn room(&self, room_id: &str) -> Result<Option<Room>> {
        let sql = format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE room_id = $1");
        let row = sqlx::query(&sql)
            .bind(room_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Room::from_row).transpose()
    }

    /// Every membership of the room DAARION.city told us of (removed ones too).
    pub async fn room_members(&self, room_id: &str) -> Result<Vec<MemberWanted>> {
        let rows = sqlx::query(
            "SELECT member_id, role, present, at FROM room_members WHERE room_id = $1 \
             ORDER BY member_id",
        )
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_from).collect()
    }

    /// Of the room's members, those with a Matrix user: people with an
    /// active account, and agents whose puppet exists.
    pub async fn member_accounts(&self, room_id: &str) -> Result<Vec<MemberAccount>> {
        let rows = sqlx::query(
            "SELECT m.member_id, p.localpart FROM room_members m \
             JOIN people p ON p.user_id = m.member_id \
             WHERE m.room_id = $1 AND p.account = 'active' AND p.deleted = 0 \
             AND p.localpart IS NOT NULL \
             UNION ALL \
             SELECT m.member_id, a.localpart FROM room_members m \
             JOIN agents a ON a.agent_id = m.member_id \
             WHERE m.room_id = $2 AND a.registered = 1 AND a.deleted = 0 \
             AND a.localpart IS NOT NULL ORDER BY member_id",
        )
        .bind(room_id)
        .bind(room_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MemberAccount {
                    member_id: r.try_get("member_id")?,
                    localpart: r.try_get("localpart")?,
                })
            })
            .collect()
    }

    /// Writes the room's alias down before the room is created; false when
    /// another room holds it already.
    pub async fn settle_room_alias(&self, room_id: &str, alias: &str, now: i64) -> Result<bool> {
        let taken: Option<String> =
            sqlx::query_scalar("SELECT room_id FROM rooms WHERE alias = $1")
                .bind(alias)
                .fetch_optional(&self.pool)
                .await?;
        if taken.is_some_and(|other| other != room_id) {
            return Ok(false);
        }
        let result = sqlx::query(
            "UPDATE rooms SET alias = $2, updated_at = $3 WHERE room_id = $1 AND alias IS NULL",
        )
        .bind(room_id)
        .bind(alias)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(true),
            // Another room took it between the two statements.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn set_matrix_room_id(
        &self,
        room_id: &str,
        matrix_room_id: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE rooms SET matrix_room_id = $2, updated_at = $3 WHERE room_id = $1")
            .bind(room_id)
            .bind(matrix_room_id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_room_directory(&self, room_id: &str, directory: &str) -> Result<()> {
        sqlx::query("UPDATE rooms SET applied_directory = $2 WHERE room_id = $1")
            .bind(room_id)
            .bind(directory)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A person's account became active: the rooms they are a member of
    /// get their job (to join them).
    pub async fn queue_rooms_of(&self, member_id: &str, now: i64) -> Result<usize> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT m.room_id FROM room_members m JOIN rooms r ON r.room_id = m.room_id \
             WHERE m.member_id = $1 AND m.present = 1 AND r.deleted = 0 ORDER BY m.room_id",
        )
        .bind(member_id)
        .fetch_all(&self.pool)
        .await?;
        self.queue_rooms(&ids, now).await?;
        Ok(ids.len())
    }

    /// Queues the work of these rooms (a full pass, a person's new account).
    pub async fn queue_rooms(&self, room_ids: &[String], now: i64) -> Result<()> {
        for chunk in room_ids.chunks(CHUNK) {
            let mut tx = self.pool.begin().await?;
            let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
            self.enqueue(&mut tx, JobKind::Room, &keys, now).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Rooms with a Matrix room that is not closed and no job: those a full
    /// pass compares with Synapse.
    pub async fn settled_rooms(&self) -> Result<Vec<String>> {
        let ids = sqlx::query_scalar(
            "SELECT r.room_id FROM rooms r WHERE r.matrix_room_id IS NOT NULL \
             AND r.state = 'ready' \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'room' AND j.subject = r.room_id) \
             ORDER BY r.room_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    /// Rooms by state, for `/metrics`.
    pub async fn rooms_by_state(&self) -> Result<Vec<(String, i64)>> {
        self.subjects_by_state(JobKind::Room).await
    }
}

pub(super) fn member_from(row: &AnyRow) -> Result<MemberWanted> {
    let role: String = row.try_get("role")?;
    Ok(MemberWanted {
        member_id: row.try_get("member_id")?,
        role: role.parse().unwrap_or(Role::Member),
        present: row.try_get::<i64, _>("present")? != 0,
        at: row.try_get("at")?,
    })
}
