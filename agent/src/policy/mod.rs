//! L4 authorization at the destination agent: `AuthorizationPolicy` objects compiled once per
//! registry snapshot, evaluated for every inbound connection (plaintext or HBONE) and again
//! for established ones when policies change. Every decision carries its reason.

pub mod crd;
mod eval;

pub use eval::{compile, evaluate, Decision, Policy, Reason, Request, Verdict};

/// Namespace or pod annotation: `strict` refuses plaintext inbound; `permissive` (default)
/// admits it.
pub const MTLS_MODE_ANNOTATION: &str = "weft.io/mtls-mode";

#[cfg(test)]
mod tests;

/// The CustomResourceDefinitions Weft owns, as YAML documents generated from the Rust types.
/// `cargo xtask crds` writes them to `deploy/crds/`; a test fails when those files drift.
pub fn crds() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt as _;
    let yaml = serde_yaml::to_string(&crd::AuthorizationPolicy::crd()).unwrap_or_default();
    vec![(
        "authorizationpolicies.weft.io.yaml",
        format!("# Generated from the Rust types by `cargo xtask crds`; do not edit.\n{yaml}"),
    )]
}
