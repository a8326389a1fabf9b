//! Operators' view of agents and of messages both ways (CONTRACT.md
//! section 9): an agent's puppet, an agent's message (and its retry once
//! failed), and the outboxes at a glance.

use actix_web::{get, post, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::AdminAuth;
use super::error::{ApiError, ErrorBody};
use super::users::rfc3339;
use super::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    #[schema(example = "a_helper")]
    pub agent_id: String,
    /// Null until the puppet's name is settled (its `agent.created`).
    #[schema(example = "@agent-helper:daarion.space")]
    pub matrix_user_id: Option<String>,
    /// `pending`, `ready`, `deactivated` or `failed`.
    #[schema(example = "ready")]
    pub state: String,
    /// What DAARION.city last said: `online`, `unavailable`, `offline`.
    pub presence: Option<String>,
    /// Failed attempts since the last success.
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Why the agent's avatar is not shown.
    pub avatar_error: Option<String>,
    #[schema(example = "2026-11-24T10:00:01Z")]
    pub updated_at: String,
}

/// An agent's puppet.
#[utoipa::path(
    tag = "operators",
    params(("agent_id" = String, Path, description = "DAARION.city agent id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = AgentView),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Unknown agent", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
#[get("/v1/agents/{agent_id}")]
pub async fn get_agent(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    agent_id: web::Path<String>,
) -> Result<web::Json<AgentView>, ApiError> {
    let agent = state
        .store
        .agent(&agent_id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no agent {agent_id:?} is known here")))?;
    Ok(web::Json(AgentView {
        matrix_user_id: agent.localpart.map(|lp| state.settings.user_id(&lp)),
        state: agent.state.as_str().to_string(),
        presence: agent.wanted.presence.map(|p| p.as_str().to_string()),
        attempts: agent.attempts,
        last_error: agent.last_error,
        avatar_error: agent.avatar_error,
        updated_at: rfc3339(agent.updated_at),
        agent_id: agent.agent_id,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    #[schema(example = "msg_01JDAQ")]
    pub message_id: String,
    /// The City Room (null in a direct chat).
    #[schema(example = "r_kyiv")]
    pub room_id: Option<String>,
    /// The direct chat (null in a City Room).
    pub conversation_id: Option<String>,
    #[schema(example = "a_helper")]
    pub agent_id: String,
    /// `message` (an agent's reactions, typing and receipts are kept the
    /// same way, under ids of their own).
    #[schema(example = "message")]
    pub kind: String,
    /// Edits sent to Matrix (a streamed answer's parts, DAARION.city's edits).
    pub edits: i64,
    /// DAARION.city deleted it (redacted in Matrix once `sent`).
    pub deleted: bool,
    /// False while a streamed answer is still coming.
    #[serde(rename = "final")]
    pub final_part: bool,
    /// `pending` (Matrix does not show it as it should yet: not sent, an
    /// edit or a redaction to come), `sent` or `failed`.
    #[schema(example = "sent")]
    pub state: String,
    /// The Matrix event, once sent.
    #[schema(example = "$Xq2…")]
    pub event_id: Option<String>,
    /// Why it failed, or what a pending message waits for.
    pub last_error: Option<String>,
    /// DAARION.city's `created_at` (the event's `origin_server_ts`).
    #[schema(example = "2026-11-24T10:00:00Z")]
    pub created_at: String,
}

/// An agent's message and whether it is in Matrix.
#[utoipa::path(
    tag = "operators",
    params(("message_id" = String, Path, description = "DAARION.city message id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, body = MessageView),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "Unknown message", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
#[get("/v1/messages/{message_id}")]
pub async fn get_message(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    message_id: web::Path<String>,
) -> Result<web::Json<MessageView>, ApiError> {
    let m = state
        .store
        .message(&message_id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("no message {message_id:?} is known here")))?;
    Ok(web::Json(MessageView {
        message_id: m.message.message_id,
        room_id: m.message.place.fields().0.map(str::to_string),
        conversation_id: m.message.place.fields().1.map(str::to_string),
        kind: m.kind.as_str().to_string(),
        edits: m.edits,
        deleted: m.deleted,
        final_part: m.message.final_part,
        agent_id: m.message.agent_id,
        state: m.state,
        event_id: m.event_id,
        last_error: m.last_error,
        created_at: rfc3339(m.created_at),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageRequeued {
    pub message_id: String,
    pub queued: bool,
}

/// Send a failed agent's message again (after its cause was fixed).
#[utoipa::path(
    tag = "operators",
    params(("message_id" = String, Path, description = "DAARION.city message id")),
    security(("admin_token" = [])),
    responses(
        (status = 202, body = MessageRequeued),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 404, description = "No failed message of that id", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
#[post("/v1/admin/messages/{message_id}/retry")]
pub async fn retry_message(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    message_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let queued = state
        .store
        .retry_message(&message_id, state.clock.now_ms())
        .await
        .map_err(ApiError::unavailable)?;
    let unknown = format!("no failed message {message_id:?} is known here");
    let body = MessageRequeued {
        message_id: message_id.into_inner(),
        queued: true,
    };
    super::queued_again(&state, queued, unknown, body)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Outboxes {
    /// Agents' messages on their way into Matrix.
    pub to_matrix: OutboxView,
    /// People's messages and presence on their way to DAARION.city.
    pub to_city: OutboxView,
    /// Agents by state (`pending`, `ready`, `deactivated`, `failed`).
    pub agents: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxView {
    /// Not delivered yet.
    pub pending: i64,
    /// Given up with a reason (agents' messages only; see
    /// `/v1/messages/{message_id}`).
    pub failed: i64,
    /// Age of the oldest pending one, in seconds (null: none).
    pub oldest_pending_seconds: Option<i64>,
    /// The last error of a delivery still being retried.
    pub last_error: Option<String>,
}

/// Agents and undelivered messages both ways, at a glance.
#[utoipa::path(
    tag = "operators",
    security(("admin_token" = [])),
    responses(
        (status = 200, body = Outboxes),
        (status = 401, description = "Missing or wrong admin token", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
#[get("/v1/admin/outbox")]
pub async fn outbox(
    _admin: AdminAuth,
    state: web::Data<AppState>,
) -> Result<web::Json<Outboxes>, ApiError> {
    let s = state
        .store
        .outbox_summary()
        .await
        .map_err(ApiError::unavailable)?;
    let agents = state
        .store
        .agents_by_state()
        .await
        .map_err(ApiError::unavailable)?;
    let now = state.clock.now_ms();
    let age = |t: Option<i64>| t.map(|t| (now - t).max(0) / 1000);
    Ok(web::Json(Outboxes {
        to_matrix: OutboxView {
            pending: s.to_matrix_pending,
            failed: s.to_matrix_failed,
            oldest_pending_seconds: age(s.to_matrix_oldest),
            last_error: s.to_matrix_last_error,
        },
        to_city: OutboxView {
            pending: s.to_city_pending,
            failed: 0,
            oldest_pending_seconds: age(s.to_city_oldest),
            last_error: s.to_city_last_error,
        },
        agents: agents.into_iter().collect(),
    }))
}
