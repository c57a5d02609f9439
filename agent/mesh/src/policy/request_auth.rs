//! `RequestAuthentication` (`weft.io/v1alpha1`, Istio's shape): which end-user JWTs a
//! waypoint validates for the Services it serves, where it finds them, and what it passes on.
//! Compiled once per registry snapshot; inline key sets are parsed here, `jwksUri` sets are
//! fetched by the waypoint.

use std::sync::Arc;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    crd::{TargetRef, WorkloadSelector},
    jwt::KeySet,
    PolicyError,
};

/// End-user authentication for the workloads a waypoint serves. A request with a token that
/// fails every rule is refused with 401; one without a token passes as unauthenticated, for
/// an `AuthorizationPolicy` to judge.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.io",
    version = "v1alpha1",
    kind = "RequestAuthentication",
    namespaced
)]
#[kube(shortname = "wra")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Accepted for Istio's shape; a waypoint applies only `targetRefs` (its Gateway, or a
    /// Service it serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The token's `iss` must equal this.
    pub issuer: String,
    /// When set, the token's `aud` must include one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The key set itself, as JSON (RFC 7517).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Where to fetch the key set (http or https); refreshed, and fetched again when a token
    /// names a key it does not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Headers to take the token from; default `Authorization` with prefix `Bearer `.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters to take the token from; default `access_token` when no header is
    /// given either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Keep the token in the request sent on (default: it is removed).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims to copy into request headers for the backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    /// A claim name; `a.b` for a nested one.
    pub claim: String,
}

/// The most JWT rules one object may hold.
pub const MAX_JWT_RULES: usize = 16;

/// Where the rule's keys come from.
#[derive(Clone, Debug)]
pub enum Keys {
    Inline(Arc<KeySet>),
    /// Fetched by the waypoint.
    Uri(http::Uri),
}

/// A validated JWT rule.
#[derive(Clone, Debug)]
pub struct CompiledJwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: Keys,
    pub from_headers: Vec<(http::HeaderName, String)>,
    pub from_params: Vec<String>,
    pub forward_original_token: bool,
    pub output_claim_to_headers: Vec<(http::HeaderName, Vec<String>)>,
}

/// A validated `RequestAuthentication`.
#[derive(Clone, Debug, Serialize)]
pub struct RequestAuth {
    pub namespace: String,
    pub name: String,
    pub spec: RequestAuthenticationSpec,
    #[serde(skip)]
    pub rules: Vec<CompiledJwtRule>,
}

impl RequestAuth {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether a waypoint applies it to a request for `service` (a name in the object's
    /// namespace) arriving at the waypoint of Gateway `gateway` in `namespace`.
    pub fn applies(&self, namespace: &str, gateway: &str, service: &str) -> bool {
        self.namespace == namespace
            && self.spec.target_refs.iter().any(|t| match t.kind.as_str() {
                "Service" => t.name == service,
                "Gateway" => t.name == gateway,
                _ => false,
            })
    }
}

fn bad(field: &'static str, problem: impl Into<String>) -> PolicyError {
    PolicyError::BadValue {
        field,
        problem: problem.into(),
    }
}

fn header_name(name: &str, field: &'static str) -> Result<http::HeaderName, PolicyError> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| bad(field, format!("{name:?} is not a header name")))
}

fn compile_rule(rule: &JwtRule) -> Result<CompiledJwtRule, PolicyError> {
    if rule.issuer.is_empty() {
        return Err(bad("issuer", "is empty: give the `iss` tokens carry"));
    }
    let keys = match (&rule.jwks, &rule.jwks_uri) {
        (Some(jwks), None) => Keys::Inline(Arc::new(
            KeySet::parse(jwks).map_err(|e| bad("jwks", e.to_string()))?,
        )),
        (None, Some(uri)) => {
            let parsed: http::Uri = uri
                .parse()
                .map_err(|_| bad("jwksUri", format!("{uri:?} is not a URI")))?;
            if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
                return Err(bad(
                    "jwksUri",
                    format!("{uri:?}: give an http:// or https:// URI with a host"),
                ));
            }
            Keys::Uri(parsed)
        }
        (Some(_), Some(_)) => return Err(bad("jwks", "give jwks or jwksUri, not both")),
        (None, None) => {
            return Err(bad(
                "jwks",
                "give jwks (the key set inline) or jwksUri (where to fetch it)",
            ))
        }
    };
    let mut from_headers = rule
        .from_headers
        .iter()
        .map(|h| {
            Ok((
                header_name(&h.name, "fromHeaders")?,
                h.prefix.clone().unwrap_or_default(),
            ))
        })
        .collect::<Result<Vec<_>, PolicyError>>()?;
    let mut from_params = rule.from_params.clone();
    if from_headers.is_empty() && from_params.is_empty() {
        from_headers.push((http::header::AUTHORIZATION, "Bearer ".into()));
        from_params.push("access_token".into());
    }
    let output_claim_to_headers = rule
        .output_claim_to_headers
        .iter()
        .map(|c| {
            if c.claim.is_empty() || c.claim.split('.').any(str::is_empty) {
                return Err(bad(
                    "outputClaimToHeaders",
                    format!("claim {:?} is not a claim name", c.claim),
                ));
            }
            Ok((
                header_name(&c.header, "outputClaimToHeaders")?,
                c.claim.split('.').map(str::to_owned).collect(),
            ))
        })
        .collect::<Result<_, PolicyError>>()?;
    Ok(CompiledJwtRule {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        keys,
        from_headers,
        from_params,
        forward_original_token: rule.forward_original_token,
        output_claim_to_headers,
    })
}

/// Validates and compiles a `RequestAuthentication`; the error says what to fix.
pub fn compile(
    namespace: &str,
    name: &str,
    spec: RequestAuthenticationSpec,
) -> Result<RequestAuth, PolicyError> {
    if spec.jwt_rules.is_empty() {
        return Err(bad("jwtRules", "is empty: give at least one rule"));
    }
    if spec.jwt_rules.len() > MAX_JWT_RULES {
        return Err(bad(
            "jwtRules",
            format!(
                "has {} rules, above the {MAX_JWT_RULES} allowed",
                spec.jwt_rules.len()
            ),
        ));
    }
    if spec.target_refs.is_empty() {
        // Silently validating nothing would be worse than refusing: say where it must attach.
        return Err(bad(
            "targetRefs",
            "is empty: a waypoint applies a RequestAuthentication by targetRefs, naming its Gateway or a Service it serves (a selector alone attaches to nothing)",
        ));
    }
    for target in &spec.target_refs {
        if !matches!(target.kind.as_str(), "Service" | "Gateway") {
            return Err(PolicyError::BadTarget {
                kind: target.kind.clone(),
                group: target.group.clone(),
            });
        }
    }
    let rules = spec
        .jwt_rules
        .iter()
        .enumerate()
        .map(|(i, r)| compile_rule(r).map_err(|e| e.within(format!("jwtRules[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(RequestAuth {
        namespace: namespace.into(),
        name: name.into(),
        spec,
        rules,
    })
}
