//! What the OpenID provider keeps, so that any replica can carry on a
//! sign-in another one began: signing keys, sign-ins under way, codes,
//! access tokens, the Matrix sessions opened, and the logouts still to send.
//! Every secret handed out (state, codes, access tokens) is stored as its
//! SHA-256 only; every single use is one conditional DELETE or UPDATE, so
//! two replicas racing for the same code cannot both win.

use sqlx::any::AnyRow;
use sqlx::pool::PoolConnection;
use sqlx::AnyConnection;
use sqlx::{Any, Executor, Row, Transaction};

use super::tokens::OIDC_SIGNING_KEY;
use super::{Backend, Result, Store};
use crate::secret::Secret;
use crate::synapse::StoredToken;

/// A sign-in under way, from the authorization request on.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub state_hash: String,
    /// SHA-256 of the cookie that binds it to the browser that began it.
    pub binding_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub client_state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    /// Filled in once DAARION hands the person back.
    pub person: Option<Returned>,
    /// SHA-256 of the one-time proof handed to the browser DAARION's answer
    /// came through; with the binding cookie, it finishes the sign-in.
    pub proof_hash: Option<String>,
    /// The address the sign-in came from (limits per address).
    pub client_addr: String,
    pub expires_at: i64,
}

/// How many sign-ins may be under way at once.
#[derive(Debug, Clone, Copy)]
pub struct SignInLimits {
    pub per_address: i64,
    pub total: i64,
}

/// What became of a new sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begun {
    Started,
    /// Too many under way from this address, or in all: nothing stored.
    TooMany,
}

/// A returned sign-in looked at from a browser (see [`Store::review_sign_in`]).
#[derive(Debug, Clone)]
pub enum Review {
    /// Cookie and proof match: this browser began it and DAARION's answer
    /// came through it.
    Ours(Box<Pending>),
    /// The state is known but the cookie or the proof is not this
    /// browser's: the sign-in has been ended.
    Ended,
    /// Unknown, expired, not returned yet, or used.
    Unknown,
}

/// The DAARION person a verified access token named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Returned {
    pub user_id: String,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    pub picture: Option<String>,
    pub email: Option<String>,
    pub daarion_sid: Option<String>,
}

/// What an authorization code stands for.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub code_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub user_id: String,
    pub localpart: String,
    pub name: Option<String>,
    pub sid: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

/// Who an access token belongs to (userinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub user_id: String,
    pub localpart: String,
    pub name: Option<String>,
}

/// A transaction whose commit need not survive a power cut: sign-ins under
/// way, codes and access tokens live minutes, and losing the last ones means
/// people press the button again. SQLite then skips the fsync of the commit
/// (`synchronous = NORMAL` in WAL mode: still safe from a crash of the
/// process), PostgreSQL does not wait for its WAL flush
/// (`synchronous_commit = off`). Every other write of the service keeps
/// full durability. Dropped without [`Light::commit`] (an error), the
/// connection is closed, which rolls back and forgets the setting.
struct Light {
    conn: Option<PoolConnection<Any>>,
    backend: Backend,
}

impl Light {
    fn conn(&mut self) -> &mut AnyConnection {
        self.conn.as_mut().expect("in use until committed")
    }

    async fn commit(mut self) -> Result<()> {
        let sql = match self.backend {
            Backend::Sqlite => "COMMIT; PRAGMA synchronous = FULL",
            Backend::Postgres => "COMMIT",
        };
        self.conn().execute(sql).await?;
        self.conn.take(); // back to the pool, as it was
        Ok(())
    }
}

impl Drop for Light {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

const PENDING_COLUMNS: &str = "state_hash, binding_hash, client_id, redirect_uri, client_state, \
    nonce, code_challenge, user_id, preferred_username, name, picture, email, daarion_sid, \
    proof_hash, client_addr, expires_at";

const CODE_COLUMNS: &str = "code_hash, client_id, redirect_uri, code_challenge, nonce, user_id, \
    localpart, name, sid, auth_time, expires_at";

impl Store {
    async fn light(&self) -> Result<Light> {
        let mut light = Light {
            conn: Some(self.pool.acquire().await?),
            backend: self.backend,
        };
        let begin = match self.backend {
            Backend::Sqlite => "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN; SET LOCAL synchronous_commit = off",
        };
        light.conn().execute(begin).await?;
        Ok(light)
    }

    /// The generated signing key, if one was kept.
    pub async fn generated_signing_key(&self) -> Result<StoredToken> {
        self.shared_secret(OIDC_SIGNING_KEY).await
    }

    /// Keeps a newly generated signing key unless another replica kept one
    /// first (then false: use theirs).
    pub async fn keep_generated_signing_key(&self, version: i64, pem: &Secret) -> Result<bool> {
        self.replace_shared_secret(OIDC_SIGNING_KEY, version, pem)
            .await
    }

    /// Publishes `kid` as the key in use; every other key in use is retired
    /// as of `now` (it stays published for a while, see
    /// [`Store::published_keys`]).
    pub async fn use_signing_key(&self, kid: &str, public_jwk: &str, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO oidc_keys (kid, public_jwk, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (kid) DO UPDATE SET retired_at = NULL",
        )
        .bind(kid)
        .bind(public_jwk)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE oidc_keys SET retired_at = $2 WHERE kid <> $1 AND retired_at IS NULL")
            .bind(kid)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The public keys to publish: those in use, and those retired after
    /// `retired_since` (tokens they signed may still be checked).
    pub async fn published_keys(&self, retired_since: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT public_jwk FROM oidc_keys WHERE retired_at IS NULL OR retired_at > $1 \
             ORDER BY created_at DESC",
        )
        .bind(retired_since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("public_jwk")?)).collect()
    }

    /// Stores a new sign-in unless `limits` are reached: sign-ins under way
    /// from the same address, or in all. (Counted in the same transaction
    /// as the insert: exact on SQLite, which takes its write lock first; on
    /// PostgreSQL concurrent requests may pass the bound by a few.)
    pub async fn begin_sign_in(
        &self,
        p: &Pending,
        limits: SignInLimits,
        now: i64,
    ) -> Result<Begun> {
        let mut light = self.light().await?;
        let counts = sqlx::query(
            "SELECT COUNT(*) AS total, \
             COALESCE(SUM(CASE WHEN client_addr = $1 THEN 1 ELSE 0 END), 0) AS here \
             FROM oidc_pending WHERE expires_at > $2",
        )
        .bind(&p.client_addr)
        .bind(now)
        .fetch_one(light.conn())
        .await?;
        let total: i64 = counts.try_get("total")?;
        let here: i64 = counts.try_get("here")?;
        if here >= limits.per_address || total >= limits.total {
            // Dropped uncommitted: rolled back, nothing stored.
            return Ok(Begun::TooMany);
        }
        let sql = format!(
            "INSERT INTO oidc_pending ({PENDING_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, NULL, NULL, NULL, NULL, $8, $9)"
        );
        sqlx::query(&sql)
            .bind(&p.state_hash)
            .bind(&p.binding_hash)
            .bind(&p.client_id)
            .bind(&p.redirect_uri)
            .bind(&p.client_state)
            .bind(&p.nonce)
            .bind(&p.code_challenge)
            .bind(&p.client_addr)
            .bind(p.expires_at)
            .execute(light.conn())
            .await?;
        light.commit().await?;
        Ok(Begun::Started)
    }

    /// Records who DAARION handed back, and the hash of the proof given to
    /// the browser that brought the answer; false if the state is unknown,
    /// expired or was used already (a state is used once).
    pub async fn sign_in_returned(
        &self,
        state_hash: &str,
        who: &Returned,
        proof_hash: &str,
        now: i64,
    ) -> Result<bool> {
        let mut light = self.light().await?;
        let done = sqlx::query(
            "UPDATE oidc_pending SET user_id = $2, preferred_username = $3, name = $4, \
             picture = $5, daarion_sid = $6, proof_hash = $7, email = $9 \
             WHERE state_hash = $1 AND user_id IS NULL AND expires_at > $8",
        )
        .bind(state_hash)
        .bind(&who.user_id)
        .bind(&who.preferred_username)
        .bind(&who.name)
        .bind(&who.picture)
        .bind(&who.daarion_sid)
        .bind(proof_hash)
        .bind(now)
        .bind(&who.email)
        .execute(light.conn())
        .await?
        .rows_affected();
        light.commit().await?;
        Ok(done == 1)
    }

    /// Ends a sign-in DAARION refused; false if there was none under way
    /// (unknown, expired or used).
    pub async fn drop_sign_in(&self, state_hash: &str, now: i64) -> Result<bool> {
        let mut light = self.light().await?;
        let dropped = sqlx::query(
            "DELETE FROM oidc_pending WHERE state_hash = $1 AND user_id IS NULL AND expires_at > $2",
        )
        .bind(state_hash)
        .bind(now)
        .execute(light.conn())
        .await?
        .rows_affected();
        light.commit().await?;
        Ok(dropped == 1)
    }

    /// Whether a sign-in with this state is under way, not returned yet,
    /// in the browser whose cookie hashes to `binding_hash`.
    pub async fn sign_in_bound(
        &self,
        state_hash: &str,
        binding_hash: &str,
        now: i64,
    ) -> Result<bool> {
        let found = sqlx::query(
            "SELECT state_hash FROM oidc_pending WHERE state_hash = $1 AND binding_hash = $2 \
             AND user_id IS NULL AND expires_at > $3",
        )
        .bind(state_hash)
        .bind(binding_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// The returned sign-in with this state, as this browser (its cookie's
    /// and proof's hashes) may see it. A browser holding only one of the two
    /// ends the sign-in: that is what a sign-in link sent to someone else
    /// looks like (the victim's browser brings the proof, not the cookie),
    /// and nothing good can come of it any more.
    pub async fn review_sign_in(
        &self,
        state_hash: &str,
        binding_hash: Option<&str>,
        proof_hash: &str,
        now: i64,
    ) -> Result<Review> {
        let sql = format!(
            "SELECT {PENDING_COLUMNS} FROM oidc_pending \
             WHERE state_hash = $1 AND user_id IS NOT NULL AND expires_at > $2"
        );
        let row = sqlx::query(&sql)
            .bind(state_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        let Some(pending) = row.as_ref().map(pending_from).transpose()? else {
            return Ok(Review::Unknown);
        };
        if binding_hash == Some(pending.binding_hash.as_str())
            && pending.proof_hash.as_deref() == Some(proof_hash)
        {
            return Ok(Review::Ours(Box::new(pending)));
        }
        let mut light = self.light().await?;
        sqlx::query("DELETE FROM oidc_pending WHERE state_hash = $1")
            .bind(state_hash)
            .execute(light.conn())
            .await?;
        light.commit().await?;
        Ok(Review::Ended)
    }

    /// Takes the returned sign-in with this state, once, for the browser
    /// whose cookie hashes to `binding_hash` and that holds the proof.
    pub async fn take_sign_in(
        &self,
        state_hash: &str,
        binding_hash: &str,
        proof_hash: &str,
        now: i64,
    ) -> Result<Option<Pending>> {
        let sql = format!(
            "DELETE FROM oidc_pending WHERE state_hash = $1 AND binding_hash = $2 \
             AND proof_hash = $3 AND user_id IS NOT NULL AND expires_at > $4 \
             RETURNING {PENDING_COLUMNS}"
        );
        let mut light = self.light().await?;
        let row = sqlx::query(&sql)
            .bind(state_hash)
            .bind(binding_hash)
            .bind(proof_hash)
            .bind(now)
            .fetch_optional(light.conn())
            .await?;
        light.commit().await?;
        row.as_ref().map(pending_from).transpose()
    }

    /// Stores the code and the Matrix session it will open, together.
    pub async fn issue_code(&self, code: &CodeGrant, daarion_sid: Option<&str>) -> Result<()> {
        let mut light = self.light().await?;
        let sql = format!(
            "INSERT INTO oidc_codes ({CODE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        sqlx::query(&sql)
            .bind(&code.code_hash)
            .bind(&code.client_id)
            .bind(&code.redirect_uri)
            .bind(&code.code_challenge)
            .bind(&code.nonce)
            .bind(&code.user_id)
            .bind(&code.localpart)
            .bind(&code.name)
            .bind(&code.sid)
            .bind(code.auth_time)
            .bind(code.expires_at)
            .execute(light.conn())
            .await?;
        sqlx::query(
            "INSERT INTO oidc_sessions (sid, user_id, daarion_sid, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&code.sid)
        .bind(&code.user_id)
        .bind(daarion_sid)
        .bind(code.auth_time)
        .execute(light.conn())
        .await?;
        light.commit().await
    }

    /// Takes the code, once: whoever deletes the row redeems it. `grant`
    /// decides, from what the code stands for, whether an access token is
    /// issued (its hash, owner and expiry); it is stored in the same
    /// transaction. A code that is refused (expired, another client, a
    /// wrong verifier) is spent all the same.
    pub async fn redeem_code(
        &self,
        code_hash: &str,
        grant: impl FnOnce(&CodeGrant) -> Option<(String, TokenOwner, i64)>,
    ) -> Result<Option<CodeGrant>> {
        let mut light = self.light().await?;
        let sql = format!("DELETE FROM oidc_codes WHERE code_hash = $1 RETURNING {CODE_COLUMNS}");
        let row = sqlx::query(&sql)
            .bind(code_hash)
            .fetch_optional(light.conn())
            .await?;
        let code = row.as_ref().map(code_from).transpose()?;
        if let Some((token_hash, owner, expires_at)) = code.as_ref().and_then(grant) {
            sqlx::query(
                "INSERT INTO oidc_access_tokens (token_hash, user_id, localpart, name, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token_hash)
            .bind(&owner.user_id)
            .bind(&owner.localpart)
            .bind(&owner.name)
            .bind(expires_at)
            .execute(light.conn())
            .await?;
        }
        light.commit().await?;
        Ok(code)
    }

    pub async fn access_token_owner(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<TokenOwner>> {
        let row = sqlx::query(
            "SELECT user_id, localpart, name FROM oidc_access_tokens \
             WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TokenOwner {
                user_id: r.try_get("user_id")?,
                localpart: r.try_get("localpart")?,
                name: r.try_get("name")?,
            })
        })
        .transpose()
    }

    /// Sign-ins, codes and access tokens that expired before `before`.
    pub async fn forget_expired_sign_ins(&self, before: i64) -> Result<u64> {
        let mut forgotten = 0;
        for table in ["oidc_pending", "oidc_codes", "oidc_access_tokens"] {
            forgotten += sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1"))
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(forgotten)
    }

    /// Asks for the back-channel logout of the person's Matrix sessions that
    /// came from DAARION session `daarion_sid` (all of them when None);
    /// returns how many were asked for.
    pub(super) async fn request_logouts(
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        daarion_sid: Option<&str>,
        now: i64,
    ) -> Result<u64> {
        let insert = "INSERT INTO oidc_logouts (sid, user_id, requested_at) \
                      SELECT sid, user_id, $2 FROM oidc_sessions WHERE user_id = $1";
        let done = match daarion_sid {
            Some(sid) => {
                sqlx::query(&format!(
                    "{insert} AND daarion_sid = $3 ON CONFLICT (sid) DO NOTHING"
                ))
                .bind(user_id)
                .bind(now)
                .bind(sid)
                .execute(&mut **tx)
                .await?
            }
            None => {
                sqlx::query(&format!("{insert} ON CONFLICT (sid) DO NOTHING"))
                    .bind(user_id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// The sessions whose logout is still to be sent to Synapse.
    pub async fn pending_logouts(&self, user_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT sid FROM oidc_logouts WHERE user_id = $1 ORDER BY sid")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("sid")?)).collect()
    }

    /// Synapse ended the session (or the whole account is gone).
    pub async fn logout_sent(&self, sid: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for table in ["oidc_logouts", "oidc_sessions"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE sid = $1"))
                .bind(sid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The account carries the `oidc-<idp>` external id.
    pub async fn mark_oidc_linked(&self, user_id: &str) -> Result<()> {
        sqlx::query("UPDATE people SET oidc_linked = 1 WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn pending_from(r: &AnyRow) -> Result<Pending> {
    let user_id: Option<String> = r.try_get("user_id")?;
    let person = match user_id {
        Some(user_id) => Some(Returned {
            user_id,
            preferred_username: r.try_get("preferred_username")?,
            name: r.try_get("name")?,
            picture: r.try_get("picture")?,
            email: r.try_get("email")?,
            daarion_sid: r.try_get("daarion_sid")?,
        }),
        None => None,
    };
    Ok(Pending {
        state_hash: r.try_get("state_hash")?,
        binding_hash: r.try_get("binding_hash")?,
        client_id: r.try_get("client_id")?,
        redirect_uri: r.try_get("redirect_uri")?,
        client_state: r.try_get("client_state")?,
        nonce: r.try_get("nonce")?,
        code_challenge: r.try_get("code_challenge")?,
        person,
        proof_hash: r.try_get("proof_hash")?,
        client_addr: r.try_get("client_addr")?,
        expires_at: r.try_get("expires_at")?,
    })
}

fn code_from(r: &AnyRow) -> Result<CodeGrant> {
    Ok(CodeGrant {
        code_hash: r.try_get("code_hash")?,
        client_id: r.try_get("client_id")?,
        redirect_uri: r.try_get("redirect_uri")?,
        code_challenge: r.try_get("code_challenge")?,
        nonce: r.try_get("nonce")?,
        user_id: r.try_get("user_id")?,
        localpart: r.try_get("localpart")?,
        name: r.try_get("name")?,
        sid: r.try_get("sid")?,
        auth_time: r.try_get("auth_time")?,
        expires_at: r.try_get("expires_at")?,
    })
}
