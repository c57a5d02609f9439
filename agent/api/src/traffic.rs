//! What the agent carries: `/connections` (open right now) and `/stats` (running totals).

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::flows::Verdict;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// Whether the hop between agents was protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// HBONE: mutual TLS between workload identities.
    Mtls,
    /// Plain TCP (a destination or a client outside the mesh).
    Plaintext,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mtls => "mtls",
            Self::Plaintext => "plaintext",
        }
    }
}

/// An authorization decision with its reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `allow` or `deny` (a decision is never `failed`).
    pub verdict: Verdict,
    /// A fixed code, the same as the metric label: `no_policy`, `denied_by_policy`, …
    pub reason: String,
    /// For people: which policy and rule, or what was missing.
    pub detail: String,
    /// The deciding policy (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// What audit and dry-run policies said along the way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// `GET /connections`: one element per connection open right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub id: u64,
    pub direction: Direction,
    /// The enrolled pod on this node (`namespace/name`).
    pub pod: String,
    pub source: SocketAddr,
    /// What the client dialed.
    pub original_destination: SocketAddr,
    /// Where the agent connected.
    pub destination: SocketAddr,
    pub service: Option<String>,
    pub security: Security,
    /// The peer's SPIFFE ID, when mutual TLS proved it.
    pub peer_identity: Option<String>,
    /// Serial of the certificate the peer proved its identity with.
    pub peer_certificate_serial: Option<String>,
    /// This pod's own SPIFFE ID.
    pub workload_identity: Option<String>,
    /// The other side's workload, when the registry knows the peer address (`namespace/name`).
    pub peer_workload: Option<String>,
    /// The waypoint the connection went through (`namespace/name`), when its Service uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
    /// Inbound from a waypoint: the original client's identity the waypoint carried (its
    /// `baggage`), beside the waypoint's own proven one in `peer_identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_identity: Option<String>,
    /// The authorization decision (inbound connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    pub started_unix_ms: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub proxy: ProxyTotals,
    /// The kernel program's counters summed over CPUs, by counter name. The names are data
    /// (the same as the `weft_ebpf_program_events` label), not fields, so they are kept as
    /// the kernel object spells them.
    pub kernel: BTreeMap<String, u64>,
    pub pool: PoolStats,
    pub limits: Vec<LimitHit>,
    pub ca: CaStats,
}

/// Monotonic totals since the agent started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTotals {
    pub outbound_opened: u64,
    pub inbound_opened: u64,
    pub closed: u64,
    pub failed: u64,
    pub denied: u64,
    /// Established connections closed because a policy change denied them.
    pub closed_by_policy: u64,
    /// Connections to a capture listener that the kernel did not redirect.
    pub refused_not_captured: u64,
    /// Captured connections that would loop into the agent, refused before anything was
    /// dialed.
    pub refused_agent_port: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
}

/// The HBONE connection pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStats {
    pub connections_opened: u64,
    pub connections_open: usize,
    pub streams_open: usize,
    /// Dials a peer agent refused and that were tried again (the peer was restarting).
    #[serde(default)]
    pub connect_refusals_retried: u64,
}

/// How often one listener hit one of its limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitHit {
    pub listener: String,
    pub limit: String,
    pub hits: u64,
}

/// The in-process CA (local mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStats {
    pub signed: u64,
}
