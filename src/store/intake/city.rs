//! DAARION.city's events: the rooms and memberships they change (a job
//! per changed room), and the agents and messages they carry (see
//! `agents`, `messages`), in the intake's one transaction.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use sqlx::{Any, Row, Transaction};

use super::{fresh_ones, log_events, Chunked, Logged};
use crate::domain::city::{Change, CityEvent, MemberWanted, RoomWanted, Visibility};
use crate::store::rooms::{member_from, Room, ROOM_COLUMNS};
use crate::store::{Backend, Batched, JobKind, Result, Store};

/// The source of DAARION.city's events in `events`.
const CITY: &str = "city";

/// The outcome of the intake of one DAARION.city event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CityAccepted {
    pub duplicate: bool,
    /// Whether work for Synapse was queued.
    pub queued: bool,
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
        self.intake("city intake", events, now, ()).await
    }

    /// The rooms with these ids, locked on PostgreSQL in id order.
    async fn rooms_for_update(
        &self,
        tx: &mut Transaction<'static, Any>,
        room_ids: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Room>> {
        let rooms = self
            .locked_rows(
                tx,
                ("rooms", ROOM_COLUMNS, "room_id"),
                room_ids,
                Room::from_row,
            )
            .await?;
        Ok(rooms.into_iter().map(|r| (r.room_id.clone(), r)).collect())
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
}

impl Chunked for CityEvent {
    type Accepted = CityAccepted;
    type Context = ();

    /// None when another replica stored one of our new rooms meanwhile.
    async fn accept_chunk(
        store: &Store,
        tx: &mut Transaction<'static, Any>,
        events: &[CityEvent],
        now: i64,
        (): (),
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
        let stored = log_events(tx, store.backend, CITY, &logged, now).await?;
        let fresh = fresh_ones(events.iter().map(|e| e.id.as_str()), &stored);

        // Agents and their messages have their own tables (see `agents`,
        // `messages`); the rest of this is about rooms.
        let mut work = vec![false; events.len()];
        let mut agent_changes = Vec::new();
        let mut messages = Vec::new();
        for (i, (event, fresh)) in events.iter().zip(&fresh).enumerate() {
            match &event.change {
                Change::Agent(change) if *fresh => agent_changes.push((i, event, change)),
                Change::Action(action) if *fresh => messages.push((i, event, &**action)),
                _ => {}
            }
        }
        if !store
            .accept_agent_changes(tx, &agent_changes, &mut work, now)
            .await?
        {
            return Ok(None);
        }
        store.accept_actions(tx, &messages, &mut work, now).await?;

        let room_ids: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.change.is_room())
            .map(|e| e.subject.as_str())
            .collect();
        let mut rooms = store.rooms_for_update(tx, &room_ids).await?;
        let mut members = store.members_of(tx, &room_ids).await?;
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
        if !insert_rooms(tx, store.backend, &new_rooms).await? {
            return Ok(None);
        }
        for room_id in &changed {
            if !created.iter().any(|c| c == room_id) {
                update_room(tx, &rooms[*room_id], now).await?;
            }
        }
        // Every membership that moved is written, not only those of rooms
        // with work for Synapse: a removal of someone who is not a member
        // (or a repeat of a membership with a newer time) changes nothing in
        // Matrix but its time orders later events, and a batch must leave
        // what the same events one by one leave.
        let mut moved: Vec<(&String, &Vec<MemberWanted>)> = members.iter().collect();
        // In one order, so that concurrent intakes lock rows alike.
        moved.sort_by_key(|(room_id, _)| *room_id);
        for (room_id, list) in moved {
            let old = before.get(room_id).map(Vec::as_slice).unwrap_or(&[]);
            if list.as_slice() != old {
                write_members(tx, room_id, old, list).await?;
            }
        }
        let queued: Vec<&str> = changed.iter().copied().collect();
        store.enqueue(tx, JobKind::Room, &queued, now).await?;
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
