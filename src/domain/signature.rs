//! Webhook signatures: `X-Daarion-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`
//! with `v1 = hex(HMAC-SHA256(secret, "<t>.<raw body>"))`. Any configured
//! secret (receiver-side rotation) matching any `v1` (sender-side rotation)
//! is enough; comparisons are constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// How far a signature's timestamp may be from our clock.
pub const TOLERANCE_SECS: i64 = 300;
/// The header that carries the signature, both ways.
pub const HEADER: &str = "X-Daarion-Signature";

#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Stale,
    Mismatch,
    NoSecretConfigured,
}

impl SignatureError {
    pub fn message(&self) -> &'static str {
        match self {
            SignatureError::Missing => "the X-Daarion-Signature header is missing",
            SignatureError::Malformed => {
                "the X-Daarion-Signature header is not of the form t=<unix seconds>,v1=<hex>"
            }
            SignatureError::Stale => "the signature timestamp is more than 300 seconds away",
            SignatureError::Mismatch => "no signature matches the body",
            SignatureError::NoSecretConfigured => {
                "webhooks are not accepted: AUTH_WEBHOOK_SECRET is not configured"
            }
        }
    }
}

/// Checks `header` against `body` at time `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[Secret],
    now: i64,
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecretConfigured);
    }
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key.trim() {
            "t" => timestamp = Some(value.trim()),
            "v1" => {
                candidates.push(hex::decode(value.trim()).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {} // other schemes (v0, v2…) are for other receivers
        }
    }
    let t_text = timestamp.ok_or(SignatureError::Malformed)?;
    let t: i64 = t_text.parse().map_err(|_| SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // The sender picks `t`: `abs_diff` cannot overflow, whatever it is.
    if now.abs_diff(t) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    for secret in secrets {
        let mut mac = mac(secret, t_text, body);
        for candidate in &candidates {
            // verify_slice is constant-time; clone so each candidate gets a fresh check.
            if mac.clone().verify_slice(candidate).is_ok() {
                return Ok(());
            }
        }
        mac.reset();
    }
    Err(SignatureError::Mismatch)
}

/// `t=<t>,v1=<hex>` for `body` signed with `secret`: what DAARION Auth sends.
/// Used by tests, benchmarks and anyone writing a sender.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mac = mac(&Secret::new(secret), &t.to_string(), body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn mac(secret: &Secret, t: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_946_400;
    const BODY: &[u8] = br#"{"id":"e"}"#;

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn a_valid_signature_passes() {
        let header = sign("k1", NOW, BODY);
        assert_eq!(verify(Some(&header), BODY, &secrets(&["k1"]), NOW), Ok(()));
        // The edge of the window is still fine.
        assert_eq!(
            verify(Some(&header), BODY, &secrets(&["k1"]), NOW + 300),
            Ok(())
        );
    }

    #[test]
    fn rotation_on_both_sides() {
        // Sender signs with old and new keys; receiver knows only the new one.
        let old = sign("old", NOW, BODY);
        let new = sign("new", NOW, BODY);
        let both = format!("{old},v1={}", new.split("v1=").nth(1).unwrap());
        assert_eq!(verify(Some(&both), BODY, &secrets(&["new"]), NOW), Ok(()));
        // Receiver knows both keys; sender still uses the old one.
        assert_eq!(
            verify(Some(&old), BODY, &secrets(&["new", "old"]), NOW),
            Ok(())
        );
    }

    #[test]
    fn refusals() {
        let keys = secrets(&["k1"]);
        let good = sign("k1", NOW, BODY);
        assert_eq!(verify(None, BODY, &keys, NOW), Err(SignatureError::Missing));
        assert_eq!(
            verify(Some(&good), b"{}", &keys, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&sign("other", NOW, BODY)), BODY, &keys, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), BODY, &keys, NOW + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Some(&good), BODY, &keys, NOW - 301),
            Err(SignatureError::Stale)
        );
        for bad in ["", "garbage", "t=abc,v1=00", "t=1", "v1=00", "t=1,v1=zz"] {
            assert_eq!(
                verify(Some(bad), BODY, &keys, NOW),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verify(Some(&good), BODY, &[], NOW),
            Err(SignatureError::NoSecretConfigured)
        );
    }

    /// Whoever sends the header picks `t`: the extremes of an i64 are a
    /// stale signature, not an overflow.
    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        let keys = secrets(&["k1"]);
        for t in [i64::MIN, i64::MIN + 1, i64::MAX] {
            for now in [NOW, -NOW, 0] {
                assert_eq!(
                    verify(Some(&sign("k1", t, BODY)), BODY, &keys, now),
                    Err(SignatureError::Stale),
                    "t={t} now={now}"
                );
            }
        }
        // Beyond an i64, or no number at all: not a timestamp.
        for t in [
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999999999999999999999",
            "1e30",
            "0x10",
        ] {
            assert_eq!(
                verify(Some(&format!("t={t},v1=00")), BODY, &keys, NOW),
                Err(SignatureError::Malformed),
                "{t}"
            );
        }
    }
}
