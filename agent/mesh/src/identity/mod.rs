//! Workload identity: SPIFFE IDs, the local certificate authority, the SVIDs the agent holds
//! for its node's workloads (issued on demand, renewed at half-life), and the TLS verifiers
//! that check peers against the trust bundle and the identity the registry expects.

mod ca;
mod remote;
mod store;
mod verify;
mod worker;

use std::fmt;

pub use ca::{CaError, CaSource, Issued, LocalCa};
pub use remote::{load as load_signer, CaClient, RemoteCa, Signer, Signing};
pub use store::{CertInfo, CertStore, Svid};
pub use verify::{client_config, peer_identity, serial_of, server_config, TlsError};
pub use worker::CertWorker;

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "String")]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Parses a SPIFFE ID of Kubernetes form; anything else is `None`.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (td, ns_word, ns, sa_word, sa) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some()
            || ns_word != "ns"
            || sa_word != "sa"
            || td.is_empty()
            || ns.is_empty()
            || sa.is_empty()
        {
            return None;
        }
        Some(Self::new(td, ns, sa))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.to_string()
    }
}

#[cfg(test)]
mod tests;
