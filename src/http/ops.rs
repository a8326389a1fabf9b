//! The operators' plumbing: `/metrics` (Prometheus text), `/openapi.json`
//! (this API, generated from the handlers) and `/docs` (Swagger UI, served
//! from assets compiled into the binary, so it works without internet).

use actix_web::http::header;
use actix_web::{get, web, HttpResponse};
use utoipa::OpenApi;

use super::{ApiDoc, AppState};
use crate::metrics::{self, Snapshot};

/// Prometheus metrics.
///
/// Counters of webhook outcomes, Synapse requests (by endpoint and outcome,
/// with latency histograms), provisioning, profile sync and SSO token
/// exchanges; gauges of the queue and of people by state, read from the
/// database at scrape time, and whether Synapse answers its health check.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4",
        content_type = "text/plain", body = String)),
)]
#[get("/metrics")]
pub async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    let (snapshot, synapse) = tokio::join!(
        snapshot(&state.store, state.clock.now_ms()),
        super::health::synapse_reachable(&state),
    );
    let snapshot = snapshot
        .map_err(|e| tracing::warn!("metrics without database gauges: {e}"))
        .ok();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::render(
            snapshot,
            synapse.is_ok(),
            state.bus.as_ref().map(|bus| metrics::NatsGauges {
                connected: bus.connected(),
                pending: bus.pending(),
            }),
        ))
}

/// What the database says for the gauges.
async fn snapshot(
    store: &crate::store::Store,
    now: i64,
) -> Result<Snapshot, crate::store::StoreError> {
    let (queue, people, rooms, agents, outbox) = tokio::try_join!(
        store.queue_depth(now),
        store.people_by_state(),
        store.rooms_by_state(),
        store.agents_by_state(),
        store.outbox_summary(),
    )?;
    let age = |t: Option<i64>| t.map_or(0, |t| (now - t).max(0) / 1000);
    Ok(Snapshot {
        queue: vec![
            ("ready", queue.ready),
            ("scheduled", queue.scheduled),
            ("running", queue.running),
            ("failed", queue.failed),
        ],
        people,
        rooms,
        agents,
        outbox: vec![
            ("to_matrix", "pending", outbox.to_matrix_pending),
            ("to_matrix", "failed", outbox.to_matrix_failed),
            ("to_city", "pending", outbox.to_city_pending),
        ],
        outbox_oldest_seconds: vec![
            ("to_matrix", age(outbox.to_matrix_oldest)),
            ("to_city", age(outbox.to_city_oldest)),
        ],
    })
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document",
        content_type = "application/json", body = Object)),
)]
#[get("/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Swagger UI: redirects to `/docs/`.
#[utoipa::path(
    tag = "operations",
    responses((status = 308, description = "The UI lives at `/docs/`",
        headers(("Location" = String, description = "`/docs/`")))),
)]
#[get("/docs")]
pub async fn docs_redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/docs/"))
        .finish()
}

/// Swagger UI: this API, browsable and callable from a browser.
#[utoipa::path(
    get,
    path = "/docs/",
    tag = "operations",
    responses((status = 200, description = "The Swagger UI page",
        content_type = "text/html", body = String)),
)]
#[allow(dead_code)] // Documents the route that `swagger_ui()` serves.
fn docs_page() {}

/// The Swagger UI at `/docs/`, reading `/openapi.json`. The online spec
/// validator is off: the page makes no request beyond this service.
pub fn swagger_ui() -> utoipa_swagger_ui::SwaggerUi {
    utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
        .config(utoipa_swagger_ui::Config::new(["/openapi.json"]).validator_url("none"))
}
