//! The waypoint on the real kernel: a Service labelled `weft.io/use-waypoint` is tunnelled by
//! the client's agent to the waypoint pod (HBONE, `:authority` = the VIP), which routes each
//! HTTP request by the Service's HTTPRoute (weights, a header match, a redirect, a header
//! filter) and tunnels it to a backend pod through that pod's agent under its own identity.
//! curl is the client, over HTTP/1.1 and HTTP/2 prior knowledge; a Service without the label
//! stays L4.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use weft_harness::{
    eventually,
    manifests::{self, Manifests},
    require_privileges, Cluster, ClusterSpec, PodSpec,
};

const ECHO: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const ECHO_V1: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const ECHO_V2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);
const DIRECT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 23);
const MIRROR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 24);

struct Mesh {
    cluster: Cluster,
    _manifests: Manifests,
    logs: PathBuf,
}

fn bin(name: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_weft-testpod")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask test` (it builds every binary first)",
        path.display()
    );
    path
}

fn labelled_service(name: &str, vip: Ipv4Addr, backends: &[Ipv4Addr], waypoint: bool) -> String {
    let yaml = manifests::service("demo", name, vip, 80, 8080, backends);
    if waypoint {
        yaml.replacen(
            &format!("  name: {name}\n  namespace: demo\nspec:"),
            &format!("  name: {name}\n  namespace: demo\n  labels:\n    weft.io/use-waypoint: waypoint\nspec:"),
            1,
        )
    } else {
        yaml
    }
}

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: demo
spec:
  gatewayClassName: weft-waypoint
  listeners:
  - {name: mesh, port: 15008, protocol: HBONE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo
  namespace: demo
spec:
  parentRefs:
  - {group: '', kind: Service, name: echo, port: 80}
  rules:
  - matches:
    - headers: [{name: x-version, value: v2}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /slow}
    backendRefs: [{name: echo-v1, port: 80}]
    timeouts: {request: 400ms}
  - matches:
    - path: {type: PathPrefix, value: /mirrored}
    backendRefs: [{name: echo-v1, port: 80}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: echo-mirror, port: 80}
  - matches:
    - path: {type: PathPrefix, value: /old}
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: example.com, statusCode: 301}
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: x-weft-route, value: split}]
";

fn start() -> Mesh {
    let spec = ClusterSpec {
        nodes: vec!["node0".into(), "node1".into()],
        pods: vec![
            PodSpec::new("demo", "client", "node0"),
            PodSpec::new("demo", "echo-v2", "node0"),
            PodSpec::new("demo", "echo-v1", "node1"),
            PodSpec::new("demo", "waypoint", "node1"),
            PodSpec::new("demo", "mirror", "node0"),
        ],
    };
    let cluster = Cluster::start(&spec).expect("cluster");
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(cluster.run_id().root_name());
    let manifests = Manifests::create(&base.join("manifests")).expect("manifests");
    let logs = base.join("logs");
    manifests
        .write("namespaces.yaml", &manifests::namespace("demo", true))
        .expect("namespace");
    let pods: Vec<String> = cluster
        .pods
        .iter()
        .map(|p| {
            if p.name == "waypoint" {
                manifests::pod(p, &[("gateway.networking.k8s.io/gateway-name", "waypoint")])
            } else {
                manifests::pod(p, &[])
            }
        })
        .collect();
    manifests
        .write("pods.yaml", &pods.join("---\n"))
        .expect("pods");
    let (v1, v2) = (
        cluster.pod("demo", "echo-v1").ip,
        cluster.pod("demo", "echo-v2").ip,
    );
    let services = [
        labelled_service("echo", ECHO, &[v1, v2], true),
        labelled_service("echo-v1", ECHO_V1, &[v1], false),
        labelled_service("echo-v2", ECHO_V2, &[v2], false),
        labelled_service("direct", DIRECT, &[v1], false),
        labelled_service(
            "echo-mirror",
            MIRROR,
            &[cluster.pod("demo", "mirror").ip],
            false,
        ),
    ]
    .join("---\n");
    manifests
        .write("services.yaml", &services)
        .expect("services");
    manifests.write("routes.yaml", ROUTE).expect("routes");
    let echo = bin("weft-echo");
    for name in ["echo-v1", "echo-v2"] {
        let pod = cluster.pod("demo", name).clone();
        cluster
            .spawn_in_pod(&pod, echo.to_str().expect("path"), &["0.0.0.0:8080", name])
            .expect("echo");
    }
    for node in ["node0", "node1"] {
        let node = cluster.node(node).clone();
        cluster
            .start_agent(&node, &bin("weft-agent"), &manifests.dir, &logs)
            .expect("agent");
    }
    spawn_mirror_and_waypoint(&cluster, &echo, &manifests.dir, &logs);
    let waypoint = cluster.pod("demo", "waypoint").clone();
    let mesh = Mesh {
        cluster,
        _manifests: manifests,
        logs,
    };
    eventually(Duration::from_secs(10), "the waypoint is ready", || {
        weft_harness::netns::exec(
            &waypoint.netns,
            &[
                "curl",
                "-sf",
                "--max-time",
                "1",
                "http://127.0.0.1:15021/healthz/ready",
            ],
        )
        .is_ok()
    });
    mesh
}

/// The mirror's echo server (its requests counted in `mirror.log`) and the waypoint (its log
/// in `waypoint.log`), from the same manifest folder and CA as the agents.
fn spawn_mirror_and_waypoint(
    cluster: &Cluster,
    echo: &std::path::Path,
    manifests: &std::path::Path,
    logs: &std::path::Path,
) {
    let mirror = cluster.pod("demo", "mirror").clone();
    std::fs::create_dir_all(logs).expect("logs");
    cluster
        .spawn_in_pod_logged(
            &mirror,
            echo.to_str().expect("path"),
            &["0.0.0.0:8080", "mirror"],
            &[],
            std::fs::File::create(logs.join("mirror.log")).expect("mirror log"),
        )
        .expect("mirror echo");
    let waypoint = cluster.pod("demo", "waypoint").clone();
    let manifests_dir = manifests.to_str().expect("path");
    let ca_dir = logs.join("ca");
    let log = std::fs::File::create(logs.join("waypoint.log")).expect("waypoint log");
    cluster
        .spawn_in_pod_logged(
            &waypoint,
            bin("weft-waypoint").to_str().expect("path"),
            &[
                "--manifests",
                manifests_dir,
                "--namespace",
                "demo",
                "--name",
                "waypoint",
                "--ca-dir",
                ca_dir.to_str().expect("path"),
            ],
            &[("RUST_LOG", "info,weft_waypoint=debug")],
            log,
        )
        .expect("waypoint");
}

impl Mesh {
    /// `curl` from demo/client; returns the body (and the status line with `-i`).
    fn curl(&self, args: &[&str]) -> String {
        let client = self.cluster.pod("demo", "client").clone();
        let mut full = vec!["-s", "--max-time", "5"];
        full.extend_from_slice(args);
        let out = self
            .cluster
            .run_in_pod(&client, "curl", &full)
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}\nwaypoint log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.logs.join("waypoint.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn a_service_that_uses_the_waypoint_is_routed_by_its_httproute() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let client_ip = mesh.cluster.pod("demo", "client").ip.to_string();
    // A deep path: the catch-all rule takes every path, not only "/".
    let url = format!("http://{ECHO}/catalog/items");
    // The 90/10 split over 100 requests: within the binomial 99.9% interval [1, 22].
    let mut v2 = 0;
    for _ in 0..100 {
        let body = mesh.curl(&[&url]);
        assert!(
            body.contains("header x-weft-route: split"),
            "the filter's header: {body}"
        );
        assert!(
            body.contains(&format!("header x-forwarded-for: {client_ip}")),
            "the client travels in X-Forwarded-For: {body}"
        );
        if body.contains("server=echo-v2") {
            v2 += 1;
        } else {
            assert!(body.contains("server=echo-v1"), "{body}");
        }
    }
    assert!(
        (1..=22).contains(&v2),
        "{v2} of 100 requests reached echo-v2 (weight 10 of 100)"
    );
    // A header match wins over the catch-all rule.
    for _ in 0..10 {
        let body = mesh.curl(&["-H", "x-version: v2", &url]);
        assert!(body.contains("server=echo-v2"), "{body}");
        assert!(
            !body.contains("x-weft-route"),
            "only the matched rule's filters apply"
        );
    }
    // HTTP/2 with prior knowledge reaches the backend as HTTP/2.
    let body = mesh.curl(&["--http2-prior-knowledge", &url]);
    assert!(body.contains("version=HTTP/2"), "{body}");
    // A redirect is the waypoint's own answer.
    let head = mesh.curl(&["-i", &format!("http://{ECHO}/old/page?q=1")]);
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: http://example.com/old/page?q=1"),
        "{head}"
    );
    // route-check explains the choice without sending anything, from the waypoint's admin.
    let waypoint = mesh.cluster.pod("demo", "waypoint").clone();
    let out = mesh
        .cluster
        .run_in_netns_only(
            &waypoint,
            bin("weftctl").to_str().expect("path"),
            &[
                "route-check",
                "GET",
                &format!("http://{ECHO}/old/x"),
                "-H",
                "x-version: v1",
            ],
        )
        .expect("weftctl");
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{explained} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        explained.contains("chosen: demo/echo rule 3"),
        "{explained}"
    );
    assert!(explained.contains("RequestRedirect"), "{explained}");
    assert!(
        explained.contains(r#"header x-version is "v1" (wants "v2")"#),
        "{explained}"
    );
    assert!(
        explained.contains("matches, but a more specific or earlier rule ranks first"),
        "the catch-all matched too: {explained}"
    );
    // The client's agent says the connection went through the waypoint.
    let node0 = mesh.cluster.node("node0").clone();
    let flows = mesh.cluster.admin(&node0, "/flows").expect("flows");
    assert!(
        flows
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["waypoint"] == "demo/waypoint" && f["service"] == "demo/echo"),
        "a flow names the waypoint: {flows}"
    );
    // The destination agent saw the waypoint's identity.
    let node1 = mesh.cluster.node("node1").clone();
    let flows = mesh.cluster.admin(&node1, "/flows").expect("flows");
    assert!(
        flows
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["peerIdentity"] == "spiffe://cluster.local/ns/demo/sa/waypoint"),
        "node1 recorded the waypoint as the peer: {flows}"
    );
}

#[test]
fn a_service_without_the_label_stays_l4() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let body = mesh.curl(&[&format!("http://{DIRECT}/")]);
    assert!(body.contains("server=echo-v1"), "{body}");
    assert!(
        !body.contains("x-forwarded-for"),
        "no waypoint touched it: {body}"
    );
    let node0 = mesh.cluster.node("node0").clone();
    let flows = mesh.cluster.admin(&node0, "/flows").expect("flows");
    let direct: Vec<&serde_json::Value> = flows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["service"] == "demo/direct")
        .collect();
    assert!(!direct.is_empty(), "{flows}");
    assert!(
        direct.iter().all(|f| f.get("waypoint").is_none()),
        "{flows}"
    );
}

#[test]
fn a_rules_timeout_answers_504_and_a_mirror_gets_a_copy_the_client_never_sees() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    // A rule's timeout answers 504 within 10% of it (the backend holds its answer 2 s).
    let timed = mesh.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_total}",
        "-H",
        "x-delay-ms: 2000",
        &format!("http://{ECHO}/slow"),
    ]);
    let (code, seconds) = timed.split_once(' ').expect("code and time");
    assert_eq!(code, "504", "{timed}");
    let seconds: f64 = seconds.trim().parse().expect("seconds");
    assert!(
        (0.36..=0.44).contains(&seconds),
        "504 after {seconds} s; the route's timeout is 400 ms"
    );
    let fast = mesh.curl(&["-H", "x-delay-ms: 50", &format!("http://{ECHO}/slow")]);
    assert!(
        fast.contains("server=echo-v1"),
        "within its timeout a request is answered: {fast}"
    );
    // A mirrored rule: the client sees only the primary's answer, the mirror gets a copy.
    for _ in 0..5 {
        let body = mesh.curl(&["-d", "copied body", &format!("http://{ECHO}/mirrored")]);
        assert!(
            body.contains("server=echo-v1"),
            "the primary answers: {body}"
        );
    }
    eventually(
        Duration::from_secs(5),
        "the mirror received every copy",
        || {
            std::fs::read_to_string(mesh.logs.join("mirror.log"))
                .unwrap_or_default()
                .lines()
                .filter(|l| *l == "request POST /mirrored")
                .count()
                == 5
        },
    );
}
