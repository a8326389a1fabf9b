//! Operators' view of people (CONTRACT.md section 4), behind the admin
//! bearer token: a person's state, and a retry of failed work.

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::AdminAuth;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::domain::localpart::user_id;
use crate::store::{JobKind, Person};

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    #[schema(example = "u_7f3c2a")]
    pub user_id: String,
    /// Null until the name is settled, just before the account is created
    /// (a person known only from events without a username waits up to
    /// `USERNAME_GRACE_SECONDS` for one).
    #[schema(example = "@olena:daarion.space")]
    pub matrix_user_id: Option<String>,
    /// `pending`, `provisioned`, `failed` or `deactivated`.
    #[schema(example = "provisioned")]
    pub state: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub avatar_mxc: Option<String>,
    /// Why DAARION's avatar is not shown in Matrix (refused, or its host
    /// unreachable); the display name and the account are not affected.
    pub avatar_error: Option<String>,
    /// Failed attempts since the last success.
    pub attempts: i64,
    pub last_error: Option<String>,
    #[schema(example = "2026-11-24T10:00:01Z")]
    pub updated_at: String,
}

impl UserView {
    pub fn new(person: Person, server_name: &str) -> UserView {
        UserView {
            matrix_user_id: person.localpart.as_ref().map(|lp| user_id(lp, server_name)),
            user_id: person.user_id,
            state: person.state.as_str().to_string(),
            display_name: person.wanted.display_name,
            avatar_url: person.wanted.avatar_url,
            avatar_mxc: person.avatar_mxc,
            attempts: person.attempts,
            last_error: person.last_error.or(person.avatar_error.clone()),
            avatar_error: person.avatar_error,
            updated_at: rfc3339(person.updated_at),
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A person's provisioning state.
#[utoipa::path(
    tag = "operators",
    params(("user_id" = String, Path, description = "DAARION user id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = UserView),
        (status = 400, description = "The path is malformed", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Unknown person", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
#[get("/v1/users/{user_id}")]
pub async fn get_user(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
) -> Result<web::Json<UserView>, ApiError> {
    let person = state
        .store
        .person(&user_id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no DAARION user {user_id:?} is known here")))?;
    Ok(web::Json(UserView::new(
        person,
        &state.settings.server_name,
    )))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    pub user_id: String,
    pub queued: bool,
}

/// Queue the person's Synapse work again now (after a failure).
#[utoipa::path(
    tag = "operators",
    params(("user_id" = String, Path, description = "DAARION user id")),
    security(("admin_token" = [])),
    responses(
        (status = 202, body = Requeued),
        (status = 400, description = "The path is malformed", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Unknown person", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
#[post("/v1/admin/users/{user_id}/retry")]
pub async fn retry_user(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let known = state
        .store
        .requeue(JobKind::Person, &user_id, state.clock.now_ms())
        .await
        .map_err(ApiError::unavailable)?;
    let unknown = format!("no DAARION user {user_id:?} is known here");
    let body = Requeued {
        user_id: user_id.into_inner(),
        queued: true,
    };
    super::queued_again(&state, known, unknown, body)
}
