//! `/healthz` (the process answers) and `/readyz` (database and Synapse
//! reachable, with what failed in the body).

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// The process is up.
#[utoipa::path(tag = "health", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health {
        status: "ok".into(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, or the snake_case `not_ready` error code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `ok` or what failed.
    pub database: String,
    /// `ok` or what failed.
    pub synapse: String,
}

/// The database and Synapse are reachable.
#[utoipa::path(tag = "health", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Something is unreachable", body = Readiness),
))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (database, synapse) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.synapse.health()),
    );
    let describe = |r: Result<Result<(), String>, _>| match r {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e,
        Err(_) => "timed out".to_string(),
    };
    let database = describe(database.map(|r| r.map_err(|e| e.to_string())));
    let synapse = describe(synapse.map(|r| r.map_err(|e| e.to_string())));
    if database == "ok" && synapse == "ok" {
        HttpResponse::Ok().json(Readiness {
            error: None,
            message: None,
            database,
            synapse,
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Readiness {
            error: Some("not_ready".into()),
            message: Some("a dependency of the service is unreachable".into()),
            database,
            synapse,
        })
    }
}
