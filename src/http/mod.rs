//! The HTTP interface: one file per resource, shared state, the route table
//! and the OpenAPI description generated from the handlers.

pub mod agents;
pub mod appservice;
pub mod auth;
pub mod error;
pub mod health;
pub mod media;
pub mod observe;
pub mod oidc;
pub mod ops;
pub mod pages;
pub mod password;
pub mod profile_sync;
pub mod rooms;
pub mod sso;
pub mod users;
pub mod webhooks;

use std::sync::Arc;

use actix_web::web;
use tokio::sync::Notify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::accounts::Accounts;
use crate::bus::Bus;
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::city::CityEvent;
use crate::domain::media_link::MediaLinks;
use crate::oidc::Provider;
use crate::passes::profiles::ProfileSync;
use crate::passes::rooms::RoomSync;
use crate::sso::Sso;
use crate::store::{Intake, LocalpartPolicy, Store};
use crate::synapse::Synapse;

/// What every handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub synapse: Arc<Synapse>,
    pub policy: LocalpartPolicy,
    /// Group-committed webhook intake.
    pub intake: Intake,
    pub city_intake: Intake<CityEvent>,
    /// Wakes an idle worker when a job is queued.
    pub wake: Arc<Notify>,
    /// "This person has an active account now", for sign-ins.
    pub accounts: Arc<Accounts>,
    /// DAARION's NATS, for its state (None: not configured).
    pub bus: Option<Arc<Bus>>,
    /// The OpenID provider (None: not configured).
    pub oidc: Option<Arc<Provider>>,
    pub sso: Arc<Sso>,
    pub sync: Arc<ProfileSync>,
    pub room_sync: Arc<RoomSync>,
    /// The service's clock (see `clock`): every handler's "now".
    pub clock: Clock,
    /// Download links of people's files (None: no `PUBLIC_URL` or no
    /// application service).
    pub media_links: Option<MediaLinks>,
}

/// An operator's retry: `202` with `body` once the work is queued again
/// (an idle worker is woken), `404` saying `unknown` when there was
/// nothing to queue.
fn queued_again<T: serde::Serialize>(
    state: &AppState,
    queued: bool,
    unknown: String,
    body: T,
) -> Result<actix_web::HttpResponse, error::ApiError> {
    if !queued {
        return Err(error::ApiError::not_found(unknown));
    }
    state.wake.notify_one();
    Ok(actix_web::HttpResponse::Accepted().json(body))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(observe::MAX_BODY_BYTES)
            .error_handler(error::extractor_error),
    )
    .app_data(web::PayloadConfig::default().limit(observe::MAX_BODY_BYTES))
    .app_data(web::PathConfig::default().error_handler(error::extractor_error))
    .app_data(web::QueryConfig::default().error_handler(error::extractor_error))
    .service(webhooks::receive)
    .service(rooms::receive_city)
    .service(rooms::get_room)
    .service(rooms::retry_room)
    .service(rooms::room_sync)
    .service(agents::get_agent)
    .service(agents::get_message)
    .service(agents::retry_message)
    .service(agents::outbox)
    .service(media::get_media)
    .service(appservice::transaction)
    .service(appservice::ping)
    .service(appservice::query_user)
    .service(appservice::query_alias)
    .service(sso::login_token)
    .service(oidc::discovery)
    .service(oidc::jwks)
    .service(oidc::authorize)
    .service(oidc::sso_return)
    .service(oidc::own_sign_in_page)
    .service(oidc::own_sign_in)
    .service(oidc::sso_review)
    .service(oidc::sso_continue)
    .service(oidc::token)
    .service(oidc::userinfo)
    .service(sso::session)
    .service(password::password)
    .service(users::get_user)
    .service(users::retry_user)
    .service(profile_sync::profile_sync)
    .service(health::healthz)
    .service(health::readyz)
    .service(ops::scrape)
    .service(ops::openapi_json)
    .service(ops::docs_redirect)
    .service(ops::swagger_ui())
    .default_service(web::to(error::fallback));
}

/// The OpenAPI document as checked in at `openapi/openapi.json`: pretty,
/// with every object's keys sorted, so regenerating it gives a stable diff.
pub fn openapi_pretty() -> String {
    let value = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let mut text = serde_json::to_string_pretty(&sorted(value)).expect("JSON serializes");
    text.push('\n');
    text
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "matrix-provisioner",
        description = "Provisions Matrix (Synapse) accounts for DAARION Auth users.\n\n\
            Every error response has the body `{\"error\": \"<snake_case_code>\", \"message\": \"…\"}` \
            (`ErrorBody`). Every response carries `X-Request-Id`: the caller's, when it is at most \
            64 characters of `[A-Za-z0-9-_.]`, else a fresh one; it is on every log line of the \
            request and forwarded to Synapse. Request bodies are limited to 64 KiB (`413`), except \
            Synapse's application service transactions (16 MiB)."
    ),
    paths(
        webhooks::receive,
        sso::login_token,
        sso::session,
        password::password,
        oidc::discovery,
        oidc::jwks,
        oidc::token,
        oidc::userinfo,
        users::get_user,
        users::retry_user,
        profile_sync::profile_sync,
        rooms::receive_city,
        rooms::get_room,
        rooms::retry_room,
        rooms::room_sync,
        agents::get_agent,
        agents::get_message,
        agents::retry_message,
        agents::outbox,
        media::get_media,
        health::healthz,
        health::readyz,
        ops::scrape,
        ops::openapi_json,
        ops::docs_redirect,
        ops::docs_page,
    ),
    components(schemas(
        error::ErrorBody,
        oidc::OAuthErrorBody,
        sso::SessionRequest,
        profile_sync::SyncRequest,
        rooms::RoomSyncRequest,
        crate::passes::profiles::Summary,
        crate::passes::rooms::RoomSummary
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "webhooks", description = "Events from DAARION Auth and DAARION.city"),
        (name = "sso", description = "DAARION access tokens in, Matrix logins out; bearer DAARION JWT"),
        (name = "sign-in", description = "The OpenID Connect provider behind Synapse's \"Continue with DAARION\" (its browser steps, `/oidc/authorize`, `/v1/sso/return` and `/v1/sso/continue`, answer HTML pages and are not listed here); errors of the token and userinfo endpoints are OAuth's `{\"error\", \"error_description\"}`"),
        (name = "media", description = "People's files for DAARION.city, by the download link of their `matrix.message`; the link is the credential, until it expires"),
        (name = "operators", description = "For operators and the cron; bearer `ADMIN_API_TOKEN`"),
        (name = "health", description = "Liveness and readiness probes"),
        (name = "operations", description = "Metrics and this documentation"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <ADMIN_API_TOKEN>`; no other way of passing it \
                         (query string, cookie) is accepted.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "oidc_access_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An access token from `/oidc/token`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "password_module",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <PASSWORD_MODULE_SECRET>`: Synapse's password module",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "daarion_token",
            SecurityScheme::Http(
                utoipa::openapi::security::HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A DAARION Auth access token"))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in description is what the code generates. To refresh it:
    /// `UPDATE_OPENAPI=1 cargo test --lib openapi` (or
    /// `matrix-provisioner openapi > openapi/openapi.json`).
    #[test]
    fn checked_in_openapi_is_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
        let generated = openapi_pretty();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "openapi/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test --lib openapi` \
             and commit the result"
        );
    }

    #[test]
    fn every_operation_documents_its_errors_with_the_error_body() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    // OAuth's endpoints answer OAuth's error body.
                    let body = if path == "/oidc/token" || path == "/oidc/userinfo" {
                        "#/components/schemas/OAuthErrorBody"
                    } else {
                        "#/components/schemas/ErrorBody"
                    };
                    if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"], body,
                            "{method} {path} {status}"
                        );
                    }
                }
                if op.get("security").is_some() {
                    assert!(op["responses"].get("401").is_some(), "{method} {path}");
                }
            }
        }
    }
}
