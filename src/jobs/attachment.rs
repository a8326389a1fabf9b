//! An agent's file (`agent.message`'s `attachment`) as Matrix content:
//! fetched through the avatar fetcher's SSRF guard (up to
//! `ATTACHMENT_MAX_BYTES`), its media type told by its bytes where they
//! say it, uploaded once per content (by SHA-256), described with `info`.
//! Thumbnails are not made here: Synapse makes them from the `mxc://` URI
//! when a client asks.

use serde_json::{json, Value};

use super::outcome::Outcome;
use super::Drained;
use crate::avatar::{AvatarFetcher, FetchError};
use crate::domain::agent::{file_msgtype, Attachment};
use crate::domain::media_link::is_media_type;
use crate::store::Store;
use crate::synapse::{Synapse, SynapseError};

/// Why a file is not Matrix content (yet).
pub enum Attach {
    /// It never will be: the reason.
    Refused(String),
    /// Not now (the host or Synapse unavailable).
    Retry(Outcome<Drained>),
}

/// The `m.image` / `m.file` / `m.audio` / `m.video` content of the file
/// (without `body`).
pub async fn content_for(
    fetcher: &AvatarFetcher,
    file: &Attachment,
    store: &Store,
    synapse: &Synapse,
    now: i64,
) -> Result<Value, Attach> {
    let download = match fetcher.fetch_file(&file.url).await {
        Ok(download) => download,
        Err(FetchError::Refused(reason)) => {
            return Err(Attach::Refused(format!(
                "the attachment is refused: {reason}"
            )))
        }
        Err(FetchError::Unavailable(reason)) => {
            return Err(Attach::Retry(Outcome::retry(format!(
                "the attachment cannot be fetched now: {reason}"
            ))))
        }
    };
    let mimetype = media_type(&download.bytes, file.mimetype.as_deref());
    let name = file_name(file);
    let known = store
        .uploaded_media(&download.sha256)
        .await
        .map_err(|e| Attach::Retry(e.into()))?;
    let mxc = match known {
        Some(mxc) => mxc,
        None => {
            let mxc = match synapse
                .upload_media(&download.bytes, &mimetype, &name)
                .await
            {
                Ok(mxc) => mxc,
                Err(e @ SynapseError::Refused { .. }) => {
                    return Err(Attach::Refused(format!("Synapse refused the upload: {e}")))
                }
                Err(e) => return Err(Attach::Retry(e.into())),
            };
            store
                .remember_upload(&download.sha256, &mxc, now)
                .await
                .map_err(|e| Attach::Retry(e.into()))?;
            mxc
        }
    };
    Ok(content(&download.bytes, &mimetype, &name, &mxc))
}

/// The Matrix content of `bytes` uploaded as `mxc`: its `msgtype` from the
/// media type, `info` with its size and type, and an image's dimensions
/// where its header tells them.
fn content(bytes: &[u8], mimetype: &str, name: &str, mxc: &str) -> Value {
    let msgtype = file_msgtype(mimetype);
    let mut info = json!({"size": bytes.len(), "mimetype": mimetype});
    if msgtype == "m.image" {
        if let Ok(size) = imagesize::blob_size(bytes) {
            info["w"] = json!(size.width);
            info["h"] = json!(size.height);
        }
    }
    json!({"msgtype": msgtype, "url": mxc, "filename": name, "info": info})
}

/// The media type of the file: told by its bytes where they say it (what
/// DAARION.city declares may be wrong, and Matrix clients choose how to
/// show a file by it), else the declared one, else
/// `application/octet-stream`.
fn media_type(bytes: &[u8], declared: Option<&str>) -> String {
    if let Some(kind) = infer::get(bytes) {
        return kind.mime_type().to_string();
    }
    declared
        .map(str::trim)
        .filter(|m| is_media_type(m))
        .map_or_else(
            || "application/octet-stream".to_string(),
            str::to_ascii_lowercase,
        )
}

/// The name people see: the declared one, else the URL's last segment,
/// else `file`.
fn file_name(file: &Attachment) -> String {
    let declared = file
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let from_url = || {
        url::Url::parse(&file.url).ok().and_then(|u| {
            let last = u.path_segments()?.next_back()?;
            let decoded = percent_encoding::percent_decode_str(last)
                .decode_utf8_lossy()
                .into_owned();
            (!decoded.trim().is_empty()).then_some(decoded)
        })
    };
    declared
        .map(str::to_string)
        .or_else(from_url)
        .unwrap_or_else(|| "file".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3×2 PNG header (enough for its type and size).
    fn png_header() -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        bytes.extend(3u32.to_be_bytes());
        bytes.extend(2u32.to_be_bytes());
        bytes.extend([8, 6, 0, 0, 0, 0, 0, 0, 0]);
        bytes
    }

    #[test]
    fn the_bytes_tell_the_type_before_the_declaration() {
        let png = png_header();
        assert_eq!(media_type(&png, Some("application/pdf")), "image/png");
        assert_eq!(media_type(b"%PDF-1.7\n", None), "application/pdf");
        assert_eq!(media_type(b"hello", Some("Text/Plain")), "text/plain");
        assert_eq!(
            media_type(b"hello", Some("text/plain; charset=utf-8")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(media_type(b"hello", None), "application/octet-stream");
        for bad in ["", "text", "text/", "te xt/plain", "text/plain\r\nX: y"] {
            assert_eq!(
                media_type(b"hello", Some(bad)),
                "application/octet-stream",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn images_carry_their_size_and_others_do_not() {
        let png = png_header();
        let c = content(&png, "image/png", "a.png", "mxc://s/m");
        assert_eq!(
            c,
            json!({"msgtype": "m.image", "url": "mxc://s/m", "filename": "a.png",
                   "info": {"size": png.len(), "mimetype": "image/png", "w": 3, "h": 2}})
        );
        let c = content(b"%PDF-1.7", "application/pdf", "a.pdf", "mxc://s/m");
        assert_eq!(c["msgtype"], "m.file");
        assert!(c["info"].get("w").is_none());
        // An image whose header does not parse goes without dimensions.
        let c = content(b"\x89PNG", "image/png", "a.png", "mxc://s/m");
        assert_eq!(c["msgtype"], "m.image");
        assert!(c["info"].get("w").is_none());
        assert_eq!(file_msgtype("audio/ogg"), "m.audio");
        assert_eq!(file_msgtype("video/mp4"), "m.video");
    }

    #[test]
    fn names_come_from_the_declaration_or_the_url() {
        let file = |url: &str, name: Option<&str>| Attachment {
            url: url.into(),
            mimetype: None,
            name: name.map(str::to_string),
            size: None,
        };
        assert_eq!(
            file_name(&file("https://h/x/a.png", Some("cat.png"))),
            "cat.png"
        );
        assert_eq!(
            file_name(&file("https://h/x/my%20cat+1.png", None)),
            "my cat+1.png"
        );
        assert_eq!(file_name(&file("https://h/x/a.png", Some("  "))), "a.png");
        assert_eq!(file_name(&file("https://h/", None)), "file");
    }
}
