//! The one place that talks to Synapse: builds its URLs, sends requests
//! (at most `SYNAPSE_MAX_CONCURRENCY` at once per purpose, see `budget`), and turns every answer into
//! success, [`SynapseError::Unavailable`] (retry later) or
//! [`SynapseError::Refused`] (a 4xx with an errcode: do not repeat blindly),
//! whose meaning callers ask as a [`Refusal`] instead of matching errcodes.
//! Callers hand over typed values (a [`RoomSpec`], a [`JoinRule`], …) and
//! get typed answers: no Matrix path, errcode or request body leaves this
//! module. [`Homeserver`] is the part of it a job's decisions are tested
//! against without a server.
//! Every request is counted by endpoint ([`CallCounts`]).

mod admin_token;
mod budget;
mod calls;
mod homeserver;
mod login;
mod media;
mod puppets;
mod register;
mod rooms;
mod taken;

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use crate::config::Settings;
use crate::secret::Secret;
use crate::{metrics, telemetry};

pub use admin_token::derived_password as admin_account_password;
pub use admin_token::{StoredToken, TokenStore};
pub use budget::{with_purpose, Purpose};
pub use calls::{CallCounts, CallSnapshot, Endpoint};
pub use homeserver::Homeserver;
pub use login::Session;
pub use media::Media;
pub use puppets::{PuppetEvent, RoomMessage};
pub use register::{random_password, registration_mac, Registered};
pub use rooms::{JoinRule, Pong, PowerUsers, RoomSpec, RoomView, CREATOR_POWER_VERSION};
pub use taken::TakenLocalparts;

/// The `auth_provider` of DAARION ids in Synapse's `external_ids`.
pub const AUTH_PROVIDER: &str = "daarion";

#[derive(Debug, thiserror::Error)]
pub enum SynapseError {
    /// Connection refused, timeout, 5xx, 429: the same request may work later.
    #[error("Synapse unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
        /// A 429: Synapse is up but limits this caller (or account).
        rate_limited: bool,
    },
    /// A definite answer that repeating will not change.
    #[error("Synapse refused with {status} {errcode}: {error}")]
    Refused {
        status: u16,
        errcode: String,
        error: String,
    },
}

/// What a refusal means, for the refusals the service acts on; the rest
/// are [`Refusal::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The name is taken: a localpart at registration (`M_USER_IN_USE`),
    /// an alias at `createRoom` (`M_ROOM_IN_USE`).
    InUse,
    /// A `409`: what the request would create exists already, e.g. Synapse's
    /// `External id is already in use.` (the DAARION id is linked to
    /// another account).
    AlreadyExists,
    /// The account is deactivated (`M_USER_DEACTIVATED`, a `403`).
    Deactivated,
    /// Any other `403`: not allowed, e.g. a puppet not in the room.
    Forbidden,
    /// `M_NOT_FOUND`.
    NotFound,
    /// A `413` or `M_TOO_LARGE`: an upload over Synapse's
    /// `max_upload_size`, a download over the service's cap.
    TooLarge,
    /// Any other refusal.
    Other,
}

impl SynapseError {
    /// The errcode of a refusal (for messages and this module's own checks).
    pub fn errcode(&self) -> Option<&str> {
        match self {
            SynapseError::Refused { errcode, .. } => Some(errcode),
            SynapseError::Unavailable { .. } => None,
        }
    }

    /// What a refusal means (None: Synapse is unavailable, try later).
    /// A `409` is [`Refusal::AlreadyExists`] and a `403` [`Refusal::Forbidden`]
    /// whatever their errcode, except `M_USER_DEACTIVATED` (a `403` too).
    pub fn refusal(&self) -> Option<Refusal> {
        let SynapseError::Refused {
            status, errcode, ..
        } = self
        else {
            return None;
        };
        Some(match (*status, errcode.as_str()) {
            (409, _) => Refusal::AlreadyExists,
            (_, "M_USER_DEACTIVATED") => Refusal::Deactivated,
            (403, _) => Refusal::Forbidden,
            (_, "M_USER_IN_USE" | "M_ROOM_IN_USE") => Refusal::InUse,
            (_, "M_NOT_FOUND") => Refusal::NotFound,
            (413, _) | (_, "M_TOO_LARGE") => Refusal::TooLarge,
            _ => Refusal::Other,
        })
    }

    /// A refusal meaning `refusal`, as Synapse would send it: for fakes of
    /// [`Homeserver`] in tests.
    pub fn refused_as(refusal: Refusal, error: impl Into<String>) -> Self {
        let (status, errcode) = match refusal {
            Refusal::InUse => (400, "M_USER_IN_USE"),
            Refusal::AlreadyExists => (409, "M_UNKNOWN"),
            Refusal::Deactivated => (403, "M_USER_DEACTIVATED"),
            Refusal::Forbidden => (403, "M_FORBIDDEN"),
            Refusal::NotFound => (404, "M_NOT_FOUND"),
            Refusal::TooLarge => (413, "M_TOO_LARGE"),
            Refusal::Other => (400, "M_UNKNOWN"),
        };
        SynapseError::refused(status, errcode, error)
    }

    /// A definite answer (a 4xx): repeating the request will not help.
    pub fn is_refused(&self) -> bool {
        matches!(self, SynapseError::Refused { .. })
    }

    /// Synapse's `409 External id is already in use.` (the DAARION id is
    /// linked to another account).
    pub fn is_external_id_conflict(&self) -> bool {
        self.refusal() == Some(Refusal::AlreadyExists)
    }

    /// A success (2xx) whose body is not what the endpoint answers: a
    /// proxy's page, a cut-off answer, a Synapse in the middle of an
    /// upgrade. Nothing says the request was refused, so it is retried.
    fn unreadable(what: impl Into<String>) -> Self {
        SynapseError::Unavailable {
            reason: format!("unreadable answer: {}", what.into()),
            retry_after: None,
            rate_limited: false,
        }
    }

    fn refused(status: u16, errcode: &str, error: impl Into<String>) -> Self {
        SynapseError::Refused {
            status,
            errcode: errcode.to_string(),
            error: error.into(),
        }
    }
}

pub type Result<T, E = SynapseError> = std::result::Result<T, E>;

/// A user as Synapse's admin API shows it (`GET /_synapse/admin/v2/users/…`).
#[derive(Debug, Clone, Deserialize)]
pub struct AdminUser {
    pub name: String,
    #[serde(default)]
    pub displayname: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    pub deactivated: bool,
    /// When the account was created, in milliseconds since the epoch.
    #[serde(default, rename = "creation_ts", deserialize_with = "epoch_ms")]
    pub created_ms: i64,
    #[serde(default)]
    pub external_ids: Vec<ExternalId>,
    #[serde(default, deserialize_with = "flag")]
    pub admin: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ExternalId {
    pub auth_provider: String,
    pub external_id: String,
}

/// The fields of an admin `PUT /_synapse/admin/v2/users/…` (those left
/// None are not sent, and Synapse leaves them as they are).
#[derive(Debug, Default, Serialize)]
struct UserChanges<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    displayname: Option<&'a str>,
    /// `mxc://…`, or empty to remove the avatar.
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar_url: Option<&'a str>,
    /// Replaces all of the user's mappings.
    #[serde(skip_serializing_if = "Option::is_none")]
    external_ids: Option<[ExternalIdRef<'a>; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deactivated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<bool>,
}

impl UserChanges<'_> {
    /// Makes the account a server admin.
    fn admin() -> Self {
        UserChanges {
            admin: Some(true),
            ..UserChanges::default()
        }
    }
}

#[derive(Debug, Serialize)]
struct ExternalIdRef<'a> {
    auth_provider: &'a str,
    external_id: &'a str,
}

/// Synapse 1.163 reports `creation_ts` in seconds; accept milliseconds too,
/// should a later version switch (no account predates 1973 in seconds).
fn epoch_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let t = Option::<i64>::deserialize(d)?.unwrap_or(0);
    Ok(if t < 100_000_000_000 { t * 1000 } else { t })
}

/// Synapse has sent `deactivated` both as a bool and as 0/1.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::Number(n) => n.as_i64() != Some(0),
        _ => false,
    })
}

#[derive(Debug)]
pub struct Synapse {
    http: reqwest::Client,
    base: Url,
    server_name: String,
    registration_secret: Secret,
    /// Requests in flight, limited per purpose (see `budget`).
    limiter: budget::Budget,
    admin: admin_token::AdminToken,
    calls: CallCounts,
    /// `oidc-<OIDC_IDP_ID>`: the provider Synapse's OpenID login looks
    /// people up by.
    oidc_provider: String,
    /// The application service's token (None: rooms are off); requests
    /// with it act as the bot, the registration's `sender_localpart`.
    as_token: Option<Secret>,
    appservice_id: String,
    bot: String,
}

/// Whose credentials a request carries.
#[derive(Clone, Copy)]
enum Auth {
    None,
    Admin,
    /// The application service's token: acts as its bot.
    AppService,
}

/// What a request carries.
#[derive(Clone, Copy)]
enum Body<'a> {
    Empty,
    Json(&'a Value),
    /// Raw bytes (a media upload) with their content type.
    Bytes(&'a bytes::Bytes, &'a str),
    /// An `application/x-www-form-urlencoded` body.
    Form(&'a str),
}

/// One page of Synapse's user list.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<AdminUser>,
    /// The `from` of the next page, None after the last.
    pub next: Option<u64>,
    /// Accounts in the whole list.
    pub total: u64,
}

/// `@localpart:server` → `localpart`.
pub fn localpart_of(user_id: &str) -> Option<&str> {
    user_id.strip_prefix('@')?.split_once(':').map(|(lp, _)| lp)
}

impl Synapse {
    /// `tokens`: where the deployment keeps the service's admin token.
    pub fn new(settings: &Settings, tokens: Arc<dyn TokenStore>) -> anyhow::Result<Synapse> {
        let http = crate::outbound::client(settings.synapse_timeout).build()?;
        Ok(Synapse {
            http,
            base: settings.synapse_url.clone(),
            server_name: settings.server_name.clone(),
            registration_secret: settings.registration_secret.clone(),
            limiter: budget::Budget::new(settings.synapse_max_concurrency),
            admin: admin_token::AdminToken::new(settings, tokens),
            calls: CallCounts::default(),
            oidc_provider: settings.oidc.auth_provider(),
            as_token: settings.city.as_token.clone(),
            appservice_id: settings.city.appservice_id.clone(),
            bot: settings.city.bot.clone(),
        })
    }

    /// Whether the application service is configured (its token is set).
    pub fn appservice_enabled(&self) -> bool {
        self.as_token.is_some()
    }

    /// Requests sent so far, by endpoint.
    pub fn calls(&self) -> &CallCounts {
        &self.calls
    }

    pub fn user_id(&self, localpart: &str) -> String {
        crate::domain::localpart::user_id(localpart, &self.server_name)
    }

    /// `GET /health`: Synapse is up and serving.
    pub async fn health(&self) -> Result<()> {
        self.call(Endpoint::Health, "/health", Body::Empty, Auth::None)
            .await
            .map(drop)
    }

    /// The account linked to DAARION id `external_id`, if any.
    pub async fn lookup_external_id(&self, external_id: &str) -> Result<Option<String>> {
        let path = format!(
            "/_synapse/admin/v1/auth_providers/{AUTH_PROVIDER}/users/{}",
            encode(external_id)
        );
        match self
            .call(Endpoint::ExternalIdLookup, &path, Body::Empty, Auth::Admin)
            .await
        {
            Ok(body) => Ok(body["user_id"].as_str().map(str::to_string)),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The user `@localpart`, if it exists.
    pub async fn user(&self, localpart: &str) -> Result<Option<AdminUser>> {
        let path = format!(
            "/_synapse/admin/v2/users/{}",
            encode(&self.user_id(localpart))
        );
        match self
            .call(Endpoint::UserGet, &path, Body::Empty, Auth::Admin)
            .await
        {
            Ok(body) => serde_json::from_value(body)
                .map(Some)
                .map_err(|e| SynapseError::unreadable(format!("unexpected user JSON: {e}"))),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /_synapse/admin/v2/users/@localpart` (an upsert; note that
    /// `external_ids` replaces all of the user's mappings).
    async fn put_user(&self, localpart: &str, changes: &UserChanges<'_>) -> Result<()> {
        self.put_user_status(localpart, changes).await.map(drop)
    }

    /// [`Synapse::put_user`], telling whether Synapse created the account.
    async fn put_user_status(&self, localpart: &str, changes: &UserChanges<'_>) -> Result<bool> {
        let path = format!(
            "/_synapse/admin/v2/users/{}",
            encode(&self.user_id(localpart))
        );
        let body = serde_json::to_value(changes).expect("user changes serialize");
        let (status, _) = self
            .request(Endpoint::UserPut, &path, Body::Json(&body), Auth::Admin)
            .await?;
        Ok(status == StatusCode::CREATED)
    }

    /// Creates `@localpart` through the admin API: no password (so no
    /// bcrypt hash, which is what makes shared-secret registration slow),
    /// linked to `external_id`. The admin PUT is an upsert: callers must
    /// have seen that the account does not exist. Returns false when Synapse
    /// says it modified an existing account instead (someone created it in
    /// between). A `409` ([`SynapseError::is_external_id_conflict`]) leaves
    /// the account created but unlinked.
    pub async fn create_user(
        &self,
        localpart: &str,
        displayname: Option<&str>,
        external_id: &str,
    ) -> Result<bool> {
        let changes = UserChanges {
            displayname,
            external_ids: Some(self.external_ids(external_id)),
            ..UserChanges::default()
        };
        self.put_user_status(localpart, &changes).await
    }

    /// Sets the display name (its own request: a `429` after Synapse saved
    /// the name would drop any other field of the same request).
    pub async fn set_displayname(&self, localpart: &str, name: &str) -> Result<()> {
        let changes = UserChanges {
            displayname: Some(name),
            ..UserChanges::default()
        };
        self.put_user(localpart, &changes).await
    }

    /// Sets the avatar to `mxc`, or removes it.
    pub async fn set_avatar(&self, localpart: &str, mxc: Option<&str>) -> Result<()> {
        let changes = UserChanges {
            avatar_url: Some(mxc.unwrap_or("")),
            ..UserChanges::default()
        };
        self.put_user(localpart, &changes).await
    }

    /// Reactivates a deactivated local account. Synapse wants a password
    /// for that; it is random and at once forgotten (nobody logs in with
    /// it: people use single sign-on, puppets nothing).
    pub async fn reactivate(&self, localpart: &str) -> Result<()> {
        let password = random_password();
        let changes = UserChanges {
            deactivated: Some(false),
            password: Some(password.expose()),
            ..UserChanges::default()
        };
        self.put_user(localpart, &changes).await
    }

    /// One page of active, non-guest local users from offset `from`, oldest
    /// first (accounts created meanwhile come last instead of shifting the
    /// pages still to read).
    pub async fn list_users(&self, from: u64, limit: u32) -> Result<UserPage> {
        self.user_list(from, limit, "guests=false&deactivated=false")
            .await
    }

    /// A page of every account, guests and deactivated ones too (they all
    /// hold their localpart), oldest first.
    pub async fn list_all_users(&self, from: u64, limit: u32) -> Result<UserPage> {
        self.user_list(from, limit, "deactivated=true").await
    }

    /// Pages of the admin user list are ordered by creation time (then by
    /// name), so accounts created meanwhile come at the end.
    async fn user_list(&self, from: u64, limit: u32, filter: &str) -> Result<UserPage> {
        let path = format!(
            "/_synapse/admin/v2/users?from={from}&limit={limit}&{filter}&order_by=creation_ts"
        );
        let body = self
            .call(Endpoint::UserList, &path, Body::Empty, Auth::Admin)
            .await?;
        let users: Vec<AdminUser> = serde_json::from_value(body["users"].clone())
            .map_err(|e| SynapseError::unreadable(format!("unexpected user list JSON: {e}")))?;
        let next = match &body["next_token"] {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        };
        let total = body["total"].as_u64().unwrap_or(0);
        Ok(UserPage { users, next, total })
    }

    /// Links the account to the DAARION id, for the JWT login (`daarion`)
    /// and the OpenID login (`oidc-<idp>`) alike. Synapse replaces the whole
    /// list, so both are always sent.
    pub async fn link_external_id(&self, localpart: &str, external_id: &str) -> Result<()> {
        let changes = UserChanges {
            external_ids: Some(self.external_ids(external_id)),
            ..UserChanges::default()
        };
        self.put_user(localpart, &changes).await
    }

    fn external_ids<'a>(&'a self, external_id: &'a str) -> [ExternalIdRef<'a>; 2] {
        [AUTH_PROVIDER, self.oidc_provider.as_str()].map(|auth_provider| ExternalIdRef {
            auth_provider,
            external_id,
        })
    }

    /// Whether `user` carries both of our external ids for `external_id`.
    pub fn fully_linked(&self, user: &AdminUser, external_id: &str) -> bool {
        [AUTH_PROVIDER, self.oidc_provider.as_str()]
            .iter()
            .all(|provider| {
                user.external_ids
                    .iter()
                    .any(|e| e.auth_provider == *provider && e.external_id == external_id)
            })
    }

    /// Ends one Matrix session opened through our OpenID provider (OpenID
    /// back-channel logout; `logout_token` names its `sid`).
    pub async fn backchannel_logout(&self, logout_token: &Secret) -> Result<()> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", logout_token.expose())
            .finish();
        self.call(
            Endpoint::BackchannelLogout,
            "/_synapse/client/oidc/backchannel_logout",
            Body::Form(&form),
            Auth::None,
        )
        .await
        .map(drop)
    }

    /// Deactivates the account without erasing its messages.
    pub async fn deactivate(&self, localpart: &str) -> Result<()> {
        let path = format!(
            "/_synapse/admin/v1/deactivate/{}",
            encode(&self.user_id(localpart))
        );
        self.call(
            Endpoint::Deactivate,
            &path,
            Body::Json(&json!({"erase": false})),
            Auth::Admin,
        )
        .await
        .map(drop)
    }

    /// Sends one request and classifies the answer (the body of a success).
    async fn call(
        &self,
        endpoint: Endpoint,
        path: &str,
        body: Body<'_>,
        auth: Auth,
    ) -> Result<Value> {
        self.request(endpoint, path, body, auth)
            .await
            .map(|(_, body)| body)
    }

    /// [`Synapse::call`] with the success status. Admin requests whose
    /// token Synapse no longer knows (expired, logged out, Synapse's database
    /// reset) get a fresh token and are sent once more.
    async fn request(
        &self,
        endpoint: Endpoint,
        path: &str,
        body: Body<'_>,
        auth: Auth,
    ) -> Result<(StatusCode, Value)> {
        let token = match auth {
            Auth::None => None,
            Auth::AppService => Some(self.as_token.as_ref().ok_or_else(|| {
                SynapseError::refused(
                    0,
                    "M_NOT_CONFIGURED",
                    "the application service is not configured (APPSERVICE_AS_TOKEN)",
                )
            })?),
            Auth::Admin => None,
        };
        if !matches!(auth, Auth::Admin) {
            return self.send(endpoint, path, body, token).await;
        }
        let token = self.admin.get(self).await?;
        match self.send(endpoint, path, body, Some(&token)).await {
            Err(e) if e.errcode() == Some("M_UNKNOWN_TOKEN") => {
                metrics::admin_token_refused("unknown_token");
                tracing::info!(
                    "Synapse no longer accepts our admin token; finding or obtaining another"
                );
                let token = self.admin.replace(self, &token).await?;
                let outcome = self.send(endpoint, path, body, Some(&token)).await;
                if matches!(&outcome, Err(e) if e.errcode() == Some("M_UNKNOWN_TOKEN")) {
                    // The token taken or obtained instead is refused too (an
                    // operator's SYNAPSE_ADMIN_TOKEN is never replaced).
                    metrics::admin_token_refused("replacement_refused");
                }
                outcome
            }
            other => other,
        }
    }

    /// One HTTP request, with `token` as bearer if given.
    async fn send(
        &self,
        endpoint: Endpoint,
        path: &str,
        body: Body<'_>,
        token: Option<&Secret>,
    ) -> Result<(StatusCode, Value)> {
        self.send_for(endpoint, path, body, token, None).await
    }

    /// [`Synapse::send`] on behalf of a client at `client`, named in
    /// `X-Forwarded-For` (Synapse's per-address limits then apply to that
    /// client, not to this service).
    async fn send_for(
        &self,
        endpoint: Endpoint,
        path: &str,
        body: Body<'_>,
        token: Option<&Secret>,
        client: Option<std::net::IpAddr>,
    ) -> Result<(StatusCode, Value)> {
        let request = self.build(endpoint, path, body, token, client)?;
        self.exchange(endpoint, path, request, classify).await
    }

    /// The request to `path`, with `token` as bearer if given and the
    /// client's address in `X-Forwarded-For`.
    fn build(
        &self,
        endpoint: Endpoint,
        path: &str,
        body: Body<'_>,
        token: Option<&Secret>,
        client: Option<std::net::IpAddr>,
    ) -> Result<reqwest::RequestBuilder> {
        let url = self.base.join(path).map_err(|e| {
            SynapseError::refused(0, "M_BAD_URL", format!("cannot build a Synapse URL: {e}"))
        })?;
        let mut request = self.http.request(endpoint.method(), url);
        if let Some(token) = token {
            request = request.bearer_auth(token.expose());
        }
        if let Some(client) = client {
            request = request.header("X-Forwarded-For", client.to_string());
        }
        request = match body {
            Body::Empty => request,
            Body::Json(body) => request.json(body),
            Body::Bytes(bytes, content_type) => request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes.clone()),
            Body::Form(form) => request
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form.to_string()),
        };
        // Synapse's logs (and proxies before it) can then be matched to ours.
        if let Some(id) = telemetry::request_id() {
            request = request.header(telemetry::REQUEST_ID_HEADER, id);
        }
        Ok(request)
    }

    /// Sends `request` within the purpose's budget, reads the answer with
    /// `read` (which classifies it), and counts, times and logs the call.
    async fn exchange<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        path: &str,
        request: reqwest::RequestBuilder,
        read: F,
    ) -> Result<T>
    where
        F: FnOnce(reqwest::Result<reqwest::Response>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let _permit = self.limiter.acquire().await;
        self.calls.record(endpoint);
        let started = std::time::Instant::now();
        let response = request.send().await;
        let outcome = read(response).await;
        let elapsed = started.elapsed();
        metrics::synapse_call(
            endpoint.name(),
            match &outcome {
                Ok(_) => "ok",
                Err(SynapseError::Unavailable { .. }) => "unavailable",
                Err(SynapseError::Refused { .. }) => "refused",
            },
            elapsed,
        );
        tracing::debug!(
            method = %endpoint.method(),
            endpoint = endpoint.name(),
            path = %redact_path(path),
            elapsed_ms = elapsed.as_millis() as u64,
            ok = outcome.is_ok(),
            "synapse call"
        );
        outcome
    }
}

async fn classify(response: reqwest::Result<reqwest::Response>) -> Result<(StatusCode, Value)> {
    let response = response.map_err(transport_error)?;
    let status = response.status();
    let retry_after = header_retry_after(&response);
    let text = response.text().await.map_err(transport_error)?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok((
            status,
            if body.is_null() {
                Value::String(text)
            } else {
                body
            },
        ));
    }
    Err(failure(status, &text, retry_after))
}

/// The request did not get an answer (or not all of it).
fn transport_error(e: reqwest::Error) -> SynapseError {
    SynapseError::Unavailable {
        reason: describe_transport_error(&e),
        retry_after: None,
        rate_limited: false,
    }
}

fn header_retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// What an answer that is not a success means: 429 and 5xx are
/// [`SynapseError::Unavailable`], the rest refusals with Synapse's errcode.
fn failure(status: StatusCode, text: &str, header_retry: Option<Duration>) -> SynapseError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let errcode = body["errcode"].as_str().unwrap_or("M_UNKNOWN").to_string();
    let error = body["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(200).collect());
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = body["retry_after_ms"]
            .as_u64()
            .map(Duration::from_millis)
            .or(header_retry);
        return SynapseError::Unavailable {
            reason: format!("rate limited ({errcode})"),
            retry_after,
            rate_limited: true,
        };
    }
    if status.is_server_error() {
        return SynapseError::Unavailable {
            reason: format!("{status}: {error}"),
            retry_after: header_retry,
            rate_limited: false,
        };
    }
    SynapseError::Refused {
        status: status.as_u16(),
        errcode,
        error,
    }
}

/// reqwest's Display includes the URL; ours says what happened without it
/// (URLs can carry user ids we would rather not spread through logs).
fn describe_transport_error(e: &reqwest::Error) -> String {
    let [timed_out, cannot_connect, broke, failed] = TRANSPORT_FAILURES;
    if e.is_timeout() {
        timed_out.into()
    } else if e.is_connect() {
        cannot_connect.into()
    } else if e.is_body() || e.is_decode() {
        broke.into()
    } else {
        failed.into()
    }
}

/// What the client says of a request that got no answer: the only reasons
/// that carry no text of Synapse's (or of a proxy in front of it).
const TRANSPORT_FAILURES: [&str; 4] = [
    "request timed out",
    "cannot connect",
    "connection broke while reading the answer",
    "request failed",
];

impl SynapseError {
    /// What went wrong in the service's words only, for answers anyone may
    /// read (`/readyz`): an answer's text stays in the log.
    pub fn without_answer_text(&self) -> String {
        match self {
            SynapseError::Unavailable { reason, .. }
                if TRANSPORT_FAILURES.contains(&reason.as_str()) =>
            {
                format!("unavailable: {reason}")
            }
            SynapseError::Unavailable { .. } => "unavailable: answers with an error".into(),
            SynapseError::Refused { status, .. } => format!("refused with {status}"),
        }
    }
}

/// Paths with user ids are logged with the id replaced, to keep personal
/// data out of debug logs.
fn redact_path(path: &str) -> String {
    match path.find("%40") {
        Some(i) => format!("{}…", &path[..i]),
        None => path.to_string(),
    }
}

/// Percent-encodes one path segment.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_they_mean() {
        let of = |status, errcode| SynapseError::refused(status, errcode, "x").refusal();
        assert_eq!(of(400, "M_USER_IN_USE"), Some(Refusal::InUse));
        assert_eq!(of(400, "M_ROOM_IN_USE"), Some(Refusal::InUse));
        assert_eq!(of(409, "M_UNKNOWN"), Some(Refusal::AlreadyExists));
        assert_eq!(of(403, "M_USER_DEACTIVATED"), Some(Refusal::Deactivated));
        assert_eq!(of(403, "M_FORBIDDEN"), Some(Refusal::Forbidden));
        assert_eq!(of(403, "M_UNKNOWN"), Some(Refusal::Forbidden));
        assert_eq!(of(404, "M_NOT_FOUND"), Some(Refusal::NotFound));
        assert_eq!(of(413, "M_TOO_LARGE"), Some(Refusal::TooLarge));
        assert_eq!(of(400, "M_INVALID_USERNAME"), Some(Refusal::Other));
        let down = SynapseError::Unavailable {
            reason: "x".into(),
            retry_after: None,
            rate_limited: false,
        };
        assert_eq!(down.refusal(), None);
        assert!(!down.is_refused());
    }

    #[test]
    fn fakes_refuse_like_synapse() {
        for refusal in [
            Refusal::InUse,
            Refusal::AlreadyExists,
            Refusal::Deactivated,
            Refusal::Forbidden,
            Refusal::NotFound,
            Refusal::TooLarge,
            Refusal::Other,
        ] {
            let e = SynapseError::refused_as(refusal, "x");
            assert_eq!(e.refusal(), Some(refusal));
            assert!(e.is_refused());
        }
    }

    #[test]
    fn user_changes_send_only_what_is_set() {
        let changes = UserChanges {
            displayname: Some("Olena"),
            ..UserChanges::default()
        };
        assert_eq!(
            serde_json::to_value(&changes).unwrap(),
            json!({"displayname": "Olena"})
        );
        let ids = [AUTH_PROVIDER, "oidc-daarion"].map(|auth_provider| ExternalIdRef {
            auth_provider,
            external_id: "u_1",
        });
        let changes = UserChanges {
            external_ids: Some(ids),
            deactivated: Some(false),
            ..UserChanges::default()
        };
        assert_eq!(
            serde_json::to_value(&changes).unwrap(),
            json!({
                "deactivated": false,
                "external_ids": [
                    {"auth_provider": "daarion", "external_id": "u_1"},
                    {"auth_provider": "oidc-daarion", "external_id": "u_1"},
                ],
            })
        );
    }
}
