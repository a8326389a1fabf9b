//! City Rooms in the database: the intake of DAARION.city's events (the
//! same all-or-nothing transaction, event log and queue as people's: the
//! events, the rooms and memberships they change, and a job per changed
//! room), and what a room's job reads and writes down.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::intake::{log_events, retry_conflicts, Logged, CHUNK};
use super::{parse_column, Backend, Batched, JobKind, Result, Store};
use crate::domain::city::{Change, CityEvent, MemberWanted, Role, RoomWanted, Visibility};

/// The source of DAARION.city's events in `events`.
const CITY: &str = "city";

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

/// The outcome of the intake of one DAARION.city event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CityAccepted {
    pub duplicate: bool,
    /// Whether work for Synapse was queued.
    pub queued: bool,
}

/// A member of a room as Matrix knows them: a person with an active account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAccount {
    pub member_id: String,
    pub localpart: String,
}

const ROOM_COLUMNS: &str = "room_id, slug, slug_at, name, name_at, topic, topic_at, \
    avatar_url, avatar_url_at, visibility, visibility_at, deleted, lifecycle_at, state, alias, \
    matrix_room_id, applied_avatar_url, avatar_mxc, avatar_sha256, avatar_error, \
    applied_directory, created_at, updated_at, \
    COALESCE((SELECT j.attempts FROM jobs j WHERE j.kind = 'room' AND j.subject = room_id), 0) \
    AS attempts, \
    (SELECT j.last_error FROM jobs j WHERE j.kind = 'room' AND j.subject = room_id) AS last_error";

impl Room {
    fn new(room_id: &str, now: i64) -> Room {
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

    fn from_row(row: &AnyRow) -> Result<Room> {
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

impl Batched for CityEvent {
    type Accepted = CityAccepted;

    fn store_batch(
        store: &Store,
        items: &[Self],
        now: i64,
    ) -> impl Future<Output = Result<Vec<CityAccepted>>> + Send {
        store.accept_city_events(items, now)
    }
}

impl Store {
    /// Stores DAARION.city's events durably, in one transaction: their ids
    /// (idempotency), the rooms and memberships with the events applied in
    /// order, and a job for every room that Synapse must change.
    pub async fn accept_city_events(
        &self,
        events: &[CityEvent],
        now: i64,
    ) -> Result<Vec<CityAccepted>> {
        retry_conflicts("city intake", || self.try_accept_city(events, now)).await
    }

    async fn try_accept_city(
        &self,
        events: &[CityEvent],
        now: i64,
    ) -> Result<Option<Vec<CityAccepted>>> {
        let mut tx = self.pool.begin().await?;
        let mut accepted = Vec::with_capacity(events.len());
        for chunk in events.chunks(CHUNK) {
            match self.accept_city_chunk(&mut tx, chunk, now).await? {
                Some(done) => accepted.extend(done),
                None => {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
        }
        tx.commit().await?;
        Ok(Some(accepted))
    }

    /// None when another replica stored one of our new rooms meanwhile.
    async fn accept_city_chunk(
        &self,
        tx: &mut Transaction<'static, Any>,
        events: &[CityEvent],
        now: i64,
    ) -> Result<Option<Vec<CityAccepted>>> {
        let logged: Vec<Logged> = events
            .iter()
            .map(|e| Logged {
                id: &e.id,
                subject: &e.subject,
                kind: e.kind,
                created_at: e.created_at_ms,
            })
            .collect();
        let stored = log_events(tx, self.backend, CITY, &logged, now).await?;
        let mut seen = HashSet::new();
        let fresh: Vec<bool> = events
            .iter()
            .map(|e| stored.contains(&e.id) && seen.insert(e.id.as_str()))
            .collect();

        // Agents and their messages have their own tables (see `agents`,
        // `messages`); the rest of this is about rooms.
        let mut work = vec![false; events.len()];
        let mut agent_changes = Vec::new();
        let mut messages = Vec::new();
        for (i, (event, fresh)) in events.iter().zip(&fresh).enumerate() {
            match &event.change {
                Change::Agent(change) if *fresh => agent_changes.push((i, event, change)),
                Change::Message(message) if *fresh => messages.push((i, event, message)),
                _ => {}
            }
        }
        if !self
            .accept_agent_changes(tx, &agent_changes, &mut work, now)
            .await?
        {
            return Ok(None);
        }
        self.accept_messages(tx, &messages, &mut work, now).await?;

        let room_ids: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.change.is_room())
            .map(|e| e.subject.as_str())
            .collect();
        let mut rooms = self.rooms_for_update(tx, &room_ids).await?;
        let mut members = self.members_of(tx, &room_ids).await?;
        let before: HashMap<String, Vec<MemberWanted>> = members.clone();

        let mut created = Vec::new();
        let mut changed: BTreeSet<&str> = BTreeSet::new();
        for (i, (event, fresh)) in events.iter().zip(&fresh).enumerate() {
            if !fresh || !event.change.is_room() {
                continue;
            }
            let room = rooms.entry(event.subject.clone()).or_insert_with(|| {
                created.push(event.subject.clone());
                Room::new(&event.subject, now)
            });
            let list = members.entry(event.subject.clone()).or_default();
            let did = room.wanted.apply(event, list);
            if did {
                changed.insert(event.subject.as_str());
            }
            work[i] = did;
        }

        let new_rooms: Vec<&Room> = created.iter().map(|id| &rooms[id]).collect();
        if !insert_rooms(tx, self.backend, &new_rooms).await? {
            return Ok(None);
        }
        for room_id in &changed {
            if !created.iter().any(|c| c == room_id) {
                update_room(tx, &rooms[*room_id], now).await?;
            }
            let old = before.get(*room_id).map(Vec::as_slice).unwrap_or(&[]);
            write_members(tx, room_id, old, &members[*room_id]).await?;
        }
        let queued: Vec<&str> = changed.iter().copied().collect();
        self.enqueue(tx, JobKind::Room, &queued, now).await?;
        Ok(Some(
            fresh
                .into_iter()
                .zip(work)
                .map(|(fresh, queued)| CityAccepted {
                    duplicate: !fresh,
                    queued,
                })
                .collect(),
        ))
    }

    /// The rooms with these ids, locked on PostgreSQL in id order.
    async fn rooms_for_update(
        &self,
        tx: &mut Transaction<'static, Any>,
        room_ids: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Room>> {
        if room_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT {ROOM_COLUMNS} FROM rooms WHERE room_id IN ({}) ORDER BY room_id{lock}",
            self.backend.placeholders(room_ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in room_ids {
            query = query.bind(*id);
        }
        let mut rooms = HashMap::new();
        for row in query.fetch_all(&mut **tx).await? {
            let room = Room::from_row(&row)?;
            rooms.insert(room.room_id.clone(), room);
        }
        Ok(rooms)
    }

    async fn members_of(
        &self,
        tx: &mut Transaction<'static, Any>,
        room_ids: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Vec<MemberWanted>>> {
        if room_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT room_id, member_id, role, present, at FROM room_members \
             WHERE room_id IN ({}) ORDER BY room_id, member_id",
            self.backend.placeholders(room_ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in room_ids {
            query = query.bind(*id);
        }
        let mut members: HashMap<String, Vec<MemberWanted>> = HashMap::new();
        for row in query.fetch_all(&mut **tx).await? {
            let room_id: String = row.try_get("room_id")?;
            members.entry(room_id).or_default().push(member_from(&row)?);
        }
        Ok(members)
    }

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

fn member_from(row: &AnyRow) -> Result<MemberWanted> {
    let role: String = row.try_get("role")?;
    Ok(MemberWanted {
        member_id: row.try_get("member_id")?,
        role: role.parse().unwrap_or(Role::Member),
        present: row.try_get::<i64, _>("present")? != 0,
        at: row.try_get("at")?,
    })
}

/// Inserts new rooms; false when another replica inserted one first.
async fn insert_rooms(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    rooms: &[&Room],
) -> Result<bool> {
    if rooms.is_empty() {
        return Ok(true);
    }
    let sql = format!(
        "INSERT INTO rooms (room_id, slug, slug_at, name, name_at, topic, topic_at, avatar_url, \
         avatar_url_at, visibility, visibility_at, deleted, lifecycle_at, state, created_at, \
         updated_at) VALUES {} ON CONFLICT DO NOTHING RETURNING room_id",
        backend.rows(rooms.len(), 16)
    );
    let mut query = sqlx::query(&sql);
    for r in rooms {
        query = bind_wanted(query.bind(&r.room_id), &r.wanted)
            .bind(r.state.as_str())
            .bind(r.created_at)
            .bind(r.updated_at);
    }
    Ok(query.fetch_all(&mut **tx).await?.len() == rooms.len())
}

async fn update_room(tx: &mut Transaction<'static, Any>, r: &Room, now: i64) -> Result<()> {
    let query = sqlx::query(
        "UPDATE rooms SET slug = $2, slug_at = $3, name = $4, name_at = $5, topic = $6, \
         topic_at = $7, avatar_url = $8, avatar_url_at = $9, visibility = $10, \
         visibility_at = $11, deleted = $12, lifecycle_at = $13, updated_at = $14 \
         WHERE room_id = $1",
    )
    .bind(&r.room_id);
    bind_wanted(query, &r.wanted)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Writes the memberships that differ from `old`.
async fn write_members(
    tx: &mut Transaction<'static, Any>,
    room_id: &str,
    old: &[MemberWanted],
    new: &[MemberWanted],
) -> Result<()> {
    for m in new {
        if old.contains(m) {
            continue;
        }
        sqlx::query(
            "INSERT INTO room_members (room_id, member_id, role, present, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id, member_id) DO UPDATE SET \
             role = excluded.role, present = excluded.present, at = excluded.at",
        )
        .bind(room_id)
        .bind(&m.member_id)
        .bind(m.role.as_str())
        .bind(m.present as i64)
        .bind(m.at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Binds the wanted fields in column order: slug … lifecycle_at.
fn bind_wanted<'q>(query: AnyQuery<'q>, w: &'q RoomWanted) -> AnyQuery<'q> {
    query
        .bind(&w.slug)
        .bind(w.slug_at)
        .bind(&w.name)
        .bind(w.name_at)
        .bind(&w.topic)
        .bind(w.topic_at)
        .bind(&w.avatar_url)
        .bind(w.avatar_url_at)
        .bind(w.visibility.map(Visibility::as_str))
        .bind(w.visibility_at)
        .bind(w.deleted as i64)
        .bind(w.lifecycle_at)
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;
