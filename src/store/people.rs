//! People: the person's record as the worker and operators see it, and the
//! updates the worker makes to it (the intake is in `store::intake`).

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{parse_column, Result, Store};
use crate::domain::localpart::{is_reserved, AdoptTemplate, Localpart, NameSource};
use crate::domain::person::Wanted;

/// What an operator sees (CONTRACT.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Provisioned,
    Failed,
    Deactivated,
}

column_words!(State {
    Pending => "pending",
    Provisioned => "provisioned",
    Failed => "failed",
    Deactivated => "deactivated",
});

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

column_words!(Account {
    None => "none",
    Registering => "registering",
    Active => "active",
    Deactivated => "deactivated",
});

/// How the person's account is created in Synapse when they have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateVia {
    /// Shared-secret registration (webhooks, SSO): what the contract names.
    Register,
    /// The admin API without a password, skipping Synapse's bcrypt hash:
    /// people backfilled by a sync pass, tens of thousands at once.
    AdminApi,
}

column_words!(CreateVia {
    Register => "register",
    AdminApi => "admin",
});

#[derive(Debug, Clone)]
pub struct Person {
    pub user_id: String,
    /// None until the worker settles it, just before the first attempt to
    /// create the account; never changed after that attempt (except to a
    /// suffixed name when a stranger holds it in Synapse).
    pub localpart: Option<String>,
    pub state: State,
    pub wanted: Wanted,
    pub account: Account,
    pub register_started_at: Option<i64>,
    pub create_via: CreateVia,
    /// The display name Synapse holds, as far as we know (what we set, or
    /// what we last read there).
    pub applied_display_name: Option<String>,
    /// The DAARION avatar URL the profile reflects: its image is shown, or
    /// it was refused (`avatar_error`).
    pub applied_avatar_url: Option<String>,
    /// The `mxc://` URI the profile's avatar is set to by us, and the SHA-256
    /// of its bytes.
    pub avatar_mxc: Option<String>,
    pub avatar_sha256: Option<String>,
    /// Why DAARION's avatar is not shown (refused or not reachable).
    pub avatar_error: Option<String>,
    /// An upload not yet known to be on the profile (reused by a retry).
    pub upload_mxc: Option<String>,
    pub upload_sha256: Option<String>,
    /// Non-zero: compare with Synapse before writing the profile.
    pub profile_verify: i64,
    /// The account is known to carry the `oidc-<idp>` external id too.
    pub oidc_linked: bool,
    /// Failed attempts of the person's job since it last succeeded, and
    /// the last error (both kept on the job; none without one).
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Person {
    /// Whether the person can sign in now: their account is active and
    /// linked for both logins (`daarion` and `oidc-<idp>`).
    pub fn ready_for_sign_in(&self) -> bool {
        self.account == Account::Active && self.oidc_linked && self.localpart.is_some()
    }

    /// Someone seen for the first time, waiting for an account.
    pub(super) fn new(user_id: &str, create_via: CreateVia, now: i64) -> Person {
        Person {
            user_id: user_id.to_string(),
            localpart: None,
            state: State::Pending,
            wanted: Wanted::default(),
            account: Account::None,
            register_started_at: None,
            create_via,
            applied_display_name: None,
            applied_avatar_url: None,
            avatar_mxc: None,
            avatar_sha256: None,
            avatar_error: None,
            upload_mxc: None,
            upload_sha256: None,
            profile_verify: 0,
            oidc_linked: false,
            attempts: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub(super) fn from_row(row: &AnyRow) -> Result<Person> {
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
                email: row.try_get("email")?,
                email_at: row.try_get("email_at")?,
                deleted: row.try_get::<i64, _>("deleted")? != 0,
                lifecycle_at: row.try_get("lifecycle_at")?,
            },
            account: parse_column(row, "account")?,
            register_started_at: row.try_get("register_started_at")?,
            create_via: parse_column(row, "create_via")?,
            applied_display_name: row.try_get("applied_display_name")?,
            applied_avatar_url: row.try_get("applied_avatar_url")?,
            avatar_mxc: row.try_get("avatar_mxc")?,
            avatar_sha256: row.try_get("avatar_sha256")?,
            avatar_error: row.try_get("avatar_error")?,
            upload_mxc: row.try_get("upload_mxc")?,
            upload_sha256: row.try_get("upload_sha256")?,
            profile_verify: row.try_get("profile_verify")?,
            oidc_linked: row.try_get::<i64, _>("oidc_linked")? != 0,
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
    /// Prefixes that belong to the application service's namespace (its
    /// agents, CONTRACT.md section 9): a person whose name starts with one
    /// gets `u-` in front, as stably as any other name.
    pub reserved_prefixes: Vec<String>,
    /// `LOCALPART_SOURCES`.
    pub sources: Vec<NameSource>,
    /// `ADOPT_LOCALPART_TEMPLATE`.
    pub adopt: Option<AdoptTemplate>,
}

impl LocalpartPolicy {
    /// Candidates in order of preference from the `n`th on (1: the base;
    /// then `-2`, `-3`…), skipping reserved ones.
    pub fn candidates<'a>(
        &'a self,
        base: &'a Localpart,
        n: u32,
    ) -> impl Iterator<Item = Localpart> + 'a {
        let base = self.outside_namespaces(base);
        (n.max(1)..)
            .map(move |n| base.candidate(n, &self.server_name))
            .filter(move |lp| !is_reserved(lp, &self.reserved))
    }
}

impl LocalpartPolicy {
    /// `base`, or `u-<base>` when it starts with a reserved prefix.
    fn outside_namespaces(&self, base: &Localpart) -> Localpart {
        let lower = base.as_str().to_ascii_lowercase();
        let taken = self
            .reserved_prefixes
            .iter()
            .any(|p| !p.is_empty() && lower.starts_with(&p.to_ascii_lowercase()));
        if !taken {
            return base.clone();
        }
        Localpart::parse(&format!("u-{}", base.as_str()), &self.server_name)
            .unwrap_or_else(|_| base.candidate(2, &self.server_name))
    }
}

pub(super) const PERSON_COLUMNS: &str =
    "user_id, localpart, state, username, username_at, display_name, \
    display_name_at, avatar_url, avatar_url_at, email, email_at, deleted, lifecycle_at, account, \
    register_started_at, applied_display_name, applied_avatar_url, avatar_mxc, avatar_sha256, \
    avatar_error, upload_mxc, upload_sha256, profile_verify, oidc_linked, create_via, \
    COALESCE((SELECT j.attempts FROM jobs j WHERE j.kind = 'person' AND j.subject = user_id), 0) \
    AS attempts, \
    (SELECT j.last_error FROM jobs j WHERE j.kind = 'person' AND j.subject = user_id) AS last_error, \
    created_at, updated_at";
impl Store {
    pub async fn person(&self, user_id: &str) -> Result<Option<Person>> {
        let sql = format!("SELECT {PERSON_COLUMNS} FROM people WHERE user_id = $1");
        let row = sqlx::query(&sql)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Person::from_row).transpose()
    }

    /// The person whose account is `@localpart` (lower case).
    pub async fn person_by_localpart(&self, localpart: &str) -> Result<Option<Person>> {
        let sql = format!("SELECT {PERSON_COLUMNS} FROM people WHERE localpart = $1");
        let row = sqlx::query(&sql)
            .bind(localpart)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Person::from_row).transpose()
    }

    /// Records that we are about to ask Synapse for `localpart`, keeping the
    /// time of the first such attempt (see [`Account::Registering`]). The
    /// first call settles a person's localpart; false when another person
    /// holds `localpart` here (then try the next candidate).
    pub async fn mark_registering(&self, user_id: &str, localpart: &str, now: i64) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE people SET account = 'registering', \
             register_started_at = CASE WHEN account = 'registering' AND localpart = $2 \
                 THEN register_started_at ELSE $3 END, \
             localpart = $2, updated_at = $3 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(localpart)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
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
        oidc_linked: bool,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE people SET localpart = $2, account = $3, applied_display_name = $4, \
             oidc_linked = $5, updated_at = $6 WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(localpart)
        .bind(account.as_str())
        .bind(applied_display_name)
        .bind(oidc_linked as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Several people at once (a page of a sync pass), by DAARION id.
    pub async fn people_by_ids(&self, user_ids: &[String]) -> Result<HashMap<String, Person>> {
        let mut found = HashMap::with_capacity(user_ids.len());
        for chunk in user_ids.chunks(IN_LIST_CHUNK) {
            let sql = format!(
                "SELECT {PERSON_COLUMNS} FROM people WHERE user_id IN ({})",
                self.backend.placeholders(chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&self.pool).await? {
                let person = Person::from_row(&row)?;
                found.insert(person.user_id.clone(), person);
            }
        }
        Ok(found)
    }

    /// What the profile's avatar now reflects.
    pub async fn record_avatar(&self, p: &Person, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE people SET applied_avatar_url = $2, avatar_mxc = $3, avatar_sha256 = $4, \
             avatar_error = $5, upload_mxc = $6, upload_sha256 = $7, updated_at = $8 \
             WHERE user_id = $1",
        )
        .bind(&p.user_id)
        .bind(&p.applied_avatar_url)
        .bind(&p.avatar_mxc)
        .bind(&p.avatar_sha256)
        .bind(&p.avatar_error)
        .bind(&p.upload_mxc)
        .bind(&p.upload_sha256)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The profile was compared with Synapse after `seen` was asked for;
    /// a newer request (drift found meanwhile) stays.
    pub async fn clear_verify(&self, user_id: &str, seen: i64) -> Result<()> {
        sqlx::query(
            "UPDATE people SET profile_verify = 0 WHERE user_id = $1 AND profile_verify = $2",
        )
        .bind(user_id)
        .bind(seen)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Keeps `IN (…)` lists well under both back ends' limits on bound values.
pub(super) const IN_LIST_CHUNK: usize = 500;
