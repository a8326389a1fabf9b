//! The database: connection, migrations, and every query the service runs.
//! SQLite (embedded default) and PostgreSQL (several replicas) are reached
//! through sqlx's `Any` driver with the same SQL; the few statements that must
//! differ (row locks on PostgreSQL) branch on [`Backend`].
//!
//! Times are i64 milliseconds since the epoch and flags are 0/1 integers, so
//! the same columns mean the same thing on both back ends.

mod agents;
mod attempts;
mod batch;
mod conversations;
mod intake;
mod jobs;
mod messages;
mod oidc;
mod outbox;
mod people;
mod rooms;
mod sync;
mod tokens;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};

pub use agents::{Agent, AgentState, PresentAgent};
pub use batch::{Batched, Intake, MAX_BATCH};
pub use conversations::Conversation;
pub use intake::city::CityAccepted;
pub use intake::people::Accepted;
pub use jobs::{AppliedAvatar, ClaimFor, Job, JobKind, JobState, QueueDepth};
pub use messages::{Sent, StoredMessage};
pub use oidc::{Begun, CodeGrant, Pending, Returned, Review, SignInLimits, TokenOwner};
pub use outbox::{
    room_stream, FileLinker, OutboxEntry, OutboxSummary, Transport, TxnAccepted, PRESENCE_STREAM,
};
pub use people::{Account, CreateVia, LocalpartPolicy, Person, State};
pub use rooms::{MemberAccount, Room, RoomState};
pub use sync::{Pass, SyncHolder};

use crate::secret::{redact_url, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `n` bound values, each used once and bound in order: `$1, $2, …` on
    /// PostgreSQL, `?, ?, …` on SQLite. SQLite looks a numbered parameter's
    /// name up in a list, so binding thousands of `$N` (a multi-row INSERT)
    /// takes time quadratic in their number: 140 ms for 480 new people.
    pub(crate) fn placeholders(self, n: usize) -> String {
        self.values(0, n)
    }

    /// `n` rows of `width` bound values: `($1, $2), ($3, $4)` or `(?, ?), (?, ?)`.
    pub(crate) fn rows(self, n: usize, width: usize) -> String {
        (0..n)
            .map(|r| format!("({})", self.values(r * width, width)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `n` values after the first `before`.
    pub(crate) fn values(self, before: usize, n: usize) -> String {
        (before + 1..=before + n)
            .map(|i| self.placeholder(i))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The `i`-th bound value (from 1) of a statement whose values are all
    /// bound in order (SQLite's anonymous `?` do not mix with numbered ones).
    pub(crate) fn placeholder(self, i: usize) -> String {
        match self {
            Backend::Postgres => format!("${i}"),
            Backend::Sqlite => "?".to_string(),
        }
    }
}

/// An unexpected database failure. Callers answer 503 and retry; the message
/// never contains the database URL.
#[derive(Debug, thiserror::Error)]
#[error("database error: {0}")]
pub struct StoreError(#[from] sqlx::Error);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Opens the database named by `url` (creating a SQLite file if missing).
    /// `max_connections` 0 picks the back end's default: one connection for
    /// SQLite, whose writers serialise anyway (more only adds lock waits),
    /// and 32 for PostgreSQL (intake writers, workers and readers share it).
    pub async fn connect(url: &Secret, max_connections: u32) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let raw = url.expose();
        let backend = if raw.starts_with("sqlite:") {
            Backend::Sqlite
        } else if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!(
                "DATABASE_URL must start with sqlite:// or postgres://, not {}",
                redact_url(raw)
            );
        };
        let (url, default_max) = match backend {
            Backend::Sqlite => (sqlite_url(raw), 1),
            Backend::Postgres => (raw.to_string(), 32),
        };
        let max = if max_connections == 0 {
            default_max
        } else {
            max_connections
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers do not block the writer. synchronous=FULL:
                        // a 202 means the event survives a power cut, not only a crash.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("cannot open database {}", redact_url(raw)))?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations of this back end (idempotent; safe for
    /// several replicas starting at once, sqlx takes a lock).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator
            .run(&self.pool)
            .await
            .context("database migration failed")
    }

    /// For `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The rows of `table` whose `key` column is one of `keys`, read with
    /// `read`; locked on PostgreSQL, in key order, since every writer locks
    /// subjects in that order and so none deadlocks another.
    pub(super) async fn locked_rows<T>(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        (table, columns, key): (&str, &str, &str),
        keys: &std::collections::BTreeSet<&str>,
        read: impl Fn(&AnyRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT {columns} FROM {table} WHERE {key} IN ({}) ORDER BY {key}{lock}",
            self.backend.placeholders(keys.len())
        );
        let mut query = sqlx::query(&sql);
        for k in keys {
            query = query.bind(*k);
        }
        query.fetch_all(&mut **tx).await?.iter().map(read).collect()
    }
}

/// A name for the leases this process takes (jobs, passes): host, process
/// and a random part, so two runs on one host never share one.
pub fn lease_owner() -> String {
    format!(
        "{}-{}-{:08x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// `sqlite://path` → the same with `mode=rwc`, so the file is created on
/// first start as the contract promises.
fn sqlite_url(raw: &str) -> String {
    if raw.contains("mode=") || raw.contains(":memory:") {
        raw.to_string()
    } else if raw.contains('?') {
        format!("{raw}&mode=rwc")
    } else {
        format!("{raw}?mode=rwc")
    }
}

/// Reads a text column that holds one of our enums.
fn parse_column<T: FromStr>(row: &AnyRow, column: &str) -> Result<T> {
    use sqlx::Row;
    let raw: String = row.try_get(column)?;
    raw.parse().map_err(|_| {
        StoreError(sqlx::Error::Decode(
            format!("unexpected value {raw:?} in column {column}").into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn placeholders_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        assert_eq!(Backend::Postgres.rows(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(Backend::Sqlite.rows(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Backend::Postgres.placeholders(3), "$1, $2, $3");
        assert_eq!(Backend::Sqlite.placeholders(2), "?, ?");
    }
}
