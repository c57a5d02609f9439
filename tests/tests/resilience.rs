//! TrafficPolicy at the waypoint, on the real kernel with curl: retries hiding a failing
//! endpoint and a retry budget capping them, outlier ejection and return, a circuit breaker
//! answering 503 at once while the backend never sees more than its limit, a rate limit's
//! exact admissions, fault injection's shares and delay, and consistent hashing keeping keys
//! when an endpoint leaves. Counts are exact or within stated statistical bounds.

use std::{collections::HashMap, fmt::Write as _, path::Path, time::Duration};

use weft_harness::{
    eventually, require_privileges,
    waypoint_mesh::{hashed_service, Mesh, HASHED, L4_LOCAL, L4_RETRY, RESILIENT},
};

fn start() -> Mesh {
    let bins = Path::new(env!("CARGO_BIN_EXE_weft-testpod"))
        .parent()
        .expect("the target folder");
    Mesh::start(bins, Path::new(env!("CARGO_TARGET_TMPDIR"))).expect("the waypoint mesh")
}

/// Writes `spec` as TrafficPolicy `name` of `demo` targeting `service`, and waits until the
/// waypoint has it.
fn apply(mesh: &Mesh, name: &str, service: &str, spec: &str) {
    let yaml = format!(
        "apiVersion: weft.io/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  targetRefs: [{{kind: Service, name: {service}}}]\n{spec}"
    );
    mesh.manifests.write("traffic.yaml", &yaml).expect("write");
    eventually(
        Duration::from_secs(10),
        "the waypoint has the policy",
        || {
            mesh.waypoint_admin("/config_dump")
                .contains(&format!("\"name\":\"{name}\""))
        },
    );
}

/// One answer: status, the echo server that answered (`-` for the waypoint's own), the
/// waypoint's reason header and curl's total time in seconds.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    server: String,
    reason: String,
    seconds: f64,
}

/// `count` requests to `url` from demo/client with `headers`, sequentially on one connection
/// (or all at once with `parallel`), with curl's `extra` options.
fn requests(mesh: &Mesh, url: &str, count: usize, headers: &[&str], extra: &[&str]) -> Vec<Answer> {
    let mut config = String::from(
        "write-out = \"%{http_code} %header{x-echo-server} %header{x-weft-reason} %{time_total}\\n\"\n",
    );
    for header in headers {
        let _ = writeln!(config, "header = \"{header}\"");
    }
    for option in extra {
        config.push_str(option);
        config.push('\n');
    }
    for _ in 0..count {
        let _ = writeln!(config, "url = \"{url}\"\noutput = \"/dev/null\"");
    }
    let file = mesh.logs.join(format!("curl-{}.conf", rand_suffix()));
    std::fs::write(&file, config).expect("curl config");
    let out = mesh.curl(&["-K", file.to_str().expect("path")]);
    out.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let status = parts.next()?.parse().ok()?;
            let server = parts.next().filter(|s| !s.is_empty()).unwrap_or("-");
            let reason = parts.next().filter(|s| !s.is_empty()).unwrap_or("-");
            let seconds = parts.next()?.parse().ok()?;
            Some(Answer {
                status,
                server: server.to_owned(),
                reason: reason.to_owned(),
                seconds,
            })
        })
        .collect()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn by<F: Fn(&Answer) -> bool>(answers: &[Answer], f: F) -> usize {
    answers.iter().filter(|a| f(a)).count()
}

const RETRIES_SENT: &str =
    "weft_waypoint_retries_total{backend=\"demo/resilient:80\",outcome=\"sent\"}";

#[test]
fn retries_hide_a_failing_endpoint_and_the_budget_caps_them() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let url = format!("http://{RESILIENT}/");
    apply(
        &mesh,
        "tp-retry-5xx",
        "resilient",
        "  retry: {attempts: 2, retryOn: [5xx]}\n",
    );
    // The client's agent says the waypoint applies what it cannot.
    let node0 = mesh.cluster.node("node0").clone();
    eventually(Duration::from_secs(10), "node0 names the waypoint", || {
        mesh.cluster
            .admin(&node0, "/trafficpolicies")
            .is_ok_and(|p| {
                p[0]["appliedBy"][0] == "demo/waypoint" && p[0]["waypointOnly"][0] == "retry"
            })
    });
    let answers = requests(&mesh, &url, 200, &["x-echo-fail-on: echo-v1"], &[]);
    assert_eq!(answers.len(), 200);
    assert_eq!(by(&answers, |a| a.status == 200), 200, "{answers:?}");
    assert_eq!(by(&answers, |a| a.server == "echo-v2"), 200);
    let retried = by(&answers, |a| a.reason == "retried");
    // Round robin sends every other first attempt to echo-v1; each retry goes to echo-v2.
    assert!((60..=140).contains(&retried), "{retried} retried");
    assert_eq!(mesh.waypoint_metric(RETRIES_SENT), retried as u64);

    // Every endpoint failing: retries stay within 20% of the requests plus 1 per second.
    apply(
        &mesh,
        "tp-retry-budget",
        "resilient",
        "  retry: {attempts: 2, retryOn: [5xx]}\n  retryBudget: {percent: 20, minRetriesPerSecond: 1}\n",
    );
    let before = mesh.waypoint_metric(RETRIES_SENT);
    let started = std::time::Instant::now();
    let answers = requests(
        &mesh,
        &format!("http://{RESILIENT}/status/503"),
        200,
        &[],
        &[],
    );
    let seconds = started.elapsed().as_secs_f64().ceil();
    assert_eq!(by(&answers, |a| a.status == 503), 200);
    let sent = mesh.waypoint_metric(RETRIES_SENT) - before;
    let exhausted = mesh.waypoint_metric(
        "weft_waypoint_retries_total{backend=\"demo/resilient:80\",outcome=\"budget_exhausted\"}",
    );
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a small positive count"
    )]
    let cap = 40 + 2 * seconds as u64;
    assert!(sent > 0 && sent <= cap, "{sent} retries sent, cap {cap}");
    assert!(exhausted >= 200 - cap, "{exhausted} refused by the budget");
    assert!(
        by(&answers, |a| a.reason == "retry_budget_exhausted") as u64 >= 200 - 2 * cap,
        "{answers:?}"
    );
}

#[test]
fn outlier_detection_ejects_a_failing_endpoint_and_brings_it_back() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let url = format!("http://{RESILIENT}/");
    apply(
        &mesh,
        "tp-outlier",
        "resilient",
        "  outlierDetection: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50}\n",
    );
    let failing = requests(&mesh, &url, 10, &["x-echo-fail-on: echo-v1"], &[]);
    let from_v1 = by(&failing, |a| a.server == "echo-v1");
    assert_eq!(
        from_v1, 3,
        "echo-v1 answered 3 times, then was ejected: {failing:?}"
    );
    assert_eq!(by(&failing, |a| a.reason == "endpoint_ejected"), 1);
    let (ok, text) = mesh.weftctl(&["endpoints", "demo/resilient"]);
    assert!(ok, "{text}");
    let v1_line = text
        .lines()
        .find(|l| l.contains("demo/echo-v1"))
        .unwrap_or_default();
    assert!(v1_line.contains("ejected"), "{text}");
    let ejected = requests(&mesh, &url, 30, &[], &[]);
    assert_eq!(by(&ejected, |a| a.server == "echo-v2"), 30, "{ejected:?}");
    assert!(mesh
        .waypoint_admin_at(15020, "/metrics")
        .contains("weft_waypoint_ejected_endpoints{backend=\"demo/resilient:80\"} 1"));
    std::thread::sleep(Duration::from_millis(3_200));
    let back = requests(&mesh, &url, 20, &[], &[]);
    assert_eq!(by(&back, |a| a.server == "echo-v1"), 10, "{back:?}");

    // With every endpoint allowed out, two failures eject both: nothing healthy is left.
    apply(
        &mesh,
        "tp-eject-all",
        "resilient",
        "  outlierDetection: {consecutiveErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n",
    );
    let failing = requests(
        &mesh,
        &format!("http://{RESILIENT}/status/503"),
        2,
        &[],
        &[],
    );
    assert_eq!(
        by(&failing, |a| a.reason == "endpoint_ejected"),
        2,
        "{failing:?}"
    );
    let none = requests(&mesh, &url, 3, &[], &[]);
    assert_eq!(
        by(&none, |a| a.status == 503
            && a.reason == "no_healthy_endpoint"),
        3,
        "{none:?}"
    );
}

#[test]
fn a_circuit_breaker_answers_503_at_once_and_the_backend_sees_no_more_than_its_limit() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    apply(
        &mesh,
        "tp-breaker",
        "resilient",
        "  circuitBreaker: {maxConnections: 2, maxPendingRequests: 5}\n",
    );
    let answers = requests(
        &mesh,
        &format!("http://{RESILIENT}/delay/1s"),
        50,
        &[],
        &["parallel", "parallel-max = 50", "parallel-immediate"],
    );
    assert_eq!(answers.len(), 50);
    let open: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.reason == "circuit_open")
        .collect();
    // 2 in flight and 5 waiting are served; the 43 others fail at once.
    assert_eq!(open.len(), 43, "{answers:?}");
    assert!(
        open.iter().all(|a| a.status == 503 && a.seconds < 0.5),
        "{open:?}"
    );
    assert_eq!(by(&answers, |a| a.status == 200), 7, "{answers:?}");
    for pod in ["echo-v1", "echo-v2"] {
        let ip = mesh.pod(pod).ip;
        let body = mesh.curl(&[&format!("http://{ip}:8080/_peak")]);
        let peak: u32 = body
            .trim()
            .strip_prefix("peak=")
            .and_then(|p| p.parse().ok())
            .expect("peak");
        // The limit is 2 for the whole Service, so neither endpoint ever had more.
        assert!(peak <= 2, "{pod} had {peak} requests at once");
    }
}

#[test]
fn a_rate_limit_admits_its_burst_and_rate_and_answers_the_rest_429() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    apply(
        &mesh,
        "tp-limited",
        "resilient",
        "  localRateLimit: {requests: 10, per: 1s, burst: 5}\n",
    );
    // 100 requests a second for 3 s. A token bucket admits its burst plus its rate times the
    // time the requests took to arrive: at least 3 s, more when the machine is busy (a CI run
    // once took long enough to admit 38), so the upper bound follows the measured time.
    let started = std::time::Instant::now();
    let answers = requests(
        &mesh,
        &format!("http://{RESILIENT}/"),
        300,
        &[],
        &["rate = \"100/s\""],
    );
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = by(&answers, |a| a.status == 200);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a few seconds times 10"
    )]
    let most = 5 + (10.0 * elapsed).ceil() as usize + 2;
    assert!(
        (33..=most).contains(&admitted),
        "{admitted} admitted in {elapsed:.2} s (from 33 to {most})"
    );
    assert_eq!(
        by(&answers, |a| a.status == 429 && a.reason == "rate_limited"),
        300 - admitted
    );
    // The bucket is empty now: at once, a request is refused with the draft's headers.
    let head = (0..10)
        .map(|_| mesh.curl(&["-i", &format!("http://{RESILIENT}/")]))
        .find(|h| h.starts_with("HTTP/1.1 429"))
        .expect("a 429 among 10 requests sent at once");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(
        head.contains("ratelimit-policy: \"local\";q=10;w=1"),
        "{head}"
    );
    assert!(head.contains("ratelimit: \"local\";r=0;t=1"), "{head}");
}

#[test]
fn fault_injection_aborts_its_share_and_delays_by_its_time() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let url = format!("http://{RESILIENT}/");
    apply(
        &mesh,
        "tp-abort-half",
        "resilient",
        "  faultInjection: {abort: {httpStatus: 503, percent: 50}}\n",
    );
    let answers = requests(&mesh, &url, 1_000, &[], &[]);
    let aborted = by(&answers, |a| {
        a.status == 503 && a.reason == "fault_injected"
    });
    // Binomial(1000, 0.5): 99.9% of runs fall within 500 ± 52.
    assert!((448..=552).contains(&aborted), "{aborted} of 1000 aborted");
    assert_eq!(by(&answers, |a| a.status == 200), 1_000 - aborted);

    let p50 = |answers: &[Answer]| {
        let mut t: Vec<f64> = answers.iter().map(|a| a.seconds).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    apply(&mesh, "tp-no-fault", "resilient", "  connectTimeout: 2s\n");
    let plain = p50(&requests(&mesh, &url, 40, &[], &[]));
    apply(
        &mesh,
        "tp-delay-only-chaos",
        "resilient",
        "  faultInjection: {delay: {fixedDelay: 100ms, percent: 100}, headers: [{name: x-chaos, value: '1'}]}\n",
    );
    let untouched = requests(&mesh, &url, 40, &[], &[]);
    assert_eq!(by(&untouched, |a| a.reason == "fault_injected"), 0);
    let delayed = requests(&mesh, &url, 40, &["x-chaos: 1"], &[]);
    assert_eq!(by(&delayed, |a| a.status == 200), 40);
    let shift = p50(&delayed) - plain;
    assert!((0.090..=0.110).contains(&shift), "p50 moved by {shift} s");
}

#[test]
fn consistent_hashing_keeps_each_key_and_moves_only_the_removed_endpoints_keys() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    apply(
        &mesh,
        "tp-hash-by-user",
        "hashed",
        "  loadBalancer: {algorithm: ConsistentHash, consistentHash: {header: x-user}}\n",
    );
    let url = format!("http://{HASHED}/");
    let same = requests(&mesh, &url, 100, &["x-user: alice"], &[]);
    let first = same[0].server.clone();
    assert_eq!(by(&same, |a| a.server == first), 100, "{same:?}");
    let owners = |mesh: &Mesh| -> HashMap<u32, String> {
        (0..100)
            .map(|k| {
                let header = format!("x-user: user-{k}");
                let answer = requests(mesh, &url, 1, &[header.as_str()], &[]);
                (k, answer[0].server.clone())
            })
            .collect()
    };
    let before = owners(&mesh);
    let held = before.values().filter(|s| *s == "echo-v3").count();
    assert!(held > 0, "{before:?}");
    let ip = |name: &str| mesh.pod(name).ip;
    mesh.manifests
        .write(
            "hashed.yaml",
            &hashed_service(&[ip("echo-v1"), ip("echo-v2")]),
        )
        .expect("write");
    eventually(Duration::from_secs(10), "echo-v3 left demo/hashed", || {
        requests(&mesh, &url, 10, &["x-user: alice"], &[])
            .iter()
            .all(|a| a.server != "echo-v3")
            && !mesh
                .waypoint_admin("/endpoints?service=demo/hashed")
                .contains(&ip("echo-v3").to_string())
    });
    let after = owners(&mesh);
    let moved = (0..100).filter(|k| before[k] != after[k]).count();
    assert!(moved <= held + 5, "{moved} keys moved; echo-v3 held {held}");
}

#[test]
fn at_l4_a_refusing_endpoint_is_retried_then_skipped_and_no_client_connection_fails() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    // Each request on a connection of its own (the echo closes after it).
    let answers = requests(
        &mesh,
        &format!("http://{L4_RETRY}/"),
        30,
        &["Connection: close"],
        &[],
    );
    assert_eq!(answers.len(), 30);
    assert_eq!(
        by(&answers, |a| a.status == 200 && a.server == "echo-v1"),
        30,
        "{answers:?}"
    );
    let node0 = mesh.cluster.node("node0").clone();
    let flows = mesh.cluster.admin(&node0, "/flows").expect("flows");
    let to_service: Vec<&serde_json::Value> = flows
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["service"] == "demo/l4-retry" && f["event"] == "closed")
        .collect();
    assert_eq!(to_service.len(), 30, "{flows}");
    // The first connections sent to `closed` were retried on echo-v1; after 3 failures in a
    // row `closed` is skipped, so the rest went to echo-v1 at once.
    let retried: Vec<_> = to_service
        .iter()
        .filter(|f| f["connectAttempts"] == 2)
        .collect();
    assert_eq!(retried.len(), 3, "{to_service:?}");
    assert!(
        retried.iter().all(|f| f["reason"] == "retried"),
        "{retried:?}"
    );
    assert!(to_service.iter().all(|f| f["verdict"] == "allow"));
    let failed = flows
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["event"] == "failed" && f["service"] == "demo/l4-retry")
        .count();
    assert_eq!(failed, 0, "no connection failed: {flows}");
}

#[test]
fn a_failing_health_check_takes_an_endpoint_out_until_it_passes_again() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let url = format!("http://{RESILIENT}/");
    apply(
        &mesh,
        "tp-health-v1-fails",
        "resilient",
        "  healthCheck: {path: /fail-on/echo-v1, interval: 200ms, timeout: 150ms, unhealthyThreshold: 2, healthyThreshold: 2}\n",
    );
    eventually(
        Duration::from_secs(5),
        "echo-v1 fails its health check",
        || {
            let (_, text) = mesh.weftctl(&["endpoints", "demo/resilient"]);
            text.lines()
                .any(|l| l.contains("demo/echo-v1") && l.contains("unhealthy"))
        },
    );
    let answers = requests(&mesh, &url, 20, &[], &[]);
    assert_eq!(by(&answers, |a| a.server == "echo-v2"), 20, "{answers:?}");
    apply(
        &mesh,
        "tp-health-all-pass",
        "resilient",
        "  healthCheck: {path: /status/200, interval: 200ms, timeout: 150ms, unhealthyThreshold: 2, healthyThreshold: 2}\n",
    );
    eventually(Duration::from_secs(5), "echo-v1 passes again", || {
        let answers = requests(&mesh, &url, 4, &[], &[]);
        by(&answers, |a| a.server == "echo-v1") == 2
    });
    assert!(mesh
        .waypoint_log()
        .contains("endpoint passes its health check again"));
}

#[test]
fn locality_keeps_traffic_in_the_clients_zone_until_its_endpoints_are_ejected() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    // demo/client runs on node0 (zone-a), as does echo-v2; echo-v1 is on node1 (zone-b).
    apply(
        &mesh,
        "tp-locality",
        "resilient",
        "  loadBalancer: {algorithm: RoundRobin, locality: {minHealthyPercent: 70}}\n  outlierDetection: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50}\n",
    );
    let url = format!("http://{RESILIENT}/");
    let near = requests(&mesh, &url, 40, &[], &[]);
    assert_eq!(by(&near, |a| a.server == "echo-v2"), 40, "{near:?}");
    let (_, text) = mesh.weftctl(&["endpoints", "demo/resilient"]);
    assert!(text.contains("zone-a") && text.contains("zone-b"), "{text}");
    // echo-v2 fails 3 times in a row and is ejected: zone-a has no healthy endpoint left.
    let failing = requests(&mesh, &url, 3, &["x-echo-fail-on: echo-v2"], &[]);
    assert_eq!(by(&failing, |a| a.status == 503), 3, "{failing:?}");
    let over = requests(&mesh, &url, 20, &[], &[]);
    assert_eq!(by(&over, |a| a.server == "echo-v1"), 20, "{over:?}");
    // Back in zone-a once the ejection ends.
    std::thread::sleep(Duration::from_millis(3_200));
    let back = requests(&mesh, &url, 20, &[], &[]);
    assert_eq!(by(&back, |a| a.server == "echo-v2"), 20, "{back:?}");

    // The node agent prefers the zone too, for a Service without a waypoint.
    apply(
        &mesh,
        "tp-l4-locality",
        "l4-local",
        "  loadBalancer: {algorithm: RoundRobin, locality: {}}\n",
    );
    // The agents read the folder on their own schedule: until they have the policy, round
    // robin splits a batch, which never lands whole on echo-v2.
    eventually(
        Duration::from_secs(10),
        "node0's agent keeps to zone-a",
        || {
            let l4 = requests(
                &mesh,
                &format!("http://{L4_LOCAL}/"),
                20,
                &["Connection: close"],
                &[],
            );
            by(&l4, |a| a.server == "echo-v2") == 20
        },
    );
}

#[test]
fn a_grpc_abort_answers_its_status_to_matching_calls_only() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    mesh.start_grpc_echo().expect("grpc server");
    apply(
        &mesh,
        "tp-grpc-chaos",
        "grpc",
        "  faultInjection: {abort: {grpcStatus: 14, percent: 100}, headers: [{name: x-chaos, value: '1'}]}\n",
    );
    let seen = mesh.grpc_chaos();
    assert_eq!(seen["chaos_code"], "UNAVAILABLE", "{seen}");
    assert_eq!(seen["chaos_details"], "fault injected", "{seen}");
    assert_eq!(seen["calm_code"], "OK", "{seen}");
    assert!(
        seen["calm"]
            .as_str()
            .is_some_and(|s| s.starts_with("echo:calm")),
        "{seen}"
    );
}
