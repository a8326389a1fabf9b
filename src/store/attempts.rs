//! Failed password sign-ins, counted per key (an account, a client address)
//! in fixed windows, in the database so that replicas count together.

use sqlx::Row;

use super::{Result, Store};

impl Store {
    /// Until when (ms) the first of `keys` that reached its limit is held
    /// back; None when none is. `keys`: (key, most failures in a window).
    pub async fn sign_ins_held(
        &self,
        keys: &[(&str, i64)],
        window_ms: i64,
        now: i64,
    ) -> Result<Option<i64>> {
        let mut until = None;
        for (key, limit) in keys {
            let row = sqlx::query(
                "SELECT failures, window_start FROM sign_in_failures \
                 WHERE key = $1 AND window_start > $2",
            )
            .bind(*key)
            .bind(now - window_ms)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                let failures: i64 = row.try_get("failures")?;
                let start: i64 = row.try_get("window_start")?;
                if failures >= *limit {
                    until = until.max(Some(start + window_ms));
                }
            }
        }
        Ok(until)
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
