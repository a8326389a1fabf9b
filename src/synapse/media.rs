//! Synapse's media repository: uploading an image or file as the service's
//! admin account, which gives the `mxc://` URI a profile or message points
//! at; downloading a person's file as the application service, for its
//! download link (Synapse's media is authenticated since 1.120).

use bytes::Bytes;
use reqwest::header;

use super::{
    failure, header_retry_after, transport_error, Auth, Body, Endpoint, Result, Synapse,
    SynapseError,
};

/// A file as Synapse serves it.
#[derive(Debug, Clone)]
pub struct Media {
    pub bytes: Bytes,
    /// Synapse's `Content-Type` (the uploader's), if any.
    pub content_type: Option<String>,
    /// Synapse's `Content-Disposition` (it carries the file's name).
    pub disposition: Option<String>,
}

impl Synapse {
    /// `POST /_matrix/media/v3/upload`; returns the `mxc://` URI. A body
    /// over Synapse's `max_upload_size` is refused with `413 M_TOO_LARGE`.
    pub async fn upload_media(
        &self,
        bytes: &bytes::Bytes,
        content_type: &str,
        filename: &str,
    ) -> Result<String> {
        let filename: String = url::form_urlencoded::byte_serialize(filename.as_bytes()).collect();
        let path = format!("/_matrix/media/v3/upload?filename={filename}");
        let answer = self
            .call(
                Endpoint::MediaUpload,
                &path,
                Body::Bytes(bytes, content_type),
                Auth::Admin,
            )
            .await?;
        answer["content_uri"]
            .as_str()
            .filter(|uri| uri.starts_with("mxc://"))
            .map(str::to_string)
            .ok_or_else(|| SynapseError::unreadable("the upload returned no mxc:// URI"))
    }

    /// `GET /_matrix/client/v1/media/download/{server}/{media_id}` as the
    /// application service: the bytes of `mxc` (`mxc://server/media_id`),
    /// at most `max_bytes` of them. A larger file is refused as
    /// [`super::Refusal::TooLarge`] without being read whole; unknown media
    /// is [`super::Refusal::NotFound`].
    pub async fn download_media(&self, mxc: &str, max_bytes: usize) -> Result<Media> {
        let (server, media_id) = mxc
            .strip_prefix("mxc://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(server, id)| !server.is_empty() && !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| SynapseError::refused(400, "M_INVALID_PARAM", "not an mxc:// URI"))?;
        let path = format!(
            "/_matrix/client/v1/media/download/{}/{}",
            super::encode(server),
            super::encode(media_id)
        );
        let token = self.as_token.as_ref().ok_or_else(|| {
            SynapseError::refused(
                0,
                "M_NOT_CONFIGURED",
                "the application service is not configured (APPSERVICE_AS_TOKEN)",
            )
        })?;
        let request = self.build(
            Endpoint::MediaDownload,
            &path,
            Body::Empty,
            Some(token),
            None,
        )?;
        self.exchange(Endpoint::MediaDownload, &path, request, |response| {
            read_media(response, max_bytes)
        })
        .await
    }
}

async fn read_media(
    response: reqwest::Result<reqwest::Response>,
    max_bytes: usize,
) -> Result<Media> {
    let response = response.map_err(transport_error)?;
    let status = response.status();
    if !status.is_success() {
        let retry_after = header_retry_after(&response);
        let text = crate::outbound::read_capped(response, 64 * 1024)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        return Err(failure(status, &text, retry_after));
    }
    let header_text = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header_text(header::CONTENT_TYPE);
    let disposition = header_text(header::CONTENT_DISPOSITION);
    match crate::outbound::read_capped(response, max_bytes).await {
        Ok(bytes) => Ok(Media {
            bytes: Bytes::from(bytes),
            content_type,
            disposition,
        }),
        Err(crate::outbound::ReadError::TooLarge) => Err(SynapseError::refused(
            413,
            "M_TOO_LARGE",
            format!("the file is larger than {max_bytes} bytes"),
        )),
        Err(crate::outbound::ReadError::BrokeOff) => Err(SynapseError::Unavailable {
            reason: "connection broke while reading the answer".into(),
            retry_after: None,
            rate_limited: false,
        }),
    }
}
