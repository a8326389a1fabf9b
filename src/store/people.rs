//! People: the intake transaction (event + person + job, all or nothing) and
//! the person's record as the worker and operators see it.

use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{parse_column, Backend, Result, Store};
use crate::domain::event::Event;
use crate::domain::localpart::{is_reserved, Localpart};
use crate::domain::person::Wanted;

/// What an operator sees (CONTRACT.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Provisioned,
    Failed,
    Deactivated,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Provisioned => "provisioned",
            State::Failed => "failed",
            State::Deactivated => "deactivated",
        }
    }
}

impl FromStr for State {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        Ok(match s {
            "pending" => State::Pending,
            "provisioned" => State::Provisioned,
            "failed" => State::Failed,
            "deactivated" => State::Deactivated,
            _ => return Err(()),
        })
    }
}

/// What we know of the person's account in Synapse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Account {
    /// No account, and we never asked Synapse for one.
    None,
    /// We asked Synapse to register `localpart` (at `register_started_at`)
    /// and do not know the outcome: an `M_USER_IN_USE` may be our own account.
    Registering,
    Active,
    Deactivated,
}

impl Account {
    pub fn as_str(self) -> &'static str {
        match self {
            Account::None => "none",
            Account::Registering => "registering",
            Account::Active => "active",
            Account::Deactivated => "deactivated",
        }
    }
}

impl FromStr for Account {
    type Err = ();
    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        Ok(match s {
            "none" => Account::None,
            "registering" => Account::Registering,
            "active" => Account::Active,
            "deactivated" => Account::Deactivated,
            _ => return Err(()),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Person {
    pub user_id: String,
    pub localpart: String,
    pub state: State,
    pub wanted: Wanted,
    pub account: Account,
    pub register_started_at: Option<i64>,
    pub applied_display_name: Option<String>,
    pub applied_avatar_url: Option<String>,
    pub avatar_mxc: Option<String>,
    pub avatar_sha256: Option<String>,
    pub avatar_error: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Person {
    fn from_row(row: &AnyRow) -> Result<Person> {
        Ok(Person {
            user_id: row.try_get("user_id")?,
            localpart: row.try_get("localpart")?,
            state: parse_column(row, "state")?,
            wanted: Wanted {
                username: row.try_get("username")?,
                username_at: row.try_get("username_at")?,
                display_name: row.try_get("display_name")?,
                display_name_at: row.try_get("display_name_at")?,
                avatar_url: row.try_get("avatar_url")?,
                avatar_url_at: row.try_get("avatar_url_at")?,
                deleted: row.try_get::<i64, _>("deleted")? != 0,
                lifecycle_at: row.try_get("lifecycle_at")?,
            },
            account: parse_column(row, "account")?,
            register_started_at: row.try_get("register_started_at")?,
            applied_display_name: row.try_get("applied_display_name")?,
            applied_avatar_url: row.try_get("applied_avatar_url")?,
            avatar_mxc: row.try_get("avatar_mxc")?,
            avatar_sha256: row.try_get("avatar_sha256")?,
            avatar_error: row.try_get("avatar_error")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// The inputs of localpart choice that come from configuration.
#[derive(Debug, Clone)]
pub struct LocalpartPolicy {
    pub server_name: String,
    pub reserved: Vec<String>,
}

impl LocalpartPolicy {
    /// Candidates in order of preference, skipping reserved ones; `-2`, `-3`…
    /// follow the base.
    pub fn candidates<'a>(&'a self, base: &'a Localpart) -> impl Iterator<Item = Localpart> + 'a {
        (1..)
            .map(move |n| base.candidate(n, &self.server_name))
            .filter(move |lp| !is_reserved(lp, &self.reserved))
    }
}

/// The outcome of [`Store::accept_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub duplicate: bool,
    /// The person's localpart (None for a duplicate whose person is unknown,
    /// which cannot happen unless rows were removed by hand).
    pub localpart: Option<String>,
    /// Whether work for Synapse was queued.
    pub queued: bool,
}

const PERSON_COLUMNS: &str = "user_id, localpart, state, username, username_at, display_name, \
    display_name_at, avatar_url, avatar_url_at, deleted, lifecycle_at, account, \
    register_started_at, applied_display_name, applied_avatar_url, avatar_mxc, avatar_sha256, \
    avatar_error, attempts, last_error, created_at, updated_at";

impl Store {
    /// Stores `event` durably: its id (idempotency), the person (created with
    /// a localpart on first sight) with the event applied, and a job when
    /// something changed — one transaction, so a crash leaves all or nothing.
    pub async fn accept_event(
        &self,
        event: &Event,
        policy: &LocalpartPolicy,
        now: i64,
    ) -> Result<Accepted> {
        let mut accepted = self
            .accept_events(std::slice::from_ref(event), policy, now)
            .await?;
        Ok(accepted.remove(0))
    }

    /// [`Store::accept_event`] for several events in one transaction: one
    /// disk flush for all of them (group commit, see `store::batch`). Events
    /// are applied in the given order, so duplicates within the batch are
    /// recognised too.
    pub async fn accept_events(
        &self,
        events: &[Event],
        policy: &LocalpartPolicy,
        now: i64,
    ) -> Result<Vec<Accepted>> {
        let mut tx = self.pool.begin().await?;
        let mut accepted = Vec::with_capacity(events.len());
        for event in events {
            accepted.push(self.accept_in(&mut tx, event, policy, now).await?);
        }
        tx.commit().await?;
        Ok(accepted)
    }

    async fn accept_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &Event,
        policy: &LocalpartPolicy,
        now: i64,
    ) -> Result<Accepted> {
        // The first statement writes, so SQLite takes its write lock at once
        // instead of failing to upgrade a read lock later.
        let fresh = sqlx::query(
            "INSERT INTO events (id, user_id, kind, created_at, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&event.id)
        .bind(&event.user_id)
        .bind(event.kind.as_str())
        .bind(event.created_at_ms)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            let localpart: Option<String> = sqlx::query_scalar(
                "SELECT p.localpart FROM events e JOIN people p ON p.user_id = e.user_id \
                 WHERE e.id = $1",
            )
            .bind(&event.id)
            .fetch_optional(&mut **tx)
            .await?;
            return Ok(Accepted {
                duplicate: true,
                localpart,
                queued: false,
            });
        }

        let (localpart, changed) = match self.person_for_update(tx, &event.user_id).await? {
            Some(mut person) => {
                let changed = person.wanted.apply(event);
                if changed {
                    self.save_wanted(tx, &person.user_id, &person.wanted, now)
                        .await?;
                }
                (person.localpart, changed)
            }
            None => {
                let mut wanted = Wanted::default();
                wanted.apply(event);
                match self.insert_person(tx, event, &wanted, policy, now).await? {
                    Some(localpart) => (localpart, true),
                    // Another replica created the person meanwhile: update theirs.
                    None => {
                        let mut person = self
                            .person_for_update(tx, &event.user_id)
                            .await?
                            .expect("the person exists after a conflicting insert");
                        let changed = person.wanted.apply(event);
                        if changed {
                            self.save_wanted(tx, &person.user_id, &person.wanted, now)
                                .await?;
                        }
                        (person.localpart, changed)
                    }
                }
            }
        };
        if changed {
            self.enqueue(tx, &event.user_id, now).await?;
        }
        Ok(Accepted {
            duplicate: false,
            localpart: Some(localpart),
            queued: changed,
        })
    }

    async fn save_wanted(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        w: &Wanted,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE people SET username = $2, username_at = $3, display_name = $4, \
             display_name_at = $5, avatar_url = $6, avatar_url_at = $7, deleted = $8, \
             lifecycle_at = $9, state = 'pending', updated_at = $10 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(&w.username)
        .bind(w.username_at)
        .bind(&w.display_name)
        .bind(w.display_name_at)
        .bind(&w.avatar_url)
        .bind(w.avatar_url_at)
        .bind(w.deleted as i64)
        .bind(w.lifecycle_at)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Creates the person, with what the event wants, under the first free
    /// candidate localpart (free in our database; Synapse is asked later by
    /// the worker). None when another replica created the person first.
    async fn insert_person(
        &self,
        tx: &mut Transaction<'static, Any>,
        event: &Event,
        w: &Wanted,
        policy: &LocalpartPolicy,
        now: i64,
    ) -> Result<Option<String>> {
        let base = Localpart::derive(
            event.username.as_deref(),
            &event.user_id,
            &policy.server_name,
        );
        for candidate in policy.candidates(&base) {
            let inserted = sqlx::query(
                "INSERT INTO people (user_id, localpart, username, username_at, display_name, \
                 display_name_at, avatar_url, avatar_url_at, deleted, lifecycle_at, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&event.user_id)
            .bind(candidate.as_str())
            .bind(&w.username)
            .bind(w.username_at)
            .bind(&w.display_name)
            .bind(w.display_name_at)
            .bind(&w.avatar_url)
            .bind(w.avatar_url_at)
            .bind(w.deleted as i64)
            .bind(w.lifecycle_at)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                return Ok(Some(candidate.as_str().to_string()));
            }
            // Not inserted: either the localpart belongs to someone else (try
            // the next), or another replica created this very person.
            let exists: Option<String> =
                sqlx::query_scalar("SELECT user_id FROM people WHERE user_id = $1")
                    .bind(&event.user_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            if exists.is_some() {
                return Ok(None);
            }
        }
        unreachable!("the candidate iterator is endless")
    }

    async fn person_for_update(
        &self,
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
    ) -> Result<Option<Person>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!("SELECT {PERSON_COLUMNS} FROM people WHERE user_id = $1{lock}");
        let row = sqlx::query(&sql)
            .bind(user_id)
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(Person::from_row).transpose()
    }

    pub async fn person(&self, user_id: &str) -> Result<Option<Person>> {
        let sql = format!("SELECT {PERSON_COLUMNS} FROM people WHERE user_id = $1");
        let row = sqlx::query(&sql)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Person::from_row).transpose()
    }

    /// Records that we are about to ask Synapse for `localpart`, keeping the
    /// time of the first such attempt (see [`Account::Registering`]).
    pub async fn mark_registering(&self, user_id: &str, localpart: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE people SET account = 'registering', \
             register_started_at = CASE WHEN account = 'registering' AND localpart = $2 \
                 THEN register_started_at ELSE $3 END, \
             localpart = $2, updated_at = $3 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(localpart)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves the person to another localpart (the old one is taken in
    /// Synapse by someone else). False when the new one is taken in our
    /// database by another person.
    pub async fn change_localpart(&self, user_id: &str, localpart: &str, now: i64) -> Result<bool> {
        let taken: Option<String> =
            sqlx::query_scalar("SELECT user_id FROM people WHERE localpart = $1")
                .bind(localpart)
                .fetch_optional(&self.pool)
                .await?;
        if taken.is_some_and(|owner| owner != user_id) {
            return Ok(false);
        }
        let result = sqlx::query(
            "UPDATE people SET localpart = $2, account = 'none', register_started_at = NULL, \
             updated_at = $3 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(localpart)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(true),
            // Lost a race for the localpart to another person's intake.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Records what Synapse now holds for the person.
    pub async fn record_account(
        &self,
        user_id: &str,
        localpart: &str,
        account: Account,
        applied_display_name: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE people SET localpart = $2, account = $3, applied_display_name = $4, \
             updated_at = $5 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(localpart)
        .bind(account.as_str())
        .bind(applied_display_name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
