//! Download links for people's files (CONTRACT.md section 13): DAARION.city
//! gets `{PUBLIC_URL}/v1/media/<token>` with a person's `matrix.message`,
//! and fetches the file through it without a Matrix token until it expires.
//!
//! The token is opaque to DAARION.city: base64url (no padding) of a
//! version byte, the expiry (ms since the epoch, 8 bytes big-endian), the
//! `mxc://` URI, then an HMAC-SHA256 over everything before it. Nothing is
//! stored: the service checks the MAC and the expiry. The MAC's key is
//! derived from `APPSERVICE_HS_TOKEN` (a secret every replica has) with a
//! label of its own, `HMAC-SHA256(hs_token, "matrix-provisioner media link
//! key v1")`, so a MAC made for links can never be taken for anything else
//! made with that token; changing the token ends every link given out.
//! (Also here: what passes for a media type, for files both ways.)

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::matrix::FileLink;
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// What the key is derived for (domain separation).
const KEY_LABEL: &[u8] = b"matrix-provisioner media link key v1";
const VERSION: u8 = 1;
const MAC_BYTES: usize = 32;
/// Longest `mxc://` URI linked (server names are at most 255 bytes).
const MAX_MXC_BYTES: usize = 512;

/// Why a token does not give a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// Not a token this service made (malformed, forged, another key).
    Unknown,
    /// A genuine token past its expiry.
    Expired,
}

/// Makes and checks download links.
#[derive(Clone)]
pub struct MediaLinks {
    key: [u8; 32],
    /// `{PUBLIC_URL}/v1/media/`.
    prefix: String,
    lifetime_ms: i64,
}

impl std::fmt::Debug for MediaLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaLinks")
            .field("prefix", &self.prefix)
            .field("lifetime_ms", &self.lifetime_ms)
            .finish_non_exhaustive()
    }
}

impl MediaLinks {
    /// Links under `public_url` (the service's base URL), valid for
    /// `lifetime_ms`, keyed from `hs_token`.
    pub fn new(hs_token: &Secret, public_url: &str, lifetime_ms: i64) -> MediaLinks {
        let mut mac = HmacSha256::new_from_slice(hs_token.expose().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(KEY_LABEL);
        MediaLinks {
            key: mac.finalize().into_bytes().into(),
            prefix: format!("{}/v1/media/", public_url.trim_end_matches('/')),
            lifetime_ms,
        }
    }

    /// The link to `mxc` from `now` (ms), or None when `mxc` is not a
    /// Matrix content URI.
    pub fn link(&self, mxc: &str, now: i64) -> Option<FileLink> {
        if !is_mxc(mxc) {
            return None;
        }
        let expires_at = now + self.lifetime_ms;
        Some(FileLink {
            url: format!("{}{}", self.prefix, self.token(mxc, expires_at)),
            expires_at,
        })
    }

    /// The token for `mxc` until `expires_at` (ms).
    pub fn token(&self, mxc: &str, expires_at: i64) -> String {
        let mut bytes = Vec::with_capacity(1 + 8 + mxc.len() + MAC_BYTES);
        bytes.push(VERSION);
        bytes.extend_from_slice(&expires_at.to_be_bytes());
        bytes.extend_from_slice(mxc.as_bytes());
        let tag = self.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The `mxc://` URI a token of this service names, if it has not
    /// expired at `now` (ms). The MAC is checked first (in constant time),
    /// so a forged token is [`LinkError::Unknown`] whatever expiry it claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<String, LinkError> {
        if token.len() > 2 * (1 + 8 + MAX_MXC_BYTES + MAC_BYTES) {
            return Err(LinkError::Unknown);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| LinkError::Unknown)?;
        if bytes.len() <= 1 + 8 + MAC_BYTES || bytes[0] != VERSION {
            return Err(LinkError::Unknown);
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
        self.mac(signed)
            .verify_slice(tag)
            .map_err(|_| LinkError::Unknown)?;
        let expires_at = i64::from_be_bytes(signed[1..9].try_into().expect("8 bytes"));
        let mxc = std::str::from_utf8(&signed[9..]).map_err(|_| LinkError::Unknown)?;
        if !is_mxc(mxc) {
            return Err(LinkError::Unknown);
        }
        if now >= expires_at {
            return Err(LinkError::Expired);
        }
        Ok(mxc.to_string())
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(data);
        mac
    }
}

/// `mxc://<server-name>/<media-id>` as the Matrix spec allows them: a
/// server name of host characters (an optional port, an IPv6 literal), a
/// media id of `[A-Za-z0-9_-]`.
pub fn is_mxc(uri: &str) -> bool {
    let Some((server, media_id)) = uri
        .strip_prefix("mxc://")
        .and_then(|rest| rest.split_once('/'))
    else {
        return false;
    };
    uri.len() <= MAX_MXC_BYTES
        && !server.is_empty()
        && server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && !media_id.is_empty()
        && media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A media type: `type/subtype` of token characters, parameters allowed,
/// printable ASCII only, at most 255 bytes. Media types come from others
/// (DAARION.city's declaration, a Matrix uploader's word) and end up in
/// events and headers: nothing else passes for one.
pub fn is_media_type(value: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    value.len() <= 255
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MXC: &str = "mxc://daarion.space/AbC_12-x";

    fn links(secret: &str) -> MediaLinks {
        MediaLinks::new(&Secret::new(secret), "https://mp.daarion.city/", 3_600_000)
    }

    #[test]
    fn a_link_gives_its_file_until_it_expires() {
        let l = links("hs-token");
        let link = l.link(MXC, 1_000).unwrap();
        assert_eq!(link.expires_at, 3_601_000);
        let token = link
            .url
            .strip_prefix("https://mp.daarion.city/v1/media/")
            .expect("under PUBLIC_URL");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
        assert_eq!(l.verify(token, 1_000).as_deref(), Ok(MXC));
        assert_eq!(l.verify(token, 3_600_999).as_deref(), Ok(MXC));
        assert_eq!(l.verify(token, 3_601_000), Err(LinkError::Expired));
    }

    #[test]
    fn forged_and_altered_tokens_are_unknown() {
        let l = links("hs-token");
        let token = l.token(MXC, i64::MAX);
        // Another key (another deployment, a rotated hs_token).
        assert_eq!(links("other").verify(&token, 0), Err(LinkError::Unknown));
        // Each byte changed in turn: the MAC no longer matches.
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut altered = raw.clone();
            altered[i] ^= 0x01;
            let altered = URL_SAFE_NO_PAD.encode(altered);
            assert_eq!(l.verify(&altered, 0), Err(LinkError::Unknown), "byte {i}");
        }
        // A forged token claiming a later expiry is unknown, not expired.
        let mut forged = raw.clone();
        forged[1..9].copy_from_slice(&0i64.to_be_bytes());
        let forged = URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(l.verify(&forged, 10), Err(LinkError::Unknown));
        for junk in ["", "x", "!!!!", "AAAA", &"A".repeat(5000), "a.b/c"] {
            assert_eq!(l.verify(junk, 0), Err(LinkError::Unknown), "{junk:?}");
        }
    }

    #[test]
    fn the_key_is_not_the_hs_token() {
        // A MAC made directly with the hs_token (anything else it signs)
        // is not a link's MAC.
        let secret = "hs-token";
        let mut body = vec![VERSION];
        body.extend_from_slice(&i64::MAX.to_be_bytes());
        body.extend_from_slice(MXC.as_bytes());
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        let token = URL_SAFE_NO_PAD.encode(body);
        assert_eq!(links(secret).verify(&token, 0), Err(LinkError::Unknown));
    }

    #[test]
    fn only_media_types_pass() {
        for ok in [
            "image/png",
            "text/plain; charset=utf-8",
            "application/vnd.a+json",
        ] {
            assert!(is_media_type(ok), "{ok}");
        }
        for bad in [
            "",
            "png",
            "image/",
            "text/html\u{0}",
            "a b/c",
            "text/plain\r\nX: y",
        ] {
            assert!(!is_media_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_content_uris_are_linked() {
        let l = links("hs-token");
        for ok in [
            MXC,
            "mxc://localhost:8448/abc",
            "mxc://[::1]:8448/abc",
            "mxc://1.2.3.4/abc",
        ] {
            assert!(l.link(ok, 0).is_some(), "{ok}");
        }
        for bad in [
            "https://x/y",
            "mxc://",
            "mxc://server",
            "mxc://server/",
            "mxc:///id",
            "mxc://server/a/b",
            "mxc://server/a%2Fb",
            "mxc://ser ver/a",
            "mxc://server/../../admin",
        ] {
            assert!(l.link(bad, 0).is_none(), "{bad}");
        }
    }
}
