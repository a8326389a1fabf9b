//! The listing APIs, one client for both: DAARION Auth's users (CONTRACT.md
//! section 5, `GET {AUTH_API_URL}/v1/users?updated_since=&cursor=&limit=`
//! with `AUTH_API_TOKEN`) and DAARION.city's rooms (section 8,
//! `GET {CITY_API_URL}/v1/rooms?…` with `CITY_API_TOKEN`), one page at a time.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::value::RawValue;
use serde_json::Value;
use url::Url;

use crate::config::Settings;
use crate::domain::city::ListedRoom;
use crate::domain::event::ListedUser;
use crate::secret::Secret;

/// Attempts per page before the pass gives up (1 s, 2 s between them).
const ATTEMPTS: u32 = 3;

/// A page that could not be read, and from which API (`T::API`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{api}: {problem}")]
pub struct ListingError {
    pub api: &'static str,
    pub problem: ListingProblem,
}

/// What went wrong with a listing's page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListingProblem {
    #[error("timed out")]
    TimedOut,
    #[error("cannot be reached")]
    Unreachable,
    /// Anything but a `2xx`.
    #[error("answered {0}")]
    Status(StatusCode),
    /// No JSON object with the list (`list`) in it.
    #[error("answered something other than a page of {list}: {detail}")]
    NotAPage { list: &'static str, detail: String },
    #[error("broke off its answer")]
    BrokeOff,
}

impl ListingProblem {
    /// Whether asking again may help.
    fn transient(&self) -> bool {
        match self {
            ListingProblem::TimedOut | ListingProblem::Unreachable | ListingProblem::BrokeOff => {
                true
            }
            ListingProblem::Status(status) => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ListingProblem::NotAPage { .. } => false,
        }
    }
}

/// One page of a listing. Entries that are not of the contract's shape
/// are kept apart, so one bad record does not stop the pass.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The people or rooms listed, in order.
    pub items: Vec<T>,
    /// (the item's id if readable, what is wrong)
    pub malformed: Vec<(Option<String>, String)>,
    pub next_cursor: Option<String>,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
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
    /// The API, as its errors name it.
    const API: &'static str;
    /// The path under the API's base URL and the name of the list.
    const LIST: &'static str;
    /// The field that identifies an item (logged when one is malformed).
    const ID: &'static str;
    /// The API's base URL (None: not configured) and token in `settings`.
    fn endpoint(settings: &Settings) -> (Option<&Url>, Option<&Secret>);
}

impl Listed for ListedUser {
    const API: &'static str = "DAARION Auth's user API";
    const LIST: &'static str = "users";
    const ID: &'static str = "user_id";
    fn endpoint(settings: &Settings) -> (Option<&Url>, Option<&Secret>) {
        (
            settings.auth_api_url.as_ref(),
            settings.auth_api_token.as_ref(),
        )
    }
}

impl Listed for ListedRoom {
    const API: &'static str = "DAARION.city's room API";
    const LIST: &'static str = "rooms";
    const ID: &'static str = "room_id";
    fn endpoint(settings: &Settings) -> (Option<&Url>, Option<&Secret>) {
        (
            settings.city.api_url.as_ref(),
            settings.city.api_token.as_ref(),
        )
    }
}

/// The client of one listing API, read a page at a time.
pub struct ListingApi<T> {
    http: reqwest::Client,
    /// `{base}/v1/{T::LIST}`.
    list_url: Url,
    token: Option<Secret>,
    items: std::marker::PhantomData<fn() -> T>,
}

/// DAARION Auth's user API (CONTRACT.md section 5).
pub type UserApi = ListingApi<ListedUser>;
/// DAARION.city's room API (CONTRACT.md section 8).
pub type RoomApi = ListingApi<ListedRoom>;

impl<T> std::fmt::Debug for ListingApi<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListingApi")
            .field("list_url", &self.list_url.as_str())
            .finish()
    }
}

impl<T: Listed> ListingApi<T> {
    /// None when the API's URL is not set (`AUTH_API_URL`: no sync, no
    /// backfill; `CITY_API_URL`: no room pass). The base may carry a path
    /// prefix (https://host/auth).
    pub fn new(settings: &Settings) -> anyhow::Result<Option<ListingApi<T>>> {
        let (Some(base), token) = T::endpoint(settings) else {
            return Ok(None);
        };
        let list_url = Url::parse(&format!(
            "{}/v1/{}",
            base.as_str().trim_end_matches('/'),
            T::LIST
        ))?;
        Ok(Some(ListingApi {
            http: super::client()?,
            list_url,
            token: token.cloned(),
            items: std::marker::PhantomData,
        }))
    }

    /// The page after `cursor` of the items updated since `updated_since`
    /// (ms; all of them when None), retried a few times on transient errors.
    pub async fn page(
        &self,
        updated_since: Option<i64>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, ListingError> {
        let mut attempt = 1;
        loop {
            match self.page_once(updated_since, cursor, limit).await {
                Ok(page) => return Ok(page),
                Err(problem) if problem.transient() && attempt < ATTEMPTS => {
                    tracing::warn!("{}: {problem}; trying again", T::API);
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                    attempt += 1;
                }
                Err(problem) => {
                    return Err(ListingError {
                        api: T::API,
                        problem,
                    })
                }
            }
        }
    }

    async fn page_once(
        &self,
        updated_since: Option<i64>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<T>, ListingProblem> {
        let mut url = self.list_url.clone();
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
            if e.is_timeout() {
                ListingProblem::TimedOut
            } else {
                ListingProblem::Unreachable
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(ListingProblem::Status(status));
        }
        let not_a_page = |detail: String| ListingProblem::NotAPage {
            list: T::LIST,
            detail,
        };
        // Each item is kept as its text and read straight into `T`: a page
        // of a thousand rooms of a hundred members is never a tree of
        // `Value`s (several times the bytes), and one malformed item is
        // reported alone.
        let body = response
            .bytes()
            .await
            .map_err(|_| ListingProblem::BrokeOff)?;
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
                Ok(item) => page.items.push(item),
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
