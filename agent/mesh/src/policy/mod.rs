//! L4 authorization at the destination agent: `AuthorizationPolicy` objects compiled once per
//! registry snapshot, evaluated for every inbound connection (plaintext or HBONE) and again
//! for established ones when policies change. Every decision carries its reason.

pub mod crd;
mod error;
mod eval;
pub mod jwt;
pub mod l7;
pub mod request_auth;
pub mod resilience;
pub mod traffic;

pub use error::PolicyError;
pub use eval::{compile, evaluate, Decision, Policy, Reason, Request, Verdict};
pub use l7::{Attributes, Authenticated};
pub use traffic::TrafficSettings;

/// Namespace or pod annotation: `strict` refuses plaintext inbound; `permissive` (default)
/// admits it.
pub const MTLS_MODE_ANNOTATION: &str = "weft.io/mtls-mode";

#[cfg(test)]
mod tests;

/// The CustomResourceDefinitions Weft owns, as YAML documents generated from the Rust types.
/// `cargo xtask crds` writes them to each of [`CRD_FOLDERS`]; a test fails when those drift.
/// Where the CRDs are checked in, relative to the repository: the kustomize base's component and
/// the Helm chart's `crds/` (which Helm installs before the templates).
pub const CRD_FOLDERS: [&str; 2] = ["deploy/crds", "deploy/helm/weft/crds"];

pub fn crds() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt as _;
    let generated = |yaml: String| {
        format!("# Generated from the Rust types by `cargo xtask crds`; do not edit.\n{yaml}")
    };
    vec![
        (
            "authorizationpolicies.weft.io.yaml",
            generated(serde_yaml::to_string(&crd::AuthorizationPolicy::crd()).unwrap_or_default()),
        ),
        (
            "trafficpolicies.weft.io.yaml",
            generated(serde_yaml::to_string(&traffic::TrafficPolicy::crd()).unwrap_or_default()),
        ),
        (
            "requestauthentications.weft.io.yaml",
            generated(
                serde_yaml::to_string(&request_auth::RequestAuthentication::crd())
                    .unwrap_or_default(),
            ),
        ),
    ]
}

impl From<&Policy> for weft_api::AuthorizationPolicy {
    fn from(p: &Policy) -> Self {
        Self {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            spec: serde_json::to_value(&p.spec).unwrap_or_default(),
            unreadable: p.unreadable.clone(),
            enforced_at: Vec::new(),
        }
    }
}

impl From<&TrafficSettings> for weft_api::TrafficPolicy {
    fn from(t: &TrafficSettings) -> Self {
        Self {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            spec: serde_json::to_value(&t.spec).unwrap_or_default(),
            services: t.services.clone(),
            connect_timeout: t
                .connect_timeout
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            algorithm: serde_json::to_value(t.algorithm)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            waypoint_only: t.waypoint_only.iter().map(|s| (*s).to_owned()).collect(),
            applied_by: Vec::new(),
        }
    }
}
