//! Seeing and explaining connections, on the real kernel: OpenMetrics with the expected
//! labelled values, one JSON access-log line per connection, weftctl's tables, JSON and flow
//! stream (denials with their reason), and an admin API that only loopback can reach.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_harness::{netns, require_privileges};

mod common;
use common::{agent_bin, Fixture};

fn weftctl() -> PathBuf {
    agent_bin().with_file_name("weftctl")
}

/// Runs weftctl inside a node's netns; returns (success, stdout, stderr).
fn weftctl_in(f: &Fixture, node: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &f.cluster.node(node).netns])
        .arg(weftctl())
        .args(args)
        .output()
        .expect("weftctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `name{labels} value` lines of an OpenMetrics text, checked for shape.
fn parse_openmetrics(text: &str) -> Vec<(String, String, f64)> {
    assert_eq!(
        text.lines().last(),
        Some("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}")),
            ),
            None => (series, ""),
        };
        assert!(name.starts_with("weft_"), "{name} lacks the weft_ prefix");
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

/// `node`'s agent's metrics, scraped from inside the node as Prometheus would.
fn scrape(f: &Fixture, node: &str) -> Vec<(String, String, f64)> {
    let text = netns::exec(
        &f.cluster.node(node).netns,
        &["curl", "-sf", "http://127.0.0.1:15020/metrics"],
    )
    .expect("scrape");
    parse_openmetrics(&text)
}

fn same(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn sample(samples: &[(String, String, f64)], name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|want| l.contains(want)))
        .map(|(_, _, v)| v)
        .sum()
}

#[test]
fn metrics_and_json_access_logs_describe_a_known_connection() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start_with(&["--log-json"]);
    let server = f.pod("demo", "server-a").clone();
    let report = f
        .send(
            f.pod("demo", "client"),
            &format!("{}:9000", server.ip),
            1024,
        )
        .expect("send");
    report.assert_intact(1024);
    assert_eq!(report.server_saw(), f.pod("demo", "client").ip.to_string());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        f.stat("node0", "outboundOpened"),
        1,
        "the admin API counts it too"
    );

    let node0 = scrape(&f, "node0");
    let outbound = [
        "direction=\"outbound\"",
        "source_workload=\"client\"",
        "source_namespace=\"demo\"",
        "destination_workload=\"server-a\"",
        "destination_principal=\"spiffe://cluster.local/ns/demo/sa/server-a\"",
        "security=\"mtls\"",
    ];
    assert!(same(
        sample(&node0, "weft_connections_opened_total", &outbound),
        1.0
    ));
    assert!(same(
        sample(&node0, "weft_received_bytes_total", &outbound),
        1024.0
    ));
    assert!(sample(&node0, "weft_tunnel_setup_seconds_count", &[]) >= 1.0);
    assert!(same(sample(&node0, "weft_ebpf_enrolled_pods", &[]), 2.0));
    assert!(
        sample(
            &node0,
            "weft_certificate_expiry_seconds",
            &["name=\"spiffe://cluster.local/ns/demo/sa/client\""]
        ) > 3000.0
    );
    assert!(
        sample(
            &node0,
            "weft_ebpf_program_events",
            &["name=\"outbound_redirected\""]
        ) >= 1.0
    );
    let node1 = scrape(&f, "node1");
    let inbound = [
        "direction=\"inbound\"",
        "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
        "destination_workload=\"server-a\"",
        "reason=\"no_policy\"",
    ];
    assert!(same(
        sample(&node1, "weft_connections_closed_total", &inbound),
        1.0
    ));
    assert!(
        sample(
            &node1,
            "weft_connection_duration_seconds_count",
            &["direction=\"inbound\""]
        ) >= 1.0
    );
    for (name, labels, _) in &node1 {
        assert!(
            !labels.contains(":9000") && !labels.contains("10.244."),
            "{name} carries an address or port: {labels}"
        );
    }
    assert_access_log(&f);
}

/// One JSON access-log line for the connection on the server's agent, with both identities.
fn assert_access_log(f: &Fixture) {
    let log = f.log("node1");
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["target"] == "weft_access" && l["fields"]["pod"] == "demo/server-a")
        .unwrap_or_else(|| panic!("no access-log line in {log}"));
    let fields = &line["fields"];
    assert_eq!(
        fields["peer_identity"],
        "spiffe://cluster.local/ns/demo/sa/client"
    );
    assert_eq!(
        fields["workload_identity"],
        "spiffe://cluster.local/ns/demo/sa/server-a"
    );
    assert_eq!(fields["bytes_from_client"], 1024);
    assert_eq!(fields["verdict"], "allow");
    assert_eq!(fields["reason"], "no_policy");
    assert!(fields["source"]
        .as_str()
        .is_some_and(|s| s.starts_with(&f.pod("demo", "client").ip.to_string())));
}

#[test]
fn weftctl_shows_tables_json_and_denials_with_their_reason() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let server = f.pod("demo", "server-a").clone();
    let deny = "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny-b, namespace: demo}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/server-b]}\n";
    f.manifests.write("policies.yaml", deny).expect("policy");
    let start = Instant::now();
    let held = || {
        let out = weftctl_in(&f, "node1", &["-o", "json", "policies"]).1;
        serde_json::from_str::<Value>(&out).map_or(0, |v| {
            v["authorizationPolicies"].as_array().map_or(0, Vec::len)
        })
    };
    while held() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "policy never arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Follow the stream while traffic happens.
    let mut follower = Command::new("ip")
        .args(["netns", "exec", &f.cluster.node("node1").netns])
        .arg(weftctl())
        .args(["flows", "--follow", "--verdict", "deny"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("weftctl flows --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    f.send(f.pod("demo", "client"), &format!("{}:9000", server.ip), 512)
        .expect("allowed")
        .assert_intact(512);
    f.send(
        f.pod("demo", "server-b"),
        &format!("{}:9000", server.ip),
        512,
    )
    .expect_err("denied");
    let denial_line = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the follower saw the denial");
    #[expect(clippy::cast_possible_wrap, reason = "PIDs fit in i32")]
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = follower.wait();
    assert!(
        denial_line.contains("denied")
            && denial_line.contains("denied_by_policy")
            && denial_line.contains("demo/server-b"),
        "{denial_line}"
    );

    let (ok, table, _) = weftctl_in(&f, "node1", &["flows", "--verdict", "deny"]);
    assert!(ok);
    assert!(table.starts_with("TIME"), "{table}");
    assert!(
        table.contains("demo/server-b -> demo/server-a")
            && table.contains("denied by demo/deny-b rule 0"),
        "{table}"
    );
    let (_, json, _) = weftctl_in(
        &f,
        "node1",
        &["-o", "json", "flows", "--verdict", "deny", "--since", "1m"],
    );
    let flows: Value = serde_json::from_str(&json).expect("flows json");
    assert_eq!(flows[0]["reason"], "denied_by_policy", "{flows}");
    assert_eq!(
        flows[0]["peerIdentity"],
        "spiffe://cluster.local/ns/demo/sa/server-b"
    );

    let (_, workloads, _) = weftctl_in(&f, "node1", &["workloads"]);
    let header = workloads.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAMESPACE  NAME") && workloads.contains("server-a"),
        "{workloads}"
    );
    let (_, certs, _) = weftctl_in(&f, "node1", &["-o", "yaml", "certs"]);
    assert!(
        certs.contains("identity: spiffe://cluster.local/ns/demo/sa/server-a"),
        "{certs}"
    );
    let (_, top, _) = weftctl_in(&f, "node1", &["top", "--iterations", "1"]);
    assert!(
        top.contains("demo/client") && top.contains("demo/server-a"),
        "{top}"
    );
    let (_, stats, _) = weftctl_in(&f, "node1", &["stats"]);
    assert!(
        stats.contains("proxy.denied") && stats.contains("kernel.inbound_redirected"),
        "{stats}"
    );
}

#[test]
fn weftctl_finds_playground_nodes_changes_log_levels_and_explains_errors() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let (ok, _, _) = weftctl_in(&f, "node1", &["logging", "debug"]);
    assert!(ok, "the log level changes at run time");
    let (ok, _, error) = weftctl_in(&f, "node1", &["logging", "no=such=filter"]);
    assert!(!ok && error.contains("bad filter"), "{error}");
    // --node reads a playground file; errors say how to fix them.
    let playground = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}-playground.json",
        f.cluster.run_id().root_name()
    ));
    let doc = serde_json::json!({"nodes": [{"name": "node1", "netns": f.cluster.node("node1").netns, "admin": "127.0.0.1:15000"}]});
    std::fs::write(&playground, doc.to_string()).expect("playground");
    let out = Command::new(weftctl())
        .args(["--playground"])
        .arg(&playground)
        .args(["--node", "node1", "status"])
        .output()
        .expect("weftctl");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("node1"),
        "{out:?}"
    );
    let out = Command::new(weftctl())
        .args(["--playground"])
        .arg(&playground)
        .args(["--node", "node9", "status"])
        .output()
        .expect("weftctl");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the nodes are node1"),
        "{out:?}"
    );
    let _ = std::fs::remove_file(&playground);
    let (ok, _, error) = weftctl_in(&f, "node1", &["--admin", "127.0.0.1:1", "status"]);
    assert!(!ok && error.contains("is it running?"), "{error}");
}

#[test]
fn the_admin_api_answers_on_loopback_only() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let node0 = f.cluster.node("node0").clone();
    let node1 = f.cluster.node("node1").netns.clone();
    let get = |netns: &str, url: &str| netns::exec(netns, &["curl", "-sf", "--max-time", "2", url]);
    let on_loopback = get(&node0.netns, "http://127.0.0.1:15000/status");
    assert!(on_loopback.is_ok_and(|body| body.contains("\"node\":\"node0\"")));
    let admin_on_node_ip = format!("http://{}:15000/status", node0.ip);
    assert!(
        get(&node0.netns, &admin_on_node_ip).is_err(),
        "the admin API answered on the node address"
    );
    assert!(
        get(&node1, &admin_on_node_ip).is_err(),
        "the admin API answered another node"
    );
    assert!(
        get(&node1, &format!("http://{}:15020/metrics", node0.ip)).is_ok(),
        "metrics are served on the node address"
    );
}

/// The largest a TCP receive window may grow here: what one socket can hold unread.
fn tcp_window() -> u64 {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem").expect("tcp_rmem");
    text.split_whitespace()
        .last()
        .and_then(|max| max.parse().ok())
        .expect("tcp_rmem's maximum")
}

/// Bytes from clients and to clients in `node`'s `/stats` totals.
fn byte_totals(f: &Fixture, node: &str) -> (u64, u64) {
    let stats = f
        .cluster
        .admin(f.cluster.node(node), "/stats")
        .expect("stats");
    let read = |key: &str| {
        stats["proxy"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {stats}"))
    };
    (read("bytesFromClients"), read("bytesToClients"))
}

/// Runs iperf3 for 10 s from `client` to `server:port` (retried while the server starts, up
/// to 10 s) and returns the bytes it sent and the bytes its server received.
fn iperf3(f: &Fixture, client: &weft_harness::PodHandle, server: &str, port: &str) -> (u64, u64) {
    let started = Instant::now();
    loop {
        let args = [
            "40",
            "iperf3",
            "-c",
            server,
            "-p",
            port,
            "-t",
            "10",
            "--connect-timeout",
            "3000",
            "-J",
        ];
        let output = f
            .cluster
            .run_in_pod(client, "timeout", &args)
            .expect("iperf3 client");
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        let bytes = |key: &str| report["end"][key]["bytes"].as_u64();
        if let (Some(sent), Some(received), None) = (
            bytes("sum_sent"),
            bytes("sum_received"),
            report.get("error"),
        ) {
            return (sent, received);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "iperf3 never ran: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bytes from the client of the largest closed flow to `:port` on `node` (the data
/// connection; iperf3's control connection moves a few bytes).
fn data_flow(f: &Fixture, node: &str, port: &str) -> u64 {
    let flows = f
        .cluster
        .admin(f.cluster.node(node), "/flows")
        .expect("flows");
    let suffix = format!(":{port}");
    flows
        .as_array()
        .expect("flows")
        .iter()
        .filter(|flow| flow["event"] == "closed")
        .filter(|flow| {
            flow["destination"]
                .as_str()
                .is_some_and(|d| d.ends_with(&suffix))
        })
        .filter_map(|flow| flow["bytesFromClient"].as_u64())
        .max()
        .unwrap_or_else(|| panic!("no closed flow to {suffix} on {node}"))
}

/// `weft_received_bytes_total` towards server-a in one direction on `node`.
fn received_metric(f: &Fixture, node: &str, direction: &str) -> u64 {
    let direction = format!("direction=\"{direction}\"");
    let labels = ["destination_workload=\"server-a\"", direction.as_str()];
    let value = sample(&scrape(f, node), "weft_received_bytes_total", &labels);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a byte counter, exact in an f64 below 2^53"
    )]
    let bytes = value as u64;
    bytes
}

#[test]
fn byte_counts_on_both_agents_match_what_iperf3_moved() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start_with(&["--log-json"]);
    let client = f.pod("demo", "client").clone();
    let server = f.pod("demo", "server-a").clone();
    let port = "5301";
    f.cluster
        .spawn_in_pod(&server, "iperf3", &["-s", "-p", port])
        .expect("iperf3 server");
    let before = [byte_totals(&f, "node0"), byte_totals(&f, "node1")];
    let (sent, received) = iperf3(&f, &client, &server.ip.to_string(), port);
    assert!(received > 100 << 20, "a real transfer: {received} bytes");
    std::thread::sleep(Duration::from_millis(300));
    let window = tcp_window();
    let near = |what: &str, counted: u64, moved: u64| {
        assert!(
            counted.abs_diff(moved) <= window,
            "{what}: counted {counted}, iperf3 moved {moved} (one window is {window})"
        );
    };
    near("client agent's flow", data_flow(&f, "node0", port), sent);
    near(
        "server agent's flow",
        data_flow(&f, "node1", port),
        received,
    );
    let after = [byte_totals(&f, "node0"), byte_totals(&f, "node1")];
    near("client agent's /stats", after[0].0 - before[0].0, sent);
    near("server agent's /stats", after[1].0 - before[1].0, received);
    near(
        "client agent's metric",
        received_metric(&f, "node0", "outbound"),
        sent,
    );
    near(
        "server agent's metric",
        received_metric(&f, "node1", "inbound"),
        received,
    );
    let logged = f
        .log("node1")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "weft_access")
        .filter_map(|l| l["fields"]["bytes_from_client"].as_u64())
        .max()
        .expect("access-log lines");
    near("server agent's access log", logged, received);
}
