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
/// any case: RFC 7235 makes auth-schemes case-insensitive); None when
/// there is none or it is empty. The one reader of bearer tokens: the
/// admin token, Synapse's `APPSERVICE_HS_TOKEN`, DAARION access tokens,
/// the OpenID provider's access tokens.
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
    let presented = bearer_token(req).ok_or_else(|| {
        unauthorized("an `Authorization: Bearer <ADMIN_API_TOKEN>` header is required")
    })?;
    if same_secret(presented, expected) {
        Ok(AdminAuth)
    } else {
        Err(unauthorized("the admin token is wrong"))
    }
}

/// Whether `presented` is `expected`, in constant time. Hashing first
/// makes the comparison independent of the lengths too.
pub(super) fn same_secret(presented: &str, expected: &crate::secret::Secret) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    bool::from(a.ct_eq(&b))
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn token(authorization: &str) -> Option<String> {
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, authorization))
            .to_http_request();
        bearer_token(&req).map(str::to_string)
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "Bearer  tok "] {
            assert_eq!(token(value).as_deref(), Some("tok"), "{value:?}");
        }
        for value in ["tok", "Bearer", "Bearer ", "Basic tok", "Bearertok"] {
            assert_eq!(token(value), None, "{value:?}");
        }
        let none = TestRequest::default().to_http_request();
        assert_eq!(bearer_token(&none), None);
    }
}
