//! Downloading what DAARION gives us by URL: avatar images, and the files
//! agents attach to their messages. The URL comes from outside, so it is
//! treated as hostile: http/https only, a size cap read as a stream (we
//! stop at the cap; avatars and files each have their own), one deadline
//! for the whole download, a few redirects each checked like the first URL,
//! and never a connection to a loopback, private, link-local or otherwise
//! internal address ([`guard`]: host names are checked after DNS
//! resolution inside the HTTP client's own resolver, so the connection can
//! only go to an address that was checked). Hosts in `AVATAR_ALLOWED_HOSTS`
//! skip the address check (a CDN on the private network), nothing else.
//! An avatar must be a PNG, JPEG, GIF or WebP image as told by the bytes
//! themselves; a file may be anything.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header;
use reqwest::redirect::Policy;
use sha2::{Digest, Sha256};
use url::{Host, Url};

use crate::config::Settings;

mod guard;

pub use guard::internal_reason;
use guard::{AddressRefused, AllowedHost, CheckedResolver};

/// An image ready for upload.
#[derive(Debug, Clone)]
pub struct Image {
    pub bytes: Bytes,
    /// From the bytes, not from the server's `Content-Type`.
    pub content_type: &'static str,
    /// Hex SHA-256 of the bytes: the same image is never uploaded twice.
    pub sha256: String,
}

impl Image {
    pub fn filename(&self) -> &'static str {
        match self.content_type {
            "image/png" => "avatar.png",
            "image/jpeg" => "avatar.jpg",
            "image/gif" => "avatar.gif",
            _ => "avatar.webp",
        }
    }
}

/// A file as downloaded (an agent's attachment), before anyone judged
/// what it is.
#[derive(Debug, Clone)]
pub struct Download {
    pub bytes: Bytes,
    /// Hex SHA-256 of the bytes: the same file is never uploaded twice.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL, where it leads or what it serves is not acceptable; trying
    /// again will not change that.
    #[error("refused: {0}")]
    Refused(String),
    /// The host did not answer properly; a later attempt may work.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What one kind of download may be.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: usize,
    /// The `Accept` header sent.
    accept: &'static str,
    /// How a refusal names the download and its limit: "image", "file".
    what: &'static str,
    setting: &'static str,
}

/// The guarded fetcher of avatars and agents' files (one client pair, one
/// guard, one allow-list; each kind of download with its own size cap).
pub struct AvatarFetcher {
    /// Resolves names through [`CheckedResolver`].
    guarded: reqwest::Client,
    /// For allow-listed hosts only.
    trusted: reqwest::Client,
    allowed: Vec<AllowedHost>,
    avatar: Limits,
    file: Limits,
    timeout: Duration,
    max_redirects: usize,
}

impl std::fmt::Debug for AvatarFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvatarFetcher")
            .field("allowed", &self.allowed)
            .field("avatar_max_bytes", &self.avatar.max_bytes)
            .field("file_max_bytes", &self.file.max_bytes)
            .finish()
    }
}

impl AvatarFetcher {
    pub fn new(settings: &Settings) -> anyhow::Result<AvatarFetcher> {
        let builder = || {
            crate::outbound::client(settings.avatar_timeout)
                // Each redirect is checked by us before it is followed.
                .redirect(Policy::none())
                // A proxy would make the connection on our behalf, past the checks.
                .no_proxy()
                .referer(false)
        };
        Ok(AvatarFetcher {
            guarded: builder().dns_resolver(Arc::new(CheckedResolver)).build()?,
            trusted: builder().build()?,
            allowed: settings
                .avatar_allowed_hosts
                .iter()
                .map(|entry| AllowedHost::parse(entry))
                .collect(),
            avatar: Limits {
                max_bytes: settings.avatar_max_bytes,
                accept: "image/png, image/jpeg, image/gif, image/webp",
                what: "image",
                setting: "AVATAR_MAX_BYTES",
            },
            file: Limits {
                max_bytes: settings.city.attachment_max_bytes,
                accept: "*/*",
                what: "file",
                setting: "ATTACHMENT_MAX_BYTES",
            },
            timeout: settings.avatar_timeout,
            max_redirects: settings.avatar_max_redirects,
        })
    }

    /// Downloads the avatar image at `url`, following the rules in the
    /// module documentation.
    pub async fn fetch(&self, url: &str) -> Result<Image, FetchError> {
        let download = self.download(url, self.avatar).await?;
        let content_type = sniff(&download.bytes).ok_or_else(|| {
            refused("the content is not a PNG, JPEG, GIF or WebP image".to_string())
        })?;
        Ok(Image {
            bytes: download.bytes,
            content_type,
            sha256: download.sha256,
        })
    }

    /// Downloads the file at `url` (an agent's attachment), whatever it
    /// is, up to `ATTACHMENT_MAX_BYTES`, following the same rules.
    pub async fn fetch_file(&self, url: &str) -> Result<Download, FetchError> {
        self.download(url, self.file).await
    }

    async fn download(&self, url: &str, limits: Limits) -> Result<Download, FetchError> {
        match tokio::time::timeout(self.timeout, self.download_within_deadline(url, limits)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Unavailable(format!(
                "the download took longer than {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn download_within_deadline(
        &self,
        raw: &str,
        limits: Limits,
    ) -> Result<Download, FetchError> {
        let mut url = Url::parse(raw).map_err(|e| refused(format!("not a valid URL ({e})")))?;
        for _ in 0..=self.max_redirects {
            let client = self.client_for(&url)?;
            let response = client
                .get(url.clone())
                .header(header::ACCEPT, limits.accept)
                .send()
                .await
                .map_err(|e| describe(&e, &url))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        refused(format!(
                            "{} answered {status} without a Location",
                            host_of(&url)
                        ))
                    })?;
                url = url
                    .join(location)
                    .map_err(|e| refused(format!("redirected to an invalid URL ({e})")))?;
                continue;
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Err(FetchError::Unavailable(format!(
                    "{} answered {status}",
                    host_of(&url)
                )));
            }
            if !status.is_success() {
                return Err(refused(format!("{} answered {status}", host_of(&url))));
            }
            return read_capped(response, limits).await;
        }
        Err(refused(format!(
            "more than {} redirects",
            self.max_redirects
        )))
    }

    /// The client allowed to fetch `url`, or why none is.
    fn client_for(&self, url: &Url) -> Result<&reqwest::Client, FetchError> {
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(refused(format!(
                    "only http and https URLs are fetched, not {other}:"
                )))
            }
        }
        let host = url
            .host()
            .ok_or_else(|| refused("the URL has no host".to_string()))?;
        if self
            .allowed
            .iter()
            .any(|a| a.matches(&host, url.port_or_known_default()))
        {
            return Ok(&self.trusted);
        }
        let literal = match host {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            // Names are checked after resolution, by the client's resolver.
            Host::Domain(_) => None,
        };
        if let Some(ip) = literal {
            if let Some(why) = internal_reason(ip) {
                return Err(refused(format!("{ip} is {why} address")));
            }
        }
        Ok(&self.guarded)
    }
}

/// The body, streamed up to the cap and given up as soon as it passes it.
async fn read_capped(
    mut response: reqwest::Response,
    limits: Limits,
) -> Result<Download, FetchError> {
    let max = limits.max_bytes;
    let too_large = || {
        refused(format!(
            "the {} is larger than {max} bytes ({})",
            limits.what, limits.setting
        ))
    };
    let declared = response.content_length();
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let url = response.url().clone();
    let mut body = BytesMut::with_capacity(declared.unwrap_or(16 * 1024).min(max as u64) as usize);
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e, &url))? {
        if body.len() + chunk.len() > max {
            // Dropping the response closes the connection: nothing more is read.
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let sha256 = hex::encode(Sha256::digest(&body));
    Ok(Download {
        bytes: body.freeze(),
        sha256,
    })
}

fn refused(reason: String) -> FetchError {
    FetchError::Refused(reason)
}

fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => "the host".into(),
    }
}

/// reqwest's own messages carry the whole URL; ours say what failed, and
/// a refusal by the resolver stays a refusal.
fn describe(e: &reqwest::Error, url: &Url) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<AddressRefused>() {
            return refused(blocked.0.clone());
        }
        source = err.source();
    }
    let host = host_of(url);
    FetchError::Unavailable(if e.is_timeout() {
        format!("{host} timed out")
    } else if e.is_connect() {
        format!("cannot connect to {host}")
    } else {
        format!("the download from {host} failed")
    })
}

/// The image type, from the first bytes.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_told_by_their_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"<!DOCTYPE html><html>"), None);
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVE"), None);
        assert_eq!(sniff(b""), None);
    }

    fn fetcher(allowed: &[&str]) -> AvatarFetcher {
        let mut env = std::collections::HashMap::new();
        env.insert("SYNAPSE_SERVER_NAME", "x".to_string());
        env.insert("SYNAPSE_REGISTRATION_SECRET", "x".to_string());
        env.insert("AVATAR_ALLOWED_HOSTS", allowed.join(","));
        let settings = Settings::from_lookup(|k| env.get(k).cloned()).unwrap();
        AvatarFetcher::new(&settings).unwrap()
    }

    #[tokio::test]
    async fn refusals_happen_before_any_connection() {
        let f = fetcher(&[]);
        for (url, expected) in [
            ("file:///etc/passwd", "only http and https"),
            ("ftp://example.com/a.png", "only http and https"),
            ("gopher://127.0.0.1:70/", "only http and https"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://[::1]:1/a.png", "loopback"),
            ("http://[::ffff:127.0.0.1]:1/a.png", "IPv4-mapped"),
            ("http://2130706433:1/", "loopback"),
            ("http://0x7f.1:1/", "loopback"),
            ("http://localhost:1/a.png", "resolves to"),
            ("not a url", "not a valid URL"),
        ] {
            match f.fetch(url).await {
                Err(FetchError::Refused(reason)) => {
                    assert!(reason.contains(expected), "{url}: {reason}")
                }
                other => panic!("{url}: expected a refusal, got {other:?}"),
            }
        }
    }
}
