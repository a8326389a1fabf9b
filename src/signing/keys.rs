//! The provider's signing key: read from `OIDC_SIGNING_KEY` (RSA of at
//! least 2048 bits, EC P-256 or Ed25519, PEM in PKCS#1, SEC1 or PKCS#8), or
//! generated (EC P-256) and kept in the database. Its public half is a JWK
//! whose `kid` is the RFC 7638 thumbprint, so the same key always has the
//! same `kid` on every replica.

use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

const MIN_RSA_BITS: usize = 2048;

pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A private key in PEM. The error says what is wrong, never the key.
    pub fn from_pem(pem: &Secret) -> Result<SigningKey, String> {
        let parsed =
            pem::parse(pem.expose().trim()).map_err(|_| "is not a PEM private key".to_string())?;
        let der = parsed.contents();
        let text = pem.expose().as_bytes();
        match parsed.tag() {
            "RSA PRIVATE KEY" => rsa(aws_lc_rs::rsa::KeyPair::from_der(der).ok(), text),
            "EC PRIVATE KEY" => {
                ec(EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der).ok())
            }
            "PRIVATE KEY" => {
                if let Ok(pair) = aws_lc_rs::rsa::KeyPair::from_pkcs8(der) {
                    rsa(Some(pair), text)
                } else if let Ok(pair) =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                {
                    ec(Some(pair))
                } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
                    ed25519(&pair, text)
                } else {
                    Err("is not an RSA, EC P-256 or Ed25519 private key".into())
                }
            }
            other => Err(format!("is a PEM {other:?}, not a private key")),
        }
    }

    /// A new EC P-256 key and its PKCS#8 PEM, to keep.
    pub fn generate() -> (SigningKey, Secret) {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("the system can generate keys");
        let der = pair.to_pkcs8v1().expect("a new key encodes");
        let pem = Secret::new(pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref())));
        let key = SigningKey::from_pem(&pem).expect("a generated key reads back");
        (key, pem)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS algorithm name (`RS256`, `ES256`, `EdDSA`).
    pub fn alg_name(&self) -> &'static str {
        match self.alg {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        }
    }

    /// The public half as a JWK (with `kid`, `alg` and `use`).
    pub fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// A JWT of `claims` with `kid` in the header; `typ` when given.
    pub fn sign<T: Serialize>(&self, claims: &T, typ: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        if let Some(typ) = typ {
            header.typ = Some(typ.to_string());
        }
        encode(&header, claims, &self.key).expect("signing plain claims cannot fail")
    }
}

fn rsa(pair: Option<aws_lc_rs::rsa::KeyPair>, pem: &[u8]) -> Result<SigningKey, String> {
    let pair = pair.ok_or("is not a usable RSA private key")?;
    let public = pair.public_key();
    if pair.public_modulus_len() * 8 < MIN_RSA_BITS {
        return Err(format!("is an RSA key shorter than {MIN_RSA_BITS} bits"));
    }
    let n = b64(public.modulus().big_endian_without_leading_zero());
    let e = b64(public.exponent().big_endian_without_leading_zero());
    let thumbprint = json!({"e": e, "kty": "RSA", "n": n});
    let key = EncodingKey::from_rsa_pem(pem).map_err(|_| "is not a usable RSA private key")?;
    Ok(build(Algorithm::RS256, "RS256", key, thumbprint))
}

fn ec(pair: Option<EcdsaKeyPair>) -> Result<SigningKey, String> {
    let pair = pair.ok_or("is not an EC P-256 private key")?;
    // The uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        return Err("is not an EC P-256 private key".into());
    }
    let thumbprint = json!({
        "crv": "P-256", "kty": "EC", "x": b64(&point[1..33]), "y": b64(&point[33..]),
    });
    // jsonwebtoken reads EC keys in PKCS#8 only; SEC1 keys are converted.
    let pkcs8 = pair
        .to_pkcs8v1()
        .map_err(|_| "is not an EC P-256 private key")?;
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    Ok(build(Algorithm::ES256, "ES256", key, thumbprint))
}

fn ed25519(pair: &Ed25519KeyPair, pem: &[u8]) -> Result<SigningKey, String> {
    let thumbprint = json!({"crv": "Ed25519", "kty": "OKP", "x": b64(pair.public_key().as_ref())});
    let key = EncodingKey::from_ed_pem(pem).map_err(|_| "is not a usable Ed25519 private key")?;
    Ok(build(Algorithm::EdDSA, "EdDSA", key, thumbprint))
}

/// The key with its RFC 7638 `kid`: the SHA-256 of the required members,
/// in lexicographic order, without white space (which `json!` gives).
fn build(alg: Algorithm, alg_name: &str, key: EncodingKey, thumbprint: Value) -> SigningKey {
    let kid = b64(&Sha256::digest(thumbprint.to_string().as_bytes()));
    let mut jwk = thumbprint;
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg_name);
    jwk["use"] = json!("sig");
    SigningKey { alg, kid, key, jwk }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, decode_header, jwk::Jwk, DecodingKey, Validation};

    fn fixture(name: &str) -> Secret {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name);
        Secret::new(std::fs::read_to_string(path).unwrap())
    }

    /// Signs and verifies with the published JWK, as Synapse does.
    fn round_trip(key: &SigningKey) {
        let claims = json!({"sub": "u_1", "exp": 4_000_000_000u64});
        let token = key.sign(&claims, None);
        let header = decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        let jwk: Jwk = serde_json::from_value(key.public_jwk().clone()).unwrap();
        let decoding = DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = Validation::new(header.alg);
        validation.validate_aud = false;
        let data = decode::<Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "u_1");
    }

    #[test]
    fn a_generated_key_signs_what_its_jwk_verifies_and_reads_back() {
        let (key, pem) = SigningKey::generate();
        assert_eq!(key.alg_name(), "ES256");
        round_trip(&key);
        let again = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(again.kid(), key.kid(), "the kid is the key's thumbprint");
        let (other, _) = SigningKey::generate();
        assert_ne!(other.kid(), key.kid());
    }

    #[test]
    fn rsa_keys_in_pkcs1_and_pkcs8_read() {
        let key = SigningKey::from_pem(&fixture("rsa-a.pem")).unwrap();
        assert_eq!(key.alg_name(), "RS256");
        assert_eq!(key.public_jwk()["kty"], "RSA");
        round_trip(&key);
    }

    #[test]
    fn the_rfc_7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let thumbprint = json!({"e": "AQAB", "kty": "RSA", "n": n});
        let kid = b64(&Sha256::digest(thumbprint.to_string().as_bytes()));
        assert_eq!(kid, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn what_is_not_a_usable_key_is_refused_without_showing_it() {
        for (pem, want) in [
            ("nonsense", "is not a PEM private key"),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                "is a PEM \"PUBLIC KEY\", not a private key",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
                "is not an RSA, EC P-256 or Ed25519 private key",
            ),
        ] {
            assert_eq!(SigningKey::from_pem(&Secret::new(pem)).unwrap_err(), want);
        }
    }
}
