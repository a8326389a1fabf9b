//! The application service's API as Synapse calls it (SYNAPSE.md
//! "Application services"): transactions, ping, and user and alias queries.
//! Every call must carry `APPSERVICE_HS_TOKEN` as a bearer token; answers
//! are Matrix-style (`{"errcode", "error"}`).

use actix_web::http::StatusCode;
use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::auth::{bearer_token, same_secret};
use super::observe::MAX_TRANSACTION_BYTES;
use super::webhooks::read_limited;
use super::AppState;
use crate::domain::matrix::{Names, Transaction};
use crate::metrics;

fn matrix_error(status: StatusCode, errcode: &str, error: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"errcode": errcode, "error": error}))
}

/// None when the request carries the homeserver's token; the refusal otherwise.
fn refuse_unless_homeserver(state: &AppState, req: &HttpRequest) -> Option<HttpResponse> {
    let Some(expected) = &state.settings.city.hs_token else {
        return Some(matrix_error(
            StatusCode::NOT_FOUND,
            "M_UNRECOGNIZED",
            "the application service is not configured",
        ));
    };
    let Some(presented) = bearer_token(req) else {
        return Some(matrix_error(
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
            "the homeserver's token is missing",
        ));
    };
    if same_secret(presented, expected) {
        None
    } else {
        Some(matrix_error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "the homeserver's token is wrong",
        ))
    }
}

/// `PUT /_matrix/app/v1/transactions/{txnId}`: events for the service's
/// namespaces and rooms. What people say in City Rooms (and their presence)
/// is stored for DAARION.city before the `200`; a transaction Synapse sends
/// again is answered without being applied twice (keyed by its id and
/// content: Synapse's ids restart with a new database), and each event is
/// applied once whatever transaction brings it.
#[put("/_matrix/app/v1/transactions/{txn_id}")]
pub async fn transaction(
    state: web::Data<AppState>,
    req: HttpRequest,
    txn_id: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    if let Some(refusal) = refuse_unless_homeserver(&state, &req) {
        metrics::transaction("refused");
        return refusal;
    }
    let body = match read_limited(&req, payload, MAX_TRANSACTION_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            metrics::transaction("refused");
            // Too large, or the connection broke while reading: say which.
            let errcode = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                "M_TOO_LARGE"
            } else {
                "M_UNKNOWN"
            };
            return matrix_error(e.status, errcode, &e.message);
        }
    };
    let city = &state.settings.city;
    let names = Names {
        server_name: &state.settings.server_name,
        bot: &city.bot,
        agent_prefix: &city.agent_prefix,
    };
    let txn = match Transaction::parse(&body, &names) {
        Ok(mut txn) => {
            if !city.read_receipts {
                txn.receipts.clear();
            }
            txn
        }
        Err(reason) => {
            metrics::transaction("refused");
            return matrix_error(StatusCode::BAD_REQUEST, "M_NOT_JSON", &reason);
        }
    };
    let digest = Sha256::digest(&body);
    let key = format!("{txn_id}:{}", hex::encode(&digest[..12]));
    let outbox = state.settings.to_city();
    let now = state.clock.now_ms();
    // A person's file goes to DAARION.city with a download link from now.
    let links = state.media_links.as_ref();
    let files = |mxc: &str| links.and_then(|l| l.link(mxc, now));
    match state
        .store
        .accept_transaction(&key, &txn, &names, outbox, &files, now)
        .await
    {
        Ok(accepted) => {
            metrics::transaction(if accepted.duplicate {
                "duplicate"
            } else {
                "applied"
            });
            if accepted.queued > 0 {
                state.wake.notify_one();
            }
            tracing::debug!(
                txn_id = %txn_id, events = txn.events, queued = accepted.queued,
                duplicate = accepted.duplicate, "application service transaction"
            );
            HttpResponse::Ok().json(json!({}))
        }
        // Synapse sends it again later (with backoff): nothing is lost.
        Err(e) => {
            metrics::transaction("unavailable");
            tracing::warn!(txn_id = %txn_id, "cannot store a transaction: {e}");
            matrix_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNKNOWN",
                "the service cannot store the transaction now",
            )
        }
    }
}

/// `POST /_matrix/app/v1/ping`: Synapse checking the link.
#[post("/_matrix/app/v1/ping")]
pub async fn ping(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Some(refusal) = refuse_unless_homeserver(&state, &req) {
        return refusal;
    }
    HttpResponse::Ok().json(json!({}))
}

/// `GET /_matrix/app/v1/users/{userId}`: the service creates its users
/// itself, never on demand.
#[get("/_matrix/app/v1/users/{user_id}")]
pub async fn query_user(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Some(refusal) = refuse_unless_homeserver(&state, &req) {
        return refusal;
    }
    matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user")
}

/// `GET /_matrix/app/v1/rooms/{alias}`: City Rooms are created from
/// DAARION.city's events, never on demand.
#[get("/_matrix/app/v1/rooms/{alias}")]
pub async fn query_alias(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    if let Some(refusal) = refuse_unless_homeserver(&state, &req) {
        return refusal;
    }
    matrix_error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such room")
}
