//! Validation of TrafficPolicy specs.
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

#[test]
fn resilience_settings_compile_with_their_defaults() {
    use crate::policy::resilience::{Abort, HashOn};
    let compiled = compile(
        "demo",
        "echo",
        spec(
            "targetRefs: [{kind: Service, name: echo}]
loadBalancer: {algorithm: ConsistentHash, consistentHash: {header: X-User}}
retry: {attempts: 2, perTryTimeout: 1s, retryOn: [5xx], retriableGrpcStatuses: [unavailable], backoff: {baseInterval: 10ms}}
outlierDetection: {consecutiveGatewayErrors: 3, interval: 1s, baseEjectionTime: 5s}
healthCheck: {path: /healthz, interval: 1s, timeout: 2s}
localRateLimit: {requests: 10, per: 1s}
faultInjection: {abort: {grpcStatus: 14, percent: 50}, headers: [{name: X-Chaos, value: '1'}]}",
        )
        .expect("spec"),
    )
    .expect("compiles");
    let r = &compiled.resilience;
    let retry = r.retry.as_ref().expect("retry");
    assert!(retry.retries_status(503) && retry.retries_status(500) && !retry.retries_status(404));
    assert!(retry.retries_grpc(14) && !retry.retries_grpc(5));
    assert_eq!(retry.backoff_cap(1), Duration::from_millis(10));
    assert_eq!(retry.backoff_cap(3), Duration::from_millis(40));
    assert_eq!(retry.backoff_cap(10), Duration::from_millis(100));
    assert_eq!(r.hash, Some(HashOn::Header("x-user".into())));
    let outlier = r.outlier.as_ref().expect("outlier");
    assert_eq!(
        (outlier.consecutive_gateway, outlier.max_percent),
        (Some(3), 10)
    );
    let health = r.health.as_ref().expect("health");
    assert_eq!(
        (health.timeout, health.healthy, health.unhealthy),
        (Duration::from_secs(1), 1, 3)
    );
    assert_eq!(r.rate_limit.expect("limit").burst, 10);
    let fault = r.fault.as_ref().expect("fault");
    assert_eq!(fault.abort, Some((Abort::Grpc(14), 50)));
    assert_eq!(fault.headers, [("x-chaos".to_owned(), "1".to_owned())]);
    assert!(compiled.waypoint_only.contains(&"retry"));
}

#[test]
fn bad_resilience_settings_are_refused_with_the_field_named() {
    let cases = [
        ("retry: {attempts: 0}", "retry.attempts"),
        ("retry: {attempts: 2, retryOn: [sometimes]}", "retry.retryOn"),
        ("retry: {attempts: 2, retryOn: [retriable-status-codes]}", "no code is listed"),
        ("retry: {attempts: 2, retriableGrpcStatuses: [ok]}", "retriableGrpcStatuses"),
        ("retry: {attempts: 2, backoff: {baseInterval: 1s, maxInterval: 10ms}}", "maxInterval"),
        ("loadBalancer: {algorithm: ConsistentHash}", "needs consistentHash"),
        ("loadBalancer: {algorithm: ConsistentHash, consistentHash: {header: a, sourceIP: true}}", "exactly one"),
        ("loadBalancer: {algorithm: Random, consistentHash: {header: a}}", "only read with"),
        ("outlierDetection: {interval: 1s, baseEjectionTime: 1s}", "consecutiveErrors or"),
        ("healthCheck: {path: healthz, interval: 1s, timeout: 1s}", "start with /"),
        ("healthCheck: {path: /h, interval: 10ms, timeout: 1s}", "under the minimum"),
        ("faultInjection: {abort: {percent: 5}}", "exactly one of httpStatus"),
        ("faultInjection: {abort: {grpcStatus: 17, percent: 5}}", "not a gRPC error code"),
        ("localRateLimit: {requests: 5, per: 1s, burst: 0}", "localRateLimit.burst"),
    ];
    for (yaml, expected) in cases {
        let yaml = format!("targetRefs: [{{kind: Service, name: x}}]\n{yaml}");
        let error = compile("demo", "p", spec(&yaml).expect(&yaml)).expect_err(&yaml);
        assert!(error.to_string().contains(expected), "{yaml}: {error}");
    }
}
