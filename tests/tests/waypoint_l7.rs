//! The waypoint's L7 features on the real kernel with real clients: every match type and the
//! precedence between two overlapping routes, every filter (checked in the echo's reply or the
//! response), a 90/10 split over 1,000 requests, retries, a missing backend, gRPC (grpcio,
//! unary and bidirectional streaming), a WebSocket upgrade (websockets), TCP and sniffed ports
//! passed through at L4, 100 MiB each way while the waypoint stays small, and a route change
//! applied while requests run.

use std::{path::Path, time::Duration};

use weft_harness::{
    eventually, require_privileges,
    waypoint_mesh::{Mesh, ECHO, EMPTY, GRPC, MISSING, RAW, REFUSING, RETRIED, TCP, WS},
};

/// The body each way in the streaming test.
const SIZE: u64 = 100 * 1024 * 1024;

fn start() -> Mesh {
    let bins = Path::new(env!("CARGO_BIN_EXE_weft-testpod"))
        .parent()
        .expect("the target folder");
    Mesh::start(bins, Path::new(env!("CARGO_TARGET_TMPDIR"))).expect("the waypoint mesh")
}

/// The Python helpers beside this crate.
/// Whether the echo's reply came from `server` along the catch-all (split) rule or another.
fn from(body: &str, server: &str) -> bool {
    body.contains(&format!("server={server}\n"))
}

fn split(body: &str) -> bool {
    body.contains("header x-weft-route: split")
}

#[test]
fn every_match_type_and_filter_and_the_precedence_between_routes() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let url = |path: &str| format!("http://{ECHO}{path}");
    // Path Exact, with a response header filter; one more segment is no longer exact.
    let head = mesh.curl(&["-i", &url("/exact")]);
    assert!(from(&head, "echo-v2"), "{head}");
    assert!(head.contains("x-weft-response: exact"), "{head}");
    let body = mesh.curl(&["-i", &url("/exact/more")]);
    assert!(split(&body) && !body.contains("x-weft-response"), "{body}");
    // Path RegularExpression, with a request header set and one removed.
    let body = mesh.curl(&["-H", "x-drop-me: 1", &url("/re/123")]);
    assert!(from(&body, "echo-v2"), "{body}");
    assert!(body.contains("header x-weft-match: regex"), "{body}");
    assert!(!body.contains("x-drop-me"), "the filter removed it: {body}");
    assert!(split(&mesh.curl(&[&url("/re/abc")])));
    // Header RegularExpression.
    let body = mesh.curl(&["-H", "x-tier: silver", &url("/tier")]);
    assert!(from(&body, "echo-v2") && !split(&body), "{body}");
    assert!(split(&mesh.curl(&["-H", "x-tier: bronze", &url("/tier")])));
    // Query parameter Exact.
    let body = mesh.curl(&[&url("/query?flavor=v2")]);
    assert!(from(&body, "echo-v2") && !split(&body), "{body}");
    assert!(split(&mesh.curl(&[&url("/query?flavor=v1")])));
    // Method.
    let body = mesh.curl(&["-X", "DELETE", &url("/method")]);
    assert!(from(&body, "echo-v2") && !split(&body), "{body}");
    assert!(split(&mesh.curl(&[&url("/method")])));
    // URLRewrite: a prefix replaced (and the hostname), and a full path replaced.
    let body = mesh.curl(&[&url("/rewrite-prefix/a/b")]);
    assert!(body.contains("path=/new/a/b\n"), "{body}");
    assert!(body.contains("header host: rewritten.example"), "{body}");
    let body = mesh.curl(&[&url("/rewrite-full/a/b")]);
    assert!(body.contains("path=/full\n"), "{body}");
    // RequestRedirect with a scheme, a port and the matched prefix replaced (302 by default).
    let head = mesh.curl(&["-i", &url("/moved/a?b=1")]);
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("location: https://{ECHO}:8443/here/a?b=1")),
        "{head}"
    );
    // Precedence: the longest prefix wins across routes (echo-matches' /catalog/special over
    // echo's catch-all); for the same match the earlier route (echo, by name) wins.
    let body = mesh.curl(&[&url("/catalog/special/1")]);
    assert!(from(&body, "echo-v2") && !split(&body), "{body}");
    for _ in 0..5 {
        let body = mesh.curl(&[&url("/tie")]);
        assert!(from(&body, "echo-v1") && !split(&body), "{body}");
    }
    // Weights: 90/10 over 1,000 requests on one keep-alive connection lands within the
    // binomial 99.9% interval around 100 (n = 1000, p = 0.1: 100 ± 31).
    let urls: Vec<String> = (0..1000).map(|i| url(&format!("/w/{i}"))).collect();
    let mut args: Vec<&str> = vec!["--max-time", "120"];
    args.extend(urls.iter().map(String::as_str));
    let bodies = mesh.curl(&args);
    let (v1, v2) = (
        bodies.matches("server=echo-v1\n").count(),
        bodies.matches("server=echo-v2\n").count(),
    );
    assert_eq!(v1 + v2, 1000, "every request answered");
    assert!((69..=131).contains(&v2), "{v2} of 1,000 reached echo-v2");
}

/// The counters of `demo/retried`'s 20 requests (`listed`): a request answered at its first
/// attempt is `routed`, one answered at its second `retried`; the two series hold all 20.
fn retried_requests_are_counted(metrics: &str, listed: &[serde_json::Value]) {
    let retried_count = listed.iter().filter(|r| r["attempts"] == 2).count();
    let mut counted = 0;
    for (reason, expected) in [("routed", 20 - retried_count), ("retried", retried_count)] {
        let counter_line = metrics
            .lines()
            .find(|l| {
                l.starts_with("weft_requests_total{")
                    && l.contains(r#"route="demo/retried rule 0""#)
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("a {reason} request's counter:\n{metrics}"));
        for label in [
            r#"source_workload="client""#,
            r#"source_namespace="demo""#,
            r#"source_principal="spiffe://cluster.local/ns/demo/sa/client""#,
            r#"destination_workload="echo-v1""#,
            r#"destination_service="demo/retried""#,
            r#"method="GET""#,
            r#"code="200""#,
        ] {
            assert!(counter_line.contains(label), "{label} in {counter_line}");
        }
        assert!(
            counter_line.ends_with(&format!(" {expected}")),
            "{counter_line}"
        );
        counted += expected;
    }
    assert_eq!(counted, 20);
    assert!(listed.iter().all(|r| r["reason"]
        == if r["attempts"] == 2 {
            "retried"
        } else {
            "routed"
        }));
}

#[test]
fn retries_resend_a_failed_attempt_and_a_missing_backend_is_reported() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    // `retried` has echo-v1 and flaky (every answer 503); its rule retries 503 twice.
    for _ in 0..20 {
        let answer = mesh.curl(&["-w", "\n%{http_code}", &format!("http://{RETRIED}/r")]);
        assert!(answer.ends_with("\n200"), "{answer}");
        assert!(from(&answer, "echo-v1"), "{answer}");
    }
    let flaky = std::fs::read_to_string(mesh.logs.join("flaky.log")).unwrap_or_default();
    assert!(
        flaky.lines().filter(|l| *l == "request GET /r").count() >= 5,
        "flaky was tried (and its 503s retried): {flaky}"
    );
    assert!(
        mesh.waypoint_log().contains("attempts=2"),
        "the access log counts the attempts"
    );
    // The waypoint's own answers: 502 when the endpoint refuses, 503 with no ready endpoint.
    for (vip, code, reason) in [
        (REFUSING, "502", "upstream_failed"),
        (EMPTY, "503", "no_ready_endpoints"),
    ] {
        let head = mesh.curl(&["-i", &format!("http://{vip}/")]);
        assert!(head.starts_with(&format!("HTTP/1.1 {code}")), "{head}");
        assert!(head.contains(&format!("x-weft-reason: {reason}")), "{head}");
    }
    // A route whose backend does not exist: 500 with the reason, and its status says so.
    let head = mesh.curl(&["-i", &format!("http://{MISSING}/")]);
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert!(head.contains("x-weft-reason: backend_not_found"), "{head}");
    let routes = mesh.waypoint_admin("/routes");
    let routes: serde_json::Value = serde_json::from_str(&routes).expect("routes JSON");
    let status = routes["statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["route"] == "demo/missing")
        .unwrap_or_else(|| panic!("demo/missing has a status: {routes}"));
    assert_eq!(status["resolvedRefs"], false, "{status}");
    assert_eq!(status["resolvedRefsReason"], "BackendNotFound", "{status}");
    assert_eq!(status["accepted"], true, "{status}");
    // weftctl shows the same status, and the requests with the route and backend each took.
    let (ok, routes) = mesh.weftctl(&["routes"]);
    assert!(ok, "{routes}");
    assert!(
        routes
            .lines()
            .any(|l| l.contains("demo/missing") && l.contains("False/BackendNotFound")),
        "{routes}"
    );
    let (ok, listed) = mesh.weftctl(&["-o", "json", "requests", "--route", "demo/retried"]);
    assert!(ok, "{listed}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("requests JSON");
    assert_eq!(listed.len(), 20, "{listed:?}");
    for record in &listed {
        assert_eq!(record["status"], 200, "{record}");
        assert_eq!(record["route"], "demo/retried rule 0", "{record}");
        assert_eq!(record["backend"], "demo/retried", "{record}");
        assert_eq!(record["upstreamPod"], "demo/echo-v1", "{record}");
        assert_eq!(
            record["client"], "spiffe://cluster.local/ns/demo/sa/client",
            "{record}"
        );
        assert!(record["responseBytes"].as_u64() > Some(100), "{record}");
    }
    assert!(listed.iter().any(|r| r["attempts"] == 2), "{listed:?}");
    let (ok, failed) = mesh.weftctl(&["requests", "--status", "5xx"]);
    assert!(ok, "{failed}");
    assert!(
        failed.contains("backend_not_found") && !failed.contains("demo/retried"),
        "{failed}"
    );
    // The metrics carry both ends and the route; sizes are histograms.
    let metrics = mesh.waypoint_admin_at(15020, "/metrics");
    retried_requests_are_counted(&metrics, &listed);
    for histogram in [
        "weft_request_size_bytes_bucket",
        "weft_response_size_bytes_bucket",
        "weft_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(histogram), "{histogram}:\n{metrics}");
    }
}

#[test]
fn grpc_websocket_and_tcp_pass_through_the_waypoint() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let grpc = Mesh::python_helper("grpc_echo.py");
    let ws = Mesh::python_helper("ws_echo.py");
    mesh.start_grpc_echo().expect("grpc server");
    mesh.cluster
        .spawn_in_pod(
            &mesh.pod("echo-v1"),
            "python3",
            &[&ws, "serve", "0.0.0.0", "8090"],
        )
        .expect("websocket server");
    let client = mesh.pod("client");
    // gRPC: unary and bidirectional streaming keep their status and trailers; the route's
    // filter reached the server; a method no rule matches is UNIMPLEMENTED (the 404).
    let mut seen = serde_json::Value::Null;
    eventually(Duration::from_secs(15), "the gRPC client ran", || {
        let out = mesh
            .cluster
            .run_in_pod(
                &client,
                "python3",
                &[&grpc, "client", &format!("{GRPC}:50051")],
            )
            .expect("grpc client");
        seen = serde_json::from_slice(&out.stdout).unwrap_or_default();
        out.status.success()
    });
    assert_eq!(seen["unary"], "echo:hello routed=routed", "{seen}");
    assert_eq!(seen["unary_code"], "OK", "{seen}");
    assert_eq!(seen["unary_trailer"], "unary", "{seen}");
    assert_eq!(seen["fail_code"], "NOT_FOUND", "{seen}");
    assert_eq!(seen["fail_details"], "asked to fail", "{seen}");
    assert_eq!(
        seen["chat"],
        serde_json::json!(["echo:a", "echo:b", "echo:c"]),
        "{seen}"
    );
    assert_eq!(seen["chat_trailer"], "chat", "{seen}");
    assert_eq!(seen["unrouted_code"], "UNIMPLEMENTED", "{seen}");
    // A WebSocket upgrade: frames are echoed through the waypoint.
    let mut echoed = String::new();
    eventually(Duration::from_secs(15), "the WebSocket client ran", || {
        let out = mesh
            .cluster
            .run_in_pod(
                &client,
                "python3",
                &[&ws, "client", &format!("ws://{WS}/chat")],
            )
            .expect("websocket client");
        echoed = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert_eq!(echoed, "echo:one\necho:two\necho:three\n");
    h2load_through(&mesh);
    l4_ports_through(&mesh);
    let log = mesh.waypoint_log();
    for service in ["demo/tcp", "demo/raw"] {
        assert!(
            log.lines()
                .any(|l| l.contains("L4 connection") && l.contains(service)),
            "{service} went through the waypoint at L4:\n{log}"
        );
    }
}

/// h2load through the waypoint, HTTP/2 prior knowledge and HTTP/1.1, several streams per
/// connection: every request succeeds.
fn h2load_through(mesh: &Mesh) {
    let client = mesh.pod("client");
    for protocol in [&[][..], &["--h1"][..]] {
        let mut args = vec!["-n", "400", "-c", "4", "-m", "4"];
        args.extend_from_slice(protocol);
        let url = format!("http://{ECHO}/tie");
        args.push(&url);
        let out = mesh
            .cluster
            .run_in_pod(&client, "h2load", &args)
            .expect("h2load");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{report}");
        assert!(
            report.contains("400 succeeded, 0 failed, 0 errored"),
            "h2load {protocol:?}: {report}"
        );
    }
}

/// A TCP port (appProtocol: tcp) and an undeclared one whose bytes are not HTTP both pass
/// through at L4, every byte intact.
fn l4_ports_through(mesh: &Mesh) {
    let client = mesh.pod("client");
    let testpod = mesh.bin("weft-testpod").expect("testpod");
    for vip in [TCP, RAW] {
        let out = mesh
            .cluster
            .run_in_pod(
                &client,
                testpod.to_str().expect("path"),
                &["send", &format!("{vip}:9000"), "1000000"],
            )
            .expect("send");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{report} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(report.contains("server: server=bytes"), "{report}");
        let field = |name: &str| {
            report
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(field("sent="), field("echoed="), "{report}");
        assert_eq!(field("sent_sum="), field("echoed_sum="), "{report}");
    }
}

#[test]
fn a_hundred_mib_streams_each_way_and_the_waypoint_stays_small() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let upload = mesh.logs.join("upload.bin");
    let file = std::fs::File::create(&upload).expect("upload file");
    file.set_len(SIZE).expect("100 MiB");
    // Upload (curl sends `Expect: 100-continue` for a body this large): the echo counts it.
    let body = mesh.curl(&[
        "--max-time",
        "120",
        "-T",
        upload.to_str().expect("path"),
        &format!("http://{ECHO}/tie"),
    ]);
    assert!(body.contains(&format!("body-bytes={SIZE}\n")), "{body}");
    // The same body chunked (no Content-Length), streamed through as well.
    let body = mesh.curl(&[
        "--max-time",
        "120",
        "-H",
        "Transfer-Encoding: chunked",
        "-T",
        upload.to_str().expect("path"),
        &format!("http://{ECHO}/tie"),
    ]);
    assert!(
        body.contains(&format!("body-bytes={SIZE}\n")),
        "chunked: {body}"
    );
    // Download, over HTTP/1.1 and HTTP/2.
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let got = mesh.curl(&[
            "--max-time",
            "120",
            version,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("http://{ECHO}/bytes/{SIZE}"),
        ]);
        assert_eq!(got, SIZE.to_string(), "{version}");
    }
    let peak = mesh.waypoint_memory_kib("VmHWM").expect("peak RSS");
    eprintln!("waypoint peak RSS after 300 MiB: {peak} KiB");
    assert!(
        peak < 64 * 1024,
        "the waypoint's peak RSS was {peak} KiB moving 300 MiB; bodies must stream"
    );
}

#[test]
fn a_route_change_applies_within_a_second_and_requests_in_flight_finish() {
    if !require_privileges() {
        return;
    }
    let mesh = start();
    let url = format!("http://{ECHO}/tie");
    assert!(from(&mesh.curl(&[&url]), "echo-v1"));
    // Requests run on one connection while the route changes under them.
    let urls: Vec<String> = (0..300).map(|_| url.clone()).collect();
    let runner = {
        let client = mesh.pod("client");
        let mut args = vec![
            "-s".to_owned(),
            "--max-time".into(),
            "60".into(),
            "-w".into(),
            "%{http_code}\n".into(),
        ];
        // `-o` names one URL's output: each URL gets its own.
        for url in urls {
            args.extend(["-o".into(), "/dev/null".into(), url]);
        }
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            weft_harness::Cluster::pod_command(&client, "curl", &args).output()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let routes = weft_harness::waypoint_mesh::ROUTES.replacen(
        "    - path: {type: PathPrefix, value: /tie}\n    backendRefs: [{name: echo-v1, port: 80}]",
        "    - path: {type: PathPrefix, value: /tie}\n    backendRefs: [{name: echo-v2, port: 80}]",
        1,
    );
    assert_ne!(routes, weft_harness::waypoint_mesh::ROUTES);
    let changed = std::time::Instant::now();
    mesh.manifests
        .write("routes.yaml", &routes)
        .expect("routes");
    eventually(Duration::from_secs(5), "the new route applies", || {
        from(&mesh.curl(&[&url]), "echo-v2")
    });
    let took = changed.elapsed();
    eprintln!("the route change applied after {took:?}");
    assert!(took < Duration::from_secs(1), "the change took {took:?}");
    let out = runner.join().expect("runner").expect("curl");
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().count(), 300, "{codes}");
    assert!(codes.lines().all(|c| c == "200"), "{codes}");
}
