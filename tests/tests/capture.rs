//! Capture and the transparent L4 proxy on the real kernel: two nodes, each with an agent;
//! enrolled pods in `demo`, non-enrolled ones in `legacy`.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use weft_harness::{agent::pin_dir, require_privileges};

mod common;
use common::{agent_bin, Fixture, TESTPOD, VIP};

const MIB64: u64 = 64 * 1024 * 1024;

#[test]
fn pod_to_pod_and_service_traffic_goes_through_both_agents_intact() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let client = f.pod("demo", "client").clone();
    let server_a = f.pod("demo", "server-a").clone();
    let server_b = f.pod("demo", "server-b").clone();

    // Cross-node pod → pod: 64 MiB each way, checksummed; the server answers only after the
    // client's half-close reached it, so half-close crossed both agents.
    let (out0, in1) = (
        f.stat("node0", "outboundOpened"),
        f.stat("node1", "inboundOpened"),
    );
    let report = f
        .send(&client, &format!("{}:9000", server_a.ip), MIB64)
        .expect("cross-node send");
    report.assert_intact(MIB64);
    assert_eq!(
        report.server_saw(),
        client.ip.to_string(),
        "server sees the client pod IP"
    );
    assert_eq!(
        report.get("peer"),
        format!("{}:9000", server_a.ip),
        "client sees what it dialed"
    );
    assert_eq!(
        f.stat("node0", "outboundOpened"),
        out0 + 1,
        "client's agent carried it"
    );
    assert_eq!(
        f.stat("node1", "inboundOpened"),
        in1 + 1,
        "server's agent carried it"
    );

    // Same-node pod → pod.
    let (out0, in0) = (
        f.stat("node0", "outboundOpened"),
        f.stat("node0", "inboundOpened"),
    );
    let report = f
        .send(&client, &format!("{}:9000", server_b.ip), MIB64)
        .expect("same-node send");
    report.assert_intact(MIB64);
    assert_eq!(report.server_saw(), client.ip.to_string());
    assert_eq!(f.stat("node0", "outboundOpened"), out0 + 1);
    assert_eq!(f.stat("node0", "inboundOpened"), in0 + 1);

    // Service VIP:80 → targetPort 9000, round robin over both backends.
    let mut servers = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let report = f
            .send(&client, &format!("{VIP}:80"), 4096)
            .expect("service send");
        report.assert_intact(4096);
        assert_eq!(
            report.get("peer"),
            format!("{VIP}:80"),
            "client sees the VIP it dialed"
        );
        assert_eq!(report.server_saw(), client.ip.to_string());
        servers.insert(report.server["server"].clone());
    }
    assert_eq!(
        servers.into_iter().collect::<Vec<_>>(),
        ["server-a", "server-b"]
    );
}

#[test]
fn non_enrolled_pods_bypass_agents_until_their_namespace_is_enrolled_live() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let plain = f.pod("legacy", "plain").clone();
    let plain2 = f.pod("legacy", "plain2").clone();
    let target = format!("{}:9000", plain2.ip);
    let before: Vec<u64> = ["node0", "node1"]
        .iter()
        .flat_map(|n| [f.stat(n, "outboundOpened"), f.stat(n, "inboundOpened")])
        .collect();
    f.send(&plain, &target, 4096)
        .expect("plain send")
        .assert_intact(4096);
    let after: Vec<u64> = ["node0", "node1"]
        .iter()
        .flat_map(|n| [f.stat(n, "outboundOpened"), f.stat(n, "inboundOpened")])
        .collect();
    assert_eq!(
        before, after,
        "no agent saw the non-enrolled pods' connection"
    );

    // Label the namespace in the manifest folder: each agent captures its pod within a
    // second. Both must have: a connection the sender's agent carries over HBONE to a pod
    // whose own agent has not enrolled it yet is refused.
    let lists = |f: &Fixture, pod: &weft_harness::PodHandle| {
        let node = f.cluster.node(&pod.node).clone();
        let workloads = f.cluster.admin(&node, "/workloads").expect("workloads");
        workloads
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["name"] == pod.name.as_str())
    };
    f.write_namespaces(true, true);
    let start = Instant::now();
    while !(lists(&f, &plain) && lists(&f, &plain2)) {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "enrollment did not take effect within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = f.stat("node1", "outboundOpened");
    let report = f.send(&plain, &target, 4096).expect("send");
    report.assert_intact(4096);
    assert_eq!(report.server_saw(), plain.ip.to_string());
    assert_eq!(
        f.stat("node1", "outboundOpened"),
        before + 1,
        "captured once enrolled"
    );

    // And removing the label restores the direct path.
    f.write_namespaces(true, false);
    let start = Instant::now();
    while lists(&f, &plain) || lists(&f, &plain2) {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "un-enrolling did not take effect within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = f.stat("node1", "outboundOpened");
    f.send(&plain, &target, 4096)
        .expect("send")
        .assert_intact(4096);
    assert_eq!(
        f.stat("node1", "outboundOpened"),
        before,
        "direct path once un-enrolled"
    );
}

/// The pinned capture program's id and how many links (one per enrolled pod's netns) use it.
fn capture_program(pins: &Path) -> (u64, usize) {
    let bpftool = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("bpftool json")
    };
    let pin = pins.join("progs/weft_sk_lookup");
    let id = bpftool(&["prog", "show", "pinned", &pin.to_string_lossy()])["id"]
        .as_u64()
        .expect("program id");
    let links = bpftool(&["link", "show"]);
    let count = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["prog_id"].as_u64() == Some(id))
        .count();
    (id, count)
}

#[test]
fn agent_restart_fails_closed_then_adopts_pins_without_duplicates() {
    if !require_privileges() {
        return;
    }
    let mut f = Fixture::start();
    let client = f.pod("demo", "client").clone();
    let server_a = f.pod("demo", "server-a").clone();
    let plain2 = f.pod("legacy", "plain2").clone();
    let plain = f.pod("legacy", "plain").clone();
    let pins = pin_dir(&f.cluster, f.cluster.node("node0"));
    let before = capture_program(&pins);
    assert_eq!(
        before.1, 2,
        "one link per enrolled pod on node0 (client, server-b)"
    );

    let node0_agent = f.agents[0];
    f.cluster
        .stop(node0_agent, nix::sys::signal::Signal::SIGKILL);
    // Enrolled: outbound from node0's pod fails, inbound to node0's pod fails.
    let error = f
        .send(&client, &format!("{}:9000", server_a.ip), 1024)
        .expect_err("outbound must fail closed");
    assert!(
        error.contains("timed out"),
        "the SYN is dropped, never let past: {error}"
    );
    let error = f
        .send(&plain, &format!("{}:9000", client.ip), 1024)
        .expect_err("inbound must fail closed");
    assert!(
        error.contains("timed out"),
        "the SYN is dropped, never delivered: {error}"
    );
    // Not enrolled: unaffected.
    f.send(&plain, &format!("{}:9000", plain2.ip), 1024)
        .expect("non-enrolled traffic still flows")
        .assert_intact(1024);

    f.start_agent("node0");
    let status = f
        .cluster
        .admin(f.cluster.node("node0"), "/status")
        .expect("status");
    assert_eq!(status["adoptedPinnedPrograms"], true, "{status}");
    f.send(&client, &format!("{}:9000", server_a.ip), 1024)
        .expect("works after restart")
        .assert_intact(1024);
    f.send(&plain, &format!("{}:9000", client.ip), 1024)
        .expect("inbound after restart")
        .assert_intact(1024);
    assert_eq!(
        capture_program(&pins),
        before,
        "the same program and links, none added"
    );
}

#[test]
fn capture_listeners_refuse_connections_that_were_not_redirected() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let client = f.pod("demo", "client").clone();
    let plain2 = f.pod("legacy", "plain2").clone();
    let node1 = f.cluster.node("node1").clone();
    for port in [15001, 15006] {
        let target = format!("{}:{port}", client.ip);
        let from_other_node = weft_harness::netns::exec(
            &node1.netns,
            &[TESTPOD, "--connect-timeout-ms", "1000", "connect", &target],
        );
        assert!(
            from_other_node.is_err(),
            "{target} reachable from another node"
        );
        let out = f
            .cluster
            .run_in_pod(
                &plain2,
                TESTPOD,
                &["--connect-timeout-ms", "1000", "connect", &target],
            )
            .expect("run");
        assert!(
            !out.status.success(),
            "{target} reachable from a non-enrolled pod"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("timed out"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Inside the pod, the listener is on loopback; a direct (not redirected) connection is
    // accepted by the kernel but dropped by the agent, which counts it.
    let before = f.stat("node0", "refusedNotCaptured");
    let _ = f.send(&client, "127.0.0.1:15001", 16);
    assert_eq!(f.stat("node0", "refusedNotCaptured"), before + 1);
}

#[test]
fn uninstall_removes_every_program_link_pin_and_rule() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let client = f.pod("demo", "client").clone();
    let node0 = f.cluster.node("node0").clone();
    let pins = pin_dir(&f.cluster, &node0);
    let (program_id, links) = capture_program(&pins);
    assert_eq!(links, 2);
    f.cluster
        .stop(f.agents[0], nix::sys::signal::Signal::SIGTERM);
    let out = Command::new(agent_bin())
        .args(["--node-name", "node0", "--manifests"])
        .arg(&f.manifests.dir)
        .arg("--bpffs-dir")
        .arg(&pins)
        .arg("--state-dir")
        .arg(weft_harness::agent::state_dir(&f.logs, &node0))
        .arg("uninstall")
        .output()
        .expect("uninstall");
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.exists(), "pins left: {}", pins.display());
    let shown = Command::new("bpftool")
        .args(["prog", "show", "id", &program_id.to_string()])
        .output()
        .expect("bpftool");
    assert!(
        !shown.status.success(),
        "program {program_id} still loaded: a link or pin still holds it"
    );
    let rules = weft_harness::netns::ip(&client.netns, &["rule", "show"]).expect("ip rule");
    assert!(
        !rules.contains("0x5747") && !rules.contains("22342"),
        "capture routing left in the pod: {rules}"
    );
    // The pod's direct path works again without an agent, both ways.
    let plain = f.pod("legacy", "plain").clone();
    f.send(&plain, &format!("{}:9000", client.ip), 1024)
        .expect("inbound direct path after uninstall")
        .assert_intact(1024);
    f.send(&client, &format!("{}:9000", plain.ip), 1024)
        .expect("outbound direct path after uninstall")
        .assert_intact(1024);
}

#[test]
fn ipv6_from_an_enrolled_pod_is_refused_and_counted_never_bypassed() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let client = f.pod("demo", "client").clone();
    let server = f.pod("demo", "server-b").clone();
    // Both pods share node0's bridge: give them IPv6 addresses on it.
    for (pod, address) in [(&client, "fd00:77::10/64"), (&server, "fd00:77::11/64")] {
        weft_harness::netns::ip(
            &pod.netns,
            &["-6", "addr", "add", address, "dev", "weft-eth0", "nodad"],
        )
        .expect("IPv6 address");
    }
    let kernel = |name: &str| {
        let stats = f
            .cluster
            .admin(f.cluster.node("node0"), "/stats")
            .expect("stats");
        stats["kernel"][name].as_u64().expect("kernel counter")
    };
    let before = kernel("ipv6_refused");
    let out = f
        .cluster
        .run_in_pod(
            &client,
            TESTPOD,
            &[
                "--connect-timeout-ms",
                "1000",
                "connect",
                "[fd00:77::11]:9000",
            ],
        )
        .expect("testpod");
    assert!(
        !out.status.success(),
        "IPv6 from an enrolled pod must not get through"
    );
    // The program drops the SYN; the kernel answers the client with a reset or lets it time
    // out. Either way nothing left the pod: the program's own counter says it refused it.
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("refused") || error.contains("timed out"),
        "{error}"
    );
    assert!(
        kernel("ipv6_refused") > before,
        "the capture program counted the refusal"
    );
    assert!(
        f.log("node0").contains("IPv6 TCP is refused"),
        "the agent said so when it enrolled the pod"
    );
}

#[test]
fn excluded_ports_bypass_capture_in_both_directions() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start_with(&["--excluded-ports", "9000"]);
    let server = f.pod("demo", "server-a").clone();
    let client = f.pod("demo", "client").clone();
    assert_capture_routing(&client);
    let counters = |f: &Fixture| {
        (
            f.stat("node0", "outboundOpened"),
            f.stat("node1", "inboundOpened"),
        )
    };
    let before = counters(&f);
    let report = f
        .send(&client, &format!("{}:9000", server.ip), 4096)
        .expect("direct path on an excluded port");
    report.assert_intact(4096);
    assert_eq!(report.server_saw(), client.ip.to_string());
    assert_eq!(
        counters(&f),
        before,
        "neither agent carried a connection to an excluded port"
    );
    // Other ports are still captured: the Service VIP :80 goes through both agents.
    f.send(&client, &format!("{VIP}:80"), 4096)
        .expect("captured service")
        .assert_intact(4096);
    assert_eq!(
        counters(&f).0,
        before.0 + 1,
        "the client's agent carried the Service connection"
    );
}

/// The rules and routes enrollment puts in a pod's netns with port 9000 excluded, as `ip`
/// shows them (the set documented in `capture/routing.rs`).
fn assert_capture_routing(pod: &weft_harness::PodHandle) {
    let show = |args: &[&str]| {
        weft_harness::netns::ip(&pod.netns, args)
            .expect("ip show")
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    let ours = |rules: Vec<String>| -> Vec<String> {
        rules
            .into_iter()
            .filter(|r| {
                ["100:", "101:", "102:", "110:"]
                    .iter()
                    .any(|p| r.starts_with(p))
            })
            .collect()
    };
    let shared = [
        "101: from all fwmark 0x5747 lookup main",
        "102: from all iif lo ipproto tcp dport 9000 lookup main",
        "102: from all iif lo ipproto tcp sport 9000 lookup main",
        "110: from all iif lo ipproto tcp lookup 22342",
    ];
    let mut v4 = vec!["100: from all fwmark 0x5746 lookup 22342"];
    v4.extend(shared);
    assert_eq!(ours(show(&["-4", "rule", "show"])), v4);
    assert_eq!(ours(show(&["-6", "rule", "show"])), shared);
    assert_eq!(
        show(&["-4", "route", "show", "table", "22342"]),
        [format!("local default dev lo scope host src {}", pod.ip)]
    );
    assert_eq!(
        show(&["-6", "route", "show", "table", "22342"]),
        ["local default dev lo metric 1024 pref medium"]
    );
}
