//! Failed password sign-ins, counted per key (an account, a client address)
//! in fixed windows, in the database so that replicas count together.

use sqlx::Row;

use super::{Result, Store};

impl Store {
    /// The failures counted in the current window of each of `keys` that
    /// has any: (key, failures, window start). One read, whatever the keys.
    pub async fn sign_in_failures(
        &self,
        keys: &[&str],
        window_ms: i64,
        now: i64,
    ) -> Result<Vec<(String, i64, i64)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT key, failures, window_start FROM sign_in_failures \
             WHERE window_start > {} AND key IN ({})",
            self.backend.placeholder(1),
            self.backend.values(1, keys.len())
        );
        let mut query = sqlx::query(&sql).bind(now - window_ms);
        for key in keys {
            query = query.bind(*key);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("key")?,
                    row.try_get("failures")?,
                    row.try_get("window_start")?,
                ))
            })
            .collect()
    }

    /// Counts a failure against each of `keys` (a new window when the last
    /// one is over), and forgets windows that are over.
    pub async fn sign_in_failed(&self, keys: &[&str], window_ms: i64, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for key in keys {
            sqlx::query(
                "INSERT INTO sign_in_failures (key, failures, window_start) VALUES ($1, 1, $2) \
                 ON CONFLICT (key) DO UPDATE SET \
                 failures = CASE WHEN sign_in_failures.window_start <= $3 THEN 1 \
                     ELSE sign_in_failures.failures + 1 END, \
                 window_start = CASE WHEN sign_in_failures.window_start <= $3 THEN $2 \
                     ELSE sign_in_failures.window_start END",
            )
            .bind(*key)
            .bind(now)
            .bind(now - window_ms)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM sign_in_failures WHERE window_start <= $1")
            .bind(now - window_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A right password clears the account's count (not the address's: one
    /// account of one's own must not reset a sprayer's count).
    pub async fn sign_in_succeeded(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM sign_in_failures WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
