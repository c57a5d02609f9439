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
