//! Distributed tracing on the real kernel with real clients: curl sends W3C and B3 contexts
//! through the waypoint, the echo backend shows what it received, and a real OTLP receiver
//! (`tests/py/otlp_receiver.py`: grpcio and the opentelemetry-proto package) decodes the spans
//! the waypoint exports over gRPC and the agents over HTTP/protobuf. A collector that is down
//! costs the requests nothing: every span is counted as failed or dropped.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use weft_harness::{
    eventually, require_privileges,
    waypoint_mesh::{Extras, Mesh, ECHO, ECHO_V1, RETRIED},
};

const RECEIVER: &str = "otlp_receiver.py";

fn bins() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-testpod"))
        .parent()
        .expect("the target folder")
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The agents' config file: spans over OTLP/HTTP to a receiver on their node's loopback.
fn agent_config(dir: &Path) -> PathBuf {
    let path = dir.join("agent-tracing.yaml");
    std::fs::create_dir_all(dir).expect("config dir");
    std::fs::write(
        &path,
        "tracing:\n  endpoint: http://127.0.0.1:4318/v1/traces\n  protocol: http/protobuf\n  scheduledDelayMs: 200\n  headers: {x-weft-tenant: agents}\n",
    )
    .expect("agent config");
    path
}

/// Starts the receiver in the waypoint's netns or a node's, and waits until it listens.
fn receiver(mesh: &Mesh, at: &str, listen: &[&str]) -> PathBuf {
    let out = mesh.logs.join(format!("spans-{at}.jsonl"));
    let log_path = mesh.logs.join(format!("receiver-{at}.log"));
    let log = std::fs::File::create(&log_path).expect("receiver log");
    let script = Mesh::python_helper(RECEIVER);
    let mut args = vec![script.as_str(), "serve", "--out"];
    let out_str = out.to_str().expect("path").to_owned();
    args.push(&out_str);
    args.extend_from_slice(listen);
    if at == "waypoint" {
        mesh.cluster
            .spawn_in_pod_logged(&mesh.pod("waypoint"), "python3", &args, &[], log)
            .expect("receiver in the waypoint's netns");
    } else {
        let mut command = Command::new("python3");
        command.args(&args);
        mesh.cluster
            .spawn_in_node_logged(mesh.cluster.node(at), &command, log)
            .expect("receiver in a node's netns");
    }
    eventually(Duration::from_secs(20), "the OTLP receiver listens", || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("ready"))
    });
    out
}

fn spans(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of_trace(file: &Path, trace: &str) -> Vec<Value> {
    spans(file)
        .into_iter()
        .filter(|s| s["trace_id"] == trace)
        .collect()
}

/// Waits for `count` spans of `trace`.
fn await_spans(file: &Path, trace: &str, count: usize) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(
        Duration::from_secs(15),
        &format!("{count} spans of trace {trace} in {}", file.display()),
        || {
            found = of_trace(file, trace);
            found.len() >= count
        },
    );
    found
}

/// The value of `name` in the echo's reply (`header NAME: VALUE` lines).
fn echoed(body: &str, name: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("header {name}: ")))
        .map(str::to_owned)
}

fn traceparent_parts(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "a traceparent: {value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn trace_id(n: u8) -> String {
    format!("{n:02x}{}", "ab".repeat(15))
}

const CALLER: &str = "00f067aa0ba902b7";

fn kind<'a>(spans: &'a [Value], kind: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["kind"] == kind).collect()
}

#[test]
fn the_waypoint_continues_the_callers_trace_and_exports_its_spans_over_grpc() {
    if !require_privileges() {
        return;
    }
    let extras = Extras {
        waypoint_env: env(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4317",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_SERVICE_NAME", "waypoint-under-test"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-weft-tenant=team%20a"),
            // Nothing new is sampled: only a sampled caller or x-weft-trace keeps a trace.
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ]),
        agent_flags: Vec::new(),
    };
    let mesh = Mesh::start_with(
        bins(),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "info,weft_waypoint=debug",
        &extras,
    )
    .expect("the waypoint mesh");
    let file = receiver(&mesh, "waypoint", &["--grpc", "127.0.0.1:4317"]);
    let url = format!("http://{ECHO}/");
    w3c_keeps_the_trace_and_the_spans_arrive(&mesh, &file, &url);
    sampling_follows_the_caller_unless_forced(&mesh, &file, &url);
    b3_in_means_w3c_out_and_b3_again(&mesh, &file, &url);
    retries_are_child_spans(&mesh, &file);
}

fn w3c_keeps_the_trace_and_the_spans_arrive(mesh: &Mesh, file: &Path, url: &str) {
    // W3C in, sampled: the trace id and flag stay, the backend's parent is the waypoint's
    // attempt, tracestate and baggage pass unchanged.
    let sampled = trace_id(1);
    let body = mesh.curl(&[
        "-H",
        &format!("traceparent: 00-{sampled}-{CALLER}-01"),
        "-H",
        "tracestate: vendor=x",
        "-H",
        "baggage: user=alice,tier=gold",
        url,
    ]);
    let sent = echoed(&body, "traceparent").expect("the backend got a traceparent");
    let (trace, parent, flags) = traceparent_parts(&sent);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (sampled.as_str(), "01"),
        "{body}"
    );
    assert_ne!(
        parent, CALLER,
        "a new parent span id at the backend: {body}"
    );
    assert_eq!(echoed(&body, "tracestate").as_deref(), Some("vendor=x"));
    assert_eq!(
        echoed(&body, "baggage").as_deref(),
        Some("user=alice,tier=gold")
    );
    let found = await_spans(file, &sampled, 2);
    let server = kind(&found, "SERVER");
    let client = kind(&found, "CLIENT");
    assert_eq!((server.len(), client.len()), (1, 1), "{found:#?}");
    let (server, client) = (server[0], client[0]);
    assert_eq!(server["parent_span_id"], CALLER, "{server:#}");
    assert_eq!(client["parent_span_id"], server["span_id"], "{client:#}");
    assert_eq!(
        client["span_id"],
        parent.as_str(),
        "the backend's parent is the attempt"
    );
    assert_eq!(server["service"], "waypoint-under-test");
    assert_eq!(server["transport"], "grpc");
    assert_eq!(server["headers"]["x-weft-tenant"], "team a", "{server:#}");
    let attributes = &server["attributes"];
    assert_eq!(attributes["http.request.method"], "GET", "{server:#}");
    assert_eq!(attributes["http.response.status_code"], 200);
    assert_eq!(attributes["url.path"], "/");
    assert_eq!(attributes["weft.service"], "demo/echo");
    assert_eq!(attributes["weft.reason"], "routed");
    assert!(attributes["weft.route"].is_string() && attributes["weft.backend"].is_string());
    assert!(attributes["weft.policy.verdict"].is_string(), "{server:#}");
    assert_eq!(client["attributes"]["http.response.status_code"], 200);
    assert!(client["attributes"]["server.address"].is_string());
}

fn sampling_follows_the_caller_unless_forced(mesh: &Mesh, file: &Path, url: &str) {
    // An unsampled caller stays unsampled; x-weft-trace keeps its trace anyway.
    let unsampled = trace_id(2);
    let body = mesh.curl(&[
        "-H",
        &format!("traceparent: 00-{unsampled}-{CALLER}-00"),
        url,
    ]);
    let (trace, _, flags) = traceparent_parts(&echoed(&body, "traceparent").expect("sent"));
    assert_eq!((trace.as_str(), flags.as_str()), (unsampled.as_str(), "00"));
    let forced = trace_id(3);
    let body = mesh.curl(&[
        "-H",
        &format!("traceparent: 00-{forced}-{CALLER}-00"),
        "-H",
        "x-weft-trace: 1",
        url,
    ]);
    let (trace, _, flags) = traceparent_parts(&echoed(&body, "traceparent").expect("sent"));
    assert_eq!((trace.as_str(), flags.as_str()), (forced.as_str(), "01"));
    let found = await_spans(file, &forced, 2);
    assert!(
        found
            .iter()
            .all(|s| s["attributes"]["weft.trace.forced"] == true),
        "{found:#?}"
    );
    assert!(
        of_trace(file, &unsampled).is_empty(),
        "an unsampled trace is not exported"
    );

    // No context at all: a trace starts (and, at ratio 0, is not sampled).
    let body = mesh.curl(&[url]);
    let (trace, _, flags) = traceparent_parts(&echoed(&body, "traceparent").expect("sent"));
    assert_eq!(trace.len(), 32, "{body}");
    assert_eq!(flags, "00");
}

fn b3_in_means_w3c_out_and_b3_again(mesh: &Mesh, file: &Path, url: &str) {
    // B3 in: W3C out, and B3 again in the encoding it came in.
    let single = trace_id(4);
    let body = mesh.curl(&["-H", &format!("b3: {single}-{CALLER}-1"), url]);
    let (trace, parent, flags) = traceparent_parts(&echoed(&body, "traceparent").expect("sent"));
    assert_eq!((trace.as_str(), flags.as_str()), (single.as_str(), "01"));
    assert_eq!(
        echoed(&body, "b3").as_deref(),
        Some(format!("{single}-{parent}-1").as_str()),
        "{body}"
    );
    assert!(echoed(&body, "x-b3-traceid").is_none(), "{body}");
    let multi = trace_id(5);
    let body = mesh.curl(&[
        "-H",
        &format!("x-b3-traceid: {multi}"),
        "-H",
        &format!("x-b3-spanid: {CALLER}"),
        "-H",
        "x-b3-sampled: 1",
        url,
    ]);
    let (trace, parent, _) = traceparent_parts(&echoed(&body, "traceparent").expect("sent"));
    assert_eq!(trace, multi);
    assert_eq!(
        echoed(&body, "x-b3-traceid").as_deref(),
        Some(multi.as_str())
    );
    assert_eq!(
        echoed(&body, "x-b3-spanid").as_deref(),
        Some(parent.as_str())
    );
    assert_eq!(echoed(&body, "x-b3-sampled").as_deref(), Some("1"));
    assert!(echoed(&body, "b3").is_none(), "{body}");
    await_spans(file, &multi, 2);
}

fn retries_are_child_spans(mesh: &Mesh, file: &Path) {
    // Retries: each attempt is a child span of the request's, the later ones with their
    // resend count. demo/retried has an endpoint that always answers 503.
    let mut retried = None;
    for n in 0..12u8 {
        let trace = trace_id(0x10 + n);
        mesh.curl(&[
            "-H",
            &format!("traceparent: 00-{trace}-{CALLER}-01"),
            &format!("http://{RETRIED}/"),
        ]);
        let found = await_spans(file, &trace, 2);
        if kind(&found, "CLIENT").len() == 2 {
            retried = Some(found);
            break;
        }
    }
    let retried = retried.expect("one of 12 requests was retried");
    let server = kind(&retried, "SERVER")[0];
    let mut attempts = kind(&retried, "CLIENT");
    attempts.sort_by_key(|s| s["attributes"]["weft.attempt"].as_i64());
    assert!(attempts
        .iter()
        .all(|a| a["parent_span_id"] == server["span_id"]));
    assert_eq!(attempts[0]["attributes"]["http.response.status_code"], 503);
    assert_eq!(attempts[1]["attributes"]["http.request.resend_count"], 1);
    assert_eq!(server["attributes"]["weft.attempts"], 2);
    assert_eq!(server["attributes"]["weft.reason"], "retried");
}

use weft_harness::waypoint_mesh::metric_value as metric;

#[test]
fn agents_link_both_ends_of_a_connection_over_http_and_a_dead_collector_costs_nothing() {
    if !require_privileges() {
        return;
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let config_dir = tmp.join(format!("tracing-{}", std::process::id()));
    let config = agent_config(&config_dir);
    let extras = Extras {
        // Nothing listens on the waypoint's collector port: every export fails.
        waypoint_env: env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4319"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ]),
        agent_flags: vec!["--config".into(), config.to_string_lossy().into_owned()],
    };
    let mesh = Mesh::start_with(bins(), tmp, "info,weft_waypoint=debug", &extras)
        .expect("the waypoint mesh");
    let node0 = receiver(&mesh, "node0", &["--http", "127.0.0.1:4318"]);
    let node1 = receiver(&mesh, "node1", &["--http", "127.0.0.1:4318"]);

    // demo/echo-v1 has no waypoint: client (node0) -> agent node0 -> HBONE -> agent node1.
    let body = mesh.curl(&[&format!("http://{ECHO_V1}/")]);
    assert!(body.contains("server=echo-v1"), "{body}");
    let mut pair = None;
    eventually(
        Duration::from_secs(15),
        "the client agent's span and the server agent's child span",
        || {
            let outbound: Vec<Value> = spans(&node0)
                .into_iter()
                .filter(|s| {
                    s["kind"] == "CLIENT" && s["attributes"]["weft.service"] == "demo/echo-v1"
                })
                .collect();
            let inbound = spans(&node1);
            pair = outbound.iter().find_map(|out| {
                inbound
                    .iter()
                    .find(|i| i["kind"] == "SERVER" && i["parent_span_id"] == out["span_id"])
                    .map(|i| (out.clone(), i.clone()))
            });
            pair.is_some()
        },
    );
    let (outbound, inbound) = pair.expect("pair");
    assert_eq!(outbound["trace_id"], inbound["trace_id"]);
    assert_eq!(outbound["transport"], "http");
    assert_eq!(
        outbound["headers"]["x-weft-tenant"], "agents",
        "{outbound:#}"
    );
    assert_eq!(outbound["service"], "weft-agent");
    assert_eq!(
        outbound["resource"]["k8s.node.name"], "node0",
        "{outbound:#}"
    );
    for span in [&outbound, &inbound] {
        let attributes = &span["attributes"];
        assert_eq!(attributes["weft.security"], "mtls", "{span:#}");
        assert_eq!(attributes["weft.policy.verdict"], "allow");
        assert!(
            attributes["weft.bytes.from_client"].as_i64() > Some(0),
            "{span:#}"
        );
        assert!(
            attributes["weft.bytes.to_client"].as_i64() > Some(0),
            "{span:#}"
        );
    }

    a_dead_collector_costs_nothing(&mesh);
    the_graph_counts_what_was_sent(&mesh, &config_dir);
    let _ = std::fs::remove_dir_all(&config_dir);
}

/// `weftctl graph --all` over the two nodes and the waypoint: the one connection to echo-v1,
/// the 300 requests through the waypoint, each counted once; and the same as dot and PNG.
fn the_graph_counts_what_was_sent(mesh: &Mesh, dir: &Path) {
    let node = |name: &str| serde_json::json!({"name": name, "netns": mesh.cluster.node(name).netns, "admin": "127.0.0.1:15000"});
    let playground = serde_json::json!({
        "nodes": [node("node0"), node("node1")],
        "waypoints": [{"namespace": "demo", "name": "waypoint", "netns": mesh.pod("waypoint").netns, "admin": "127.0.0.1:15000"}],
    });
    let file = dir.join("playground.json");
    std::fs::write(&file, playground.to_string()).expect("playground");
    let weftctl = |args: &[&str]| {
        let out = Command::new(mesh.bin("weftctl").expect("weftctl"))
            .arg("--playground")
            .arg(&file)
            .args(args)
            .output()
            .expect("weftctl");
        assert!(
            out.status.success(),
            "weftctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let graph: Value =
        serde_json::from_str(&weftctl(&["-o", "json", "graph", "--all"])).expect("json");
    let edges = graph["edges"].as_array().expect("edges");
    let edge = |source: &str, destination: &str, via: Option<&str>| {
        edges
            .iter()
            .filter(|e| e["source"] == source && e["destination"] == destination)
            .find(|e| e["via"].as_str() == via)
            .cloned()
            .unwrap_or_else(|| panic!("no edge {source} -> {destination} via {via:?}: {graph:#}"))
    };
    let direct = edge("demo/client", "demo/echo-v1", None);
    assert_eq!(direct["connections"], 1, "{direct:#}");
    assert_eq!(direct["mtlsConnections"], 1);
    let via = Some("demo/waypoint");
    let served: u64 = ["demo/echo-v1", "demo/echo-v2"]
        .iter()
        .map(|d| {
            edge("demo/client", d, via)["requests"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(served, 300, "{graph:#}");
    let table = weftctl(&["graph", "--all"]);
    assert!(
        table.contains("demo/client") && table.contains("demo/waypoint"),
        "{table}"
    );
    let dot = weftctl(&["-o", "dot", "graph", "--all"]);
    assert!(dot.starts_with("digraph weft"), "{dot}");
    let png = dir.join("graph.png");
    weftctl(&["-o", "png", "graph", "--all", png.to_str().expect("path")]);
    let bytes = std::fs::read(&png).expect("the PNG");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG file");
}

/// The waypoint's collector is down: 300 requests all answer, and every span is counted as
/// failed or dropped, never more than the queue held at once.
fn a_dead_collector_costs_nothing(mesh: &Mesh) {
    let urls: Vec<String> = (0..300).map(|i| format!("http://{ECHO}/n/{i}")).collect();
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}\\n"];
    args.extend(urls.iter().map(String::as_str));
    let codes = mesh.curl(&args);
    let mut counted: BTreeMap<&str, usize> = BTreeMap::new();
    for code in codes.lines() {
        *counted.entry(code).or_default() += 1;
    }
    assert_eq!(counted.get("200"), Some(&300), "{counted:?}");
    let mut text = String::new();
    eventually(
        Duration::from_secs(20),
        "every span is counted as failed or dropped",
        || {
            text = mesh.waypoint_admin_at(15020, "/metrics");
            metric(&text, "weft_trace_spans_total{outcome=\"export_failed\"}")
                + metric(
                    &text,
                    "weft_trace_spans_total{outcome=\"dropped_queue_full\"}",
                )
                >= 600
        },
    );
    assert_eq!(
        metric(&text, "weft_trace_spans_total{outcome=\"exported\"}"),
        0,
        "{text}"
    );
    assert!(metric(&text, "weft_trace_spans_queued") <= 16, "{text}");
    assert!(
        metric(
            &text,
            "weft_trace_spans_total{outcome=\"dropped_queue_full\"}"
        ) > 0,
        "a 16-span queue overflows under 600 spans: {text}"
    );
}
