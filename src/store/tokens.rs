//! The service's Synapse admin token, one row shared by every process of
//! the deployment (see `synapse::TokenStore` for why).

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::Row;

use super::Store;
use crate::now_ms;
use crate::secret::Secret;
use crate::synapse::{StoredToken, TokenStore};

const NAME: &str = "synapse_admin";

impl TokenStore for Store {
    fn load(&self) -> BoxFuture<'_, anyhow::Result<StoredToken>> {
        async move {
            let row = sqlx::query("SELECT token, version FROM service_tokens WHERE name = $1")
                .bind(NAME)
                .fetch_optional(&self.pool)
                .await?;
            Ok(match row {
                Some(row) => StoredToken {
                    token: row.try_get::<Option<String>, _>("token")?.map(Secret::new),
                    version: row.try_get("version")?,
                },
                None => StoredToken::default(),
            })
        }
        .boxed()
    }

    fn replace<'a>(
        &'a self,
        version: i64,
        token: &'a Secret,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        async move {
            let replaced = sqlx::query(
                "UPDATE service_tokens SET token = $1, version = version + 1, updated_at = $2 \
                 WHERE name = $3 AND version = $4",
            )
            .bind(token.expose())
            .bind(now_ms())
            .bind(NAME)
            .bind(version)
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(replaced == 1)
        }
        .boxed()
    }
}
