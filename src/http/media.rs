//! `GET /v1/media/{token}`: a person's file for DAARION.city, through the
//! download link its `matrix.message` carries (CONTRACT.md section 13),
//! without a Matrix token. The token is checked here (see
//! `domain::media_link`); the file is fetched from Synapse's authenticated
//! media as the application service, up to `ATTACHMENT_MAX_BYTES`, and
//! answered as a download that no browser runs: `Content-Disposition:
//! attachment`, `X-Content-Type-Options: nosniff` and a sandboxing CSP.
//! Tokens are never logged (the request log shows `/v1/media/…`).

use actix_web::http::{header, StatusCode};
use actix_web::{get, web, HttpResponse};

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::config::Settings;
use crate::domain::media_link::{is_media_type, LinkError, MediaLinks};
use crate::synapse::{Refusal, SynapseError};

/// The CSP of every file served: nothing in it may run, load or frame.
const SANDBOX: &str = "sandbox; default-src 'none'; frame-ancestors 'none'";

/// The service's download links: on when the application service is
/// configured (its `APPSERVICE_HS_TOKEN` keys them) and `PUBLIC_URL` says
/// where the service is.
pub fn links(settings: &Settings) -> Option<MediaLinks> {
    let city = &settings.city;
    let hs_token = city
        .hs_token
        .as_ref()
        .filter(|_| city.appservice_enabled())?;
    let Some(public_url) = &settings.oidc.public_url else {
        if city.events_url.is_some() {
            tracing::warn!(
                "PUBLIC_URL is not set: people's files reach DAARION.city without a download link"
            );
        }
        return None;
    };
    let lifetime_ms = i64::try_from(city.media_link.as_millis()).unwrap_or(i64::MAX / 2);
    Some(MediaLinks::new(hs_token, public_url.as_str(), lifetime_ms))
}

/// A person's file, by the download link DAARION.city got with its
/// `matrix.message` (`data.attachment.download_url`); no credentials, the
/// link itself is the permission, until `download_expires_at`.
#[utoipa::path(
    tag = "media",
    params(("token" = String, Path, description = "The opaque token of `data.attachment.download_url`")),
    responses(
        (status = 200, description = "The file's bytes, with its media type, `Content-Disposition: attachment`, \
            `X-Content-Type-Options: nosniff` and a sandboxing `Content-Security-Policy`",
            content_type = "application/octet-stream"),
        (status = 404, description = "Not a link of this service, or the file is no longer in Matrix", body = ErrorBody),
        (status = 410, description = "The link has expired", body = ErrorBody),
        (status = 502, description = "The file is larger than the service serves (`ATTACHMENT_MAX_BYTES`), \
            or Synapse refused to give it", body = ErrorBody),
        (status = 503, description = "Synapse is unavailable; retry", body = ErrorBody),
    )
)]
#[get("/v1/media/{token}")]
pub async fn get_media(
    state: web::Data<AppState>,
    token: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let Some(links) = &state.media_links else {
        return Err(unknown());
    };
    let mxc = match links.verify(&token, state.clock.now_ms()) {
        Ok(mxc) => mxc,
        Err(LinkError::Unknown) => return Err(unknown()),
        Err(LinkError::Expired) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "link_expired",
                "this download link has expired",
            ))
        }
    };
    let max = state.settings.city.attachment_max_bytes;
    let media = match state.synapse.download_media(&mxc, max).await {
        Ok(media) => media,
        Err(e) => return Err(synapse_failed(e, max)),
    };
    let content_type = media
        .content_type
        .filter(|t| is_media_type(t))
        .unwrap_or_else(|| "application/octet-stream".into());
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((
            header::CONTENT_DISPOSITION,
            as_attachment(media.disposition.as_deref()),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, SANDBOX))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .body(media.bytes))
}

fn unknown() -> ApiError {
    ApiError::not_found("no file has this download link")
}

fn synapse_failed(e: SynapseError, max: usize) -> ApiError {
    match e.refusal() {
        None => {
            tracing::warn!("cannot serve a person's file: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "Synapse is unavailable right now; retry later",
            )
            .with_retry_after(5)
        }
        Some(Refusal::NotFound) => ApiError::not_found("the file is no longer in Matrix"),
        Some(Refusal::TooLarge) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "file_too_large",
            format!("the file is larger than the {max} bytes this service serves (ATTACHMENT_MAX_BYTES)"),
        ),
        Some(_) => {
            tracing::warn!("Synapse refused a person's file: {e}");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "matrix_refused",
                "Synapse refused to give the file",
            )
        }
    }
}

/// Synapse's `Content-Disposition` made a download: its parameters (the
/// file's name) kept, `inline` turned to `attachment`.
fn as_attachment(synapse: Option<&str>) -> String {
    let params = synapse
        .and_then(|d| d.split_once(';'))
        .map(|(_, params)| params.trim())
        .filter(|p| !p.is_empty() && p.bytes().all(|b| (0x20..0x7f).contains(&b)));
    match params {
        Some(params) => format!("attachment; {params}"),
        None => "attachment".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_always_downloads() {
        assert_eq!(
            as_attachment(Some("inline; filename=cat.png")),
            "attachment; filename=cat.png"
        );
        assert_eq!(
            as_attachment(Some("attachment; filename*=utf-8''%D0%BA%D1%96%D1%82.png")),
            "attachment; filename*=utf-8''%D0%BA%D1%96%D1%82.png"
        );
        assert_eq!(as_attachment(Some("inline")), "attachment");
        assert_eq!(as_attachment(None), "attachment");
        assert_eq!(as_attachment(Some("inline; ")), "attachment");
    }
}
