//! The playground's waypoint `demo/waypoint`: started with the agents (its pod on node-b), and
//! the tour's L7 part: `demo/echo` is labelled to use it and given an HTTPRoute, then a 90/10
//! split counted over 100 requests, a header route, a redirect, a header a filter added, the
//! requests with the routes they took and a route-check; a gRPC stream on the Service's
//! `grpc` port (`weft-echo grpc`) once the route is gone; then the resilience part
//! (`demo_resilience`) and L7 authorization with JWTs (`demo_authz`) on the Service itself;
//! finally the label comes off again.

use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::Context as _;
use weft_harness::{manifests::Manifests, Cluster};

use crate::demo;

/// The route the tour gives `demo/echo`.
const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs:
  - {group: '', kind: Service, name: echo, port: 80}
  rules:
  - matches:
    - headers: [{name: x-version, value: v2}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /old}
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: x-weft-route, value: split}]
";

/// Starts `weft-waypoint` in the waypoint pod from the agents' manifest folder and CA; returns
/// its PID once it is ready.
/// Starts the OTLP receiver, then the waypoint exporting to it; returns both PIDs.
pub fn start(
    cluster: &Cluster,
    bin: &Path,
    manifests: &Path,
    state: &Path,
) -> anyhow::Result<(u32, u32)> {
    let pod = cluster.pod("demo", "waypoint").clone();
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::File::create(logs.join("waypoint.log"))?;
    let binary = bin.join("weft-waypoint");
    let collector = crate::demo_tracing::start_collector(cluster)?;
    let pid = cluster.spawn_in_pod_logged(
        &pod,
        &binary.to_string_lossy(),
        &[
            "--manifests",
            &manifests.to_string_lossy(),
            "--namespace",
            "demo",
            "--name",
            "waypoint",
            "--ca-dir",
            &logs.join("ca").to_string_lossy(),
        ],
        crate::demo_tracing::WAYPOINT_ENV,
        log,
    )?;
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod.netns,
                "curl",
                "-sf",
                "--max-time",
                "1",
            ])
            .arg("http://127.0.0.1:15021/healthz/ready")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    anyhow::ensure!(
        ready,
        "the waypoint did not become ready within 10 s (log in {})",
        logs.join("waypoint.log").display()
    );
    Ok((pid, collector))
}

/// `curl` in demo/client with `args`.
pub(crate) fn curl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let netns = &cluster.pod("demo", "client").netns;
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-sS", "--max-time", "5"])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip netns exec {netns} curl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `weft-echo grpc` in demo/client with `args`; its output, and whether it exited 0.
pub(crate) fn grpc(cluster: &Cluster, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let netns = &cluster.pod("demo", "client").netns;
    let binary = crate::shell::root().join("target/debug/weft-echo");
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(&binary)
        .arg("grpc")
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// gRPC on the Service's `grpc` port (`kubernetes.io/h2c`), carried by the waypoint as HTTP/2:
/// a bidirectional stream of three messages, each reply naming the pod and what it received.
fn tour_grpc(cluster: &Cluster) -> anyhow::Result<()> {
    let target = format!("{}:9090", demo::ECHO_VIP);
    demo::banner(&format!(
        "ip netns exec weft-demo-client weft-echo grpc {target} --method Stream --count 3 -H x-tour:grpc (through the waypoint)"
    ));
    let args = [
        target.as_str(),
        "--method",
        "Stream",
        "--count",
        "3",
        "-H",
        "x-tour:grpc",
    ];
    let (mut ok, mut out) = (false, String::new());
    for _ in 0..50 {
        (ok, out) = grpc(cluster, &args)?;
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::ensure!(ok, "weft-echo grpc {target} failed: {}", out.trim());
    for line in out.lines() {
        let reply: serde_json::Value = serde_json::from_str(line).context("a reply line")?;
        let metadata = reply["metadata"].as_object();
        println!(
            "  {:<8} {:<8} x-tour: {}  :authority {}  ({} metadata entries)",
            reply["pod"].as_str().unwrap_or("?"),
            reply["message"].as_str().unwrap_or("?"),
            reply["metadata"]["x-tour"].as_str().unwrap_or("-"),
            reply["metadata"][":authority"].as_str().unwrap_or("-"),
            metadata.map_or(0, serde_json::Map::len),
        );
    }
    anyhow::ensure!(out.lines().count() == 3, "three replies: {out}");
    Ok(())
}

pub(crate) fn weftctl_waypoint(args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["--waypoint", "demo/waypoint"];
    full.extend_from_slice(args);
    demo::weftctl(&full)
}

/// The tour's L7 part; leaves `demo/echo` as it found it (L4, no route).
pub fn tour(cluster: &Cluster, manifests: &Manifests) -> anyhow::Result<()> {
    demo::banner(
        "The waypoint: label demo/echo weft.io/use-waypoint: waypoint and give it an HTTPRoute",
    );
    println!(
        "{}",
        ROUTE
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    manifests.write("routes.yaml", ROUTE)?;
    demo::write_manifests_with(cluster, manifests, false, true)?;
    let url = format!("http://{}/catalog", demo::ECHO_VIP);
    let applied = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        curl(cluster, &[&url]).is_ok_and(|b| b.contains("x-weft-route: split"))
    });
    anyhow::ensure!(applied, "the route did not apply within 5 s");

    demo::banner("100 requests to demo/echo: the 90/10 split, counted");
    let urls: Vec<String> = (0..100).map(|_| url.clone()).collect();
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let bodies = curl(cluster, &refs)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in bodies.lines().filter_map(|l| l.strip_prefix("server=")) {
        *counts.entry(line).or_default() += 1;
    }
    for (server, n) in &counts {
        println!("  {server:<8} {n:>3} of 100");
    }
    anyhow::ensure!(
        counts.values().sum::<usize>() == 100,
        "every request answered: {counts:?}"
    );

    demo::banner("A header a filter added, as echo-v1 received it");
    let body = curl(cluster, &[&url])?;
    for line in body.lines().filter(|l| {
        l.starts_with("server=") || l.contains("x-weft-route") || l.contains("x-forwarded-for")
    }) {
        println!("  {line}");
    }

    demo::banner("curl -H 'x-version: v2': the header rule sends it to echo-v2");
    let body = curl(cluster, &["-H", "x-version: v2", &url])?;
    println!("  answered by {}", demo::answer_line(&body, "server="));

    demo::banner("curl -i /old/page: the waypoint answers a redirect itself");
    let head = curl(
        cluster,
        &["-si", &format!("http://{}/old/page", demo::ECHO_VIP)],
    )?;
    for line in head.lines().take_while(|l| !l.trim().is_empty()) {
        println!("  {line}");
    }

    demo::banner("weftctl --waypoint demo/waypoint routes");
    weftctl_waypoint(&["routes"])?;
    demo::banner("weftctl --waypoint demo/waypoint requests --route 'demo/echo rule 0' (the header rule), and --status 3xx");
    weftctl_waypoint(&["requests", "--route", "demo/echo rule 0"])?;
    weftctl_waypoint(&["requests", "--status", "3xx"])?;
    demo::banner("weftctl --waypoint demo/waypoint route-check GET http://10.96.0.10/old/x -H 'x-version: v1' (nothing is sent)");
    weftctl_waypoint(&[
        "route-check",
        "GET",
        &format!("http://{}/old/x", demo::ECHO_VIP),
        "-H",
        "x-version: v1",
    ])?;
    demo::banner("node-a's flows: the client's agent carried these through the waypoint");
    let node = cluster.node("node-a").clone();
    let flows = cluster.admin(&node, "/flows").context("node-a /flows")?;
    let via: Vec<&serde_json::Value> = flows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["service"] == "demo/echo" && f["waypoint"].is_string())
        .collect();
    if let Some(last) = via.last() {
        println!(
            "  {} events of connections to demo/echo; the last: {} -> {} via {} (proven {})",
            via.len(),
            last["workload"].as_str().unwrap_or("?"),
            last["service"].as_str().unwrap_or("?"),
            last["waypoint"].as_str().unwrap_or("none"),
            last["peerIdentity"].as_str().unwrap_or("?"),
        );
    }

    // The resilience part runs on the Service itself, with no route.
    manifests.write("routes.yaml", "")?;
    std::thread::sleep(Duration::from_millis(800));
    // After the route is gone: the HTTPRoute above names no parentRef port, so it attaches to
    // every port of the Service and would take gRPC too.
    tour_grpc(cluster)?;
    crate::demo_resilience::tour(cluster, manifests)?;
    crate::demo_authz::tour(cluster, manifests)?;
    crate::demo_tracing::tour(cluster)?;

    demo::banner("The label comes off: demo/echo is L4 again");
    demo::write_manifests(cluster, manifests, false)?;
    Ok(())
}
