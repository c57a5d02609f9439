//! End-user JSON Web Tokens for `RequestAuthentication`: key sets parsed within bounds, and a
//! token checked against a rule: signature under a key of the set (the algorithm is the
//! key's, never the token's choice, so `none` and HMAC-with-a-public-key cannot pass), then
//! issuer, audiences and validity times. Each refusal is a bounded reason.

use std::str::FromStr as _;

use base64::Engine as _;
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk},
    Algorithm, DecodingKey, Validation,
};

use super::l7::Authenticated;

/// The largest key set document read (inline or fetched).
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// The most keys one set may hold.
pub const MAX_KEYS: usize = 32;
/// The longest token considered; a longer one is refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew allowed on `exp` and `nbf`, in seconds (Envoy's default).
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Why a key set could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the key set is {0} bytes, above the {MAX_JWKS_BYTES} allowed")]
    TooLarge(usize),
    #[error("the key set is not JSON with a \"keys\" list: {0}")]
    NotJwks(String),
    #[error("the key set has {0} keys, above the {MAX_KEYS} allowed")]
    TooManyKeys(usize),
    #[error("no key of the set can verify a token: {0}")]
    NoUsableKey(String),
}

/// Why a token was refused: each maps to a bounded `reason` label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is {0} bytes, above the {MAX_TOKEN_BYTES} allowed")]
    TooLarge(usize),
    #[error("the token is not a signed JWT (three base64url parts with a JSON header)")]
    Malformed,
    #[error("algorithm {0:?} is not accepted: tokens must be signed with RS*, PS*, ES256, ES384 or EdDSA under a key of the rule's set")]
    AlgorithmRefused(String),
    #[error("no key with kid {0:?} in the rule's key set")]
    UnknownKey(String),
    #[error("no key of the rule's key set verifies the signature")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("issuer {0:?} is not the rule's")]
    WrongIssuer(String),
    #[error("the token's audiences include none of the rule's")]
    WrongAudience,
    #[error("no jwtRule of the RequestAuthentication names issuer {0:?}")]
    UnknownIssuer(String),
    #[error("the key set from {0} could not be fetched yet")]
    KeysUnavailable(String),
}

impl JwtError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) | Self::Malformed => "jwt_malformed",
            Self::AlgorithmRefused(_) => "jwt_algorithm_refused",
            Self::UnknownKey(_) => "jwt_unknown_key",
            Self::BadSignature => "jwt_bad_signature",
            Self::Expired => "jwt_expired",
            Self::NotYetValid => "jwt_not_yet_valid",
            Self::WrongIssuer(_) | Self::UnknownIssuer(_) => "jwt_wrong_issuer",
            Self::WrongAudience => "jwt_wrong_audience",
            Self::KeysUnavailable(_) => "jwks_unavailable",
        }
    }
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The public keys of one issuer.
#[derive(Clone, Debug)]
pub struct KeySet {
    keys: Vec<Key>,
    /// Keys of the document that were skipped, and why (for the status report).
    pub skipped: Vec<String>,
}

/// The algorithms a key verifies: its own `alg` when it names one, else every asymmetric
/// algorithm of its type and curve.
fn algorithms_of(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (oct) keys are refused: tokens are verified with public keys only"
                    .into(),
            )
        }
    };
    match jwk.common.key_algorithm {
        None => Ok(by_type),
        Some(named) => {
            let algorithm = Algorithm::from_str(&named.to_string())
                .map_err(|_| format!("alg {named} cannot sign tokens"))?;
            if by_type.contains(&algorithm) {
                Ok(vec![algorithm])
            } else {
                Err(format!("alg {named} does not fit the key's type"))
            }
        }
    }
}

impl KeySet {
    /// Reads a JWKS document; keys Weft cannot use are skipped (and said), but a set with no
    /// usable key is an error.
    pub fn parse(document: &str) -> Result<Self, JwksError> {
        if document.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(document.len()));
        }
        let value: serde_json::Value =
            serde_json::from_str(document).map_err(|e| JwksError::NotJwks(e.to_string()))?;
        let list = value
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| JwksError::NotJwks("no \"keys\" list".into()))?;
        if list.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys(list.len()));
        }
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let parsed = serde_json::from_value::<Jwk>(entry.clone())
                .map_err(|e| e.to_string())
                .and_then(|jwk| {
                    let algorithms = algorithms_of(&jwk)?;
                    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
                    Ok(Key {
                        kid: jwk.common.key_id.clone(),
                        algorithms,
                        decoding,
                    })
                });
            match parsed {
                Ok(key) => keys.push(key),
                Err(why) => skipped.push(format!("keys[{i}]: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(if skipped.is_empty() {
                "the list is empty".into()
            } else {
                skipped.join("; ")
            }));
        }
        Ok(Self { keys, skipped })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key with this id is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The header fields that choose a key, read without trusting them.
#[derive(Debug)]
pub struct Peeked {
    pub algorithm: String,
    pub kid: Option<String>,
    /// The unverified `iss`, to choose the rule.
    pub issuer: Option<String>,
}

fn part(token: &str, index: usize) -> Result<serde_json::Value, JwtError> {
    let segment = token.split('.').nth(index).ok_or(JwtError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// Reads a token's header and issuer without verifying anything.
pub fn peek(token: &str) -> Result<Peeked, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge(token.len()));
    }
    if token.split('.').count() != 3 {
        return Err(JwtError::Malformed);
    }
    let header = part(token, 0)?;
    let algorithm = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or(JwtError::Malformed)?
        .to_owned();
    let kid = header
        .get("kid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let issuer = part(token, 1)?
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Ok(Peeked {
        algorithm,
        kid,
        issuer,
    })
}

/// Verifies `token` under `keys` for a rule of `issuer` and `audiences` (empty: any).
pub fn verify(
    token: &str,
    keys: &KeySet,
    issuer: &str,
    audiences: &[String],
) -> Result<Authenticated, JwtError> {
    let peeked = peek(token)?;
    let algorithm = Algorithm::from_str(&peeked.algorithm)
        .ok()
        .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        .ok_or_else(|| JwtError::AlgorithmRefused(peeked.algorithm.clone()))?;
    let candidates: Vec<&Key> = match &peeked.kid {
        Some(kid) => {
            let named: Vec<&Key> = keys
                .keys
                .iter()
                .filter(|k| k.kid.as_ref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(JwtError::UnknownKey(kid.clone()));
            }
            named
        }
        None => keys.keys.iter().collect(),
    };
    let fitting: Vec<&Key> = candidates
        .into_iter()
        .filter(|k| k.algorithms.contains(&algorithm))
        .collect();
    if fitting.is_empty() {
        return Err(JwtError::AlgorithmRefused(peeked.algorithm));
    }
    let mut validation = Validation::new(algorithm);
    validation.leeway = CLOCK_SKEW_SECONDS;
    validation.validate_nbf = true;
    // Envoy's rule: a token without `exp` does not expire; one with it is checked.
    validation.required_spec_claims.clear();
    validation.set_issuer(&[issuer]);
    if audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(audiences);
    }
    let mut last = JwtError::BadSignature;
    for key in fitting {
        match jsonwebtoken::decode::<serde_json::Value>(token, &key.decoding, &validation) {
            Ok(data) => return Ok(authenticated(data.claims)),
            Err(e) => {
                last = match refusal(e.kind()) {
                    JwtError::WrongIssuer(_) => {
                        JwtError::WrongIssuer(peeked.issuer.clone().unwrap_or_default())
                    }
                    JwtError::AlgorithmRefused(_) => {
                        JwtError::AlgorithmRefused(peeked.algorithm.clone())
                    }
                    other => other,
                };
                if last != JwtError::BadSignature {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

fn refusal(kind: &jsonwebtoken::errors::ErrorKind) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::Crypto(_) => {
            JwtError::BadSignature
        }
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidIssuer => JwtError::WrongIssuer(String::new()),
        K::InvalidAudience => JwtError::WrongAudience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            JwtError::AlgorithmRefused(String::new())
        }
        _ => JwtError::Malformed,
    }
}

/// The request principal and claims of a verified token.
fn authenticated(claims: serde_json::Value) -> Authenticated {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let audiences = match claims.get("aud") {
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(many)) => many
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Authenticated {
        principal: format!(
            "{}/{}",
            text("iss").unwrap_or_default(),
            text("sub").unwrap_or_default()
        ),
        audiences,
        presenter: text("azp"),
        claims,
    }
}
