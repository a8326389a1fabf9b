//! `POST /v1/sso/password` (CONTRACT.md section 11): Synapse's password
//! module asks whether a DAARION person's email and password are right,
//! for Element X and every client that signs in with `m.login.password`.
//! Only the module, holding `PASSWORD_MODULE_SECRET`, may ask.

use std::net::IpAddr;

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{bearer_token, same_secret};
use super::error::{ApiError, ErrorBody};
use super::webhooks::read_limited;
use super::AppState;
use crate::accounts::PasswordError;
use crate::secret::Secret;

const MAX_BODY_BYTES: usize = 8 * 1024;
/// Longer than any address (320) or Matrix id (255).
const MAX_USER_CHARS: usize = 320;
/// DAARION Auth takes no longer passwords than this.
const MAX_PASSWORD_CHARS: usize = 1024;

/// What the module sends. No `Debug`: it carries a password.
#[derive(Deserialize, ToSchema)]
pub struct PasswordRequest {
    /// A localpart, a Matrix id or an email address, as the person typed it.
    #[schema(
        example = "olena@example.com",
        min_length = 1,
        max_length = 320,
        pattern = "\\S"
    )]
    pub user: String,
    #[schema(min_length = 1, max_length = 1024)]
    pub password: String,
    /// The client's address as Synapse saw it (failed attempts are counted
    /// per address); the module's own address when absent.
    #[schema(example = "203.0.113.7")]
    pub client_ip: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PasswordResponse {
    #[schema(example = "@olena.petrenko:daarion.space")]
    pub matrix_user_id: String,
}

/// Check a DAARION person's email (or Matrix id) and password.
#[utoipa::path(
    tag = "sso",
    security(("password_module" = [])),
    request_body = PasswordRequest,
    responses(
        (status = 200, body = PasswordResponse, description = "The password is right; the account exists (created now if needed)"),
        (status = 400, description = "The body is not JSON of this shape", body = ErrorBody),
        (status = 401, description = "Wrong email or password (`invalid_credentials`), or the module's secret is wrong (`invalid_module_secret`)", body = ErrorBody),
        (status = 403, description = "The person is deactivated (`user_deactivated`)", body = ErrorBody),
        (status = 404, description = "Not a DAARION person (`unknown_user`): Synapse goes on with its own checks", body = ErrorBody),
        (status = 429, description = "Too many failed attempts for this account or from this address; see Retry-After", body = ErrorBody),
        (status = 503, description = "DAARION Auth, Synapse or the database cannot answer now (`auth_unavailable`); see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/sso/password")]
pub async fn password(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        module_allowed(&state, &req)?;
        let body = read_limited(&req, payload, MAX_BODY_BYTES).await?;
        let request = parse(&body)?;
        drop(body);
        let client = request
            .client_ip
            .as_deref()
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
            .or_else(|| req.peer_addr().map(|a| a.ip()));
        let password = Secret::new(request.password);
        let signed_in = state
            .accounts
            .sign_in_with_password(&state.sso, &request.user, &password, client)
            .await
            .map_err(refusal)?;
        Ok::<_, ApiError>(PasswordResponse {
            matrix_user_id: state.settings.user_id(&signed_in.account.localpart),
        })
    }
    .await;
    match &result {
        Ok(_) => crate::metrics::token_exchange("password", "ok"),
        Err(e) => {
            crate::metrics::token_exchange("password", e.code);
            tracing::info!(
                outcome = e.code,
                status = e.status.as_u16(),
                "password sign-in"
            );
        }
    }
    result.map(|body| HttpResponse::Ok().json(body))
}

/// Only the module may ask (it presents `PASSWORD_MODULE_SECRET`).
fn module_allowed(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let not_configured = |setting: &str| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "password_login_not_configured",
            format!("password sign-in is not configured on this service ({setting} is not set)"),
        )
    };
    let Some(expected) = &state.settings.password_module_secret else {
        return Err(not_configured("PASSWORD_MODULE_SECRET"));
    };
    match bearer_token(req) {
        Some(presented) if same_secret(presented, expected) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_module_secret",
            "an `Authorization: Bearer <PASSWORD_MODULE_SECRET>` header is required",
        )),
    }
}

fn parse(body: &[u8]) -> Result<PasswordRequest, ApiError> {
    // serde's message could quote the password: say only what is wrong.
    let request: PasswordRequest = serde_json::from_slice(body).map_err(|_| {
        ApiError::bad_request(
            "the body must be a JSON object {\"user\": \"...\", \"password\": \"...\", \"client_ip\": \"...\"}",
        )
    })?;
    let user = request.user.trim();
    if user.is_empty() || user.chars().count() > MAX_USER_CHARS {
        return Err(ApiError::bad_request(format!(
            "user must be 1 to {MAX_USER_CHARS} characters"
        )));
    }
    if request.password.is_empty() || request.password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(ApiError::bad_request(format!(
            "password must be 1 to {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(request)
}

/// The contract's answer for each refusal.
pub(super) fn refusal(e: PasswordError) -> ApiError {
    match e {
        PasswordError::NotConfigured => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "password_login_not_configured",
            "password sign-in is not configured on this service (AUTH_PASSWORD_LOGIN_URL is not set)",
        ),
        PasswordError::UnknownUser => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_user",
            "not a DAARION person's account",
        ),
        PasswordError::WrongPassword => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the email or password is wrong",
        ),
        PasswordError::Deactivated => super::sso::deactivated(),
        PasswordError::Limited { retry_after } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed sign-ins for this account or from this address; retry later",
        )
        .with_retry_after(retry_after.as_millis().div_ceil(1000) as u64),
        PasswordError::Unavailable { retry_after } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            "DAARION Auth cannot check passwords right now; retry later",
        )
        .with_retry_after(retry_after.as_secs().max(1)),
        PasswordError::Failed => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provisioning_failed",
            "the Matrix account cannot be created; operators can see why",
        )
        .with_retry_after(60),
    }
}
