//! The listing APIs, one client for both: DAARION Auth's users (CONTRACT.md
//! section 5, `GET {AUTH_API_URL}/v1/users?updated_since=&cursor=&limit=`
//! with `AUTH_API_TOKEN`) and DAARION.city's rooms (section 8,
//! `GET {CITY_API_URL}/v1/rooms?…` with `CITY_API_TOKEN`), one page at a time.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;
use serde_json::Value;
use url::Url;

use crate::config::Settings;
use crate::domain::event::ListedUser;
use crate::secret::Secret;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per page before the pass gives up (1 s, 2 s between them).
const ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DAARION Auth's user API: {0}")]
pub struct ApiError(pub String);

/// One page of the listing. Entries that are not of the contract's shape
/// are kept apart, so one bad record does not stop the pass.
#[derive(Debug, Clone)]
pub struct Page<T = ListedUser> {
    pub users: Vec<T>,
    /// (user_id if readable, what is wrong)
    pub malformed: Vec<(Option<String>, String)>,
    pub next_cursor: Option<String>,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            users: Vec::new(),
            malformed: Vec::new(),
            next_cursor: None,
        }
    }
}

/// What a listing API lists: DAARION Auth's users (`GET /v1/users`, a
/// `users` list keyed by `user_id`) or DAARION.city's rooms (`GET
/// /v1/rooms`, a `rooms` list keyed by `room_id`); same paging, same
/// bearer token, same retries.
pub trait Listed: serde::de::DeserializeOwned {
    /// The path under the API's base URL and the name of the list.
    const LIST: &'static str;
    /// The field that identifies an item (logged when one is malformed).
    const ID: &'static str;
}

impl Listed for ListedUser {
    const LIST: &'static str = "users";
    const ID: &'static str = "user_id";
}

impl Listed for crate::domain::city::ListedRoom {
    const LIST: &'static str = "rooms";
    const ID: &'static str = "room_id";
}

pub struct DaarionApi<T = ListedUser> {
    http: reqwest::Client,
    users_url: Url,
    token: Option<Secret>,
    items: std::marker::PhantomData<fn() -> T>,
}

/// DAARION.city's room API (CONTRACT.md section 8).
pub type CityApi = DaarionApi<crate::domain::city::ListedRoom>;

impl<T> std::fmt::Debug for DaarionApi<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaarionApi")
            .field("users_url", &self.users_url.as_str())
            .finish()
    }
}

impl DaarionApi<ListedUser> {
    /// None when `AUTH_API_URL` is not set (no sync, no backfill).
    pub fn new(settings: &Settings) -> anyhow::Result<Option<DaarionApi>> {
        DaarionApi::at(
            settings.auth_api_url.as_ref(),
            settings.auth_api_token.as_ref(),
        )
    }
}

impl CityApi {
    /// None when `CITY_API_URL` is not set.
    pub fn new_city(settings: &Settings) -> anyhow::Result<Option<CityApi>> {
        DaarionApi::at(
            settings.city.api_url.as_ref(),
            settings.city.api_token.as_ref(),
        )
    }
}

impl<T: Listed> DaarionApi<T> {
    /// The API at `base` (None: not configured). The base may carry a
    /// path prefix (https://host/auth).
    fn at(base: Option<&Url>, token: Option<&Secret>) -> anyhow::Result<Option<DaarionApi<T>>> {
        let Some(base) = base else {
            return Ok(None);
        };
        let users_url = Url::parse(&format!(
            "{}/v1/{}",
            base.as_str().trim_end_matches('/'),
            T::LIST
        ))?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("matrix-provisioner/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(DaarionApi {
            http,
            users_url,
            token: token.cloned(),
            items: std::marker::PhantomData,
        }))
    }

    /// The page after `cursor` of the people updated since `updated_since`
    /// (ms; everyone when None), retried a few times on transient errors.
    pub async fn page(
        &self,
        updated_since: Option<i64>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, ApiError> {
        let mut attempt = 1;
        loop {
            match self.page_once(updated_since, cursor, limit).await {
                Ok(page) => return Ok(page),
                Err((e, transient)) if transient && attempt < ATTEMPTS => {
                    tracing::warn!("{e}; trying again");
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                    attempt += 1;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Err carries whether trying again may help.
    async fn page_once(
        &self,
        updated_since: Option<i64>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, (ApiError, bool)> {
        let mut url = self.users_url.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(since) = updated_since {
                let since = DateTime::<Utc>::from_timestamp_millis(since)
                    .unwrap_or_default()
                    .to_rfc3339_opts(SecondsFormat::Millis, true);
                query.append_pair("updated_since", &since);
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
            query.append_pair("limit", &limit.to_string());
        }
        let mut request = self.http.get(url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "cannot be reached"
            };
            (ApiError(what.to_string()), true)
        })?;
        let status = response.status();
        if !status.is_success() {
            let transient = status.is_server_error() || status.as_u16() == 429;
            return Err((ApiError(format!("answered {status}")), transient));
        }
        let not_a_page = |e: String| {
            (
                ApiError(format!(
                    "answered something other than a page of {}: {e}",
                    T::LIST
                )),
                false,
            )
        };
        // Each item is kept as its text and read straight into `T`: a page
        // of a thousand rooms of a hundred members is never a tree of
        // `Value`s (several times the bytes), and one malformed item is
        // reported alone.
        let body = response
            .bytes()
            .await
            .map_err(|_| (ApiError("broke off its answer".to_string()), true))?;
        let raw: HashMap<&str, &RawValue> =
            serde_json::from_slice(&body).map_err(|e| not_a_page(e.to_string()))?;
        let items: Vec<&RawValue> = raw
            .get(T::LIST)
            .map(|list| serde_json::from_str(list.get()))
            .transpose()
            .map_err(|e| not_a_page(e.to_string()))?
            .ok_or_else(|| not_a_page(format!("no `{}` list", T::LIST)))?;
        let next_cursor: Option<String> = raw
            .get("next_cursor")
            .and_then(|c| serde_json::from_str(c.get()).ok());
        let mut page = Page {
            next_cursor: next_cursor.filter(|c| !c.is_empty()),
            ..Page::default()
        };
        for entry in items {
            match serde_json::from_str::<T>(entry.get()) {
                Ok(item) => page.users.push(item),
                Err(e) => {
                    let id = serde_json::from_str::<Value>(entry.get())
                        .ok()
                        .and_then(|v| v[T::ID].as_str().map(str::to_string));
                    page.malformed.push((id, e.to_string()));
                }
            }
        }
        Ok(page)
    }
}

/// DAARION.city's receiver of what happens in Matrix (CONTRACT.md section
/// 9, `CITY_EVENTS_URL`): events POSTed with the envelope and signature of
/// section 2, signed with the first key of `CITY_WEBHOOK_SECRET`.
pub struct CityEvents {
    http: reqwest::Client,
    url: Url,
    secret: Secret,
}

impl std::fmt::Debug for CityEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CityEvents")
            .field("url", &crate::secret::redact_url(self.url.as_str()))
            .finish()
    }
}

impl CityEvents {
    /// None when `CITY_EVENTS_URL` is not set. It needs a key to sign with.
    pub fn new(settings: &Settings) -> anyhow::Result<Option<CityEvents>> {
        let Some(url) = settings.city.events_url.clone() else {
            return Ok(None);
        };
        let secret = settings
            .city
            .webhook_secrets
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("CITY_EVENTS_URL needs CITY_WEBHOOK_SECRET to sign"))?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("matrix-provisioner/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(CityEvents { http, url, secret }))
    }

    /// POSTs one event (`body`, the envelope as JSON); Err says why it was
    /// not taken (anything but a `2xx`).
    pub async fn deliver(&self, body: &str) -> Result<(), String> {
        let t = Utc::now().timestamp();
        let signature = crate::domain::signature::sign(self.secret.expose(), t, body.as_bytes());
        let response = self
            .http
            .post(self.url.clone())
            .header("Content-Type", "application/json")
            .header(crate::domain::signature::HEADER, signature)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    "request failed".to_string()
                }
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}
