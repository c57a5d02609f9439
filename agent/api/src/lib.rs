//! The admin API's contract: one typed response per endpoint the agent serves on
//! 127.0.0.1:15000, and the `/flows` query. Every field is camelCase on the wire, as in the
//! Kubernetes API; enum values stay the lowercase words the access log and metric labels use.
//! The agent serializes these types and weftctl deserializes them, so the two cannot drift.
#![forbid(unsafe_code)]

pub mod config;
pub mod flows;
pub mod reasons;
pub mod requests;
pub mod resilience;
pub mod status;
pub mod traffic;
pub mod waypoint;

pub use config::{AuthorizationPolicy, Cert, Service, ServicePort, TrafficPolicy};
pub use flows::{Flow, FlowEvent, FlowQuery, QueryError, Verdict};
pub use status::{RegistrySummary, RejectedObject, Status, WatchStatus, Workload};
pub use traffic::{
    CaStats, Connection, Decision, Direction, LimitHit, PoolStats, ProxyTotals, Security, Stats,
};

use serde::{Deserialize, Serialize};

/// The body of every non-2xx answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: String,
    /// The values the request could have used instead (an unknown endpoint's alternatives, a
    /// parameter's valid values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid: Vec<String>,
}

/// `POST /logging?level=…` answers the filter now in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLevel {
    pub level: String,
}

/// Every path the agent answers, for its 404 and for documentation.
pub const ENDPOINTS: &[&str] = &[
    "/status",
    "/workloads",
    "/connections",
    "/stats",
    "/certs",
    "/services",
    "/policies",
    "/trafficpolicies",
    "/flows?from=&to=&verdict=&since=&port=&follow=1",
    "POST /logging?level=",
    "/config_dump",
];
