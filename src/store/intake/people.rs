//! DAARION Auth's events: the people they concern and the work for Synapse
//! (see `intake` for the transaction). A chunk costs one multi-row INSERT of
//! event ids, one SELECT of the people concerned, one multi-row INSERT of
//! new people, one UPDATE per existing person that changed, and one
//! multi-row upsert of jobs, however many events it holds.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::{Any, Row, Transaction};

use super::{fresh_ones, log_events, Chunked, Logged};
use crate::domain::event::{Event, EventKind};
use crate::domain::person::Wanted;
use crate::store::people::PERSON_COLUMNS;
use crate::store::{Backend, CreateVia, JobKind, Person, Result, Store};

/// The outcome of [`Store::accept_event`] for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub duplicate: bool,
    /// The person's localpart: None until the worker settles it (see
    /// `jobs::person`), and for a duplicate whose person is unknown (a
    /// repeated event id naming someone else).
    pub localpart: Option<String>,
    /// Whether work for Synapse was queued.
    pub queued: bool,
}

impl Store {
    /// Stores `event` durably: its id (idempotency), the person (created with
    /// a localpart on first sight) with the event applied, and a job when
    /// Synapse must change — one transaction, so a crash leaves all or nothing.
    pub async fn accept_event(&self, event: &Event, now: i64) -> Result<Accepted> {
        let mut accepted = self
            .accept_events_via(std::slice::from_ref(event), now, CreateVia::Register)
            .await?;
        Ok(accepted.remove(0))
    }

    /// [`Store::accept_event`] for several events in one transaction: one
    /// disk flush for all of them (group commit of webhooks, see
    /// `store::batch`).
    pub async fn accept_events(&self, events: &[Event], now: i64) -> Result<Vec<Accepted>> {
        self.accept_events_via(events, now, CreateVia::Register)
            .await
    }

    /// The intake of several events (webhooks, or a page of a sync pass) in
    /// one transaction; people seen for the first time get their account
    /// created `via` that way. Events apply in the given order, so
    /// duplicates and successive changes within the batch count as they
    /// would one by one.
    pub async fn accept_events_via(
        &self,
        events: &[Event],
        now: i64,
        via: CreateVia,
    ) -> Result<Vec<Accepted>> {
        self.accept_events_due(events, now, via, now).await
    }

    /// The sign-in's stand-in registration (see `Event::sso_registration`),
    /// whose job the sign-in runs itself at once: it is due only at
    /// `due_at`, so that the background workers leave it to the sign-in
    /// (and take it up should the sign-in die before it does).
    pub async fn accept_for_sign_in(
        &self,
        event: &Event,
        now: i64,
        due_at: i64,
    ) -> Result<Accepted> {
        let mut accepted = self
            .accept_events_due(
                std::slice::from_ref(event),
                now,
                CreateVia::Register,
                due_at,
            )
            .await?;
        Ok(accepted.remove(0))
    }

    /// Work queued here is due at `due_at`.
    async fn accept_events_due(
        &self,
        events: &[Event],
        now: i64,
        via: CreateVia,
        due_at: i64,
    ) -> Result<Vec<Accepted>> {
        self.intake("intake", events, now, (via, due_at)).await
    }
}

impl Chunked for Event {
    type Accepted = Accepted;
    /// How new people's accounts are made, and when their work is due.
    type Context = (CreateVia, i64);

    /// Applies the events to the people in memory, in arrival order; new
    /// people get no localpart yet: the worker settles it when it is about
    /// to create the account, from the best name known then (a
    /// `user.updated` without a username may come before the registration
    /// that has it).
    async fn accept_chunk(
        store: &Store,
        tx: &mut Transaction<'static, Any>,
        events: &[Event],
        now: i64,
        (via, due_at): (CreateVia, i64),
    ) -> Result<Option<Vec<Accepted>>> {
        // Event ids first: it writes, so SQLite takes its write lock at once
        // instead of failing to upgrade a read lock later.
        let stored = insert_events(tx, store.backend, events, now).await?;
        let fresh = fresh_ones(events.iter().map(|e| e.id.as_str()), &stored);
        let user_ids: BTreeSet<&str> = events.iter().map(|e| e.user_id.as_str()).collect();
        let mut people = store.people_for_update(tx, &user_ids).await?;
        let mut applied = apply(events, &fresh, &mut people, via, now);

        let new_people: Vec<&Person> = applied.created.iter().map(|id| &people[id]).collect();
        let inserted = insert_people(tx, store.backend, &new_people).await?;
        if inserted.len() < new_people.len() {
            // Another replica stored one of them first: start again and
            // find them.
            return Ok(None);
        }
        let new_ids: HashSet<&str> = applied.created.iter().map(String::as_str).collect();
        for user_id in applied
            .changed
            .iter()
            .filter(|id| !new_ids.contains(id.as_str()))
        {
            update_wanted(tx, &people[user_id.as_str()], now).await?;
        }
        for i in applied.sign_outs {
            let event = &events[i];
            if !people.contains_key(&event.user_id) {
                continue;
            }
            let asked =
                Store::request_logouts(tx, &event.user_id, event.session_id.as_deref(), now)
                    .await?;
            if asked > 0 {
                applied.queued.insert(event.user_id.clone());
                applied.work[i] = true;
            }
        }
        let queued: Vec<&str> = applied.queued.iter().map(String::as_str).collect();
        store.enqueue(tx, JobKind::Person, &queued, due_at).await?;

        Ok(Some(
            events
                .iter()
                .zip(fresh)
                .zip(applied.work)
                .map(|((event, fresh), queued)| Accepted {
                    duplicate: !fresh,
                    localpart: people.get(&event.user_id).and_then(|p| p.localpart.clone()),
                    queued,
                })
                .collect(),
        ))
    }
}

/// What a chunk of events did to the people, in memory.
struct Applied {
    /// People seen for the first time (to insert).
    created: Vec<String>,
    /// People whose wanted state changed (to update).
    changed: BTreeSet<String>,
    /// People whose job is to run.
    queued: BTreeSet<String>,
    /// Per event: whether it queued work.
    work: Vec<bool>,
    /// The sign-outs among the events (indexes): decided against the
    /// database, since they never make anyone known.
    sign_outs: Vec<usize>,
}

/// Applies the fresh events to `people` in order, as one by one.
fn apply(
    events: &[Event],
    fresh: &[bool],
    people: &mut HashMap<String, Person>,
    via: CreateVia,
    now: i64,
) -> Applied {
    let mut applied = Applied {
        created: Vec::new(),
        changed: BTreeSet::new(),
        queued: BTreeSet::new(),
        work: Vec::with_capacity(events.len()),
        sign_outs: Vec::new(),
    };
    for (event, fresh) in events.iter().zip(fresh) {
        if !fresh {
            applied.work.push(false);
            continue;
        }
        if event.kind == EventKind::SignedOut {
            applied.sign_outs.push(applied.work.len());
            applied.work.push(false);
            continue;
        }
        let first_sight = !people.contains_key(&event.user_id);
        let person = people.entry(event.user_id.clone()).or_insert_with(|| {
            applied.created.push(event.user_id.clone());
            Person::new(&event.user_id, via, now)
        });
        let before = person.wanted.clone();
        if person.wanted.apply(event) {
            applied.changed.insert(event.user_id.clone());
        }
        // A new person always needs an account, and so does one whose
        // name was still open when something to name them by (or their
        // registration) arrives; otherwise only changes that Synapse shows
        // are work (not a newer timestamp on the same values).
        let needs = first_sight
            || person.wanted.needs_work_since(&before)
            || (person.localpart.is_none() && person.wanted.naming_changed_since(&before));
        if needs {
            applied.queued.insert(event.user_id.clone());
        }
        applied.work.push(needs);
    }
    applied
}

impl Store {
    /// The people with these ids, locked on PostgreSQL in id order (every
    /// writer locks in the same order, so they cannot deadlock each other).
    async fn people_for_update(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_ids: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Person>> {
        let people = self
            .locked_rows(
                tx,
                ("people", PERSON_COLUMNS, "user_id"),
                user_ids,
                Person::from_row,
            )
            .await?;
        Ok(people.into_iter().map(|p| (p.user_id.clone(), p)).collect())
    }
}

/// The source of DAARION Auth's events in `events`.
const AUTH: &str = "auth";

/// Stores the event ids of DAARION Auth's events; returns those that were
/// not stored before.
async fn insert_events(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    events: &[Event],
    now: i64,
) -> Result<HashSet<String>> {
    let logged: Vec<Logged> = events
        .iter()
        .map(|e| Logged {
            id: &e.id,
            subject: &e.user_id,
            kind: e.kind.as_str(),
            created_at: e.created_at_ms,
        })
        .collect();
    log_events(tx, backend, AUTH, &logged, now).await
}

const NEW_PERSON: &str = "INSERT INTO people (user_id, create_via, username, \
    username_at, display_name, display_name_at, avatar_url, avatar_url_at, email, email_at, \
    deleted, lifecycle_at, state, created_at, updated_at)";

/// Inserts new people, already pending and without a localpart; returns the
/// ids of those inserted (the others another replica inserted first).
async fn insert_people(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    people: &[&Person],
) -> Result<HashSet<String>> {
    if people.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = format!(
        "{NEW_PERSON} VALUES {} ON CONFLICT DO NOTHING RETURNING user_id",
        backend.rows(people.len(), 15)
    );
    let mut query = sqlx::query(&sql);
    for p in people {
        query = query.bind(&p.user_id).bind(p.create_via.as_str());
        query = bind_wanted(query, &p.wanted)
            .bind(p.state.as_str())
            .bind(p.created_at)
            .bind(p.updated_at);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    rows.iter().map(|r| Ok(r.try_get("user_id")?)).collect()
}

/// Writes what DAARION wants of an existing person.
async fn update_wanted(tx: &mut Transaction<'static, Any>, p: &Person, now: i64) -> Result<()> {
    let query = sqlx::query(
        "UPDATE people SET username = $2, username_at = $3, display_name = $4, \
         display_name_at = $5, avatar_url = $6, avatar_url_at = $7, email = $8, \
         email_at = $9, deleted = $10, lifecycle_at = $11, updated_at = $12 WHERE user_id = $1",
    )
    .bind(&p.user_id);
    bind_wanted(query, &p.wanted)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Binds the wanted fields in column order: username, username_at,
/// display_name, display_name_at, avatar_url, avatar_url_at, email,
/// email_at, deleted, lifecycle_at.
fn bind_wanted<'q>(query: AnyQuery<'q>, w: &'q Wanted) -> AnyQuery<'q> {
    query
        .bind(&w.username)
        .bind(w.username_at)
        .bind(&w.display_name)
        .bind(w.display_name_at)
        .bind(&w.avatar_url)
        .bind(w.avatar_url_at)
        .bind(&w.email)
        .bind(w.email_at)
        .bind(w.deleted as i64)
        .bind(w.lifecycle_at)
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;
