//! The playground's gRPC echo on the real kernel: echo pods serve `weft.echo.v1.Echo`, health
//! and reflection on 9090 beside HTTP on 8080, behind the playground's Services (`demo/echo`
//! at 10.96.0.10 with ports `http` and `grpc`, `kubernetes.io/h2c`), and `weft-echo grpc` is
//! the client in demo/client: at L4 through the agents, then with `demo/echo` labelled to use
//! the waypoint. Each reply names the pod and carries the metadata as the server received it;
//! `x-echo-fail-on` gives UNAVAILABLE, the JSON status line and exit code 14.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf, time::Duration};

use serde_json::Value;
use weft_harness::{
    manifests::{self, Manifests},
    require_privileges, Cluster, ClusterSpec, PodHandle, PodSpec,
};

const ECHO_BIN: &str = env!("CARGO_BIN_EXE_weft-echo");
const ECHO: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const ECHO_V1: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const ECHO_V2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: demo}\nspec:\n  gatewayClassName: weft-waypoint\n  listeners:\n  - {name: mesh, port: 15008, protocol: HBONE}\n";

/// The playground's shape: demo/client and echo-v2 on node0, echo-v1 and the waypoint on
/// node1, the three echo Services with the SPEC's ports, an agent per node and the waypoint.
struct Playground {
    cluster: Cluster,
    manifests: Manifests,
    logs: PathBuf,
}

fn bin(name: &str) -> String {
    let path = std::path::Path::new(ECHO_BIN).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask test` (it builds every binary first)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

impl Playground {
    fn start(through_waypoint: bool) -> Self {
        let spec = ClusterSpec {
            nodes: vec!["node0".into(), "node1".into()],
            pods: vec![
                PodSpec::new("demo", "client", "node0"),
                PodSpec::new("demo", "echo-v2", "node0"),
                PodSpec::new("demo", "echo-v1", "node1"),
                PodSpec::new("demo", "waypoint", "node1"),
            ],
        };
        let cluster = Cluster::start(&spec).expect("cluster");
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(cluster.run_id().root_name());
        let manifests = Manifests::create(&base.join("manifests")).expect("manifest folder");
        let logs = base.join("logs");
        std::fs::create_dir_all(&logs).expect("log folder");
        let playground = Self {
            cluster,
            manifests,
            logs,
        };
        playground
            .manifests
            .write("namespaces.yaml", &manifests::namespace("demo", true))
            .expect("namespaces");
        let pods: Vec<String> = playground
            .cluster
            .pods
            .iter()
            .map(|p| {
                if p.name == "waypoint" {
                    manifests::pod(p, &[("gateway.networking.k8s.io/gateway-name", "waypoint")])
                } else {
                    manifests::pod(p, &[("app", &p.name)])
                }
            })
            .collect();
        playground
            .manifests
            .write("pods.yaml", &pods.join("---\n"))
            .expect("pods");
        playground
            .manifests
            .write("waypoint.yaml", GATEWAY)
            .expect("gateway");
        playground.write_services(through_waypoint);
        playground.spawn_processes();
        playground
    }

    /// The echo servers, an agent per node and the waypoint, which it waits for.
    fn spawn_processes(&self) {
        let playground = self;
        for name in ["echo-v1", "echo-v2"] {
            let log = std::fs::File::create(playground.logs.join(format!("{name}.log")))
                .expect("echo log");
            playground
                .cluster
                .spawn_in_pod_logged(
                    playground.pod(name),
                    ECHO_BIN,
                    &["0.0.0.0:8080", name],
                    &[],
                    log,
                )
                .expect("echo server");
        }
        for node in ["node0", "node1"] {
            let node = playground.cluster.node(node).clone();
            playground
                .cluster
                .start_agent_with(
                    &node,
                    std::path::Path::new(&bin("weft-agent")),
                    &playground.manifests.dir,
                    &playground.logs,
                    &[],
                )
                .expect("agent");
        }
        let ca = playground.logs.join("ca");
        let log = std::fs::File::create(playground.logs.join("waypoint.log")).expect("log");
        playground
            .cluster
            .spawn_in_pod_logged(
                playground.pod("waypoint"),
                &bin("weft-waypoint"),
                &[
                    "--manifests",
                    &playground.manifests.dir.to_string_lossy(),
                    "--namespace",
                    "demo",
                    "--name",
                    "waypoint",
                    "--ca-dir",
                    &ca.to_string_lossy(),
                ],
                &[("RUST_LOG", "info,weft_waypoint=debug")],
                log,
            )
            .expect("waypoint");
        weft_harness::waypoint_mesh::wait_until_ready(playground.pod("waypoint"));
    }

    fn pod(&self, name: &str) -> &PodHandle {
        self.cluster.pod("demo", name)
    }

    /// The playground's Services (SPEC): `demo/echo` with `http` 80 → 8080 and `grpc` 9090,
    /// `demo/echo-v1` and `demo/echo-v2` with `http-alt` 8080 → 8080 as well.
    fn write_services(&self, through_waypoint: bool) {
        let (v1, v2) = (self.pod("echo-v1").ip, self.pod("echo-v2").ip);
        let services =
            manifests::playground_services([ECHO, ECHO_V1, ECHO_V2], (v1, v2), through_waypoint);
        self.manifests
            .write("services.yaml", &services)
            .expect("services");
    }

    /// `weft-echo grpc ARGS` in demo/client: its exit code and stdout lines.
    fn grpc(&self, args: &[&str]) -> (i32, Vec<String>) {
        let mut full = vec!["grpc"];
        full.extend_from_slice(args);
        let out = self
            .cluster
            .run_in_pod(self.pod("client"), ECHO_BIN, &full)
            .expect("weft-echo grpc");
        let stdout = String::from_utf8_lossy(&out.stdout);
        (
            out.status.code().unwrap_or(-1),
            stdout.lines().map(str::to_owned).collect(),
        )
    }

    /// `weft-echo grpc ARGS`, which must exit 0, as parsed JSON lines (it retries while the
    /// agents take in the manifests).
    fn grpc_ok(&self, args: &[&str]) -> Vec<Value> {
        let mut seen = (0, Vec::new());
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            seen = self.grpc(args);
            if seen.0 == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            seen.0,
            0,
            "weft-echo grpc {args:?} exited {}: {:?}\nwaypoint log:\n{}",
            seen.0,
            seen.1,
            std::fs::read_to_string(self.logs.join("waypoint.log")).unwrap_or_default()
        );
        seen.1
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    /// Flows the client's agent recorded to `demo/echo`.
    fn echo_flows(&self) -> Vec<Value> {
        let node0 = self.cluster.node("node0").clone();
        let flows = self.cluster.admin(&node0, "/flows").expect("flows");
        flows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["service"] == "demo/echo")
            .cloned()
            .collect()
    }
}

/// What every path must show: unary with metadata, both pods answering, a stream of three,
/// health, reflection and `x-echo-fail-on`.
fn check_echo_service(playground: &Playground, unary_calls_balance: bool) {
    let target = format!("{ECHO}:9090");
    let target = target.as_str();
    // Unary: the reply names the pod and carries the metadata as the server received it.
    let replies = playground.grpc_ok(&[target, "-H", "x-test: yes", "--message", "hi"]);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply = &replies[0];
    assert!(
        ["echo-v1", "echo-v2"].contains(&reply["pod"].as_str().unwrap_or_default()),
        "{reply}"
    );
    assert_eq!(reply["message"], "hi", "{reply}");
    assert_eq!(reply["metadata"]["x-test"], "yes", "{reply}");
    assert_eq!(
        reply["metadata"]["content-type"], "application/grpc",
        "{reply}"
    );
    assert_eq!(reply["metadata"][":authority"], target, "{reply}");
    // The contract's fields, in its order, on one line.
    let (code, lines) = playground.grpc(&[target, "--message", "hi"]);
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines.len() == 1 && lines[0].starts_with(r#"{"pod":"echo-v"#),
        "{lines:?}"
    );
    assert!(
        lines[0].contains(r#"","message":"hi","metadata":{"#),
        "{lines:?}"
    );

    check_both_pods_answer(playground, unary_calls_balance);
    check_stream_health_and_reflection(playground);
    check_fail_on(playground);
}

/// Both pods answer: per call through the waypoint (one connection, 20 calls), per
/// connection at L4 (a client process each).
fn check_both_pods_answer(playground: &Playground, unary_calls_balance: bool) {
    let target = format!("{ECHO}:9090");
    let target = target.as_str();
    // Both pods answer: per call through the waypoint (one connection, 20 calls), per
    // connection at L4 (a client process each).
    let mut pods = BTreeSet::new();
    if unary_calls_balance {
        for reply in playground.grpc_ok(&[target, "--count", "20"]) {
            pods.insert(reply["pod"].as_str().unwrap_or_default().to_owned());
        }
    } else {
        for _ in 0..20 {
            let reply = &playground.grpc_ok(&[target])[0];
            pods.insert(reply["pod"].as_str().unwrap_or_default().to_owned());
            if pods.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(
        pods,
        BTreeSet::from(["echo-v1".to_owned(), "echo-v2".to_owned()]),
        "both echo pods answered"
    );
}

fn check_stream_health_and_reflection(playground: &Playground) {
    let target = format!("{ECHO}:9090");
    let target = target.as_str();
    // Stream: each of three messages echoed back in order, on one stream (one pod).
    let replies = playground.grpc_ok(&[
        target,
        "--method",
        "Stream",
        "--count",
        "3",
        "--message",
        "m",
        "-H",
        "x-stream: 1",
    ]);
    let messages: Vec<&str> = replies
        .iter()
        .map(|r| r["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(messages, ["m 1", "m 2", "m 3"], "{replies:?}");
    assert!(
        replies
            .iter()
            .all(|r| r["pod"] == replies[0]["pod"] && r["metadata"]["x-stream"] == "1"),
        "{replies:?}"
    );

    // Health: the server and the echo service are SERVING.
    for service in ["", "weft.echo.v1.Echo"] {
        let replies = playground.grpc_ok(&[target, "--method", "Health", "--service", service]);
        assert_eq!(replies, [serde_json::json!({"status": "SERVING"})]);
    }

    // Reflection lists the echo service.
    let replies = playground.grpc_ok(&[target, "--method", "Reflection"]);
    let services = replies[0]["services"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for name in ["weft.echo.v1.Echo", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "{replies:?}");
    }
}

fn check_fail_on(playground: &Playground) {
    let target = format!("{ECHO}:9090");
    let target = target.as_str();
    // x-echo-fail-on naming the pod that answers: UNAVAILABLE, one status line, exit 14.
    // Both pods are named, so whichever answers fails.
    let (code, lines) = playground.grpc(&[
        target,
        "-H",
        "x-echo-fail-on: echo-v1",
        "-H",
        "x-echo-fail-on: echo-v2",
    ]);
    assert_eq!(code, 14, "{lines:?}");
    assert_eq!(lines.len(), 1, "only the status line: {lines:?}");
    let status: Value = serde_json::from_str(&lines[0]).expect("a JSON status line");
    assert_eq!(status["grpcStatus"], 14, "{status}");
    let message = status["grpcMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("fails calls carrying x-echo-fail-on"),
        "the server's own status, not the mesh's: {status}"
    );
    // The same for a stream, through the per-version Service of the pod named.
    let (code, lines) = playground.grpc(&[
        &format!("{ECHO_V1}:9090"),
        "--method",
        "Stream",
        "-H",
        "x-echo-fail-on: echo-v1",
    ]);
    assert_eq!(code, 14, "{lines:?}");
    assert!(
        lines[0].starts_with(r#"{"grpcStatus":14,"grpcMessage":"echo-v1 fails"#),
        "{lines:?}"
    );
    // Naming another pod changes nothing.
    let replies =
        playground.grpc_ok(&[&format!("{ECHO_V1}:9090"), "-H", "x-echo-fail-on: echo-v2"]);
    assert_eq!(replies[0]["pod"], "echo-v1", "{replies:?}");
}

#[test]
fn grpc_echo_answers_through_the_agents_at_l4() {
    if !require_privileges() {
        return;
    }
    let playground = Playground::start(false);
    check_echo_service(&playground, false);
    let flows = playground.echo_flows();
    assert!(!flows.is_empty(), "node0 carried connections to demo/echo");
    assert!(
        flows.iter().all(|f| !f["waypoint"].is_string()),
        "no waypoint at L4: {flows:?}"
    );
}

#[test]
fn grpc_echo_answers_through_the_waypoint_when_the_service_uses_it() {
    if !require_privileges() {
        return;
    }
    let playground = Playground::start(true);
    check_echo_service(&playground, true);
    let flows = playground.echo_flows();
    assert!(
        flows.iter().any(|f| f["waypoint"] == "demo/waypoint"),
        "node0's flows name the waypoint: {flows:?}"
    );
    // The waypoint carried the calls as HTTP/2 requests of the `grpc` port.
    let log = std::fs::read_to_string(playground.logs.join("waypoint.log")).unwrap_or_default();
    assert!(
        log.contains("/weft.echo.v1.Echo/Stream"),
        "the waypoint logged the gRPC requests:\n{log}"
    );
}
