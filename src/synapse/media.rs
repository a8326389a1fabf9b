//! Synapse's media repository: uploading an avatar image as the service's
//! admin account, which gives the `mxc://` URI a profile points at.

use super::{Auth, Body, Endpoint, Result, Synapse, SynapseError};

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
}
