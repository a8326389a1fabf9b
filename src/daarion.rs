//! DAARION Auth's user API (CONTRACT.md section 5), the one client of it:
//! `GET {AUTH_API_URL}/v1/users?updated_since=&cursor=&limit=` with
//! `AUTH_API_TOKEN` as bearer, one page at a time.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
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
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub users: Vec<ListedUser>,
    /// (user_id if readable, what is wrong)
    pub malformed: Vec<(Option<String>, String)>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct RawPage {
    users: Vec<Value>,
    #[serde(default)]
    next_cursor: Option<String>,
}

pub struct DaarionApi {
    http: reqwest::Client,
    users_url: Url,
    token: Option<Secret>,
}

impl std::fmt::Debug for DaarionApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaarionApi")
            .field("users_url", &self.users_url.as_str())
            .finish()
    }
}

impl DaarionApi {
    /// None when `AUTH_API_URL` is not set (no sync, no backfill).
    pub fn new(settings: &Settings) -> anyhow::Result<Option<DaarionApi>> {
        let Some(base) = &settings.auth_api_url else {
            return Ok(None);
        };
        // AUTH_API_URL may carry a path prefix (https://host/auth).
        let users_url = Url::parse(&format!("{}/v1/users", base.as_str().trim_end_matches('/')))?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("matrix-provisioner/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(DaarionApi {
            http,
            users_url,
            token: settings.auth_api_token.clone(),
        }))
    }

    /// The page after `cursor` of the people updated since `updated_since`
    /// (ms; everyone when None), retried a few times on transient errors.
    pub async fn page(
        &self,
        updated_since: Option<i64>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, ApiError> {
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
    ) -> Result<Page, (ApiError, bool)> {
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
        let raw: RawPage = response.json().await.map_err(|e| {
            (
                ApiError(format!(
                    "answered something other than a page of users: {e}"
                )),
                false,
            )
        })?;
        let mut page = Page {
            next_cursor: raw.next_cursor.filter(|c| !c.is_empty()),
            ..Page::default()
        };
        for entry in raw.users {
            let user_id = entry["user_id"].as_str().map(str::to_string);
            match serde_json::from_value::<ListedUser>(entry) {
                Ok(user) => page.users.push(user),
                Err(e) => page.malformed.push((user_id, e.to_string())),
            }
        }
        Ok(page)
    }
}
