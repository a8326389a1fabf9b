//! The application service's API as Synapse calls it (SYNAPSE.md
//! "Application services"): transactions, ping, and user and alias queries.
//! Every call must carry `APPSERVICE_HS_TOKEN` as a bearer token; answers
//! are Matrix-style (`{"errcode", "error"}`).

use actix_web::http::StatusCode;
use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::bearer_token;
use super::AppState;

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
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    if bool::from(a.ct_eq(&b)) {
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
/// namespaces. Answered `{}` once the body is a transaction; what people
/// say in City Rooms is handled by the agents issue (13).
#[put("/_matrix/app/v1/transactions/{txn_id}")]
pub async fn transaction(
    state: web::Data<AppState>,
    req: HttpRequest,
    txn_id: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(refusal) = refuse_unless_homeserver(&state, &req) {
        return refusal;
    }
    let Ok(txn) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return matrix_error(
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "the body is not JSON",
        );
    };
    let events = txn["events"].as_array().map_or(0, Vec::len);
    tracing::debug!(txn_id = %txn_id, events, "application service transaction");
    HttpResponse::Ok().json(json!({}))
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
