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
    pub retry_budget: Option<RetryBudget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rate_limit: Option<LocalRateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_injection: Option<FaultInjection>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    pub algorithm: Algorithm,
}

/// `RoundRobin` and `Random` pick per connection (node agent); `LeastRequest` needs requests
/// (waypoint).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Algorithm {
    #[default]
    RoundRobin,
    Random,
    LeastRequest,
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
    pub consecutive_errors: u32,
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
    pub http_status: u16,
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
    #[serde(skip_serializing_if = "Option::is_none", with = "millis")]
    pub connect_timeout: Option<Duration>,
    pub algorithm: Algorithm,
    /// Settings present in the spec that need a waypoint; the agent does not apply them.
    pub waypoint_only: Vec<&'static str>,
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

fn percent(field: &'static str, value: u32) -> Result<(), PolicyError> {
    if value > 100 {
        return Err(PolicyError::NotPercent { field, value });
    }
    Ok(())
}

fn check_fault(fault: &FaultInjection) -> Result<(), PolicyError> {
    if let Some(delay) = &fault.delay {
        parse_duration(&delay.fixed_delay)
            .map_err(|e| e.within("faultInjection.delay.fixedDelay"))?;
        percent("faultInjection.delay.percent", delay.percent)?;
    }
    if let Some(abort) = &fault.abort {
        if !(200..=599).contains(&abort.http_status) {
            return Err(PolicyError::NotStatus(abort.http_status));
        }
        percent("faultInjection.abort.percent", abort.percent)?;
    }
    Ok(())
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
    for (i, target) in spec.target_refs.iter().enumerate() {
        match (target.group.as_str(), target.kind.as_str()) {
            ("" | "core", "Service") => services.push(target.name.clone()),
            ("gateway.networking.k8s.io", "HTTPRoute") => {}
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
    let mut waypoint_only = Vec::new();
    let algorithm = spec
        .load_balancer
        .as_ref()
        .map_or_else(Algorithm::default, |lb| lb.algorithm);
    if algorithm == Algorithm::LeastRequest {
        waypoint_only.push("loadBalancer.algorithm LeastRequest");
    }
    if let Some(breaker) = &spec.circuit_breaker {
        waypoint_only.push("circuitBreaker");
        let limits = [
            breaker.max_connections,
            breaker.max_pending_requests,
            breaker.max_requests,
            breaker.max_retries,
        ];
        if limits.contains(&Some(0)) {
            return Err(PolicyError::ZeroLimit);
        }
    }
    if let Some(outlier) = &spec.outlier_detection {
        waypoint_only.push("outlierDetection");
        if outlier.consecutive_errors == 0 {
            return Err(PolicyError::ZeroCount {
                field: "outlierDetection.consecutiveErrors",
            });
        }
        parse_duration(&outlier.interval).map_err(|e| e.within("outlierDetection.interval"))?;
        parse_duration(&outlier.base_ejection_time)
            .map_err(|e| e.within("outlierDetection.baseEjectionTime"))?;
        percent(
            "outlierDetection.maxEjectionPercent",
            outlier.max_ejection_percent.unwrap_or(10),
        )?;
    }
    if let Some(budget) = &spec.retry_budget {
        waypoint_only.push("retryBudget");
        percent("retryBudget.percent", budget.percent)?;
    }
    if let Some(limit) = &spec.local_rate_limit {
        waypoint_only.push("localRateLimit");
        if limit.requests == 0 {
            return Err(PolicyError::ZeroCount {
                field: "localRateLimit.requests",
            });
        }
        let per = parse_duration(&limit.per).map_err(|e| e.within("localRateLimit.per"))?;
        if per.is_zero() {
            return Err(PolicyError::ZeroDuration {
                field: "localRateLimit.per",
            });
        }
    }
    if let Some(fault) = &spec.fault_injection {
        waypoint_only.push("faultInjection");
        check_fault(fault)?;
    }
    Ok(TrafficSettings {
        namespace: namespace.into(),
        name: name.into(),
        spec,
        services,
        connect_timeout,
        algorithm,
        waypoint_only,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{compile, parse_duration, Algorithm, TrafficPolicySpec};

    fn spec(yaml: &str) -> Result<TrafficPolicySpec, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn durations_follow_the_gateway_api_format() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h0m0s500ms"),
            Ok(Duration::from_millis(3_600_500))
        );
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "-1s",
            "5sec",
            "1h1m1s1ms1s",
            "123456s",
            "5 s",
        ] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(error.to_string().contains("e.g. 250ms"), "{bad}: {error}");
            assert_eq!(error.reason(), "bad_duration");
        }
    }

    #[test]
    fn a_full_policy_compiles_and_says_what_needs_a_waypoint() {
        let compiled = compile(
            "demo",
            "echo",
            spec(
                "targetRefs: [{kind: Service, name: echo}, {group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
loadBalancer: {algorithm: Random}
connectTimeout: 300ms
circuitBreaker: {maxConnections: 100, maxRequests: 1000}
outlierDetection: {consecutiveErrors: 5, interval: 10s, baseEjectionTime: 30s}
retryBudget: {percent: 20, minRetriesPerSecond: 10}
localRateLimit: {requests: 100, per: 1s, burst: 200}
faultInjection: {delay: {fixedDelay: 1s, percent: 5}, abort: {httpStatus: 503, percent: 1}}",
            )
            .expect("spec"),
        )
        .expect("compiles");
        assert_eq!(compiled.services, ["echo"]);
        assert_eq!(compiled.connect_timeout, Some(Duration::from_millis(300)));
        assert_eq!(compiled.algorithm, Algorithm::Random);
        assert_eq!(
            compiled.waypoint_only,
            [
                "circuitBreaker",
                "outlierDetection",
                "retryBudget",
                "localRateLimit",
                "faultInjection"
            ]
        );
        let json = serde_json::to_value(&compiled).expect("json");
        assert_eq!(json["connectTimeout"], 300);
    }

    #[test]
    fn bad_policies_are_refused_with_the_field_named() {
        let cases = [
            ("targetRefs: []", "targetRefs is empty"),
            ("targetRefs: [{kind: Deployment, name: x}]", "targetRefs[0]: Deployment"),
            ("targetRefs: [{kind: Service, name: x}]\nconnectTimeout: 5 seconds", "connectTimeout:"),
            ("targetRefs: [{kind: Service, name: x}]\nconnectTimeout: 0s", "connectTimeout is 0"),
            ("targetRefs: [{kind: Service, name: x}]\ncircuitBreaker: {maxConnections: 0}", "circuitBreaker"),
            ("targetRefs: [{kind: Service, name: x}]\nretryBudget: {percent: 101}", "retryBudget.percent is 101"),
            ("targetRefs: [{kind: Service, name: x}]\nlocalRateLimit: {requests: 1, per: 0s}", "localRateLimit.per is 0"),
            ("targetRefs: [{kind: Service, name: x}]\nfaultInjection: {abort: {httpStatus: 99, percent: 1}}", "httpStatus is 99"),
            ("targetRefs: [{kind: Service, name: x}]\noutlierDetection: {consecutiveErrors: 1, interval: 1x, baseEjectionTime: 1s}", "outlierDetection.interval"),
        ];
        for (yaml, expected) in cases {
            let error = compile("demo", "p", spec(yaml).expect(yaml)).expect_err(yaml);
            assert!(error.to_string().contains(expected), "{yaml}: {error}");
        }
        // Unknown fields and unknown algorithms are refused at parse time.
        assert!(spec("targetRefs: []\nretries: 3").is_err());
        assert!(spec("targetRefs: []\nloadBalancer: {algorithm: Maglev}").is_err());
    }
}
