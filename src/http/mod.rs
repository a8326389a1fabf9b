//! The HTTP interface: one file per resource, shared state, the route table
//! and the OpenAPI description generated from the handlers.

pub mod auth;
pub mod error;
pub mod health;
pub mod profile_sync;
pub mod users;
pub mod webhooks;

use std::sync::Arc;

use actix_web::web;
use tokio::sync::Notify;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::config::Settings;
use crate::store::{LocalpartPolicy, Store};
use crate::synapse::Synapse;
use crate::sync::ProfileSync;

/// What every handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub synapse: Arc<Synapse>,
    pub policy: LocalpartPolicy,
    /// Wakes an idle worker when a job is queued.
    pub wake: Arc<Notify>,
    pub sync: Arc<ProfileSync>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(64 * 1024)
            .error_handler(error::extractor_error),
    )
    .app_data(web::PathConfig::default().error_handler(error::extractor_error))
    .app_data(web::QueryConfig::default().error_handler(error::extractor_error))
    .service(webhooks::receive)
    .service(users::get_user)
    .service(users::retry_user)
    .service(profile_sync::profile_sync)
    .service(health::healthz)
    .service(health::readyz)
    .route("/openapi.json", web::get().to(openapi_json))
    .default_service(web::to(error::not_found));
}

async fn openapi_json() -> web::Json<utoipa::openapi::OpenApi> {
    web::Json(ApiDoc::openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "matrix-provisioner",
        description = "Provisions Matrix (Synapse) accounts for DAARION Auth users."
    ),
    paths(
        webhooks::receive,
        users::get_user,
        users::retry_user,
        profile_sync::profile_sync,
        health::healthz,
        health::readyz,
    ),
    components(schemas(error::ErrorBody, profile_sync::SyncRequest, crate::sync::Summary)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
