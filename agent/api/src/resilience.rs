//! A waypoint's view of its backends (`GET /endpoints`): each backend Service port with its
//! circuit breaker's occupancy, and each endpoint with its health, ejection, active requests,
//! latency average and locality.

use serde::{Deserialize, Serialize};

/// One backend Service port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendReport {
    /// `namespace/name:port`.
    pub backend: String,
    /// The TrafficPolicy of the Service, if any.
    pub policy: Option<String>,
    pub algorithm: String,
    pub requests_in_flight: u32,
    pub connections_in_flight: u32,
    pub pending: u32,
    pub retries_in_flight: u32,
    pub endpoints: Vec<EndpointReport>,
}

/// One endpoint of a backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointReport {
    pub address: String,
    /// The pod behind it (`namespace/name`), when the registry knows it.
    pub pod: Option<String>,
    /// `healthy`, `ejected` or `unhealthy` (failing its health check).
    pub health: String,
    /// Milliseconds the ejection still lasts.
    pub ejected_for_ms: Option<u64>,
    pub ejections: u32,
    pub active_requests: u32,
    /// Average milliseconds to the response head (0 before any).
    pub ewma_ms: f64,
    pub requests: u64,
    pub errors: u64,
    /// `zone` or `region/zone` of the endpoint's node, when known.
    pub locality: Option<String>,
}
