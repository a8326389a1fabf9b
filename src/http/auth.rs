//! The operators' bearer token (`ADMIN_API_TOKEN`): only
//! `Authorization: Bearer <token>` is accepted, compared in constant time.

use std::future::{ready, Ready};

use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// The token of an `Authorization: Bearer <token>` header (the scheme in
/// any case, as RFC 6750 allows); None when there is none. For tokens that
/// callers present to sign in: DAARION access tokens, the OpenID
/// provider's access tokens.
pub(super) fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Extractor: the request carries the admin token.
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Ready<Result<AdminAuth, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(check(req))
    }
}

fn check(req: &HttpRequest) -> Result<AdminAuth, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered on the App");
    let Some(expected) = &state.settings.admin_api_token else {
        return Err(unauthorized(
            "admin endpoints are disabled: ADMIN_API_TOKEN is not configured",
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            unauthorized("an `Authorization: Bearer <ADMIN_API_TOKEN>` header is required")
        })?;
    // Hashing first makes the comparison independent of the lengths too.
    let a = Sha256::digest(presented.trim().as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    if bool::from(a.ct_eq(&b)) {
        Ok(AdminAuth)
    } else {
        Err(unauthorized("the admin token is wrong"))
    }
}
