//! `TrafficPolicy` (`weft.io/v1alpha1`): how traffic to a Service (or through an HTTPRoute) is
//! handled, by policy attachment. The types generate the CRD; `compile` validates an object once
//! per registry snapshot and says which of its settings the node agent applies itself (L4) and
//! which wait for a waypoint (L7).

use super::PolicyError;
use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::crd::TargetRef;

/// Connection and request handling for the Services or HTTPRoutes it targets.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "weft.io",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced
)]
#[kube(shortname = "wtp")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicySpec {
    /// Services (`kind: Service`) or HTTPRoutes (`group: gateway.networking.k8s.io`) of the
    /// policy's namespace; at least one.
    pub target_refs: Vec<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Time allowed to open a connection to an endpoint, as a Gateway API duration (`250ms`,
    /// `5s`, `1m30s`). Applied by the node agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<LocalRateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_injection: Option<FaultInjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    pub algorithm: Algorithm,
    /// What `ConsistentHash` hashes: exactly one of a header, a cookie or the source IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
    /// Prefer endpoints in the client's zone, then its region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityPreference>,
}

/// Endpoints on nodes in the client's zone first (`topology.kubernetes.io/zone`), then in its
/// region; a locality is passed over while the share of its endpoints that are healthy (not
/// ejected, skipped or failing health checks) is below `minHealthyPercent` (default 70).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityPreference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy_percent: Option<u32>,
}

/// `RoundRobin`, `Random` and `LeastRequest` (over active connections) pick per connection at
/// the node agent and per request at a waypoint; `ConsistentHash` needs requests (waypoint).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Algorithm {
    #[default]
    RoundRobin,
    Random,
    LeastRequest,
    ConsistentHash,
}

/// The key a `ConsistentHash` balancer keeps on one endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// A request header's value (a request without it goes to any endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The client's address.
    #[serde(
        default,
        rename = "sourceIP",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub source_ip: bool,
}

/// When and how often a request is sent again (at a waypoint). A route rule's own `retry`
/// wins over this for that rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Retries after the first attempt (1-10).
    pub attempts: u32,
    /// Time allowed for each attempt (a duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Any of `connect-failure`, `refused-stream`, `5xx`, `gateway-error` (502, 503, 504),
    /// `retriable-status-codes`; default `connect-failure`, `refused-stream`, `gateway-error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
    /// The codes `retriable-status-codes` means.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// gRPC statuses retried: `cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_grpc_statuses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// Exponential backoff with full jitter: before retry n the wait is random in
/// `[0, min(baseInterval * 2^(n-1), maxInterval)]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// A duration (default 25ms).
    pub base_interval: String,
    /// A duration (default 10 times the base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<String>,
}

/// An HTTP probe of every endpoint (at a waypoint): an endpoint failing `unhealthyThreshold`
/// probes in a row takes no requests until it passes `healthyThreshold` in a row.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// The path probed with GET; a 2xx answer passes.
    pub path: String,
    /// A duration.
    pub interval: String,
    /// A duration.
    pub timeout: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

/// Limits beyond which new connections or requests fail fast instead of queueing.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Ejects an endpoint after consecutive errors, for a time that grows with each ejection.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (or failed connects) that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<u32>,
    /// Consecutive 502, 503 or 504 answers (or failed connects) that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are reconsidered (a duration).
    pub interval: String,
    /// The first ejection's length (a duration).
    pub base_ejection_time: String,
    /// At most this share of a Service's endpoints ejected at once (0-100, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Retries allowed as a share of requests, so that retries cannot multiply an overload.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// 0-100.
    pub percent: u32,
    #[serde(default)]
    pub min_retries_per_second: u32,
}

/// A token bucket per proxy: `requests` per `per`, bursting to `burst`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimit {
    pub requests: u32,
    /// A duration.
    pub per: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
    /// Only requests carrying every one of these headers (exact values) get faults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// A duration.
    pub fixed_delay: String,
    /// Share of requests delayed, 0-100.
    pub percent: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The status answered; exactly one of this and `grpcStatus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// A gRPC status code (1-16), answered as HTTP 200 with `grpc-status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Share of requests aborted, 0-100.
    pub percent: u32,
}

/// A validated `TrafficPolicy`: its targets, what the node agent applies, and the settings
/// only a waypoint can apply (listed so `weftctl policies` can say so).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSettings {
    pub namespace: String,
    pub name: String,
    pub spec: TrafficPolicySpec,
    /// Services (by name, in `namespace`) the policy applies to.
    pub services: Vec<String>,
    /// HTTPRoutes (by name, in `namespace`) the policy applies to (at a waypoint).
    pub routes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", with = "millis")]
    pub connect_timeout: Option<Duration>,
    pub algorithm: Algorithm,
    /// Settings present in the spec that need a waypoint; the agent does not apply them.
    pub waypoint_only: Vec<&'static str>,
    /// What a waypoint applies per request, compiled.
    #[serde(skip)]
    pub resilience: super::resilience::Resilience,
}

impl TrafficSettings {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

mod millis {
    use std::time::Duration;

    #[expect(
        clippy::ref_option,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub fn serialize<S: serde::Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_u128(d.as_millis()),
            None => serializer.serialize_none(),
        }
    }
}

/// Parses a Gateway API duration (GEP-2257): one to four `<digits><unit>` parts, units `h`,
/// `m`, `s`, `ms`, e.g. `1h30m`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, PolicyError> {
    let bad = || PolicyError::NotDuration(text.into());
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            match rest.as_bytes().first() {
                Some(b'h') => (Duration::from_hours(1), 1),
                Some(b'm') => (Duration::from_mins(1), 1),
                Some(b's') => (Duration::from_secs(1), 1),
                _ => return Err(bad()),
            }
        };
        rest = &rest[len..];
        total += unit * u32::try_from(value).map_err(|_| bad())?;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

/// Validates a `TrafficPolicy`. Anything wrong rejects the whole object, so a half-applied
/// policy never surprises anyone.
pub fn compile(
    namespace: &str,
    name: &str,
    spec: TrafficPolicySpec,
) -> Result<TrafficSettings, PolicyError> {
    if spec.target_refs.is_empty() {
        return Err(PolicyError::NoTargets);
    }
    let mut services = Vec::new();
    let mut routes = Vec::new();
    for (i, target) in spec.target_refs.iter().enumerate() {
        match (target.group.as_str(), target.kind.as_str()) {
            ("" | "core", "Service") => services.push(target.name.clone()),
            ("gateway.networking.k8s.io", "HTTPRoute") => routes.push(target.name.clone()),
            (group, kind) => {
                return Err(PolicyError::BadTarget {
                    kind: kind.into(),
                    group: group.into(),
                }
                .within(format!("targetRefs[{i}]")))
            }
        }
    }
    let connect_timeout = spec
        .connect_timeout
        .as_deref()
        .map(|t| parse_duration(t).map_err(|e| e.within("connectTimeout")))
        .transpose()?;
    if connect_timeout == Some(Duration::ZERO) {
        return Err(PolicyError::ZeroDuration {
            field: "connectTimeout",
        });
    }
    let resilience = super::resilience::compile(&spec)?;
    let algorithm = spec
        .load_balancer
        .as_ref()
        .map_or_else(Algorithm::default, |lb| lb.algorithm);
    let waypoint_only = waypoint_only(&spec, algorithm);
    Ok(TrafficSettings {
        namespace: namespace.into(),
        name: name.into(),
        spec,
        services,
        routes,
        connect_timeout,
        algorithm,
        waypoint_only,
        resilience,
    })
}

/// The settings of `spec` the node agent does not apply, by their field names.
fn waypoint_only(spec: &TrafficPolicySpec, algorithm: Algorithm) -> Vec<&'static str> {
    let mut out = Vec::new();
    if algorithm == Algorithm::ConsistentHash {
        out.push("loadBalancer.algorithm ConsistentHash");
    }
    let present = [
        (spec.circuit_breaker.is_some(), "circuitBreaker"),
        (spec.outlier_detection.is_some(), "outlierDetection"),
        (spec.retry.is_some(), "retry"),
        (spec.retry_budget.is_some(), "retryBudget"),
        (spec.local_rate_limit.is_some(), "localRateLimit"),
        (spec.fault_injection.is_some(), "faultInjection"),
        (spec.health_check.is_some(), "healthCheck"),
    ];
    out.extend(present.iter().filter(|(on, _)| *on).map(|(_, name)| *name));
    out
}

#[cfg(test)]
#[path = "traffic_tests.rs"]
mod tests;
