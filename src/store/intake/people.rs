//! The intake transaction: events, the people they concern and the work for
//! Synapse, stored all or nothing before a webhook's `202`.
//!
//! It is set-based, because intake throughput is bounded by statements per
//! transaction, not by rows: a batch of events costs one multi-row INSERT of
//! event ids, one SELECT of the people concerned, one multi-row INSERT of new
//! people, one UPDATE per existing person that changed, and one multi-row
//! upsert of jobs, however many events it holds. The events are applied to
//! the people in memory, in arrival order, with the same rules as one by one.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::{Any, Row, Transaction};

use super::people::PERSON_COLUMNS;
use super::{Backend, CreateVia, JobKind, Person, Result, Store, StoreError};
use crate::domain::event::{Event, EventKind};
use crate::domain::person::Wanted;

/// Events per set of statements: keeps bound values (13 per new person)
/// well under both back ends' limits.
pub(super) const CHUNK: usize = 500;

/// The outcome of [`Store::accept_event`] for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub duplicate: bool,
    /// The person's localpart: None until the worker settles it (see
    /// `jobs::provision`), and for a duplicate whose person is unknown (a
    /// repeated event id naming someone else).
    pub localpart: Option<String>,
    /// Whether work for Synapse was queued.
    pub queued: bool,
}

/// Another replica created one of our new people while we tried to: the
/// transaction starts again and finds them.
struct Raced;

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

    /// Forgets at most `limit` event ids received before `before`; returns
    /// how many. Their redelivery is then taken as new, which changes
    /// nothing: each field keeps the value with the newest `created_at`.
    pub async fn forget_events(&self, before: i64, limit: i64) -> Result<u64> {
        let forgotten = sqlx::query(
            "DELETE FROM events WHERE (source, id) IN \
             (SELECT source, id FROM events WHERE received_at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(forgotten)
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
        retry_conflicts("intake", || self.try_accept(events, now, via, due_at)).await
    }

    /// One attempt at [`Store::accept_events_via`]; None when another
    /// replica stored one of our new people meanwhile.
    async fn try_accept(
        &self,
        events: &[Event],
        now: i64,
        via: CreateVia,
        due_at: i64,
    ) -> Result<Option<Vec<Accepted>>> {
        let mut tx = self.pool.begin().await?;
        let mut accepted = Vec::with_capacity(events.len());
        for chunk in events.chunks(CHUNK) {
            match self.accept_chunk(&mut tx, chunk, now, via, due_at).await? {
                Ok(done) => accepted.extend(done),
                Err(Raced) => {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
        }
        tx.commit().await?;
        Ok(Some(accepted))
    }

    async fn accept_chunk(
        &self,
        tx: &mut Transaction<'static, Any>,
        events: &[Event],
        now: i64,
        via: CreateVia,
        due_at: i64,
    ) -> Result<std::result::Result<Vec<Accepted>, Raced>> {
        // Event ids first: it writes, so SQLite takes its write lock at once
        // instead of failing to upgrade a read lock later. An id repeated
        // within the batch is new only at its first occurrence.
        let stored = insert_events(tx, self.backend, events, now).await?;
        let mut seen = HashSet::new();
        let fresh: Vec<bool> = events
            .iter()
            .map(|e| stored.contains(&e.id) && seen.insert(e.id.as_str()))
            .collect();

        let user_ids: BTreeSet<&str> = events.iter().map(|e| e.user_id.as_str()).collect();
        let mut people = self.people_for_update(tx, &user_ids).await?;

        // Apply the events in memory, as one by one. New people get no
        // localpart yet: the worker settles it when it is about to create
        // the account, from the best name known then (a `user.updated`
        // without a username may come before the registration that has it).
        let mut created: Vec<String> = Vec::new();
        let mut changed: BTreeSet<&str> = BTreeSet::new();
        let mut queued: BTreeSet<&str> = BTreeSet::new();
        let mut work = Vec::with_capacity(events.len());
        let mut sign_outs = Vec::new();
        for (event, fresh) in events.iter().zip(&fresh) {
            if !fresh {
                work.push(false);
                continue;
            }
            if event.kind == EventKind::SignedOut {
                // Sessions exist only for people we know; a sign-out never
                // makes anyone known. Its work is decided below.
                sign_outs.push(work.len());
                work.push(false);
                continue;
            }
            let first_sight = !people.contains_key(&event.user_id);
            let person = people.entry(event.user_id.clone()).or_insert_with(|| {
                created.push(event.user_id.clone());
                Person::new(&event.user_id, via, now)
            });
            let before = person.wanted.clone();
            if person.wanted.apply(event) {
                changed.insert(event.user_id.as_str());
            }
            // A new person always needs an account, and so does one whose
            // name was still open when a username arrives; otherwise only
            // changes that Synapse shows are work (not a newer timestamp on
            // the same values).
            let needs = first_sight
                || person.wanted.needs_work_since(&before)
                || (person.localpart.is_none() && person.wanted.username != before.username);
            if needs {
                queued.insert(event.user_id.as_str());
            }
            work.push(needs);
        }

        let new_people: Vec<&Person> = created.iter().map(|id| &people[id]).collect();
        let inserted = insert_people(tx, self.backend, &new_people).await?;
        if inserted.len() < new_people.len() {
            // Another replica stored one of them first: start again and
            // find them.
            return Ok(Err(Raced));
        }
        let new_ids: HashSet<&str> = created.iter().map(String::as_str).collect();
        for user_id in changed.iter().filter(|id| !new_ids.contains(*id)) {
            update_wanted(tx, &people[*user_id], now).await?;
        }
        for i in sign_outs {
            let event = &events[i];
            if !people.contains_key(&event.user_id) {
                continue;
            }
            let asked =
                Store::request_logouts(tx, &event.user_id, event.session_id.as_deref(), now)
                    .await?;
            if asked > 0 {
                queued.insert(event.user_id.as_str());
                work[i] = true;
            }
        }
        let queued: Vec<&str> = queued.into_iter().collect();
        self.enqueue(tx, JobKind::Person, &queued, due_at).await?;

        Ok(Ok(events
            .iter()
            .zip(fresh)
            .zip(work)
            .map(|((event, fresh), queued)| Accepted {
                duplicate: !fresh,
                localpart: people.get(&event.user_id).and_then(|p| p.localpart.clone()),
                queued,
            })
            .collect()))
    }

    /// The people with these ids, locked on PostgreSQL in id order (every
    /// writer locks in the same order, so they cannot deadlock each other).
    async fn people_for_update(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_ids: &BTreeSet<&str>,
    ) -> Result<HashMap<String, Person>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT {PERSON_COLUMNS} FROM people WHERE user_id IN ({}) ORDER BY user_id{lock}",
            self.backend.placeholders(user_ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in user_ids {
            query = query.bind(*id);
        }
        let mut people = HashMap::with_capacity(user_ids.len());
        for row in query.fetch_all(&mut **tx).await? {
            let person = Person::from_row(&row)?;
            people.insert(person.user_id.clone(), person);
        }
        Ok(people)
    }
}

/// Runs an intake transaction until it stores: again when `attempt` says
/// another replica stored one of its new subjects first (`Ok(None)`: it
/// starts again and finds them), and up to three times when PostgreSQL
/// chose it as a deadlock's victim or could not serialise it (nothing was
/// stored, so storing it again is safe; only a lasting conflict fails).
pub(super) async fn retry_conflicts<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let mut conflicts = 0;
    loop {
        match attempt().await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => continue,
            Err(StoreError(sqlx::Error::Database(e)))
                if matches!(e.code().as_deref(), Some("40P01" | "40001")) && conflicts < 3 =>
            {
                conflicts += 1;
                tracing::warn!("{what} transaction conflicted ({e}); storing it again");
            }
            Err(e) => return Err(e),
        }
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

/// An event as the event log keeps it.
pub(super) struct Logged<'a> {
    pub id: &'a str,
    pub subject: &'a str,
    pub kind: &'a str,
    pub created_at: i64,
}

/// Stores event ids of `source`; returns those that were not stored before
/// (the idempotency of every intake).
pub(super) async fn log_events(
    tx: &mut Transaction<'static, Any>,
    backend: Backend,
    source: &str,
    events: &[Logged<'_>],
    now: i64,
) -> Result<HashSet<String>> {
    let sql = format!(
        "INSERT INTO events (source, id, subject, kind, created_at, received_at) VALUES {} \
         ON CONFLICT (source, id) DO NOTHING RETURNING id",
        backend.rows(events.len(), 6)
    );
    let mut query = sqlx::query(&sql);
    for event in events {
        query = query
            .bind(source)
            .bind(event.id)
            .bind(event.subject)
            .bind(event.kind)
            .bind(event.created_at)
            .bind(now);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
}

const NEW_PERSON: &str = "INSERT INTO people (user_id, create_via, username, \
    username_at, display_name, display_name_at, avatar_url, avatar_url_at, deleted, \
    lifecycle_at, state, created_at, updated_at)";

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
        backend.rows(people.len(), 13)
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
         display_name_at = $5, avatar_url = $6, avatar_url_at = $7, deleted = $8, \
         lifecycle_at = $9, updated_at = $10 WHERE user_id = $1",
    )
    .bind(&p.user_id);
    bind_wanted(query, &p.wanted)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Binds the wanted fields in column order: username, username_at,
/// display_name, display_name_at, avatar_url, avatar_url_at, deleted,
/// lifecycle_at.
fn bind_wanted<'q>(query: AnyQuery<'q>, w: &'q Wanted) -> AnyQuery<'q> {
    query
        .bind(&w.username)
        .bind(w.username_at)
        .bind(&w.display_name)
        .bind(w.display_name_at)
        .bind(&w.avatar_url)
        .bind(w.avatar_url_at)
        .bind(w.deleted as i64)
        .bind(w.lifecycle_at)
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;
