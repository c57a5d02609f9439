//! Agent upgrades and crashes on the real kernel: a second agent started beside the running
//! one takes capture over pod by pod while the old one keeps what it carries and drains on
//! SIGTERM; three in a row leave what one agent leaves; a `kill -9` and restart makes new
//! connections wait, never fail; a policy changed mid-upgrade holds whichever agent serves.

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use weft_harness::{eventually, require_privileges, Cluster, PodHandle};

mod common;
use common::{Fixture, TESTPOD, VIP};

const ECHO_PORT: u16 = 7000;
const LONG_LIVED: usize = 20;

/// The fixture, with an interactive echo server on server-a.
fn fixture() -> Fixture {
    let f = Fixture::start_with(&["--drain-timeout-secs", "20"]);
    let server = f.pod("demo", "server-a").clone();
    f.cluster
        .spawn_in_pod(&server, TESTPOD, &["echo", &format!("0.0.0.0:{ECHO_PORT}")])
        .expect("echo server");
    // The load starts at once: a chat connected before the echo listens is refused (seen as
    // a reset of its first message), which is the fixture's fault, not the upgrade's.
    let filter = format!("sport = :{ECHO_PORT}");
    eventually(Duration::from_secs(10), "the echo server listens", || {
        weft_harness::netns::exec(&server.netns, &["ss", "-Hltn", &filter])
            .is_ok_and(|out| !out.trim().is_empty())
    });
    f
}

/// Starts another agent on `node` without waiting for it: it shares the readiness port with
/// the running one (see [`Cluster::spawn_agent_from`]).
fn spawn_agent(f: &mut Fixture, node: &str) -> u32 {
    let node = f.cluster.node(node).clone();
    let pid = f
        .cluster
        .spawn_agent_from(
            &node,
            &common::agent_bin(),
            &weft_harness::agent::Source::Manifests(&f.manifests.dir),
            &f.logs,
            &f.agent_args,
            "info,weft_agent=debug",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    f.agents.push(pid);
    pid
}

fn background(pod: &PodHandle, args: &[&str]) -> Child {
    Cluster::pod_command(pod, TESTPOD, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start in pod")
}

/// A request loop through the Service VIP over new connections, and (optionally) long-lived
/// connections exchanging a message every 100 ms, from demo/client until [`Load::finish`].
struct Load {
    requests: Child,
    chats: Option<Child>,
    stop: PathBuf,
}

struct Finished {
    ok: u64,
    failed: u64,
    longest_gap_ms: u64,
    successes_ms: Vec<u128>,
    failures: String,
    chats: Option<(String, String)>,
}

impl Load {
    fn start(f: &Fixture, long_lived: bool) -> Self {
        let client = f.pod("demo", "client").clone();
        let stop = f.logs.join(format!(
            "stop-load-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let stop_arg = stop.to_str().expect("path").to_owned();
        let requests = background(
            &client,
            &[
                "--connect-timeout-ms",
                "8000",
                "loop",
                &format!("{VIP}:80"),
                "--every-ms",
                "50",
                "--stop-file",
                &stop_arg,
            ],
        );
        let chats = long_lived.then(|| {
            let target = format!("{}:{ECHO_PORT}", f.pod("demo", "server-a").ip);
            background(
                &client,
                &[
                    "chat",
                    &target,
                    &LONG_LIVED.to_string(),
                    "--stop-file",
                    &stop_arg,
                ],
            )
        });
        Self {
            requests,
            chats,
            stop,
        }
    }

    fn finish(self) -> Finished {
        std::fs::write(&self.stop, b"").expect("stop file");
        let out = self.requests.wait_with_output().expect("request loop");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = stdout
            .lines()
            .find(|l| l.starts_with("ok="))
            .unwrap_or_else(|| panic!("no summary from the request loop: {stdout}"));
        let field = |name: &str| -> u64 {
            summary
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {summary}"))
        };
        let chats = self.chats.map(|chats| {
            let out = chats.wait_with_output().expect("chats");
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        });
        Finished {
            ok: field("ok"),
            failed: field("failed"),
            longest_gap_ms: field("longest_gap_ms"),
            successes_ms: stdout
                .lines()
                .filter_map(|l| l.strip_prefix("success_at_ms=")?.parse().ok())
                .collect(),
            failures: String::from_utf8_lossy(&out.stderr).into_owned(),
            chats,
        }
    }
}

impl Finished {
    fn assert_no_failure(&self, what: &str) {
        assert!(self.ok > 20, "{what}: the loop ran ({} ok)", self.ok);
        assert_eq!(
            self.failed, 0,
            "{what}: no request failed (longest gap {} ms): {}",
            self.longest_gap_ms, self.failures
        );
        if let Some((stdout, stderr)) = &self.chats {
            assert!(
                stdout.contains(&format!("connections={LONG_LIVED} completed={LONG_LIVED} ")),
                "{what}: every long-lived connection kept exchanging until the test closed it: {stdout} {stderr}"
            );
        }
    }
}

fn status(f: &Fixture, node: &str) -> Option<serde_json::Value> {
    f.cluster.admin(f.cluster.node(node), "/status").ok()
}

fn generation(f: &Fixture, node: &str) -> u64 {
    status(f, node)
        .and_then(|s| s["captureGeneration"].as_u64())
        .expect("status")
}

/// Starts a second agent on `node`, waits until it owns capture and answers the shared admin
/// port, then SIGTERMs `old`. Returns the new agent's PID.
fn upgrade(f: &mut Fixture, node: &str, old: u32) -> u32 {
    let before = generation(f, node);
    let new = spawn_agent(f, node);
    eventually(
        Duration::from_secs(15),
        "the new agent owns capture and answers the admin port",
        || {
            status(f, node).is_some_and(|s| {
                s["captureGeneration"].as_u64() == Some(before + 1)
                    && s["captureOwnerGeneration"].as_u64() == Some(before + 1)
                    && s["ready"] == true
            })
        },
    );
    // Steady load on the new agent for a moment before the old one goes.
    std::thread::sleep(Duration::from_millis(500));
    f.cluster.signal(old, Signal::SIGTERM);
    new
}

fn wait_exit(f: &Fixture, pid: u32, within: Duration) {
    eventually(within, "the old agent exited after its drain", || {
        f.cluster.has_exited(pid)
    });
}

#[test]
fn upgrading_the_clients_agent_fails_nothing_and_long_lived_connections_stay_with_the_old_one() {
    upgrade_one_node("node0");
}

#[test]
fn upgrading_the_servers_agent_fails_nothing_and_long_lived_connections_stay_with_the_old_one() {
    upgrade_one_node("node1");
}

fn upgrade_one_node(node: &str) {
    if !require_privileges() {
        return;
    }
    let mut f = fixture();
    let index = usize::from(node == "node1");
    let old = f.agents[index];
    let load = Load::start(&f, true);
    std::thread::sleep(Duration::from_secs(2));
    upgrade(&mut f, node, old);
    // The old agent keeps the long-lived connections: it drains and does not exit yet.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !f.cluster.has_exited(old),
        "the old agent waits for the connections it carries"
    );
    let finished = load.finish();
    finished.assert_no_failure(&format!("upgrade of {node}"));
    wait_exit(&f, old, Duration::from_secs(10));
    let log = f.log(node);
    assert!(
        log.contains("takes capture over from the running one"),
        "{log}"
    );
    assert!(log.contains("a newer agent owns capture"), "{log}");
    assert!(log.contains("drained: every connection finished"), "{log}");
    // New connections now reach the new agent.
    let target = format!("{}:9000", f.pod("demo", "server-a").ip);
    let report = f
        .send(f.pod("demo", "client"), &target, 1024)
        .expect("a connection after the upgrade");
    report.assert_intact(1024);
    assert_eq!(
        report.server_saw(),
        f.pod("demo", "client").ip.to_string(),
        "the server still sees the client's own address"
    );
}

/// What one agent leaves on a node: its pin folder, the enrolled pods' routing rules and the
/// entries of the kernel maps.
fn footprint(f: &Fixture, node: &str) -> String {
    let node = f.cluster.node(node);
    let pins = weft_harness::agent::pin_dir(&f.cluster, node);
    let mut files: Vec<String> = walk(&pins)
        .into_iter()
        .map(|p| p.strip_prefix(&pins).expect("under").display().to_string())
        .collect();
    files.sort();
    let mut out = files.join("\n");
    for map in [
        "PODS",
        "INBOUND_LISTENERS",
        "OUTBOUND_LISTENERS",
        "HBONE_LISTENERS",
    ] {
        let dump = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(pins.join("maps").join(map))
            .output()
            .expect("bpftool");
        let entries: serde_json::Value =
            serde_json::from_slice(&dump.stdout).unwrap_or(serde_json::Value::Null);
        let count = entries.as_array().map_or(0, Vec::len);
        assert!(
            count > 0,
            "{map} lists the enrolled pods: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let _ = write!(out, "\n{map}: {count} entries");
    }
    for pod in f.cluster.pods.iter().filter(|p| p.node == node.name) {
        let rules = weft_harness::netns::exec(&pod.netns, &["ip", "rule", "show"]).expect("rules");
        let _ = write!(out, "\n{}/{} rules:\n{rules}", pod.namespace, pod.name);
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn three_upgrades_in_a_row_fail_nothing_and_leave_what_one_agent_leaves() {
    if !require_privileges() {
        return;
    }
    let mut f = fixture();
    let before = footprint(&f, "node0");
    let load = Load::start(&f, false);
    std::thread::sleep(Duration::from_secs(1));
    let mut running = f.agents[0];
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(running);
        running = upgrade(&mut f, "node0", running);
    }
    std::thread::sleep(Duration::from_secs(1));
    let finished = load.finish();
    finished.assert_no_failure("three upgrades");
    for pid in old {
        wait_exit(&f, pid, Duration::from_secs(10));
    }
    assert!(!f.cluster.has_exited(running), "the newest agent runs");
    assert_eq!(generation(&f, "node0"), 4);
    assert_eq!(
        footprint(&f, "node0"),
        before,
        "pins, maps and rules as one agent leaves them"
    );
}

#[test]
fn after_kill_9_and_a_restart_new_connections_wait_and_then_succeed() {
    if !require_privileges() {
        return;
    }
    let mut f = fixture();
    let load = Load::start(&f, false);
    std::thread::sleep(Duration::from_secs(2));
    let dead = f.agents[0];
    f.cluster.stop(dead, Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let restarted = Instant::now();
    f.start_agent("node0");
    let ready_after = restarted.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let finished = load.finish();
    finished.assert_no_failure("kill -9 and restart");
    let first_after = finished
        .successes_ms
        .iter()
        .find(|&&t| t >= restarted_at)
        .copied()
        .expect("a success after the restart");
    let stall = Duration::from_millis(u64::try_from(first_after - restarted_at).expect("ms"));
    assert!(
        stall < Duration::from_millis(1500),
        "the first request after the restart succeeded {stall:?} after it (agent ready after {ready_after:?})"
    );
    let status = status(&f, "node0").expect("status");
    assert!(status["captureReadyAfterMs"].as_u64().is_some(), "{status}");
    assert!(
        f.log("node0")
            .contains("the previous agent died without draining")
            || f.log("node0").contains("capture resumed from the pins"),
        "the restart says what it found"
    );
}

#[test]
fn a_policy_changed_during_an_upgrade_holds_whichever_agent_serves() {
    if !require_privileges() {
        return;
    }
    let mut f = Fixture::start();
    let client = f.pod("demo", "client").clone();
    let server_a = format!("{}:9000", f.pod("demo", "server-a").ip);
    let server_b = format!("{}:9000", f.pod("demo", "server-b").ip);
    // node0 pools an HBONE connection to node1's agent; after the new node1 agent takes over,
    // node0's new tunnels still ride it to the old one until it drains.
    f.send(&client, &server_a, 64)
        .expect("before")
        .assert_intact(64);
    let old = f.agents[1];
    let before = generation(&f, "node1");
    let new = spawn_agent(&mut f, "node1");
    eventually(
        Duration::from_secs(15),
        "the new node1 agent owns capture",
        || status(&f, "node1").is_some_and(|s| s["captureGeneration"].as_u64() == Some(before + 1)),
    );
    f.manifests
        .write(
            "policies.yaml",
            "apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-client\n  namespace: demo\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/client]}\n",
        )
        .expect("policy");
    eventually(
        Duration::from_secs(5),
        "the denial holds during the upgrade",
        || f.send(&client, &server_a, 64).is_err(),
    );
    // Every attempt during the overlap is denied, whichever node1 agent serves it.
    for _ in 0..10 {
        assert!(
            f.send(&client, &server_a, 64).is_err(),
            "denied during the overlap"
        );
    }
    let denied_by_new = f.stat("node1", "denied");
    f.cluster.signal(old, Signal::SIGTERM);
    wait_exit(&f, old, Duration::from_secs(10));
    for _ in 0..5 {
        assert!(
            f.send(&client, &server_a, 64).is_err(),
            "denied after the old agent left"
        );
    }
    // The policy selects demo's workloads: server-b on node0 denies too, and nothing else
    // changed.
    assert!(
        f.send(&client, &server_b, 64).is_err(),
        "server-b denies too"
    );
    assert!(
        f.stat("node1", "denied") >= denied_by_new + 5,
        "the new node1 agent decided the denials after the old one left"
    );
    f.manifests
        .write("policies.yaml", "")
        .expect("policy removed");
    eventually(Duration::from_secs(5), "allowed again once removed", || {
        f.send(&client, &server_a, 64).is_ok()
    });
    assert!(!f.cluster.has_exited(new));
}

/// Capture rules in a pod as `ip rule` shows them, this module's preferences only.
fn capture_rules(pod: &PodHandle) -> Vec<String> {
    weft_harness::netns::ip(&pod.netns, &["-4", "rule", "show"])
        .expect("ip rule")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|r| {
            ["100:", "101:", "102:", "110:"]
                .iter()
                .any(|p| r.starts_with(p))
        })
        .collect()
}

#[test]
fn an_agent_taking_over_with_other_excluded_ports_converges_the_rules_without_a_gap() {
    if !require_privileges() {
        return;
    }
    let mut f = Fixture::start_with(&["--excluded-ports", "9000", "--drain-timeout-secs", "5"]);
    let client = f.pod("demo", "client").clone();
    assert!(capture_rules(&client)
        .iter()
        .any(|r| r.contains("dport 9000")));
    let load = Load::start(&f, false);
    std::thread::sleep(Duration::from_secs(1));
    let old = f.agents[0];
    f.agent_args = vec![
        "--excluded-ports".into(),
        "9001".into(),
        "--drain-timeout-secs".into(),
        "5".into(),
    ];
    upgrade(&mut f, "node0", old);
    std::thread::sleep(Duration::from_secs(1));
    load.finish()
        .assert_no_failure("a takeover that changes the excluded ports");
    let rules = capture_rules(&client);
    assert_eq!(
        rules,
        [
            "100: from all fwmark 0x5746 lookup 22342",
            "101: from all fwmark 0x5747 lookup main",
            "102: from all iif lo ipproto tcp dport 9001 lookup main",
            "102: from all iif lo ipproto tcp sport 9001 lookup main",
            "110: from all iif lo ipproto tcp lookup 22342",
        ],
        "the new agent's set, the old port's rules gone, each rule once"
    );
    wait_exit(&f, old, Duration::from_secs(10));
    assert_eq!(
        capture_rules(&client).len(),
        5,
        "the old agent's exit leaves the rules"
    );
}
