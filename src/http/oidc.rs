//! The OpenID provider's endpoints (CONTRACT.md section 7): discovery, keys,
//! the browser's steps (authorize, DAARION's return, continue) and Synapse's
//! (token, userinfo). Parsing and answers only; the steps themselves are
//! `oidc::Provider`'s. Browsers get pages (`pages`), Synapse gets OAuth's
//! `{"error": …}` bodies; neither ever sees this API's `ErrorBody`.

use std::collections::HashMap;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{get, post, route, web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::pages::{confirm_page, onward_page, page_headers, sign_in_form, FormNote, Lang, Page};
use super::webhooks::read_limited;
use super::AppState;
use crate::oidc::{Next, OAuthError, Provider, SignInError};

const MAX_FORM_BYTES: usize = 16 * 1024;
const SIGN_IN_COOKIE_SECONDS: i64 = 10 * 60;

/// An OAuth 2.0 error (RFC 6749 section 5.2), as the token and userinfo
/// endpoints answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    #[schema(example = "invalid_grant")]
    pub error: String,
    pub error_description: String,
}

/// The provider, or the API's 404 when it is not configured.
fn provider(state: &AppState) -> Result<&Provider, ApiError> {
    state.oidc.as_deref().ok_or_else(|| {
        let missing = state
            .settings
            .oidc
            .missing_setting()
            .unwrap_or("PUBLIC_URL");
        ApiError::new(
            StatusCode::NOT_FOUND,
            "oidc_not_configured",
            format!("the OpenID provider is not configured on this service ({missing} is not set)"),
        )
    })
}

/// The provider's discovery document.
#[utoipa::path(
    tag = "sign-in",
    responses(
        (status = 200, description = "OpenID Provider Metadata", body = Object),
        (status = 404, description = "The provider is not configured (`oidc_not_configured`)", body = ErrorBody),
    )
)]
#[get("/.well-known/openid-configuration")]
pub async fn discovery(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let provider = provider(&state)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .json(provider.discovery()))
}

/// The keys ID tokens and logout tokens are signed with (JWKS): the one in
/// use and, for an hour, those it replaced.
#[utoipa::path(
    tag = "sign-in",
    responses(
        (status = 200, description = "A JSON Web Key Set", body = Object),
        (status = 404, description = "The provider is not configured (`oidc_not_configured`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
#[get("/oidc/jwks")]
pub async fn jwks(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let jwks = provider(&state)?
        .jwks()
        .await
        .map_err(ApiError::unavailable)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=60"))
        .json(jwks))
}

/// Step 1 (a browser, sent by Synapse): the authorization request.
#[get("/oidc/authorize")]
pub async fn authorize(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let Some(provider) = state.oidc.as_deref() else {
        return Page::NotConfigured.respond(&req, StatusCode::NOT_FOUND);
    };
    let query = form_pairs(req.query_string().as_bytes());
    let client = super::sso::client_address(&req, &state.settings.trusted_proxies);
    let outcome = provider.authorize(&query, &client.to_string()).await;
    crate::metrics::sign_in("authorize", outcome_name(&outcome));
    answer(&req, provider, outcome)
}

/// Step 2 (a browser, sent by DAARION Auth): `access_token` and `state`, or
/// `error=access_denied` and `state`.
#[post("/v1/sso/return")]
pub async fn sso_return(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (provider, form) = match posted_form(&state, &req, payload).await {
        Ok(posted) => posted,
        Err(page) => return page,
    };
    let outcome = provider.returned(&state.sso, &form).await;
    crate::metrics::sign_in("return", outcome_name(&outcome));
    answer(&req, provider, outcome)
}

/// Step 2 on the service's own page (when DAARION Auth has no hosted page;
/// the browser, sent by step 1 with `state`): email and password.
#[get("/v1/sso/sign-in")]
pub async fn own_sign_in_page(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let Some(provider) = state.oidc.as_deref() else {
        return Page::NotConfigured.respond(&req, StatusCode::NOT_FOUND);
    };
    let query = form_pairs(req.query_string().as_bytes());
    let Some(sign_in) = query.get("state") else {
        return Page::BadRequest.respond(&req, StatusCode::BAD_REQUEST);
    };
    let binding = req
        .cookie(&provider.cookie_name(sign_in))
        .map(|c| c.value().to_string());
    match provider.sign_in_form(sign_in, binding.as_deref()).await {
        Ok(form_token) => sign_in_form(
            Lang::of(&req),
            StatusCode::OK,
            &provider.sign_in_url(),
            &[("state", sign_in.as_str()), ("form", form_token.as_str())],
            "",
            None,
        ),
        Err(e) => answer(&req, provider, Err(e)),
    }
}

/// Step 2 on the service's own page, posted: `state`, `form` (the form
/// token), `email`, `password`. A wrong password, too many attempts or
/// DAARION being down show the form again with a note.
#[post("/v1/sso/sign-in")]
pub async fn own_sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (provider, form) = match posted_form(&state, &req, payload).await {
        Ok(posted) => posted,
        Err(page) => return page,
    };
    let Some(sign_in) = form.get("state") else {
        return Page::Expired.respond(&req, StatusCode::BAD_REQUEST);
    };
    let binding = req
        .cookie(&provider.cookie_name(sign_in))
        .map(|c| c.value().to_string());
    let client = super::sso::client_address(&req, &state.settings.trusted_proxies);
    let outcome = provider
        .password_sign_in(
            &state.accounts,
            &state.sso,
            &form,
            binding.as_deref(),
            client,
        )
        .await;
    crate::metrics::sign_in("password", outcome_name(&outcome));
    let (note, status, retry_after) = match outcome {
        Err(SignInError::WrongPassword) => {
            (FormNote::WrongPassword, StatusCode::UNAUTHORIZED, None)
        }
        Err(SignInError::Limited { retry_after }) => (
            FormNote::Limited(retry_after),
            StatusCode::TOO_MANY_REQUESTS,
            Some(retry_after),
        ),
        Err(SignInError::DaarionUnavailable { retry_after }) => (
            FormNote::DaarionUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(retry_after),
        ),
        other => return answer(&req, provider, other),
    };
    // The form again, for this browser only (its token is in `form`).
    let form_token = binding
        .as_deref()
        .map(Provider::form_token)
        .unwrap_or_default();
    let email = form.get("email").map(|e| e.trim()).unwrap_or("");
    let mut response = sign_in_form(
        Lang::of(&req),
        status,
        &provider.sign_in_url(),
        &[("state", sign_in.as_str()), ("form", form_token.as_str())],
        email,
        Some(note),
    );
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    response
}

/// Step 3, first half (the browser, on our origin, sent by step 2 with
/// `state` and `proof`): the account is made sure of and the person sees
/// whom they are about to be signed in as, with "Continue" and "Not me".
#[get("/v1/sso/continue")]
pub async fn sso_review(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let Some(provider) = state.oidc.as_deref() else {
        return Page::NotConfigured.respond(&req, StatusCode::NOT_FOUND);
    };
    let query = form_pairs(req.query_string().as_bytes());
    let (Some(sign_in), Some(proof)) = (query.get("state"), query.get("proof")) else {
        return Page::Expired.respond(&req, StatusCode::BAD_REQUEST);
    };
    let name = provider.cookie_name(sign_in);
    let binding = req.cookie(&name).map(|c| c.value().to_string());
    let outcome = provider
        .review(&state.accounts, sign_in, binding.as_deref(), proof)
        .await;
    crate::metrics::sign_in(
        "review",
        match &outcome {
            Ok(_) => "ok",
            Err(e) => error_name(e),
        },
    );
    match outcome {
        Ok(confirm) => {
            let matrix_id = state.settings.user_id(&confirm.localpart);
            let fields = [("state", sign_in.as_str()), ("proof", proof.as_str())];
            confirm_page(
                Lang::of(&req),
                &matrix_id,
                confirm.display_name.as_deref(),
                &provider.continue_url(),
                &fields,
                &confirm.client_origin,
            )
        }
        Err(e) => {
            // Over: the browser forgets its cookie.
            let mut response = answer(&req, provider, Err(e));
            forget_cookie(provider, name, &mut response);
            response
        }
    }
}

/// Step 3, second half (the confirmation form, posted on our origin):
/// `state`, `proof` and `answer` (`continue` or `cancel`); on `continue`
/// the code, and the browser on to Synapse.
#[post("/v1/sso/continue")]
pub async fn sso_continue(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let (provider, form) = match posted_form(&state, &req, payload).await {
        Ok(posted) => posted,
        Err(page) => return page,
    };
    let consent = match form.get("answer").map(String::as_str) {
        Some("continue") => true,
        Some("cancel") => false,
        _ => return Page::BadRequest.respond(&req, StatusCode::BAD_REQUEST),
    };
    let (Some(sign_in), Some(proof)) = (form.get("state"), form.get("proof")) else {
        return Page::Expired.respond(&req, StatusCode::BAD_REQUEST);
    };
    let name = provider.cookie_name(sign_in);
    let binding = req.cookie(&name).map(|c| c.value().to_string());
    let outcome = provider
        .finish(&state.accounts, sign_in, binding.as_deref(), proof, consent)
        .await;
    crate::metrics::sign_in("confirm", outcome_name(&outcome));
    let mut response = match outcome {
        // Not a redirect: the confirmation page allows its form to go only
        // to us and Synapse (`form-action`), and a browser checks every
        // redirect after a form's submission against that, so Synapse's own
        // redirect on to the client (Element on its own origin) would be
        // blocked. A page that moves on by itself is a new navigation.
        Ok(next) => onward_page(Lang::of(&req), &next.location),
        other => answer(&req, provider, other),
    };
    // The sign-in is over either way: the browser forgets its cookie.
    forget_cookie(provider, name, &mut response);
    response
}

/// A browser's form post to the provider: the provider and the fields, or
/// the page to answer (not configured, an unreadable body).
async fn posted_form<'a>(
    state: &'a AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(&'a Provider, HashMap<String, String>), HttpResponse> {
    let Some(provider) = state.oidc.as_deref() else {
        return Err(Page::NotConfigured.respond(req, StatusCode::NOT_FOUND));
    };
    match read_limited(req, payload, MAX_FORM_BYTES).await {
        Ok(body) => Ok((provider, form_pairs(&body))),
        Err(_) => Err(Page::BadRequest.respond(req, StatusCode::BAD_REQUEST)),
    }
}

fn forget_cookie(provider: &Provider, name: String, response: &mut HttpResponse) {
    let mut gone = sign_in_cookie(provider, name, String::new());
    gone.make_removal();
    let _ = response.add_cookie(&gone);
}

/// Step 4 (Synapse): the authorization code for tokens.
#[utoipa::path(
    tag = "sign-in",
    request_body(content_type = "application/x-www-form-urlencoded",
        description = "`grant_type=authorization_code`, `code`, `redirect_uri`, `code_verifier` \
                       (with PKCE); client authentication `client_secret_basic` or \
                       `client_secret_post` (`client_id`, `client_secret`)"),
    responses(
        (status = 200, description = "`access_token`, `token_type`, `expires_in`, `id_token`, `scope`", body = Object),
        (status = 400, description = "`invalid_request`, `invalid_grant`, `unsupported_grant_type`", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`", body = OAuthErrorBody),
        (status = 404, description = "The provider is not configured", body = OAuthErrorBody),
        (status = 413, description = "The body is over 16 KiB", body = OAuthErrorBody),
        (status = 503, description = "`temporarily_unavailable`", body = OAuthErrorBody),
    )
)]
#[post("/oidc/token")]
pub async fn token(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let Some(provider) = state.oidc.as_deref() else {
        return oauth_not_configured();
    };
    let form = match read_limited(&req, payload, MAX_FORM_BYTES).await {
        Ok(body) => form_pairs(&body),
        Err(e) => {
            return oauth_error(OAuthError {
                status: e.status.as_u16(),
                error: "invalid_request",
                description: e.message,
            })
        }
    };
    let basic = match basic_credentials(&req) {
        Ok(basic) => basic,
        Err(e) => return oauth_error(e),
    };
    let outcome = provider.token(&form, basic).await;
    crate::metrics::sign_in(
        "token",
        match &outcome {
            Ok(_) => "ok",
            Err(e) => e.error,
        },
    );
    match outcome {
        Ok(tokens) => no_store(HttpResponse::Ok()).json(tokens),
        Err(e) => {
            tracing::info!(error = e.error, reason = %e.description, "token request refused");
            oauth_error(e)
        }
    }
}

/// The person an access token from the token endpoint belongs to.
#[utoipa::path(
    get,
    tag = "sign-in",
    security(("oidc_access_token" = [])),
    responses(
        (status = 200, description = "`sub`, `preferred_username`, `name`", body = Object),
        (status = 401, description = "`invalid_token`", body = OAuthErrorBody),
        (status = 404, description = "The provider is not configured", body = OAuthErrorBody),
        (status = 503, description = "`temporarily_unavailable`", body = OAuthErrorBody),
    )
)]
#[route("/oidc/userinfo", method = "GET", method = "POST")]
pub async fn userinfo(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let Some(provider) = state.oidc.as_deref() else {
        return oauth_not_configured();
    };
    let invalid = || OAuthError {
        status: 401,
        error: "invalid_token",
        description: "the access token is unknown or expired".into(),
    };
    let Some(bearer) = super::auth::bearer_token(&req) else {
        return oauth_error(invalid());
    };
    match provider.userinfo(bearer).await {
        Ok(Some(info)) => no_store(HttpResponse::Ok()).json(info),
        Ok(None) => oauth_error(invalid()),
        Err(_) => oauth_error(OAuthError {
            status: 503,
            error: "temporarily_unavailable",
            description: "retry later".into(),
        }),
    }
}

/// A browser step's outcome as a response: a redirect (with a page for
/// browsers that do not follow it) or the page saying what went wrong.
fn answer(
    req: &HttpRequest,
    provider: &Provider,
    outcome: Result<Next, SignInError>,
) -> HttpResponse {
    let lang = Lang::of(req);
    match outcome {
        Ok(next) => {
            let html = Page::Continue.html(lang, Some(&next.location));
            let mut response = page_headers(HttpResponse::SeeOther())
                .insert_header((header::LOCATION, next.location))
                .body(html);
            if let Some((name, value)) = next.cookie {
                let cookie = sign_in_cookie(provider, name, value.expose().to_string());
                let _ = response.add_cookie(&cookie);
            }
            response
        }
        Err(e) => {
            let (page, status) = match e {
                SignInError::BadRequest(reason) => {
                    tracing::info!("sign-in request refused: {reason}");
                    (Page::BadRequest, StatusCode::BAD_REQUEST)
                }
                // Over: back to where people start, when we know it.
                SignInError::Cancelled | SignInError::Expired if provider.start_url().is_some() => {
                    let (page, status) = match e {
                        SignInError::Cancelled => (Page::Cancelled, StatusCode::OK),
                        _ => (Page::Expired, StatusCode::BAD_REQUEST),
                    };
                    let html = page.html(Lang::of(req), provider.start_url());
                    return page_headers(HttpResponse::build(status)).body(html);
                }
                SignInError::Expired => (Page::Expired, StatusCode::BAD_REQUEST),
                SignInError::OtherBrowser => (Page::OtherBrowser, StatusCode::BAD_REQUEST),
                SignInError::Cancelled => (Page::Cancelled, StatusCode::OK),
                SignInError::TooMany { retry_after } => {
                    let mut response = Page::TooMany.respond(req, StatusCode::TOO_MANY_REQUESTS);
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
                    return response;
                }
                SignInError::Refused => (Page::Refused, StatusCode::FORBIDDEN),
                SignInError::Deactivated => (Page::Deactivated, StatusCode::FORBIDDEN),
                SignInError::Unavailable { retry_after } => {
                    let mut response =
                        Page::Unavailable.respond(req, StatusCode::SERVICE_UNAVAILABLE);
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
                    return response;
                }
                SignInError::Failed => (Page::Failed, StatusCode::SERVICE_UNAVAILABLE),
                // The own sign-in form shows these itself (`own_sign_in`).
                SignInError::WrongPassword => (Page::Refused, StatusCode::UNAUTHORIZED),
                SignInError::Limited { .. } => (Page::TooMany, StatusCode::TOO_MANY_REQUESTS),
                SignInError::DaarionUnavailable { .. } => {
                    (Page::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
                }
            };
            page.respond(req, status)
        }
    }
}

fn outcome_name(outcome: &Result<Next, SignInError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) => error_name(e),
    }
}

fn error_name(e: &SignInError) -> &'static str {
    match e {
        SignInError::BadRequest(_) => "bad_request",
        SignInError::Expired => "expired",
        SignInError::OtherBrowser => "other_browser",
        SignInError::TooMany { .. } => "too_many",
        SignInError::Cancelled => "cancelled",
        SignInError::Refused => "refused",
        SignInError::Deactivated => "deactivated",
        SignInError::Unavailable { .. } => "unavailable",
        SignInError::Failed => "failed",
        SignInError::WrongPassword => "wrong_password",
        SignInError::Limited { .. } => "limited",
        SignInError::DaarionUnavailable { .. } => "daarion_unavailable",
    }
}

/// The cookie that binds a sign-in to the browser that began it. `Lax`:
/// it comes back on the top-level GET to `/v1/sso/continue` that follows
/// DAARION's cross-site POST, and on the same-origin POST of the
/// confirmation form; never on a POST from another site.
fn sign_in_cookie(provider: &Provider, name: String, value: String) -> Cookie<'static> {
    Cookie::build(name, value)
        .path(provider.cookie_path().to_string())
        .http_only(true)
        .secure(provider.secure_cookies())
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(
            SIGN_IN_COOKIE_SECONDS,
        ))
        .finish()
}

fn oauth_not_configured() -> HttpResponse {
    oauth_error(OAuthError {
        status: 404,
        error: "invalid_request",
        description: "the OpenID provider is not configured".into(),
    })
}

fn oauth_error(e: OAuthError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut builder = no_store(HttpResponse::build(status));
    if status == StatusCode::UNAUTHORIZED {
        builder.insert_header((
            header::WWW_AUTHENTICATE,
            "Basic realm=\"matrix-provisioner\"",
        ));
    }
    builder.json(OAuthErrorBody {
        error: e.error.to_string(),
        error_description: e.description,
    })
}

fn no_store(mut builder: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    builder
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    builder
}

/// `application/x-www-form-urlencoded` (or a query string) as a map; a
/// repeated name keeps its first value.
fn form_pairs(body: &[u8]) -> HashMap<String, String> {
    let mut pairs = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        pairs
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    pairs
}

/// `Authorization: Basic` client credentials (RFC 6749 section 2.3.1: each
/// part form-urlencoded before base64).
fn basic_credentials(req: &HttpRequest) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError {
        status: 401,
        error: "invalid_client",
        description: "malformed Basic credentials".into(),
    };
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let encoded = STANDARD.encode("synapse:s%3Acret%2B");
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, format!("Basic {encoded}")))
            .to_http_request();
        assert_eq!(
            basic_credentials(&req).unwrap(),
            Some(("synapse".into(), "s:cret+".into()))
        );
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Basic !!!"))
            .to_http_request();
        assert_eq!(basic_credentials(&req).unwrap_err().error, "invalid_client");
        let req = TestRequest::default().to_http_request();
        assert_eq!(basic_credentials(&req).unwrap(), None);
    }

    #[test]
    fn forms_keep_the_first_value() {
        let pairs = form_pairs(b"a=1&b=x+y&a=2");
        assert_eq!(pairs["a"], "1");
        assert_eq!(pairs["b"], "x y");
    }
}
