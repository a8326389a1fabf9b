//! What a sync pass keeps in the database: its watermark (where the next
//! incremental pass starts reading), its lease (one pass at a time across
//! cron hosts and replicas, on SQLite and PostgreSQL alike: a conditional
//! UPDATE of one row), and the queries it runs over many people at once.

use sqlx::Row;

use super::people::{IN_LIST_CHUNK, PERSON_COLUMNS};
use super::{JobKind, Person, Result, Store};

/// The passes, each with its row in `sync_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Profiles,
    Rooms,
    /// The refresh of agents' presence (one replica at a time).
    Presence,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Profiles => "profiles",
            Pass::Rooms => "rooms",
            Pass::Presence => "presence",
        }
    }
}

/// Who holds the pass now, for the 409 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncHolder {
    pub owner: Option<String>,
    pub leased_until: i64,
}

impl Store {
    /// Takes the pass lease until `until` if nobody holds it; Err(holder)
    /// otherwise. An expired lease (a crashed pass) can be taken.
    pub async fn lease_sync(
        &self,
        pass: Pass,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<std::result::Result<(), SyncHolder>> {
        let taken = sqlx::query(
            "UPDATE sync_state SET lease_owner = $1, leased_until = $2 \
             WHERE name = $3 AND leased_until <= $4",
        )
        .bind(owner)
        .bind(until)
        .bind(pass.name())
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if taken {
            return Ok(Ok(()));
        }
        let row = sqlx::query("SELECT lease_owner, leased_until FROM sync_state WHERE name = $1")
            .bind(pass.name())
            .fetch_one(&self.pool)
            .await?;
        Ok(Err(SyncHolder {
            owner: row.try_get("lease_owner")?,
            leased_until: row.try_get("leased_until")?,
        }))
    }

    /// Extends our lease; false if it was lost (expired and taken).
    pub async fn renew_sync(&self, pass: Pass, owner: &str, until: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE sync_state SET leased_until = $1 WHERE name = $2 AND lease_owner = $3",
        )
        .bind(until)
        .bind(pass.name())
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Gives the lease back, moving the watermark if the pass read
    /// everything it asked for.
    pub async fn release_sync(
        &self,
        pass: Pass,
        owner: &str,
        watermark: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sync_state SET leased_until = 0, lease_owner = NULL, \
             watermark = COALESCE($1, watermark) WHERE name = $2 AND lease_owner = $3",
        )
        .bind(watermark)
        .bind(pass.name())
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Start (ms) of the last pass that read DAARION's changes completely.
    pub async fn sync_watermark(&self, pass: Pass) -> Result<Option<i64>> {
        let watermark: Option<i64> =
            sqlx::query_scalar("SELECT watermark FROM sync_state WHERE name = $1")
                .bind(pass.name())
                .fetch_one(&self.pool)
                .await?;
        Ok(watermark)
    }

    /// The people holding these localparts who have an account and no
    /// outstanding job: those whose Synapse account should be exactly what
    /// we applied (drift detection).
    pub async fn settled_people_by_localparts(&self, localparts: &[String]) -> Result<Vec<Person>> {
        let mut found = Vec::new();
        for chunk in localparts.chunks(IN_LIST_CHUNK) {
            let sql = format!(
                "SELECT {PERSON_COLUMNS} FROM people p WHERE p.localpart IN ({}) \
                 AND p.account IN ('active', 'deactivated') \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'person' AND j.subject = p.user_id)",
                self.backend.placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for lp in chunk {
                query = query.bind(lp);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.push(Person::from_row(&row)?);
            }
        }
        Ok(found)
    }

    /// Drift found: the next run compares the profile with Synapse and
    /// writes what differs.
    pub async fn queue_verify(&self, user_id: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE people SET profile_verify = profile_verify + 1, updated_at = $2 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.enqueue(&mut tx, JobKind::Person, &[user_id], now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// People whose wanted avatar is not what their profile reflects and
    /// who have no job: an avatar host that was down. A full pass tries
    /// them again.
    pub async fn people_with_pending_avatars(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT p.user_id FROM people p WHERE p.account = 'active' AND p.deleted = 0 \
             AND COALESCE(p.avatar_url, '') <> COALESCE(p.applied_avatar_url, '') \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.kind = 'person' AND j.subject = p.user_id)",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("user_id")?)).collect()
    }

    /// Queues the person's work (the avatar retry of a full pass).
    pub async fn queue_work(&self, user_id: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        self.enqueue(&mut tx, JobKind::Person, &[user_id], now)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
