//! Every error the service answers with has the contract's body
//! `{"error": "<snake_case_code>", "message": "<one human sentence>"}`,
//! including actix's own refusals (bad path, bad JSON, unknown route).

use std::sync::LazyLock;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::passes::PassError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable, snake_case.
    #[schema(example = "invalid_signature")]
    pub error: String,
    /// One human sentence.
    #[schema(example = "no signature matches the body")]
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A reconcile pass's outcome as the API answers it: the summary;
    /// `409` when another pass is running or its API is not configured;
    /// `503` when the database failed, or the pass itself stopped (a bug:
    /// its cause is in the log, not blamed on the database).
    pub fn pass_outcome<S>(
        joined: Result<Result<S, PassError>, tokio::task::JoinError>,
    ) -> Result<S, ApiError> {
        match joined {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(e @ PassError::InProgress { .. })) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "sync_in_progress",
                e.to_string(),
            )),
            Ok(Err(e @ PassError::NotConfigured(_))) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "sync_not_configured",
                e.to_string(),
            )),
            Ok(Err(PassError::Database(e))) => Err(ApiError::unavailable(e)),
            Err(e) => {
                tracing::error!("answering 503: the pass stopped: {e}");
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the pass stopped unexpectedly (its cause is in the service's log); retry later",
                )
                .with_retry_after(5))
            }
        }
    }

    /// Our own dependency (the database) failed: the caller should retry.
    pub fn unavailable(error: impl std::fmt::Display) -> ApiError {
        tracing::error!("answering 503: {error}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the service cannot reach its database right now; retry later",
        )
        .with_retry_after(5)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(ErrorBody {
            error: self.code.to_string(),
            message: self.message.clone(),
        })
    }
}

/// For `JsonConfig`, `PathConfig` and `QueryConfig`: actix's extractor
/// errors in our body.
pub fn extractor_error(err: impl std::fmt::Display, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("the request is malformed: {err}")).into()
}

/// Requests no route took: `405` (with `Allow`) when the path is one of
/// ours under another method, else `404`. The paths come from the OpenAPI
/// description, so new endpoints are covered by registering them there.
pub async fn fallback(req: HttpRequest) -> HttpResponse {
    let allowed = allowed_methods(req.path());
    if allowed.is_empty() {
        return ApiError::not_found(format!("no such endpoint: {} {}", req.method(), req.path()))
            .error_response();
    }
    let allow = allowed.join(", ");
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not supported here; use {allow}", req.method()),
    )
    .error_response();
    if let Ok(value) = header::HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// The methods the OpenAPI description lists for `path` (empty: no such path).
fn allowed_methods(path: &str) -> Vec<&'static str> {
    static ROUTES: LazyLock<Vec<(Vec<String>, Vec<&'static str>)>> = LazyLock::new(|| {
        use utoipa::OpenApi;
        super::ApiDoc::openapi()
            .paths
            .paths
            .iter()
            .map(|(template, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("PUT", item.put.is_some()),
                    ("POST", item.post.is_some()),
                    ("DELETE", item.delete.is_some()),
                    ("PATCH", item.patch.is_some()),
                ];
                (
                    template.split('/').map(str::to_string).collect(),
                    methods.iter().filter(|m| m.1).map(|m| m.0).collect(),
                )
            })
            .collect()
    });
    let segments: Vec<&str> = path.split('/').collect();
    let mut allowed: Vec<&'static str> = ROUTES
        .iter()
        .filter(|(template, _)| {
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| {
                    t == s || (t.starts_with('{') && t.ends_with('}') && !s.is_empty())
                })
        })
        .flat_map(|(_, methods)| methods.iter().copied())
        .collect();
    allowed.sort_unstable();
    allowed.dedup();
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_under_other_methods_are_405() {
        assert_eq!(allowed_methods("/v1/users/u_1"), ["GET"]);
        assert_eq!(allowed_methods("/v1/webhooks/auth"), ["POST"]);
        assert_eq!(allowed_methods("/v1/admin/users/u_1/retry"), ["POST"]);
        assert!(allowed_methods("/v1/users/").is_empty());
        assert!(allowed_methods("/v1/users/u_1/x").is_empty());
        assert!(allowed_methods("/nope").is_empty());
    }
}
