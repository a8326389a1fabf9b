//! `POST /v1/sso/login-token` and `POST /v1/sso/session` (CONTRACT.md
//! section 3): a DAARION access token in, a Matrix login out. A person we
//! have no active account for yet (webhook lost or late) is provisioned on
//! the spot through the same intake and reconcile step as the webhook, so
//! Synapse's JWT login, which would create any user it does not know, only
//! ever sees accounts we created and linked.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::users::rfc3339;
use super::webhooks::read_limited;
use super::AppState;
use crate::accounts::AccountError;
use crate::sso::{Claims, Refusal};
use crate::synapse::{self, SynapseError};

/// Synapse's limit on device display names.
const MAX_DEVICE_NAME_CHARS: usize = 100;
const MAX_SESSION_BODY_BYTES: usize = 4 * 1024;
const JWT_LOGIN_TYPE: &str = "org.matrix.login.jwt";

/// No `Debug` here or in the answers below: they carry tokens.
#[derive(Serialize, ToSchema)]
pub struct LoginObject {
    #[serde(rename = "type")]
    #[schema(example = "org.matrix.login.jwt")]
    pub kind: String,
    /// Short-lived; for `POST {homeserver_url}/_matrix/client/v3/login`.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginTokenResponse {
    #[schema(example = "@olena:daarion.space")]
    pub matrix_user_id: String,
    #[schema(example = "https://matrix.daarion.space")]
    pub homeserver_url: String,
    /// Send this object as the body of `POST {homeserver_url}/_matrix/client/v3/login`.
    pub login: LoginObject,
    #[schema(example = "2026-11-24T10:02:00Z")]
    pub expires_at: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SessionRequest {
    /// Display name of the new device (at most 100 characters).
    #[schema(example = "DAARION agent")]
    pub device_name: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    #[schema(example = "@olena:daarion.space")]
    pub matrix_user_id: String,
    #[schema(example = "https://matrix.daarion.space")]
    pub homeserver_url: String,
    pub access_token: String,
    /// A new device of the person's, usable for end-to-end encryption.
    #[schema(example = "QWERTYUIOP")]
    pub device_id: String,
}

/// Exchange a DAARION access token for a Matrix login token.
#[utoipa::path(
    tag = "sso",
    security(("daarion_token" = [])),
    responses(
        (status = 200, body = LoginTokenResponse),
        (status = 401, description = "The DAARION token is not valid (`invalid_token`)", body = ErrorBody),
        (status = 403, description = "The person is deactivated (`user_deactivated`)", body = ErrorBody),
        (status = 503, description = "Synapse or a dependency is unavailable; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/sso/login-token")]
pub async fn login_token(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let localpart = sign_in(&state, &req).await?;
        let minted = mint(&state, &localpart)?;
        Ok(LoginTokenResponse {
            matrix_user_id: state.settings.user_id(&localpart),
            homeserver_url: homeserver_url(&state),
            login: LoginObject {
                kind: JWT_LOGIN_TYPE.into(),
                token: minted.token.expose().to_string(),
            },
            expires_at: rfc3339(minted.expires_at.timestamp_millis()),
        })
    }
    .await;
    token_exchange("login_token", &result);
    result.map(|body| no_store(HttpResponse::Ok()).json(body))
}

/// Exchange a DAARION access token for a Matrix session on a new device.
#[utoipa::path(
    tag = "sso",
    security(("daarion_token" = [])),
    request_body(content = Option<SessionRequest>, description = "Optional"),
    responses(
        (status = 200, body = SessionResponse),
        (status = 400, description = "The body is not JSON of this shape", body = ErrorBody),
        (status = 401, description = "The DAARION token is not valid (`invalid_token`)", body = ErrorBody),
        (status = 403, description = "The person is deactivated (`user_deactivated`)", body = ErrorBody),
        (status = 429, description = "Synapse limits logins of this person or address; see Retry-After", body = ErrorBody),
        (status = 503, description = "Synapse or a dependency is unavailable; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/sso/session")]
pub async fn session(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        // A missing token is refused before the body is looked at.
        bearer(&req)?;
        let body = read_limited(&req, payload, MAX_SESSION_BODY_BYTES).await?;
        let request = parse_session_request(&body)?;
        let localpart = sign_in(&state, &req).await?;
        let minted = mint(&state, &localpart)?;
        let client = client_address(&req, &state.settings.trusted_proxies);
        let session = state
            .synapse
            .login_jwt(&minted.token, request.device_name.as_deref(), client)
            .await
            .map_err(login_refused)?;
        Ok(SessionResponse {
            matrix_user_id: session.user_id,
            homeserver_url: homeserver_url(&state),
            access_token: session.access_token.expose().to_string(),
            device_id: session.device_id,
        })
    }
    .await;
    token_exchange("session", &result);
    result.map(|body| no_store(HttpResponse::Ok()).json(body))
}

/// Every token exchange ends here, once, with its outcome: the place for
/// counters (`outcome` is `issued` or the error code answered).
fn token_exchange<T>(endpoint: &'static str, result: &Result<T, ApiError>) {
    match result {
        Ok(_) => {
            crate::metrics::token_exchange(endpoint, "ok");
            tracing::debug!(endpoint, outcome = "issued", "token exchange")
        }
        Err(e) => {
            crate::metrics::token_exchange(endpoint, e.code);
            tracing::info!(
                endpoint, outcome = e.code, status = e.status.as_u16(), reason = %e.message,
                "token exchange"
            )
        }
    }
}

fn no_store(mut builder: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    builder.insert_header((header::CACHE_CONTROL, "no-store"));
    builder
}

fn homeserver_url(state: &AppState) -> String {
    state
        .settings
        .synapse_public_url
        .as_str()
        .trim_end_matches('/')
        .to_string()
}

/// The verified caller's localpart, once they have an active account.
async fn sign_in(state: &AppState, req: &HttpRequest) -> Result<String, ApiError> {
    let token = bearer(req)?;
    if let Some(setting) = state.sso.missing_setting() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sso_not_configured",
            format!("single sign-on is not configured on this service ({setting} is not set)"),
        ));
    }
    let claims = state
        .sso
        .verify(token)
        .await
        .map_err(|refusal| match refusal {
            Refusal::Invalid(reason) => invalid_token(&reason),
            Refusal::KeysUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_keys_unavailable",
                "DAARION Auth's signing keys cannot be downloaded right now; retry later",
            )
            .with_retry_after(state.settings.auth_jwks_min_refresh.as_secs()),
        })?;
    account_for(state, &claims).await
}

/// No token at all is a mistake of the caller's, not a token judged: the
/// answer may say what is missing.
fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    super::auth::bearer_token(req).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "an `Authorization: Bearer <DAARION access token>` header is required",
        )
    })
}

/// The verified person's account, as an answer of this API.
async fn account_for(state: &AppState, claims: &Claims) -> Result<String, ApiError> {
    state
        .accounts
        .active(claims)
        .await
        .map(|account| account.localpart)
        .map_err(|refusal| match refusal {
            AccountError::BadSubject => invalid_token("`sub` is not an acceptable DAARION user id"),
            AccountError::Deactivated => deactivated(),
            AccountError::Unavailable { retry_after, .. } => homeserver_unavailable(retry_after),
            AccountError::Failed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provisioning_failed",
                "the Matrix account cannot be created; operators can see why",
            )
            .with_retry_after(60),
        })
}

fn mint(state: &AppState, localpart: &str) -> Result<crate::sso::LoginToken, ApiError> {
    state
        .sso
        .login_token(localpart, chrono::Utc::now())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sso_not_configured",
                "single sign-on is not configured on this service (SYNAPSE_JWT_SECRET is not set)",
            )
        })
}

fn parse_session_request(body: &[u8]) -> Result<SessionRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SessionRequest::default());
    }
    // The body is optional, and JSON `null` says "no body" too.
    let request: Option<SessionRequest> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON object like {{\"device_name\": \"...\"}}: {e}"
        ))
    })?;
    let mut request = request.unwrap_or_default();
    request.device_name = request
        .device_name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    if request
        .device_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_DEVICE_NAME_CHARS)
    {
        return Err(ApiError::bad_request(format!(
            "device_name is longer than {MAX_DEVICE_NAME_CHARS} characters"
        )));
    }
    Ok(request)
}

/// Who Synapse should count the login against: the peer, or, when the peer
/// is a trusted proxy, the nearest address in `X-Forwarded-For` that is not
/// one of ours (entries further left could be forged by the client).
pub fn client_address(req: &HttpRequest, trusted: &[IpAddr]) -> IpAddr {
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let forwarded = req
        .headers()
        .get_all("X-Forwarded-For")
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    forwarded_client(peer, &forwarded, trusted)
}

fn forwarded_client(peer: IpAddr, forwarded: &str, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded.rsplit(',') {
        let Some(ip) = parse_forwarded_ip(entry.trim()) else {
            // Unreadable: stop at the last address we could vouch for.
            break;
        };
        client = ip;
        if !trusted.contains(&ip) {
            break;
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// A token we judged and refused. Why (expired, bad signature, an unknown
/// `kid`…) goes to our log only: told to the caller, it would help a forger
/// probe our keys and checks, and echo back what they sent. Every refusal
/// answers the same.
fn invalid_token(reason: &str) -> ApiError {
    let reason: String = reason.chars().take(200).collect();
    tracing::info!(reason = %reason, "DAARION access token refused");
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "the DAARION access token is not accepted",
    )
}

pub(super) fn deactivated() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "user_deactivated",
        "this person's Matrix account is deactivated",
    )
}

fn homeserver_unavailable(retry_after: Option<Duration>) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "homeserver_unavailable",
        "the Matrix homeserver cannot be reached right now; retry later",
    )
    .with_retry_after(retry_seconds(retry_after, 5))
}

/// Whole seconds, rounded up, within reason.
fn retry_seconds(after: Option<Duration>, default: u64) -> u64 {
    after
        .map(|d| d.as_millis().div_ceil(1000) as u64)
        .unwrap_or(default)
        .clamp(1, 3600)
}

/// What Synapse's answer to our own JWT login means for the caller.
fn login_refused(e: SynapseError) -> ApiError {
    match e {
        SynapseError::Refused { .. } if e.refusal() == Some(synapse::Refusal::Deactivated) => {
            deactivated()
        }
        SynapseError::Unavailable {
            retry_after,
            rate_limited: true,
            ..
        } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the homeserver limits logins of this person or address; retry later",
        )
        .with_retry_after(retry_seconds(retry_after, 60)),
        SynapseError::Unavailable { retry_after, .. } => homeserver_unavailable(retry_after),
        SynapseError::Refused { .. } => {
            tracing::error!(
                "Synapse refused our login token ({e}); do SYNAPSE_JWT_SECRET and \
                 Synapse's jwt_config (secret, issuer, audiences) agree?"
            );
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "homeserver_unavailable",
                "the Matrix homeserver refused the login; operators can see why",
            )
            .with_retry_after(60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxy = ip("10.0.0.1");
        let trusted = [proxy, ip("10.0.0.2")];
        // An untrusted peer is taken at its address, whatever it claims.
        assert_eq!(
            forwarded_client(ip("203.0.113.9"), "1.1.1.1", &trusted),
            ip("203.0.113.9")
        );
        // Through our proxies: the nearest untrusted address.
        assert_eq!(
            forwarded_client(proxy, "6.6.6.6, 198.51.100.7, 10.0.0.2", &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            forwarded_client(proxy, "[2001:db8::1]:443", &trusted),
            ip("2001:db8::1")
        );
        // Nothing usable: the proxy itself.
        assert_eq!(forwarded_client(proxy, "", &trusted), proxy);
        assert_eq!(forwarded_client(proxy, "garbage", &trusted), proxy);
        assert_eq!(
            forwarded_client(proxy, "198.51.100.7, junk, 10.0.0.2", &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn session_bodies_are_optional_and_checked() {
        assert_eq!(parse_session_request(b"").unwrap().device_name, None);
        assert_eq!(parse_session_request(b" \n").unwrap().device_name, None);
        assert_eq!(
            parse_session_request(br#"{"device_name":" Agent ","x":1}"#)
                .unwrap()
                .device_name
                .as_deref(),
            Some("Agent")
        );
        assert_eq!(
            parse_session_request(br#"{"device_name":null}"#)
                .unwrap()
                .device_name,
            None
        );
        for bad in [&b"{"[..], b"[]", br#"{"device_name":5}"#] {
            assert_eq!(
                parse_session_request(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
        }
        let long = format!(r#"{{"device_name":"{}"}}"#, "я".repeat(101));
        assert_eq!(
            parse_session_request(long.as_bytes()).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_seconds(Some(Duration::from_millis(316_001)), 5), 317);
        assert_eq!(retry_seconds(Some(Duration::from_millis(1)), 5), 1);
        assert_eq!(retry_seconds(None, 5), 5);
        assert_eq!(retry_seconds(Some(Duration::from_secs(90_000)), 5), 3600);
    }
}
