//! What the agent was told and holds: `/services`, `/policies`, `/trafficpolicies` and
//! `/certs`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// `GET /services`: one element per Service, with the endpoints ready behind its ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `ip:port` of every ready endpoint, over all ports.
    pub endpoints: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// Numeric only; a named target port is resolved through the EndpointSlice.
    pub target_port: Option<u16>,
}

/// `GET /policies`: one element per `AuthorizationPolicy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub namespace: String,
    pub name: String,
    /// The CRD's `spec` as written (its schema is the CRD's, already camelCase): this crate
    /// stays free of the Kubernetes types that define it.
    pub spec: serde_json::Value,
    /// Set on a policy that could not be read, which then denies all it may cover: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Where it is enforced: `agent`, `waypoint NS/NAME`, or both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enforced_at: Vec<String>,
}

/// `GET /trafficpolicies`: one element per `TrafficPolicy`, with what the agent applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub namespace: String,
    pub name: String,
    /// The CRD's `spec` as written.
    pub spec: serde_json::Value,
    /// Services (in `namespace`) it applies to.
    pub services: Vec<String>,
    /// Milliseconds; absent when the policy leaves the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    pub algorithm: String,
    /// Settings present in the spec that only a waypoint applies.
    pub waypoint_only: Vec<String>,
    /// The waypoints (`namespace/name`) that serve its target Services and so apply those
    /// settings; empty when none does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_by: Vec<String>,
}

/// `GET /certs`: one element per SVID the agent holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cert {
    pub identity: String,
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// Negative once expired.
    pub seconds_to_expiry: i64,
}
