//! Named secrets shared by every process of the deployment, one row each in
//! `service_tokens`: the service's Synapse admin token (see
//! `synapse::TokenStore` for why) and the OpenID provider's generated
//! signing key. A `version` makes every replacement conditional.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::Row;

use super::{Result, Store};
use crate::now_ms;
use crate::secret::Secret;
use crate::synapse::{StoredToken, TokenStore};

const SYNAPSE_ADMIN: &str = "synapse_admin";
pub(super) const OIDC_SIGNING_KEY: &str = "oidc_signing_key";

impl Store {
    /// The secret named `name` and its version (0: never stored).
    pub(super) async fn shared_secret(&self, name: &str) -> Result<StoredToken> {
        let row = sqlx::query("SELECT token, version FROM service_tokens WHERE name = $1")
            .bind(name)
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

    /// Stores `value` as `name` if its version is still `version`; false
    /// when another process replaced it first.
    pub(super) async fn replace_shared_secret(
        &self,
        name: &str,
        version: i64,
        value: &Secret,
    ) -> Result<bool> {
        let replaced = sqlx::query(
            "UPDATE service_tokens SET token = $1, version = version + 1, updated_at = $2 \
             WHERE name = $3 AND version = $4",
        )
        .bind(value.expose())
        .bind(now_ms())
        .bind(name)
        .bind(version)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(replaced == 1)
    }
}

impl TokenStore for Store {
    fn load(&self) -> BoxFuture<'_, anyhow::Result<StoredToken>> {
        async move { Ok(self.shared_secret(SYNAPSE_ADMIN).await?) }.boxed()
    }

    fn replace<'a>(
        &'a self,
        version: i64,
        token: &'a Secret,
    ) -> BoxFuture<'a, anyhow::Result<bool>> {
        async move {
            Ok(self
                .replace_shared_secret(SYNAPSE_ADMIN, version, token)
                .await?)
        }
        .boxed()
    }
}
