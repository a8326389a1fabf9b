//! Downloading avatar images from the URLs DAARION gives us. The URL comes
//! from users, so it is treated as hostile: http/https only, a size cap
//! read as a stream (we stop at the cap), one deadline for the whole
//! download, a few redirects each checked like the first URL, only PNG,
//! JPEG, GIF and WebP as told by the bytes themselves, and never a
//! connection to a loopback, private, link-local or otherwise internal
//! address. Host names are checked after DNS resolution inside the HTTP
//! client's own resolver, so the connection can only go to an address that
//! was checked (no time-of-check/time-of-use gap, no DNS rebinding).
//! Hosts in `AVATAR_ALLOWED_HOSTS` skip the address check (a CDN on the
//! private network), nothing else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header;
use reqwest::redirect::Policy;
use sha2::{Digest, Sha256};
use url::{Host, Url};

use crate::config::Settings;

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL, where it leads or what it serves is not acceptable; trying
    /// again will not change that.
    #[error("avatar refused: {0}")]
    Refused(String),
    /// The host did not answer properly; a later attempt may work.
    #[error("avatar unavailable: {0}")]
    Unavailable(String),
}

pub struct AvatarFetcher {
    /// Resolves names through [`CheckedResolver`].
    guarded: reqwest::Client,
    /// For allow-listed hosts only.
    trusted: reqwest::Client,
    allowed: Vec<AllowedHost>,
    max_bytes: usize,
    timeout: Duration,
    max_redirects: usize,
}

impl std::fmt::Debug for AvatarFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvatarFetcher")
            .field("allowed", &self.allowed)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl AvatarFetcher {
    pub fn new(settings: &Settings) -> anyhow::Result<AvatarFetcher> {
        let builder = || {
            reqwest::Client::builder()
                // Each redirect is checked by us before it is followed.
                .redirect(Policy::none())
                // A proxy would make the connection on our behalf, past the checks.
                .no_proxy()
                .referer(false)
                .timeout(settings.avatar_timeout)
                .connect_timeout(settings.avatar_timeout.min(Duration::from_secs(5)))
                .user_agent(concat!("matrix-provisioner/", env!("CARGO_PKG_VERSION")))
        };
        Ok(AvatarFetcher {
            guarded: builder().dns_resolver(Arc::new(CheckedResolver)).build()?,
            trusted: builder().build()?,
            allowed: settings
                .avatar_allowed_hosts
                .iter()
                .map(|entry| AllowedHost::parse(entry))
                .collect(),
            max_bytes: settings.avatar_max_bytes,
            timeout: settings.avatar_timeout,
            max_redirects: settings.avatar_max_redirects,
        })
    }

    /// Downloads the image at `url`, following the rules in the module
    /// documentation.
    pub async fn fetch(&self, url: &str) -> Result<Image, FetchError> {
        match tokio::time::timeout(self.timeout, self.fetch_within_deadline(url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Unavailable(format!(
                "the download took longer than {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn fetch_within_deadline(&self, raw: &str) -> Result<Image, FetchError> {
        let mut url = Url::parse(raw).map_err(|e| refused(format!("not a valid URL ({e})")))?;
        for _ in 0..=self.max_redirects {
            let client = self.client_for(&url)?;
            let response = client
                .get(url.clone())
                .header(
                    header::ACCEPT,
                    "image/png, image/jpeg, image/gif, image/webp",
                )
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
            return self.read_image(response).await;
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

    async fn read_image(&self, mut response: reqwest::Response) -> Result<Image, FetchError> {
        let too_large = || refused(format!("the image is larger than {} bytes", self.max_bytes));
        let declared = response.content_length();
        if declared.is_some_and(|n| n > self.max_bytes as u64) {
            return Err(too_large());
        }
        let url = response.url().clone();
        let mut body = BytesMut::with_capacity(
            declared.unwrap_or(16 * 1024).min(self.max_bytes as u64) as usize,
        );
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e, &url))? {
            if body.len() + chunk.len() > self.max_bytes {
                // Dropping the response closes the connection: nothing more is read.
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let content_type = sniff(&body).ok_or_else(|| {
            refused("the content is not a PNG, JPEG, GIF or WebP image".to_string())
        })?;
        let sha256 = hex::encode(Sha256::digest(&body));
        Ok(Image {
            bytes: body.freeze(),
            content_type,
            sha256,
        })
    }
}

fn refused(reason: String) -> FetchError {
    FetchError::Refused(reason)
}

fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => "the avatar host".into(),
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

/// Why `ip` must not be contacted ("a loopback", …), or None for a
/// public address.
pub fn internal_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified (this-network)",
        (10, _, _) => "a private",
        (100, 64..=127, _) => "a shared (carrier-grade NAT)",
        (127, _, _) => "a loopback",
        (169, 254, _) => "a link-local",
        (172, 16..=31, _) => "a private",
        (192, 0, 0) => "an IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation",
        (192, 88, 99) => "a 6to4 relay",
        (192, 168, _) => "a private",
        (198, 18..=19, _) => "a benchmarking",
        (224..=239, _, _) => "a multicast",
        (255, 255, 255) if ip.is_broadcast() => "the broadcast",
        (240..=255, _, _) => "a reserved",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified");
    }
    if ip.is_loopback() {
        return Some("a loopback");
    }
    // ::ffff:a.b.c.d reaches a.b.c.d: judge the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).map(|_| "an IPv4-mapped internal");
    }
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address too.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(embedded(s[6], s[7])).map(|_| "a NAT64 internal");
    }
    // 6to4 (2002::/16) embeds an IPv4 address in its next 32 bits.
    if s[0] == 0x2002 {
        return v4_reason(embedded(s[1], s[2])).map(|_| "a 6to4 internal");
    }
    Some(match s[0] {
        // ::/96 (IPv4-compatible, deprecated) and the rest of ::/8.
        0 => "a reserved",
        0x0064 if s[1] == 0xff9b => "a local-use NAT64",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only",
        0x2001 if s[1] == 0 => "a Teredo",
        0x2001 if s[1] == 0x0db8 => "a documentation",
        0x2001 if s[1] < 0x0200 => "an IETF protocol",
        0x3fff if s[1] < 0x1000 => "a documentation",
        x if x & 0xfe00 == 0xfc00 => "a unique-local",
        x if x & 0xffc0 == 0xfe80 => "a link-local",
        x if x & 0xffc0 == 0xfec0 => "a site-local",
        x if x & 0xff00 == 0xff00 => "a multicast",
        _ => return None,
    })
}

/// The refusal a [`CheckedResolver`] hands to the HTTP client; found again
/// in the error's source chain by [`describe`].
#[derive(Debug)]
struct AddressRefused(String);

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressRefused {}

/// Resolves a name, then refuses it if any of its addresses is internal;
/// the client connects only to the addresses returned here.
struct CheckedResolver;

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                if let Some(why) = internal_reason(addr.ip()) {
                    let refusal =
                        AddressRefused(format!("{host} resolves to {}, {why} address", addr.ip()));
                    return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An `AVATAR_ALLOWED_HOSTS` entry: `host`, `host:port`, `[v6]:port`, `v6`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    fn parse(entry: &str) -> AllowedHost {
        let entry = entry.trim().to_lowercase();
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            match rest.split_once(']') {
                Some((host, tail)) => (
                    host.to_string(),
                    tail.strip_prefix(':').and_then(|p| p.parse().ok()),
                ),
                None => (rest.to_string(), None),
            }
        } else if entry.matches(':').count() == 1 {
            let (host, port) = entry.split_once(':').expect("one colon");
            match port.parse() {
                Ok(port) => (host.to_string(), Some(port)),
                Err(_) => (entry.clone(), None),
            }
        } else {
            (entry.clone(), None)
        };
        AllowedHost {
            host: host.trim_end_matches('.').to_string(),
            port,
        }
    }

    fn matches(&self, host: &Host<&str>, port: Option<u16>) -> bool {
        if self.port.is_some() && self.port != port {
            return false;
        }
        match host {
            Host::Domain(name) => name.trim_end_matches('.').eq_ignore_ascii_case(&self.host),
            Host::Ipv4(ip) => self.host.parse::<IpAddr>().ok() == Some(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => self.host.parse::<IpAddr>().ok() == Some(IpAddr::V6(*ip)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(ip: &str) -> Option<&'static str> {
        internal_reason(ip.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2001:db8::1",
            "2001::1",
            "fec0::1",
        ] {
            assert!(reason(ip).is_some(), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_fetched() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(reason(ip), None, "{ip} should be allowed");
        }
    }

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

    #[test]
    fn allow_list_entries_match_host_and_port() {
        let any_port = AllowedHost::parse("CDN.local");
        assert!(any_port.matches(&Host::Domain("cdn.local"), Some(8080)));
        let one_port = AllowedHost::parse("127.0.0.1:8080");
        let lo = Host::Ipv4(Ipv4Addr::LOCALHOST);
        assert!(one_port.matches(&lo, Some(8080)));
        assert!(!one_port.matches(&lo, Some(8081)));
        let v6 = AllowedHost::parse("[::1]:9000");
        assert!(v6.matches(&Host::Ipv6(Ipv6Addr::LOCALHOST), Some(9000)));
        assert!(!v6.matches(&Host::Ipv6(Ipv6Addr::LOCALHOST), Some(80)));
        let bare_v6 = AllowedHost::parse("::1");
        assert!(bare_v6.matches(&Host::Ipv6(Ipv6Addr::LOCALHOST), Some(80)));
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
