//! `/healthz` (the process answers) and `/readyz` (ready to accept work:
//! the database is reachable; Synapse's reachability and NATS's connection
//! are in the body).

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// What `/readyz` says of a database it cannot use, whatever the cause.
const DATABASE_UNAVAILABLE: &str = "database unavailable";

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
    /// The snake_case `not_ready` error code, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `ok` or `database unavailable` (why is in the service's log).
    /// Readiness depends on this alone.
    #[schema(example = "ok")]
    pub database: String,
    /// `ok` or what failed. Informational: while Synapse is down, webhooks
    /// are still accepted and queued, so the service stays ready.
    #[schema(example = "ok")]
    pub synapse: String,
    /// Present when `NATS_URL` is set: `connected`, `connecting` (not yet
    /// since the start) or `disconnected` (reconnecting). Informational:
    /// webhooks are still taken and what goes to DAARION.city waits in the
    /// outbox, so the service stays ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "connected")]
    pub nats: Option<String>,
}

/// Ready to accept work: the database is reachable. Synapse's reachability
/// is reported in the body (and as `matrix_provisioner_synapse_reachable`
/// in `/metrics`) but does not make the service unready: the durable queue
/// is exactly what keeps webhooks while Synapse is down. So is NATS's
/// connection, when NATS is configured (`nats`;
/// `matrix_provisioner_nats_connected`).
#[utoipa::path(tag = "health", responses(
    (status = 200, description = "Ready: the database is reachable (Synapse may not be; see `synapse`)", body = Readiness),
    (status = 503, description = "The database is unreachable", body = Readiness),
))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (database, synapse) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()),
        synapse_reachable(&state),
    );
    // The driver's words name hosts, databases and users: they are for
    // operators, in the log, not for whoever can reach `/readyz`.
    let database = match database {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!("readiness: the database check failed: {e}");
            DATABASE_UNAVAILABLE
        }
        Err(_) => {
            tracing::warn!(
                "readiness: the database check timed out after {} s",
                CHECK_TIMEOUT.as_secs()
            );
            DATABASE_UNAVAILABLE
        }
    }
    .to_string();
    let synapse = synapse.map_or_else(|e| e, |()| "ok".to_string());
    let nats = state.bus.as_ref().map(|bus| bus.state().to_string());
    if database == "ok" {
        HttpResponse::Ok().json(Readiness {
            error: None,
            message: None,
            database,
            synapse,
            nats,
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Readiness {
            error: Some("not_ready".into()),
            message: Some("the service's database is unreachable".into()),
            database,
            synapse,
            nats,
        })
    }
}

/// Synapse's health check, within [`CHECK_TIMEOUT`]; what failed otherwise,
/// in the service's words only: an answer's text (Synapse's, or a proxy's
/// page) goes to the log, not to whoever can reach `/readyz`.
pub(super) async fn synapse_reachable(state: &AppState) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, state.synapse.health()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!("readiness: Synapse's health check failed: {e}");
            Err(e.without_answer_text())
        }
        Err(_) => Err("timed out".to_string()),
    }
}
