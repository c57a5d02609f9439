//! L4 authorization at the destination agent, on the real kernel: policies by principal,
//! namespace, CIDR and port decide HBONE and plaintext connections, DENY wins, AUDIT and dry
//! run only record, strict mTLS refuses plaintext, a live update closes what it now denies,
//! and bad objects are reported and fail closed for what they select. Every denial says why.

use std::time::{Duration, Instant};

use weft_harness::require_privileges;

mod common;
use common::{Fixture, Report, TESTPOD};

/// Writes `policies.yaml` and waits (at most 1 s) until node1's agent holds `expected`
/// policies, all of them named in this file: the new set, not the old one.
fn apply(f: &Fixture, yaml: &str, expected: usize) {
    f.manifests
        .write("policies.yaml", yaml)
        .expect("write policies");
    let written: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: "))
        .collect();
    let start = Instant::now();
    loop {
        let policies = f
            .cluster
            .admin(f.cluster.node("node1"), "/policies")
            .expect("policies");
        let held: Vec<&str> = policies
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        if held.len() == expected && held.iter().all(|name| written.contains(name)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "policies did not reach the agent within 1 s: {policies}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn policy(name: &str, body: &str) -> String {
    format!("apiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n{body}\n")
}

/// The newest closed-or-refused connection node1 recorded from `source_ip`: its last flow that
/// is not an `opened` one, selected by the agent (`from` is an address prefix).
fn last_record(f: &Fixture, source_ip: &str) -> serde_json::Value {
    let flows = f
        .cluster
        .admin(
            f.cluster.node("node1"),
            &format!("/flows?from={source_ip}:"),
        )
        .expect("flows");
    flows
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|flow| flow["event"] != "opened")
        .cloned()
        .unwrap_or_else(|| panic!("no record from {source_ip} in {flows}"))
}

fn to_server_a(f: &Fixture, from_ns: &str, from: &str) -> Result<Report, String> {
    let target = format!("{}:9000", f.pod("demo", "server-a").ip);
    f.send(f.pod(from_ns, from), &target, 1024)
}

#[test]
fn principal_namespace_and_port_rules_decide_hbone_connections_and_deny_wins() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let only_client = policy(
        "only-client",
        "  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/client]}\n    to:\n    - operation: {ports: [\"9000\"]}",
    );
    apply(&f, &only_client, 1);
    to_server_a(&f, "demo", "client")
        .expect("the allowed principal passes")
        .assert_intact(1024);
    let error = to_server_a(&f, "demo", "server-b").expect_err("another principal is denied");
    assert!(!error.is_empty());
    let record = last_record(&f, &f.pod("demo", "server-b").ip.to_string());
    assert_eq!(record["verdict"], "deny", "{record}");
    assert_eq!(record["reason"], "no_allow_rule_matched", "{record}");
    assert_eq!(
        record["peerIdentity"], "spiffe://cluster.local/ns/demo/sa/server-b",
        "{record}"
    );
    assert!(
        record["detail"]
            .as_str()
            .unwrap_or("")
            .contains("demo/only-client"),
        "{record}"
    );

    // A namespace rule with its not-form, and a port rule that does not match 9000.
    let not_demo = policy(
        "not-demo",
        "  rules:\n  - from:\n    - source: {notNamespaces: [demo]}",
    );
    apply(&f, &not_demo, 1);
    to_server_a(&f, "demo", "client").expect_err("notNamespaces: [demo] excludes demo");
    let namespaces = policy(
        "demo-ns",
        "  rules:\n  - from:\n    - source: {namespaces: [demo]}",
    );
    apply(&f, &namespaces, 1);
    to_server_a(&f, "demo", "client")
        .expect("namespaces: [demo] admits demo")
        .assert_intact(1024);
    let other_port = policy(
        "port-9001",
        "  rules:\n  - to:\n    - operation: {ports: [\"9001\"]}",
    );
    apply(&f, &other_port, 1);
    to_server_a(&f, "demo", "client").expect_err("only port 9001 is allowed");

    // DENY overrides a matching ALLOW and names its policy and rule.
    let both = [
        policy("allow-all", "  rules:\n  - {}"),
        policy(
            "deny-client",
            "  action: DENY\n  rules:\n  - from:\n    - source: {principals: [\"*/sa/client\"]}",
        ),
    ]
    .join("---\n");
    apply(&f, &both, 2);
    to_server_a(&f, "demo", "client").expect_err("DENY wins");
    let record = last_record(&f, &f.pod("demo", "client").ip.to_string());
    assert_eq!(record["reason"], "denied_by_policy", "{record}");
    assert_eq!(
        record["detail"], "denied by demo/deny-client rule 0",
        "{record}"
    );
    to_server_a(&f, "demo", "server-b")
        .expect("others still pass")
        .assert_intact(1024);

    // The denial left its access-log line with the reason.
    let log = f.log("node1");
    assert!(
        log.lines().any(|l| l.contains("weft_access")
            && l.contains("denied_by_policy")
            && l.contains("deny-client rule 0")),
        "no access-log line for the denial"
    );
    // And it is counted with its reason.
    let metrics = weft_harness::netns::exec(
        &f.cluster.node("node1").netns,
        &["curl", "-sf", "http://127.0.0.1:15020/metrics"],
    )
    .expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_connections_opened_total{")
                && l.contains("verdict=\"deny\"")
                && l.contains("reason=\"denied_by_policy\"")),
        "{metrics}"
    );
}

#[test]
fn plaintext_clients_meet_cidr_rules_and_strict_mtls() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let plain = f.pod("legacy", "plain").ip.to_string();
    let report = to_server_a(&f, "legacy", "plain").expect("permissive admits plaintext");
    report.assert_intact(1024);
    assert_eq!(
        report.server_saw(),
        plain,
        "the server sees the plaintext client's own IP"
    );
    assert_eq!(last_record(&f, &plain)["security"], "plaintext");

    apply(
        &f,
        &policy(
            "node0-pods",
            "  rules:\n  - from:\n    - source: {ipBlocks: [10.244.1.0/24]}",
        ),
        1,
    );
    to_server_a(&f, "legacy", "plain").expect_err("10.244.2.11 is outside the block");
    assert_eq!(last_record(&f, &plain)["reason"], "no_allow_rule_matched");
    apply(
        &f,
        &policy(
            "not-plain",
            &format!("  rules:\n  - from:\n    - source: {{notIpBlocks: [{plain}/32]}}"),
        ),
        1,
    );
    to_server_a(&f, "legacy", "plain").expect_err("notIpBlocks excludes the plain pod");
    to_server_a(&f, "demo", "client")
        .expect("others pass")
        .assert_intact(1024);
    apply(&f, "", 0);

    // Strict mTLS on the namespace refuses plaintext but not mutual TLS.
    let strict = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels: {weft.io/mesh: enabled}\n  annotations: {weft.io/mtls-mode: strict}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: legacy\n";
    f.manifests
        .write("namespaces.yaml", strict)
        .expect("namespaces");
    let start = Instant::now();
    loop {
        if to_server_a(&f, "legacy", "plain").is_err() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "strict mode did not apply within 1 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(last_record(&f, &plain)["reason"], "strict_mtls_plaintext");
    to_server_a(&f, "demo", "client")
        .expect("mTLS still passes in strict mode")
        .assert_intact(1024);
    f.write_namespaces(true, false);
    std::thread::sleep(Duration::from_millis(400));
    to_server_a(&f, "legacy", "plain")
        .expect("permissive again")
        .assert_intact(1024);
}

#[test]
fn a_live_policy_update_closes_an_established_connection_it_now_denies() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let server = f.pod("demo", "server-a").clone();
    let client = f.pod("demo", "client").clone();
    let held = weft_harness::Cluster::pod_command(
        &client,
        TESTPOD,
        &[
            "send",
            &format!("{}:9000", server.ip),
            "1024",
            "--hold-ms",
            "15000",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("held connection");
    let node1 = f.cluster.node("node1").clone();
    let start = Instant::now();
    let live = || {
        f.cluster
            .admin(&node1, "/connections")
            .expect("live")
            .as_array()
            .map_or(0, Vec::len)
    };
    while live() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the held connection never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let changed = Instant::now();
    apply(&f, &policy("deny-client", "  action: DENY\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/client]}"), 1);
    let out = held.wait_with_output().expect("held send");
    let report = String::from_utf8_lossy(&out.stdout);
    // The agent closed it: the server never answered and nothing was echoed.
    assert!(
        !out.status.success() || (report.contains("echoed=0 ") && !report.contains("server=")),
        "the held connection was closed: {report}"
    );
    assert!(
        changed.elapsed() < Duration::from_secs(5),
        "closed {:?} after the change, not after its 15 s hold",
        changed.elapsed()
    );
    assert_eq!(f.stat("node1", "closedByPolicy"), 1);
    let record = last_record(&f, &client.ip.to_string());
    assert_eq!(record["reason"], "denied_by_policy", "{record}");
}

#[test]
fn bad_policies_are_reported_and_fail_closed_while_good_ones_apply_and_audit_and_dry_run_only_record(
) {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    // The bad ones select no pod here: each stands in as a denial of what it selects (fail
    // closed, see the hardening tests), which must not touch the traffic below.
    let objects = [
        policy("unknown-field", "  selector: {matchLabels: {app: nobody}}\n  rules:\n  - {}\n  bogus: true"),
        policy("bad-cidr", "  selector: {matchLabels: {app: nobody}}\n  rules:\n  - from:\n    - source: {ipBlocks: [10.0.0.0/99]}"),
        policy("no-rules", "  selector: {matchLabels: {app: nobody}}\n  rules: []"),
        policy("deny-server-b", "  action: DENY\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/server-b]}"),
        policy("audit-all", "  action: AUDIT\n  rules:\n  - {}"),
        policy("dry-deny-client", "  action: DENY\n  dryRun: true\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/client]}"),
    ]
    .join("---\n");
    apply(&f, &objects, 6);
    let held = f
        .cluster
        .admin(f.cluster.node("node1"), "/policies")
        .expect("policies");
    let stand_ins: Vec<&str> = held
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["unreadable"].is_string())
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        stand_ins,
        ["unknown-field", "bad-cidr", "no-rules"],
        "{held}"
    );
    let status = f
        .cluster
        .admin(f.cluster.node("node1"), "/status")
        .expect("status");
    let rejected = status["registry"]["rejectedObjects"].to_string();
    for expected in [
        "unknown-field",
        "bogus",
        "bad-cidr",
        "10.0.0.0/99",
        "no-rules",
        "rules is empty",
    ] {
        assert!(
            rejected.contains(expected),
            "{expected} not reported in {rejected}"
        );
    }
    to_server_a(&f, "demo", "server-b").expect_err("the good DENY policy is enforced");
    to_server_a(&f, "demo", "client")
        .expect("AUDIT and dry-run DENY let it pass")
        .assert_intact(1024);
    let log = f.log("node1");
    assert!(
        log.contains("audited by demo/audit-all rule 0"),
        "audit logged"
    );
    assert!(
        log.contains("dry run: would be denied by demo/dry-deny-client rule 0"),
        "dry run logged"
    );
    assert!(log.contains("object rejected"), "bad objects logged");
}

/// A `TrafficPolicy` on a Service: the client's agent gives up on an endpoint that does not
/// answer after the policy's connectTimeout, before the ~3 s the kernel takes to report an
/// unanswered ARP (which would read "No route to host"), and the failure names the policy;
/// `weftctl policies` shows it.
#[test]
fn a_traffic_policy_connect_timeout_bounds_a_connection_and_the_failure_names_it() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    // An address in node1's pod subnet that no pod holds: SYNs go unanswered.
    let silent = {
        let [a, b, c, _] = f.pod("demo", "server-a").ip.octets();
        std::net::Ipv4Addr::new(a, b, c, 250)
    };
    let vip = std::net::Ipv4Addr::new(10, 96, 0, 20);
    let manifests = format!(
        "{}---\napiVersion: weft.io/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: slow\n  namespace: demo\nspec:\n  targetRefs: [{{kind: Service, name: slow}}]\n  connectTimeout: 300ms\n  retryBudget: {{percent: 20}}\n",
        weft_harness::manifests::service("demo", "slow", vip, 80, 9000, &[silent])
    );
    f.manifests.write("slow.yaml", &manifests).expect("write");
    let node0 = f.cluster.node("node0");
    let start = Instant::now();
    loop {
        let held = f.cluster.admin(node0, "/trafficpolicies").expect("admin");
        if held.as_array().is_some_and(|a| a.len() == 1) {
            assert_eq!(held[0]["connectTimeout"], 300, "{held}");
            assert_eq!(held[0]["waypointOnly"][0], "retryBudget", "{held}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the TrafficPolicy did not reach the agent: {held}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let error = f
        .send(f.pod("demo", "client"), &format!("{vip}:80"), 64)
        .expect_err("nothing answers behind the Service");
    assert!(!error.is_empty());
    let flows = f
        .cluster
        .admin(node0, "/flows?verdict=failed")
        .expect("flows");
    let flow = flows
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["destination"] == format!("{vip}:80") && c["event"] == "failed")
        .unwrap_or_else(|| {
            panic!(
                "no failed flow to the Service in {flows}; client: {error}; log: {}",
                f.log("node0")
            )
        });
    assert_eq!(flow["reason"], "connect_timeout", "{flow}");
    assert_eq!(flow["verdict"], "failed", "{flow}");
    assert_eq!(
        flow["detail"], "connect timed out after 300ms (connectTimeout of TrafficPolicy demo/slow)",
        "{flow}"
    );

    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &node0.netns])
        .arg(common::agent_bin().with_file_name("weftctl"))
        .arg("policies")
        .output()
        .expect("weftctl");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = table
        .lines()
        .find(|l| l.contains("slow"))
        .unwrap_or_else(|| panic!("no row for the policy:\n{table}"));
    for cell in ["demo", "Service/slow", "300ms", "RoundRobin", "retryBudget"] {
        assert!(row.contains(cell), "{cell} missing from {row:?}\n{table}");
    }
}
