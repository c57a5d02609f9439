//! `cargo xtask demo`: the SPEC playground. Two nodes, each with a `weft-agent`; an enrolled
//! `demo` namespace and a plain `legacy` one; echo servers behind Service `demo/echo` (and
//! `demo/echo-v1`, `demo/echo-v2` for route backends); the waypoint `demo/waypoint`, running
//! from the start and used once the tour labels `demo/echo`. A scripted tour, then teardown
//! (`up` leaves it running, `down` removes it).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use serde_json::json;
use weft_harness::{
    agent::pin_dir,
    cluster,
    manifests::{self, Manifests},
    Cluster, ClusterSpec, PodSpec, RunId,
};

use crate::{build, setup, shell};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Action {
    /// Bring up, run the tour, tear down.
    Tour,
    /// Bring up and leave running.
    Up,
    /// Remove a playground left by `up`.
    Down,
}

pub(crate) const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const ECHO_V1_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const ECHO_V2_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);

fn spec() -> ClusterSpec {
    ClusterSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("demo", "client", "node-a"),
            PodSpec::new("demo", "echo-v1", "node-b"),
            PodSpec::new("demo", "echo-v2", "node-a"),
            PodSpec::new("legacy", "plain", "node-b"),
            PodSpec::new("demo", "waypoint", "node-b"),
        ],
    }
}

pub(crate) fn state_dir() -> PathBuf {
    shell::root().join("target/weft-demo")
}

pub fn run(action: Action) -> anyhow::Result<()> {
    if let Action::Down = action {
        down();
        println!("demo: playground removed");
        return Ok(());
    }
    setup::run()?;
    let bin = build::all(false)?;
    let (cluster, manifests) = start(&bin)?;
    if let Action::Up = action {
        let client = cluster.pod("demo", "client").netns.clone();
        cluster.keep_running();
        print_how_to_poke(&client, &manifests);
        return Ok(());
    }
    let result = tour(&cluster, &manifests);
    drop(cluster);
    down();
    println!("\ndemo: playground removed");
    result
}

/// Brings up the playground from built binaries in `bin` (removing any earlier one first) and
/// writes playground.json; the caller keeps it running or tears it down.
pub(crate) fn start(bin: &Path) -> anyhow::Result<(Cluster, Manifests)> {
    down();
    // A fresh playground starts from the SPEC's manifests alone, with empty logs and a new
    // CA: what an earlier one was given (a policy, a route) must not apply here.
    match std::fs::remove_dir_all(state_dir()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("clearing {}", state_dir().display()));
        }
        _ => {}
    }
    let cluster = Cluster::start_demo(&spec())?;
    let manifests = Manifests::create(&state_dir().join("manifests"))?;
    write_manifests(&cluster, &manifests, false)?;
    manifests.write("waypoint.yaml", GATEWAY)?;
    for pod in cluster.pods.iter().filter(|p| p.name.starts_with("echo")) {
        let echo = bin.join("weft-echo");
        cluster.spawn_in_pod(pod, &echo.to_string_lossy(), &["0.0.0.0:8080", &pod.name])?;
    }
    let mut agents = Vec::new();
    for node in &cluster.nodes {
        let pid = cluster
            .start_agent(
                node,
                &bin.join("weft-agent"),
                &manifests.dir,
                &state_dir().join("logs"),
            )
            .with_context(|| {
                format!(
                    "starting the agent on {} (log in {})",
                    node.name,
                    state_dir().join("logs").display()
                )
            })?;
        agents.push((node.name.clone(), pid));
    }
    let waypoint = crate::demo_waypoint::start(&cluster, bin, &manifests.dir, &state_dir())?;
    write_playground(&cluster, &manifests, &agents, waypoint)?;
    Ok((cluster, manifests))
}

fn print_how_to_poke(client: &str, manifests: &Manifests) {
    println!(
        "demo: the playground is up; it is described in {}",
        state_dir().join("playground.json").display()
    );
    println!("  try:     ip netns exec {client} curl -s http://{ECHO_VIP}/");
    println!("  agents:  ip netns exec weft-node-a curl -s 127.0.0.1:15000/stats");
    println!("  waypoint: sudo target/debug/weftctl --waypoint demo/waypoint routes (label a Service weft.io/use-waypoint: waypoint to use it)");
    println!(
        "  edit:    {} (changes apply live)",
        manifests.dir.display()
    );
    println!(
        "  spans:   python3 tests/py/otlp_receiver.py tree {} (send x-weft-trace: 1 to keep one)",
        crate::demo_tracing::spans_file().display()
    );
    println!("  graph:   sudo target/debug/weftctl graph --all");
    println!("  book:    docs/README.md runs on this playground");
    println!("  remove:  cargo xtask demo down");
}

pub(crate) fn banner(text: &str) {
    println!("\n=== {text}");
}

/// Runs curl inside a pod exactly as a user would: `ip netns exec weft-<ns>-<pod> curl …`.
fn curl(cluster: &Cluster, namespace: &str, pod: &str, url: &str) -> anyhow::Result<String> {
    let netns = &cluster.pod(namespace, pod).netns;
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-sS",
            "--max-time",
            "5",
            url,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip netns exec {netns} curl {url}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn answer_line<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or("?")
}

/// Runs weftctl against the playground and prints its output, indented.
pub(crate) fn weftctl(args: &[&str]) -> anyhow::Result<()> {
    let binary = shell::root().join("target/debug/weftctl");
    let out = Command::new(&binary)
        .arg("--playground")
        .arg(state_dir().join("playground.json"))
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "weftctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    Ok(())
}

fn show_stats(cluster: &Cluster) -> anyhow::Result<()> {
    for node in &cluster.nodes {
        let stats = cluster.admin(node, "/stats")?;
        let p = &stats["proxy"];
        let k = &stats["kernel"];
        println!(
            "  {:<7} outbound {:>3}  inbound {:>3}  HBONE connections opened {}  | kernel: redirected out {} in {}",
            node.name, p["outboundOpened"], p["inboundOpened"], stats["pool"]["connectionsOpened"], k["outbound_redirected"], k["inbound_redirected"]
        );
    }
    Ok(())
}

fn tour(cluster: &Cluster, manifests: &Manifests) -> anyhow::Result<()> {
    banner("The playground");
    for node in &cluster.nodes {
        println!(
            "  node {:<7} {:<15} netns {}",
            node.name, node.ip, node.netns
        );
    }
    for pod in &cluster.pods {
        let enrolled = if pod.namespace == "demo" {
            "enrolled"
        } else {
            "not enrolled"
        };
        println!(
            "  pod  {:<15} {:<12} on {}  ({enrolled})",
            format!("{}/{}", pod.namespace, pod.name),
            pod.ip.to_string(),
            pod.node
        );
    }
    println!("  service demo/echo  {ECHO_VIP}:80 -> 8080 (http), :9090 (grpc) on echo-v1, echo-v2");

    banner(
        "ip netns exec weft-demo-client curl http://10.96.0.10/hello, four times (captured by eBPF, carried by the agents)",
    );
    let mut seen = std::collections::BTreeSet::new();
    for i in 1..=4 {
        let body = curl(
            cluster,
            "demo",
            "client",
            &format!("http://{ECHO_VIP}/hello"),
        )?;
        let server = answer_line(&body, "server=").to_owned();
        println!(
            "  #{i}: answered by {server:<8} which saw the peer {}",
            answer_line(&body, "peer=")
        );
        seen.insert(server);
    }
    anyhow::ensure!(
        seen.len() == 2,
        "expected both echo versions to answer, got {seen:?}"
    );
    println!(
        "  both versions answered; the servers saw the client pod's own IP {}",
        cluster.pod("demo", "client").ip
    );

    banner("weftctl --node node-b flows: the server side, with the client's proven identity");
    weftctl(&["--node", "node-b", "flows", "--to", "demo/echo-v1"])?;
    banner("weftctl --node node-a certs: the SVIDs node-a holds for its own pods");
    weftctl(&["--node", "node-a", "certs"])?;
    banner("weftctl --node node-a workloads");
    weftctl(&["--node", "node-a", "workloads"])?;

    tour_policy_and_enrollment(cluster, manifests)
}

/// Plaintext from outside the mesh, a DENY policy and why it denied, live enrollment.
fn tour_policy_and_enrollment(cluster: &Cluster, manifests: &Manifests) -> anyhow::Result<()> {
    banner(
        "legacy/plain (not enrolled) calls echo-v1 directly: only the destination agent sees it",
    );
    let echo_v1 = cluster.pod("demo", "echo-v1").ip;
    let body = curl(
        cluster,
        "legacy",
        "plain",
        &format!("http://{echo_v1}:8080/from-legacy"),
    )?;
    println!(
        "  answered by {}, peer {}",
        answer_line(&body, "server="),
        answer_line(&body, "peer=")
    );
    show_stats(cluster)?;

    banner("A DENY policy for namespace legacy, applied by writing a manifest; then: why was it denied?");
    let deny = "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-legacy, namespace: demo}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {ipBlocks: [10.244.2.11/32]}\n";
    manifests.write("policies.yaml", deny)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let refused = curl(
        cluster,
        "legacy",
        "plain",
        &format!("http://{echo_v1}:8080/denied"),
    );
    println!(
        "  legacy/plain -> echo-v1: {}",
        if refused.is_err() {
            "refused"
        } else {
            "unexpectedly answered"
        }
    );
    weftctl(&["--node", "node-b", "flows", "--verdict", "deny"])?;
    manifests.write("policies.yaml", "")?;

    banner(
        "A TrafficPolicy on Service demo/echo: what node-a applies, and what waits for a waypoint",
    );
    let traffic = "apiVersion: weft.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: echo, namespace: demo}\nspec:\n  targetRefs: [{kind: Service, name: echo}]\n  connectTimeout: 2s\n  loadBalancer: {algorithm: Random}\n  retryBudget: {percent: 20}\n";
    manifests.write("traffic.yaml", traffic)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    weftctl(&["--node", "node-a", "policies"])?;
    manifests.write("traffic.yaml", "")?;

    banner("Enroll namespace legacy live by editing its label in the manifest folder");
    write_manifests(cluster, manifests, true)?;
    std::thread::sleep(std::time::Duration::from_millis(800));
    let body = curl(
        cluster,
        "legacy",
        "plain",
        &format!("http://{ECHO_VIP}/now-enrolled"),
    )?;
    println!("  legacy/plain -> echo Service answered by {} (the Service VIP only works through an agent)", answer_line(&body, "server="));
    show_stats(cluster)?;
    write_manifests(cluster, manifests, false)?;
    banner("weftctl --node node-a top --iterations 1: the busiest workload pairs");
    weftctl(&["--node", "node-a", "top", "--iterations", "1"])?;
    crate::demo_waypoint::tour(cluster, manifests)?;
    println!("\ndemo: tour complete");
    Ok(())
}

/// The waypoint the playground runs from the start.
const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: demo}\nspec:\n  gatewayClassName: weft-waypoint\n  listeners:\n  - {name: mesh, port: 15008, protocol: HBONE}\n";

pub(crate) fn write_manifests(
    cluster: &Cluster,
    manifests: &Manifests,
    legacy_enrolled: bool,
) -> anyhow::Result<()> {
    write_manifests_with(cluster, manifests, legacy_enrolled, false)
}

/// The namespaces, pods and Services; `demo/echo` labelled to use the waypoint when
/// `through_waypoint`.
pub(crate) fn write_manifests_with(
    cluster: &Cluster,
    manifests: &Manifests,
    legacy_enrolled: bool,
    through_waypoint: bool,
) -> anyhow::Result<()> {
    let namespaces = [
        manifests::namespace("demo", true),
        manifests::namespace("legacy", legacy_enrolled),
    ]
    .join("---\n");
    manifests.write("namespaces.yaml", &namespaces)?;
    let pods: Vec<String> = cluster
        .pods
        .iter()
        .map(|p| {
            if p.name == "waypoint" {
                manifests::pod(
                    p,
                    &[
                        ("app", &p.name),
                        ("gateway.networking.k8s.io/gateway-name", "waypoint"),
                    ],
                )
            } else {
                manifests::pod(p, &[("app", &p.name)])
            }
        })
        .collect();
    manifests.write("pods.yaml", &pods.join("---\n"))?;
    let (v1, v2) = (
        cluster.pod("demo", "echo-v1").ip,
        cluster.pod("demo", "echo-v2").ip,
    );
    let services = manifests::playground_services(
        [ECHO_VIP, ECHO_V1_VIP, ECHO_V2_VIP],
        (v1, v2),
        through_waypoint,
    );
    manifests.write("services.yaml", &services)
}

fn write_playground(
    cluster: &Cluster,
    manifests: &Manifests,
    agents: &[(String, u32)],
    (waypoint_pid, collector_pid): (u32, u32),
) -> anyhow::Result<()> {
    let waypoint = cluster.pod("demo", "waypoint");
    let service = |name: &str, vip: Ipv4Addr, alt: bool| {
        let ports: Vec<serde_json::Value> = manifests::playground_ports(alt)
            .iter()
            .map(|p| json!({"name": p.name, "port": p.port, "targetPort": p.target_port, "appProtocol": p.app_protocol}))
            .collect();
        json!({"namespace": "demo", "name": name, "vip": vip, "ports": ports})
    };
    let doc = json!({
        "manifests": manifests.dir,
        "nodes": cluster.nodes.iter().map(|n| {
            let pid = agents.iter().find(|(name, _)| *name == n.name).map(|(_, pid)| *pid);
            json!({
            "name": n.name, "netns": n.netns, "ip": n.ip, "podCIDR": n.pod_cidr,
            "admin": "127.0.0.1:15000",
            "agentPid": pid,
            "agentCommand": pid.map(command_line),
            "agentEnv": pid.map(agent_env),
            "agentLog": state_dir().join("logs").join(format!("{}.log", n.name)),
            "pins": pin_dir(cluster, n),
            })
        }).collect::<Vec<_>>(),
        "pods": cluster.pods.iter().map(|p| json!({"namespace": p.namespace, "name": p.name, "node": p.node, "netns": p.netns, "ip": p.ip, "cgroup": p.cgroup})).collect::<Vec<_>>(),
        "waypoints": [{
            "namespace": "demo", "name": "waypoint", "netns": waypoint.netns, "ip": waypoint.ip,
            "node": waypoint.node, "admin": "127.0.0.1:15000", "pid": waypoint_pid,
        }],
        "services": [service("echo", ECHO_VIP, false), service("echo-v1", ECHO_V1_VIP, true), service("echo-v2", ECHO_V2_VIP, true)],
        "ca": state_dir().join("logs").join("ca"),
        "collector": {"pid": collector_pid, "spans": crate::demo_tracing::spans_file()},
    });
    let path = state_dir().join("playground.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The agent's argv as the kernel holds it: run again (inside the node's netns, with
/// [`agent_env`]) it starts the same agent, which is how an upgrade by hand begins.
fn command_line(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The variables that configure the agent (`RUST_LOG`, `WEFT_*`, `OTEL_*`), from its
/// environment; the rest is the shell's.
fn agent_env(pid: u32) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter_map(|pair| {
                    let pair = String::from_utf8_lossy(pair).into_owned();
                    let (key, value) = pair.split_once('=')?;
                    (key == "RUST_LOG" || key.starts_with("WEFT_") || key.starts_with("OTEL_"))
                        .then(|| (key.to_owned(), value.into()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Stops the agents recorded in playground.json by PID, removes their pins, then the
/// playground's namespaces and cgroups. Safe to run when nothing is up.
pub(crate) fn down() {
    let path = state_dir().join("playground.json");
    if let Ok(doc) = std::fs::read_to_string(&path)
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap_or_default())
    {
        for node in doc["nodes"].as_array().into_iter().flatten() {
            if let Some(pid) = node["agentPid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for waypoint in doc["waypoints"].as_array().into_iter().flatten() {
            if let Some(pid) = waypoint["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        if let Some(pid) = doc["collector"]["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let agent = shell::root().join("target/debug/weft-agent");
        for node in doc["nodes"].as_array().into_iter().flatten() {
            if let Some(pins) = node["pins"].as_str() {
                uninstall(&agent, Path::new(pins));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    cluster::remove_named(&RunId::demo(), &spec());
    let pins = PathBuf::from("/sys/fs/bpf").join(RunId::demo().root_name());
    let _ = std::fs::remove_dir_all(pins);
}

fn uninstall(agent: &Path, pins: &Path) {
    if !pins.exists() {
        return;
    }
    let out = Command::new(agent)
        .args([
            "--node-name",
            "demo",
            "--manifests",
            "/nonexistent",
            "--bpffs-dir",
        ])
        .arg(pins)
        .arg("uninstall")
        .output();
    if !out.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "demo: `weft-agent uninstall` failed for {}; removing the pins directly",
            pins.display()
        );
        let _ = std::fs::remove_dir_all(pins);
    }
}
