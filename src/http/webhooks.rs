//! `POST /v1/webhooks/auth` (CONTRACT.md section 2): size limit, signature,
//! parse, then one transaction before the `202`. The checks run in that
//! order so nothing is stored for a refused request.

use actix_web::http::{header, StatusCode};
use actix_web::{post, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::domain::event::{Event, EventError, Parsed};
use crate::domain::signature;
use crate::metrics;

pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const SIGNATURE_HEADER: &str = crate::domain::signature::HEADER;

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAccepted {
    #[schema(example = "evt_01JDAQ6Y3S8Z")]
    pub event_id: String,
    /// True when this event id was received before.
    pub duplicate: bool,
    /// The person's Matrix id (the Synapse work may still be pending).
    #[schema(example = "@olena:daarion.space")]
    pub matrix_user_id: Option<String>,
    /// Present and true for event types this service does not handle.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignored: bool,
}

// Documentation only: the handler verifies the signature over the raw bytes
// first and then parses them itself (`domain::event`).
/// A DAARION Auth event about one person.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct WebhookEvent {
    /// Unique per event; redeliveries repeat it.
    #[schema(example = "evt_01JDAQ6Y3S8Z")]
    id: String,
    /// `user.registered`, `user.updated`, `user.deleted` or
    /// `user.signed_out` (ends the Matrix sessions signed in through the
    /// OpenID provider from `data.session_id`, or from every session when
    /// it is absent or null); other types are acknowledged and ignored.
    #[schema(rename = "type", example = "user.registered")]
    kind: String,
    /// RFC 3339; orders events about the same person.
    #[schema(example = "2026-11-24T10:00:00Z")]
    created_at: String,
    data: WebhookEventData,
}

/// In `user.updated`, an absent field is unchanged and `null` clears it.
/// Unknown fields are ignored.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct WebhookEventData {
    /// DAARION's stable id of the person.
    #[schema(example = "u_7f3c2a")]
    user_id: String,
    #[schema(example = "olena")]
    username: Option<String>,
    #[schema(example = "Олена Петренко")]
    display_name: Option<String>,
    #[schema(example = "https://cdn.daarion.city/avatars/u_7f3c2a.png")]
    avatar_url: Option<String>,
    #[schema(example = "olena@example.com")]
    email: Option<String>,
    /// `user.signed_out`: the DAARION session (its access tokens' `sid`).
    #[schema(example = "sess_01JDAQ")]
    session_id: Option<String>,
}

/// Receive a signed DAARION Auth event.
///
/// The signature is checked before anything else, so an unsigned request
/// gets `401` whatever its body.
#[utoipa::path(
    tag = "webhooks",
    request_body(content = WebhookEvent, content_type = "application/json"),
    params(("X-Daarion-Signature" = String, Header,
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256(AUTH_WEBHOOK_SECRET, \"<t>.<raw body>\")>`; \
            several `v1=` may be given")),
    responses(
        (status = 202, description = "Stored durably", body = WebhookAccepted),
        (status = 400, description = "Not JSON of the event shape", body = ErrorBody),
        (status = 401, description = "Signature missing, wrong or stale", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "A value is not acceptable", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
#[post("/v1/webhooks/auth")]
pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    answer(receive_inner(&state, &req, payload).await)
}

/// What a webhook's `202` says about the event, for the metrics.
pub(super) trait Acknowledged: Serialize {
    fn ignored(&self) -> bool;
    fn duplicate(&self) -> bool;
}

impl Acknowledged for WebhookAccepted {
    fn ignored(&self) -> bool {
        self.ignored
    }
    fn duplicate(&self) -> bool {
        self.duplicate
    }
}

/// Counts a webhook's outcome and answers it: `202` with the body, or the
/// refusal.
pub(super) fn answer<T: Acknowledged>(
    result: Result<T, ApiError>,
) -> Result<HttpResponse, ApiError> {
    match &result {
        Ok(accepted) if accepted.ignored() => metrics::webhook("ignored", ""),
        Ok(accepted) if accepted.duplicate() => metrics::webhook("duplicate", ""),
        Ok(_) => metrics::webhook("accepted", ""),
        Err(e) => metrics::webhook("refused", e.code),
    }
    result.map(|accepted| HttpResponse::Accepted().json(accepted))
}

async fn receive_inner(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<WebhookAccepted, ApiError> {
    let body = signed_body(
        req,
        payload,
        &state.settings.webhook_secrets,
        state.clock.now_ms(),
    )
    .await?;
    let event = match Event::parse(&body).map_err(refusal)? {
        Parsed::Event(event) => event,
        Parsed::Ignored { id } => {
            return Ok(WebhookAccepted {
                event_id: id,
                duplicate: false,
                matrix_user_id: None,
                ignored: true,
            })
        }
    };
    let accepted = state
        .intake
        .accept(event.clone())
        .await
        .map_err(ApiError::unavailable)?;
    if accepted.queued {
        // A deletion must stop token exchanges now, not when the cache runs out.
        state.accounts.forget(&event.user_id);
        state.wake.notify_one();
    }
    tracing::info!(
        event_id = %event.id, kind = event.kind.as_str(), user_id = %event.user_id,
        duplicate = accepted.duplicate, "webhook accepted"
    );
    Ok(WebhookAccepted {
        event_id: event.id,
        duplicate: accepted.duplicate,
        matrix_user_id: accepted.localpart.map(|lp| state.settings.user_id(&lp)),
        ignored: false,
    })
}

/// The body, once its size and signature (by one of `secrets`) are checked.
pub(super) async fn signed_body(
    req: &HttpRequest,
    payload: web::Payload,
    secrets: &[crate::secret::Secret],
    now_ms: i64,
) -> Result<web::BytesMut, ApiError> {
    let body = read_limited(req, payload, MAX_BODY_BYTES).await?;
    let header = req
        .headers()
        .get(SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or(""));
    signature::verify(header, &body, secrets, now_ms / 1000).map_err(|e| {
        let code = match e {
            signature::SignatureError::Stale => "stale_signature",
            signature::SignatureError::Missing => "missing_signature",
            _ => "invalid_signature",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.message())
    })?;
    Ok(body)
}

/// A body that does not parse as an event: 400, or 422 for a value.
pub(super) fn refusal(e: EventError) -> ApiError {
    match e {
        EventError::Malformed(m) => ApiError::bad_request(m),
        EventError::Unacceptable(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unacceptable_value", m)
        }
    }
}

/// Reads the body, refusing more than `limit` bytes without reading them all.
pub(super) async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} KiB", limit / 1024),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
