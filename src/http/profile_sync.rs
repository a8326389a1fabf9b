//! `POST /v1/admin/profile-sync` (CONTRACT.md section 4): runs one sync
//! pass now and answers with its summary. The pass runs in a task of its
//! own, so a caller that hangs up does not cut it short.

use actix_web::{post, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::AdminAuth;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::passes::profiles::Summary;

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SyncRequest {
    /// Read everyone, not only the changes since the last pass, and look
    /// for profiles changed by hand in Matrix.
    #[serde(default)]
    pub full: bool,
}

/// Run a profile sync pass now.
#[utoipa::path(
    tag = "operators",
    request_body(content = Option<SyncRequest>, content_type = "application/json",
        description = "Optional; `{\"full\": false}` when absent"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The pass ran; what it did", body = Summary),
        (status = 400, description = "The body is not of the request's shape", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "`sync_in_progress`: another pass is running; \
            `sync_not_configured`: AUTH_API_URL is not set", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
#[post("/v1/admin/profile-sync")]
pub async fn profile_sync(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<web::Json<Summary>, ApiError> {
    // The body is optional; JSON `null` says "no body" too.
    let request: SyncRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SyncRequest::default()
    } else {
        serde_json::from_slice::<Option<SyncRequest>>(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not {{\"full\": bool}}: {e}")))?
            .unwrap_or_default()
    };
    let sync = state.sync.clone();
    let pass = crate::telemetry::spawn(async move { sync.run(request.full).await });
    ApiError::pass_outcome(pass.await).map(web::Json)
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    #[test]
    fn the_endpoint_and_its_summary_are_documented() {
        let doc = super::super::ApiDoc::openapi();
        assert!(doc.paths.paths.contains_key("/v1/admin/profile-sync"));
        let schemas = doc.components.unwrap().schemas;
        assert!(schemas.contains_key("Summary") && schemas.contains_key("SyncRequest"));
    }
}
