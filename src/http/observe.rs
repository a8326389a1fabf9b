//! Middleware around every request: the request id (the caller's
//! `X-Request-Id` when sane, else a fresh one; returned in the response and
//! forwarded to Synapse), a tracing span carrying it so every log line of the
//! request has it, one log line per request, request metrics, and the global
//! cap on declared body sizes.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::ResponseError;
use tracing::Instrument;

use super::error::ApiError;
use crate::{metrics, telemetry};

/// No endpoint takes a larger body (webhooks and JSON bodies are capped at
/// the same size by their extractors, which also catch chunked bodies).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Except Synapse's transactions: up to 100 events (each under 64 KiB)
/// plus ephemeral ones.
pub const MAX_TRANSACTION_BYTES: usize = 16 * 1024 * 1024;

/// The largest body a request to `path` may carry.
fn body_limit(path: &str) -> usize {
    if path.starts_with("/_matrix/app/") {
        MAX_TRANSACTION_BYTES
    } else {
        MAX_BODY_BYTES
    }
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(telemetry::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| telemetry::is_sane_request_id(v))
        .map_or_else(telemetry::new_request_id, str::to_string);
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    // The path only: query strings are the caller's and may hold anything.
    let span = tracing::info_span!(
        "request", request_id = %id, method = %req.method(), path = %logged_path(req.path())
    );
    let started = Instant::now();

    let limit = body_limit(req.path());
    let result = if declared_length(&req).is_some_and(|n| n > limit) {
        let refusal = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} KiB", limit / 1024),
        );
        Ok(req.into_response(refusal.error_response()))
    } else {
        // (The request must not be cloned before routing: actix writes
        // the path parameters into it.)
        telemetry::with_request_id(id.clone(), next.call(req))
            .instrument(span.clone())
            .await
            .map(ServiceResponse::map_into_boxed_body)
    };
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            // Handlers' errors are responses already; this is actix's own.
            let status = e.as_response_error().status_code().as_u16();
            metrics::http_request(&route, status, started.elapsed());
            span.in_scope(|| tracing::info!(status, "request failed: {e}"));
            return Err(e);
        }
    };

    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    metrics::http_request(&route, status, elapsed);
    let _entered = span.enter();
    let elapsed_ms = elapsed.as_millis() as u64;
    if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") && status < 500 {
        // Probes and scrapes come every few seconds; keep them out of info.
        tracing::debug!(status, elapsed_ms, "request answered");
    } else {
        tracing::info!(status, elapsed_ms, "request answered");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(telemetry::REQUEST_ID_HEADER), value);
    }
    Ok(response)
}

/// The path as logged: a download link's token is a credential, and stays
/// out of the logs.
fn logged_path(path: &str) -> &str {
    if path.starts_with("/v1/media/") {
        "/v1/media/…"
    } else {
        path
    }
}

fn declared_length(req: &ServiceRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
