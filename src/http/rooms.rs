//! DAARION.city's side (CONTRACT.md sections 8 and 9): its signed webhooks
//! (`POST /v1/webhooks/city`, same guarantees as DAARION Auth's: signature,
//! durable before the `202`, repeats and older events change nothing), and
//! the operators' view of City Rooms, their retry and the reconcile pass.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::AdminAuth;
use super::error::{ApiError, ErrorBody};
use super::users::rfc3339;
use super::webhooks::{answer, refusal, signed_body, Acknowledged};
use super::AppState;
use crate::domain::city::{CityEvent, ParsedCity};
use crate::passes::rooms::RoomSummary;
use crate::store::JobKind;

#[derive(Debug, Serialize, ToSchema)]
pub struct CityWebhookAccepted {
    #[schema(example = "evt_01JDAQ6Y3S8Z")]
    pub event_id: String,
    /// True when this event id was received before.
    pub duplicate: bool,
    /// Present and true for event types this service does not handle.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignored: bool,
}

/// Receive a signed DAARION.city event (`room.created`, `room.updated`,
/// `room.deleted`, `room.member_added`, `room.member_removed`,
/// `agent.created`, `agent.updated`, `agent.deleted`, `agent.message`,
/// `agent.message_edited`, `agent.message_deleted`, `agent.reaction`,
/// `agent.typing`, `agent.read`, `presence.changed`; other types are
/// acknowledged and ignored).
///
/// The envelope, signature header, replay window, limits and answers are
/// those of `/v1/webhooks/auth`, signed with `CITY_WEBHOOK_SECRET`.
///
/// Agents' data (CONTRACT.md sections 9 and 13):
/// - `agent.created` / `agent.updated`: `{"agent_id", "slug", "display_name",
///   "avatar_url", "accepts_direct_chats"}` (absent: unchanged).
/// - `agent.message`: `{"message_id", "agent_id", "room_id" | "conversation_id",
///   "body", "format": "plain" | "markdown", "reply_to", "thread_of", "final",
///   "attachment": {"url", "mimetype", "name", "size"}}`. With `final: false`
///   it is one part of a streamed answer: the same `message_id` again with the
///   whole text so far; the person sees one message that grows (Matrix edits,
///   at most four a second), ending with the part marked `final: true`.
/// - `agent.message_edited`: `{"message_id", "body", "format"}`;
///   `agent.message_deleted`: `{"message_id", "reason"}`.
/// - `agent.reaction`: `{"agent_id", "target", "key", "removed"}`, `target` a
///   `message_id` or a `matrix.message` id.
/// - `agent.typing`: `{"agent_id", "room_id" | "conversation_id", "typing",
///   "timeout_ms"}`; `agent.read`: `{"agent_id", "room_id" | "conversation_id",
///   "up_to"}` (a `matrix.message` id).
///
/// What goes back to `CITY_EVENTS_URL` (same envelope and signature, in
/// order per room or conversation, at least once): `matrix.message`
/// (`conversation_id` and `room_id` null in a direct chat, `thread_of`,
/// `attachment`: `{"mxc", "mimetype", "name", "size", "download_url",
/// "download_expires_at"}`, the link served without credentials by
/// `GET /v1/media/{token}` until it expires), `matrix.message_edited`, `matrix.message_deleted`
/// (`by_moderator`), `matrix.reaction` (`removed`), `matrix.conversation_started`,
/// `matrix.conversation_ended`, `matrix.presence`, and with `CITY_READ_RECEIPTS=on`
/// `matrix.read` (`{"sender_id", "up_to", "room_id" | "conversation_id"}`,
/// `up_to` an agent's `message_id` or a `matrix.message` id; once per reader
/// and event).
#[utoipa::path(
    tag = "webhooks",
    request_body(content = Object, content_type = "application/json",
        description = "`{\"id\", \"type\", \"created_at\", \"data\": {…}}` (CONTRACT.md sections 8, 9 and 13)"),
    params(("X-Daarion-Signature" = String, Header,
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256(CITY_WEBHOOK_SECRET, \"<t>.<raw body>\")>`")),
    responses(
        (status = 202, description = "Stored durably", body = CityWebhookAccepted),
        (status = 400, description = "Not JSON of the event shape", body = ErrorBody),
        (status = 401, description = "Signature missing, wrong or stale", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "A value is not acceptable", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds"))),
    )
)]
#[post("/v1/webhooks/city")]
pub async fn receive_city(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    answer(receive_inner(&state, &req, payload).await)
}

impl Acknowledged for CityWebhookAccepted {
    fn ignored(&self) -> bool {
        self.ignored
    }
    fn duplicate(&self) -> bool {
        self.duplicate
    }
}

async fn receive_inner(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<CityWebhookAccepted, ApiError> {
    let body = signed_body(
        req,
        payload,
        &state.settings.city.webhook_secrets,
        state.clock.now_ms(),
    )
    .await?;
    let event = match CityEvent::parse(&body).map_err(refusal)? {
        ParsedCity::Event(event) => event,
        ParsedCity::Ignored { id } => {
            return Ok(CityWebhookAccepted {
                event_id: id,
                duplicate: false,
                ignored: true,
            })
        }
    };
    let accepted = state
        .city_intake
        .accept(event.clone())
        .await
        .map_err(ApiError::unavailable)?;
    if accepted.queued {
        state.wake.notify_one();
    }
    tracing::info!(
        event_id = %event.id, kind = event.kind, room_id = %event.subject,
        duplicate = accepted.duplicate, "city webhook accepted"
    );
    Ok(CityWebhookAccepted {
        event_id: event.id,
        duplicate: accepted.duplicate,
        ignored: false,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoomView {
    #[schema(example = "r_kyiv")]
    pub room_id: String,
    /// Null until the Matrix room exists.
    #[schema(example = "!abc:daarion.space")]
    pub matrix_room_id: Option<String>,
    #[schema(example = "#city-kyiv-center:daarion.space")]
    pub alias: Option<String>,
    /// `pending`, `ready`, `closed` or `failed`.
    #[schema(example = "ready")]
    pub state: String,
    pub members: MemberCounts,
    /// Failed attempts since the last success.
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Why the City Room's avatar is not shown.
    pub avatar_error: Option<String>,
    #[schema(example = "2026-11-24T10:00:01Z")]
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberCounts {
    /// Members in DAARION.city.
    pub listed: i64,
    /// Of those, people with a Matrix account (the ones Matrix shows).
    pub with_account: i64,
}

/// A City Room's state.
#[utoipa::path(
    tag = "operators",
    params(("room_id" = String, Path, description = "DAARION.city room id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = RoomView),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Unknown room", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
#[get("/v1/rooms/{room_id}")]
pub async fn get_room(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    room_id: web::Path<String>,
) -> Result<web::Json<RoomView>, ApiError> {
    let store = &state.store;
    let room = store
        .room(&room_id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no City Room {room_id:?} is known here")))?;
    let members = store
        .room_members(&room_id)
        .await
        .map_err(ApiError::unavailable)?;
    let accounts = store
        .member_accounts(&room_id)
        .await
        .map_err(ApiError::unavailable)?;
    let present: std::collections::HashSet<&str> = members
        .iter()
        .filter(|m| m.present)
        .map(|m| m.member_id.as_str())
        .collect();
    let with_account = accounts
        .iter()
        .filter(|a| present.contains(a.member_id.as_str()))
        .count();
    Ok(web::Json(RoomView {
        matrix_room_id: room.matrix_room_id,
        alias: room
            .alias
            .map(|a| format!("#{a}:{}", state.settings.server_name)),
        state: room.state.as_str().to_string(),
        members: MemberCounts {
            listed: present.len() as i64,
            with_account: with_account as i64,
        },
        attempts: room.attempts,
        last_error: room.last_error,
        avatar_error: room.avatar_error,
        updated_at: rfc3339(room.updated_at),
        room_id: room.room_id,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoomRequeued {
    pub room_id: String,
    pub queued: bool,
}

/// Queue the City Room's Synapse work again now (after a failure).
#[utoipa::path(
    tag = "operators",
    params(("room_id" = String, Path, description = "DAARION.city room id")),
    security(("admin_token" = [])),
    responses(
        (status = 202, body = RoomRequeued),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Unknown room", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
#[post("/v1/admin/rooms/{room_id}/retry")]
pub async fn retry_room(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    room_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let known = state
        .store
        .requeue(JobKind::Room, &room_id, state.clock.now_ms())
        .await
        .map_err(ApiError::unavailable)?;
    let unknown = format!("no City Room {room_id:?} is known here");
    let body = RoomRequeued {
        room_id: room_id.into_inner(),
        queued: true,
    };
    super::queued_again(&state, known, unknown, body)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RoomSyncRequest {
    /// Read every City Room and compare every Matrix room with Synapse.
    #[serde(default)]
    pub full: bool,
}

/// Run a City Rooms reconcile pass now.
#[utoipa::path(
    tag = "operators",
    request_body(content = Option<RoomSyncRequest>, content_type = "application/json",
        description = "Optional; `{\"full\": false}` when absent"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The pass ran; what it did", body = RoomSummary),
        (status = 400, description = "The body is not of the request's shape", body = ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 409, description = "`sync_in_progress`: another pass is running; \
            `sync_not_configured`: CITY_API_URL or the application service is not set", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
#[post("/v1/admin/room-sync")]
pub async fn room_sync(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<web::Json<RoomSummary>, ApiError> {
    let request: RoomSyncRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RoomSyncRequest::default()
    } else {
        serde_json::from_slice::<Option<RoomSyncRequest>>(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not {{\"full\": bool}}: {e}")))?
            .unwrap_or_default()
    };
    let sync = state.room_sync.clone();
    let pass = crate::telemetry::spawn(async move { sync.run(request.full).await });
    ApiError::pass_outcome(pass.await).map(web::Json)
}
