use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;

fn docs(yaml: &str) -> Registry {
    let (docs, error) = super::local::parse_documents(yaml);
    assert!(error.is_none(), "{error:?}");
    Registry::from_objects(docs.into_iter().map(|d| ("test.yaml".to_owned(), d)))
}

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.io/mesh: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, annotations: {weft.io/netns: /run/netns/a, weft.io/cgroup: /cg/a}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: off, namespace: demo, labels: {weft.io/mesh: disabled}, annotations: {weft.io/netns: /x, weft.io/cgroup: /y}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: legacy, annotations: {weft.io/netns: /x, weft.io/cgroup: /y}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: demo, labels: {kubernetes.io/service-name: echo}}
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.9]
  conditions: {ready: false}
ports: [{name: http, port: 8080}]
";

#[test]
fn enrollment_follows_namespace_and_pod_labels() {
    let registry = docs(CLUSTER);
    let (placed, unplaceable) = registry.enrolled_on("n1", &super::ByAnnotation);
    assert_eq!(
        placed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    assert!(unplaceable.is_empty());
    assert!(registry
        .enrolled_on("n2", &super::ByAnnotation)
        .0
        .is_empty());
}

#[test]
fn service_vip_resolves_to_ready_endpoints_with_target_port() {
    let registry = docs(CLUSTER);
    let (service, port) = registry
        .service_by_vip(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80))
        .expect("vip");
    assert_eq!(
        registry.endpoints(service, port),
        vec!["10.0.0.1:8080".parse().expect("addr")]
    );
    assert!(registry
        .service_by_vip(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 81))
        .is_none());
}

#[test]
fn bad_objects_are_reported_and_skipped() {
    let registry = docs(&format!(
        "{CLUSTER}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: broken, namespace: demo}}\nstatus: {{podIP: not-an-ip}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: demo}}\nspec: {{}}\n"
    ));
    assert_eq!(registry.errors.len(), 2, "{:?}", registry.errors);
    assert!(registry.errors[0].reason.contains("not-an-ip"));
    assert!(registry.errors[1].reason.contains("metadata.name"));
    assert_eq!(
        registry
            .errors
            .iter()
            .map(|e| e.problem)
            .collect::<Vec<_>>(),
        ["bad_address", "missing_field"]
    );
    assert_eq!(registry.pods.len(), 3, "good pods kept");
}

#[test]
fn gateway_routes_are_kept_with_their_parents() {
    let registry = docs(
        r"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: reviews}, {name: waypoint, namespace: infra}]
  hostnames: [reviews.demo]
  rules: [{backendRefs: [{name: reviews-v2, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: demo}
spec:
  parentRefs: [{name: rpc}]
  rules:
  - matches: [{method: {service: echo.Echo, method: Say}, headers: [{name: x-a, value: b}]}]
    backendRefs: [{name: rpc-v1, port: 50051}]
",
    );
    assert!(registry.errors.is_empty(), "{:?}", registry.errors);
    assert_eq!(registry.routes.len(), 2);
    assert_eq!(registry.routes[0].parents, ["reviews", "infra/waypoint"]);
    assert_eq!(registry.routes[0].hostnames, ["reviews.demo"]);
    assert_eq!(registry.routes[1].kind, "GRPCRoute");
    // HTTPRoute's method is a string and GRPCRoute's an object: both are read.
    let grpc = &registry.routes[1].spec.rules[0].matches[0];
    assert!(
        matches!(&grpc.method, Some(super::routes::MethodMatch::Grpc(m)) if m.method.as_deref() == Some("Say")),
        "{grpc:?}"
    );
    assert_eq!(
        registry.routes[0].spec.rules[0].backend_refs[0].port,
        Some(9080)
    );
}

#[test]
fn a_finished_pod_is_neither_enrolled_nor_found_by_its_address() {
    let registry = docs(&format!(
        "{CLUSTER}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: job-1, namespace: demo, annotations: {{weft.io/netns: /x}}}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: 10.0.0.7, phase: Succeeded}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: new, namespace: demo, annotations: {{weft.io/netns: /x}}}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: 10.0.0.8, phase: Running}}\n"
    ));
    assert!(registry.errors.is_empty(), "{:?}", registry.errors);
    assert!(registry.pod_by_ip(Ipv4Addr::new(10, 0, 0, 7)).is_none());
    assert!(registry.pod_by_ip(Ipv4Addr::new(10, 0, 0, 8)).is_some());
    let enrolled: Vec<_> = registry
        .enrolled_pods_on("n1")
        .map(|p| p.name.as_str())
        .collect();
    assert!(!enrolled.contains(&"job-1"), "{enrolled:?}");
    assert!(enrolled.contains(&"new"), "{enrolled:?}");
}

#[test]
fn a_host_network_pod_is_never_enrolled_nor_taken_for_a_mesh_peer() {
    // Its podIP is the node's address: a lookup by that address must not find a pod to
    // tunnel to, and capturing it would capture the node.
    let registry = docs(&format!(
        "{CLUSTER}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: node-exporter, namespace: demo, annotations: {{weft.io/netns: /x}}}}\nspec: {{nodeName: n1, hostNetwork: true}}\nstatus: {{podIP: 192.168.0.1}}\n"
    ));
    assert!(registry.errors.is_empty(), "{:?}", registry.errors);
    let pod = registry.pod("demo", "node-exporter").expect("kept");
    assert!(pod.host_network);
    assert!(!registry.is_enrolled(pod));
    assert!(registry.pod_by_ip(Ipv4Addr::new(192, 168, 0, 1)).is_none());
    assert!(registry
        .workload_at("192.168.0.1".parse().expect("ip"))
        .is_none());
    let (placed, _) = registry.enrolled_on("n1", &super::ByAnnotation);
    assert!(placed.iter().all(|p| p.name != "node-exporter"));
}

#[test]
fn traffic_policies_attach_to_services_and_bad_ones_are_reported() {
    let registry = docs(&format!(
        "{CLUSTER}---
apiVersion: weft.io/v1alpha1
kind: TrafficPolicy
metadata: {{name: b-later, namespace: demo}}
spec: {{targetRefs: [{{kind: Service, name: echo}}], connectTimeout: 9s}}
---
apiVersion: weft.io/v1alpha1
kind: TrafficPolicy
metadata: {{name: a-first, namespace: demo}}
spec: {{targetRefs: [{{kind: Service, name: echo}}], connectTimeout: 300ms, loadBalancer: {{algorithm: Random}}}}
---
apiVersion: weft.io/v1alpha1
kind: TrafficPolicy
metadata: {{name: other-namespace, namespace: legacy}}
spec: {{targetRefs: [{{kind: Service, name: echo}}], connectTimeout: 1s}}
---
apiVersion: weft.io/v1alpha1
kind: TrafficPolicy
metadata: {{name: typo, namespace: demo}}
spec: {{targetRefs: [{{kind: Service, name: echo}}], conectTimeout: 1s}}
---
apiVersion: weft.io/v1alpha1
kind: TrafficPolicy
metadata: {{name: bad-duration, namespace: demo}}
spec: {{targetRefs: [{{kind: Service, name: echo}}], connectTimeout: soon}}
"
    ));
    let rejected: Vec<&str> = registry.errors.iter().map(|e| e.object.as_str()).collect();
    assert_eq!(
        rejected,
        ["TrafficPolicy demo/typo", "TrafficPolicy demo/bad-duration"],
        "{:?}",
        registry.errors
    );
    assert!(
        registry.errors[0].reason.contains("conectTimeout"),
        "{:?}",
        registry.errors
    );
    assert!(
        registry.errors[1].reason.contains("connectTimeout"),
        "{:?}",
        registry.errors
    );
    let (service, _) = registry
        .service_by_vip(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80))
        .expect("vip");
    let applied = registry.traffic_for(service).expect("a policy applies");
    assert_eq!(applied.id(), "demo/a-first", "the first by name wins");
    assert_eq!(
        applied.connect_timeout,
        Some(std::time::Duration::from_millis(300))
    );
}

#[test]
fn a_pod_reached_through_another_path_to_the_same_netns_is_the_same_placement() {
    let placement = |netns: &str| {
        let netns = PathBuf::from(netns);
        PodPlacement {
            namespace: "demo".into(),
            name: "a".into(),
            ip: Ipv4Addr::new(10, 0, 0, 1),
            service_account: "sa".into(),
            netns_id: PodPlacement::netns_id_of(&netns),
            netns,
            cgroup: None,
        }
    };
    // Two processes' links to one netns (here: this process and this thread).
    let by_process = placement("/proc/self/ns/net");
    let by_thread = placement("/proc/thread-self/ns/net");
    assert!(by_process.netns_id.is_some());
    assert!(by_process.same_as(&by_thread));
    // Unreadable paths compare as paths; another pod IP is another placement.
    assert!(!placement("/nonexistent/a").same_as(&placement("/nonexistent/b")));
    let mut moved = by_thread.clone();
    moved.ip = Ipv4Addr::new(10, 0, 0, 2);
    assert!(!by_process.same_as(&moved));
}

#[test]
fn a_ports_protocol_comes_from_app_protocol_then_its_name() {
    let port = |name: &str, app_protocol: Option<&str>| ServicePort {
        name: name.into(),
        port: 80,
        target_port: None,
        app_protocol: app_protocol.map(Into::into),
    };
    assert_eq!(port("web", Some("http")).protocol(), AppProtocol::Http1);
    assert_eq!(
        port("web", Some("kubernetes.io/h2c")).protocol(),
        AppProtocol::Http2
    );
    assert_eq!(port("http", Some("grpc")).protocol(), AppProtocol::Grpc);
    // appProtocol wins over the name; an unknown declared protocol is bytes.
    assert_eq!(port("http-web", Some("tcp")).protocol(), AppProtocol::Tcp);
    assert_eq!(
        port("http", Some("example.com/x")).protocol(),
        AppProtocol::Tcp
    );
    assert_eq!(port("http-web", None).protocol(), AppProtocol::Http1);
    assert_eq!(port("http2-api", None).protocol(), AppProtocol::Http2);
    assert_eq!(port("grpc", None).protocol(), AppProtocol::Grpc);
    assert_eq!(port("tcp-db", None).protocol(), AppProtocol::Tcp);
    assert_eq!(port("main", None).protocol(), AppProtocol::Unknown);
    assert_eq!(port("", None).protocol(), AppProtocol::Unknown);
}

#[test]
fn nodes_place_pods_in_their_zone_and_region() {
    let registry = docs(&format!(
        "{CLUSTER}---
apiVersion: v1
kind: Node
metadata: {{name: n1, labels: {{topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z1}}}}
---
apiVersion: v1
kind: Node
metadata: {{name: n2, labels: {{topology.kubernetes.io/region: r1}}}}
"
    ));
    let node = registry
        .node_of(std::net::IpAddr::from([10, 0, 0, 1]))
        .expect("a's node");
    assert_eq!(
        (node.region.as_deref(), node.zone.as_deref()),
        (Some("r1"), Some("z1"))
    );
    assert_eq!(registry.nodes["n2"].zone, None);
    let near = registry.nearness(
        Some(node),
        &[
            std::net::SocketAddr::from(([10, 0, 0, 1], 80)),
            std::net::SocketAddr::from(([10, 9, 9, 9], 80)),
        ],
    );
    assert_eq!(near, [0, 2]);
}
