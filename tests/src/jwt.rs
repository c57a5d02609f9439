//! End-user tokens for the `RequestAuthentication` tests and the demo tour: key pairs for
//! RS256 (the checked-in test key), ES256 and EdDSA (generated), their public key set, tokens
//! signed with them, and the forgeries a waypoint must refuse (`alg: none`, HS256 keyed with
//! the public key).

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use x509_parser::prelude::FromDer as _;

/// The RSA key the tests sign RS256 tokens with. It protects nothing: a test key, public here.
const RSA_TEST_KEY: &str = include_str!("../data/jwt/rsa-test-key.pem");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The signing half of one key of a set.
pub struct Signer {
    pub algorithm: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key as PEM (what an attacker would use as an HMAC secret).
    pub public_pem: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A key for `algorithm` (RS256, ES256 or EdDSA) under `kid`.
    pub fn new(algorithm: Algorithm, kid: &str) -> anyhow::Result<Self> {
        let (pair, encoding, jwk) = match algorithm {
            Algorithm::RS256 => {
                let pair = rcgen::KeyPair::from_pem(RSA_TEST_KEY)?;
                let (_, pem) =
                    x509_parser::pem::parse_x509_pem(pair.public_key_pem().as_bytes())
                        .map_err(|e| anyhow::anyhow!("the RSA test key's public PEM: {e}"))?;
                let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents)
                    .map_err(|e| anyhow::anyhow!("the RSA test key's public half: {e}"))?;
                let x509_parser::public_key::PublicKey::RSA(rsa) = info.parsed()? else {
                    anyhow::bail!("the RSA test key is not RSA");
                };
                let trim = |b: &[u8]| {
                    b.iter()
                        .skip_while(|&&x| x == 0)
                        .copied()
                        .collect::<Vec<_>>()
                };
                let jwk = json!({"kty": "RSA", "n": b64(&trim(rsa.modulus)), "e": b64(&trim(rsa.exponent))});
                (
                    pair,
                    EncodingKey::from_rsa_pem(RSA_TEST_KEY.as_bytes())?,
                    jwk,
                )
            }
            Algorithm::ES256 => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let raw = pair.public_key_raw().to_vec();
                anyhow::ensure!(
                    raw.len() == 65 && raw[0] == 4,
                    "an uncompressed P-256 point"
                );
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..])});
                let encoding = EncodingKey::from_ec_der(&pair.serialize_der());
                (pair, encoding, jwk)
            }
            Algorithm::EdDSA => {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key_raw())});
                let encoding = EncodingKey::from_ed_der(&pair.serialize_der());
                (pair, encoding, jwk)
            }
            other => anyhow::bail!("no test key for {other:?}"),
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Ok(Self {
            algorithm,
            kid: kid.into(),
            encoding,
            jwk,
            public_pem: pair.public_key_pem(),
        })
    }

    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A token of `claims`, signed, naming this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }

    /// A token signed by this key but naming another `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }

    /// The classic confusion attack: HS256 keyed with this key's public PEM.
    pub fn forge_hs256(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_secret(self.public_pem.as_bytes());
        jsonwebtoken::encode(&header, claims, &key).unwrap_or_default()
    }
}

/// The key set document of `signers`.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk().clone()).collect::<Vec<_>>()}).to_string()
}

/// An unsigned token (`alg: none`).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Claims for `sub` from `iss` to `aud`, valid for the next hour.
pub fn claims(iss: &str, sub: &str, aud: &str) -> Value {
    json!({"iss": iss, "sub": sub, "aud": aud, "iat": now(), "exp": now() + 3600})
}
