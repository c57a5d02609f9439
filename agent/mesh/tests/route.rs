//! Resolution of original destinations in process: a Service VIP:port picks its ready
//! endpoints in turn with the target port mapped (by name per EndpointSlice, else the
//! numeric targetPort), a port the Service does not have and a pod IP pass through as they
//! are, a Service without ready endpoints is a typed error with a bounded reason, and a
//! TrafficPolicy sets (and names) the connect timeout.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use weft_mesh::{
    registry::Registry,
    route::{RoundRobin, Route, RouteError, CONNECT_TIMEOUT},
};

fn registry(yaml: &str) -> Registry {
    let (docs, error) = weft_mesh::registry::local::parse_documents(yaml);
    assert!(error.is_none(), "{error:?}");
    let registry = Registry::from_objects(docs.into_iter().map(|d| ("test.yaml".to_owned(), d)));
    assert!(registry.errors.is_empty(), "{:?}", registry.errors);
    registry
}

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.io/mesh: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000, targetPort: 9001}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: demo, labels: {kubernetes.io/service-name: echo}}
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
- addresses: [10.0.0.9]
  conditions: {ready: false}
ports: [{name: http, port: 8081}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: demo}
spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80, targetPort: 8080}]}
";

fn vip(last: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, last), port)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

/// Resolves with fresh endpoint health (nothing skipped).
fn resolve(
    rotation: &RoundRobin,
    registry: &weft_mesh::registry::Registry,
    original: std::net::SocketAddrV4,
) -> Result<Route, RouteError> {
    let health = weft_mesh::balance::EndpointHealth::default();
    let client = std::net::IpAddr::from([10, 244, 0, 99]);
    weft_mesh::route::resolve((rotation, &health), registry, (client, original))
}

#[test]
fn a_vip_port_picks_ready_endpoints_in_turn_with_the_slice_port_of_the_same_name() {
    let registry = registry(CLUSTER);
    let rotation = RoundRobin::default();
    let picks: Vec<SocketAddr> = (0..4)
        .map(|_| {
            resolve(&rotation, &registry, vip(10, 80))
                .expect("route")
                .destination
        })
        .collect();
    assert_eq!(
        picks,
        [
            addr("10.0.0.1:8081"),
            addr("10.0.0.2:8081"),
            addr("10.0.0.1:8081"),
            addr("10.0.0.2:8081")
        ],
        "the not-ready endpoint is never picked"
    );
    let route = resolve(&rotation, &registry, vip(10, 80)).expect("route");
    assert_eq!(route.service.as_deref(), Some("demo/echo"));
    assert_eq!(route.connect_timeout, CONNECT_TIMEOUT);
}

#[test]
fn a_port_without_a_slice_port_of_its_name_falls_back_to_the_numeric_target_port() {
    let registry = registry(CLUSTER);
    let route = resolve(&RoundRobin::default(), &registry, vip(10, 9000)).expect("route");
    assert_eq!(route.destination, addr("10.0.0.1:9001"));
}

#[test]
fn each_service_port_rotates_on_its_own() {
    let registry = registry(CLUSTER);
    let rotation = RoundRobin::default();
    let http = resolve(&rotation, &registry, vip(10, 80)).expect("route");
    let admin = resolve(&rotation, &registry, vip(10, 9000)).expect("route");
    assert_eq!(http.destination.ip(), admin.destination.ip());
}

#[test]
fn a_port_the_service_does_not_have_passes_through_unchanged() {
    let registry = registry(CLUSTER);
    let route = resolve(&RoundRobin::default(), &registry, vip(10, 81)).expect("route");
    assert_eq!(route.destination, addr("10.96.0.10:81"));
    assert_eq!(route.service, None);
}

#[test]
fn a_pod_ip_or_an_outside_address_is_used_as_is_with_the_default_timeout() {
    let registry = registry(CLUSTER);
    for original in ["10.0.0.1:8080", "192.0.2.7:443"] {
        let SocketAddr::V4(original) = addr(original) else {
            unreachable!("v4 literals")
        };
        let route = resolve(&RoundRobin::default(), &registry, original).expect("route");
        assert_eq!(route.destination, SocketAddr::V4(original));
        assert_eq!(route.connect_timeout, CONNECT_TIMEOUT);
        assert_eq!(route.timeout_from, None);
    }
}

#[test]
fn a_service_without_ready_endpoints_is_a_typed_error_with_a_bounded_reason() {
    let registry = registry(CLUSTER);
    let error = resolve(&RoundRobin::default(), &registry, vip(11, 80)).expect_err("no endpoints");
    assert_eq!(
        error,
        RouteError::NoReadyEndpoints {
            service: "demo/empty".into(),
            port: 80
        }
    );
    assert_eq!(error.reason(), "no_ready_endpoints");
    assert_eq!(
        error.to_string(),
        "service demo/empty port 80 has no ready endpoints"
    );
    let failure = weft_mesh::connections::Failure::from(error);
    assert_eq!(failure.reason.as_str(), "no_ready_endpoints");
    assert_eq!(
        failure.detail,
        "service demo/empty port 80 has no ready endpoints"
    );
}

#[test]
fn a_traffic_policy_sets_the_connect_timeout_and_says_so_when_it_expires() {
    let registry = registry(&format!(
        "{CLUSTER}---
apiVersion: weft.io/v1alpha1
kind: TrafficPolicy
metadata: {{name: slow, namespace: demo}}
spec: {{targetRefs: [{{kind: Service, name: echo}}], connectTimeout: 300ms}}
"
    ));
    let route = resolve(&RoundRobin::default(), &registry, vip(10, 80)).expect("route");
    assert_eq!(route.connect_timeout, Duration::from_millis(300));
    assert_eq!(route.timeout_from.as_deref(), Some("demo/slow"));
    assert_eq!(
        route.timed_out(),
        "connect timed out after 300ms (connectTimeout of TrafficPolicy demo/slow)"
    );
}

#[test]
fn random_balancing_only_picks_ready_endpoints() {
    let registry = registry(&format!(
        "{CLUSTER}---
apiVersion: weft.io/v1alpha1
kind: TrafficPolicy
metadata: {{name: spread, namespace: demo}}
spec: {{targetRefs: [{{kind: Service, name: echo}}], loadBalancer: {{algorithm: Random}}}}
"
    ));
    let rotation = RoundRobin::default();
    for _ in 0..50 {
        let picked = resolve(&rotation, &registry, vip(10, 80))
            .expect("route")
            .destination;
        assert!(
            [addr("10.0.0.1:8081"), addr("10.0.0.2:8081")].contains(&picked),
            "{picked}"
        );
    }
}

#[test]
fn past_its_bound_the_rotation_state_starts_again_and_counts_it() {
    let limits = std::sync::Arc::new(weft_mesh::limits::Limits::default());
    let rotation = RoundRobin::counted_by(limits.clone());
    let choices = [addr("10.0.0.1:80"), addr("10.0.0.2:80")];
    for port in 0..=weft_mesh::route::MAX_ROTATIONS {
        rotation.next_of(&format!("demo/svc:{port}"), &choices);
    }
    let hits: Vec<(String, u64)> = limits
        .snapshot()
        .into_iter()
        .map(|h| (h.limit, h.hits))
        .collect();
    assert_eq!(hits, [("round_robin_rotations".to_owned(), 1)]);
    // A key seen after the reset starts its rotation at the first choice.
    assert_eq!(rotation.next_of("demo/svc:0", &choices), Some(choices[0]));
}

#[test]
fn a_service_that_uses_a_waypoint_resolves_to_a_waypoint_pod_and_without_one_fails_with_a_reason() {
    let with_waypoint = format!(
        "{CLUSTER}---\napiVersion: v1\nkind: Service\nmetadata: {{name: routed, namespace: demo, labels: {{weft.io/use-waypoint: wp}}}}\nspec: {{clusterIP: 10.96.0.12, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
    );
    let registry_without = registry(&with_waypoint);
    let error = resolve(&RoundRobin::default(), &registry_without, vip(12, 80))
        .expect_err("no waypoint pod");
    assert!(
        matches!(error, RouteError::NoReadyWaypoint { .. }),
        "{error:?}"
    );
    assert_eq!(error.reason(), "no_ready_waypoint");
    let with_pod = format!(
        "{with_waypoint}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: wp-0, namespace: demo, labels: {{gateway.networking.k8s.io/gateway-name: wp}}}}\nspec: {{nodeName: n, serviceAccountName: wp}}\nstatus: {{podIP: 10.244.1.50}}\n"
    );
    let registry = registry(&with_pod);
    let route = resolve(&RoundRobin::default(), &registry, vip(12, 80)).expect("route");
    assert_eq!(route.destination, addr("10.244.1.50:15008"));
    assert_eq!(route.via.map(|w| w.to_string()).as_deref(), Some("demo/wp"));
    // Services without the label are untouched.
    let direct = resolve(&RoundRobin::default(), &registry, vip(10, 80)).expect("route");
    assert!(direct.via.is_none());
}
