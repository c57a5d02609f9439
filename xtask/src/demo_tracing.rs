//! The tour's tracing part: the playground's waypoint exports its spans over OTLP/gRPC to a
//! small receiver in its netns (`tests/py/otlp_receiver.py`, which appends each decoded span
//! to `target/weft-demo/spans.jsonl`). A request sent with a trace id shows up there, printed
//! as a tree: the waypoint's request span under the caller, an attempt span under it. Then
//! `weftctl graph --all` draws who talked to whom during the tour.

use std::{path::PathBuf, time::Duration};

use weft_harness::Cluster;

use crate::{demo, demo_waypoint::curl};

/// The waypoint's tracing settings in the playground: 1% of new traces, every trace a sampled
/// caller or `x-weft-trace: 1` asks for, exported every half second.
pub const WAYPOINT_ENV: &[(&str, &str)] = &[
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "http://127.0.0.1:4317",
    ),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
    ("OTEL_BSP_SCHEDULE_DELAY", "500"),
    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
    ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
];

fn receiver() -> PathBuf {
    crate::shell::root().join("tests/py/otlp_receiver.py")
}

pub fn spans_file() -> PathBuf {
    demo::state_dir().join("spans.jsonl")
}

/// Starts the OTLP receiver in the waypoint's netns (before the waypoint, so no export is
/// lost); stopped by PID.
pub fn start_collector(cluster: &Cluster) -> anyhow::Result<u32> {
    let pod = cluster.pod("demo", "waypoint").clone();
    let logs = demo::state_dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    let _ = std::fs::remove_file(spans_file());
    let log_path = logs.join("otlp-receiver.log");
    let log = std::fs::File::create(&log_path)?;
    let pid = cluster.spawn_in_pod_logged(
        &pod,
        "python3",
        &[
            &receiver().to_string_lossy(),
            "serve",
            "--grpc",
            "127.0.0.1:4317",
            "--out",
            &spans_file().to_string_lossy(),
        ],
        &[],
        log,
    )?;
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("ready"))
    });
    anyhow::ensure!(
        ready,
        "the OTLP receiver did not start within 10 s (log in {})",
        log_path.display()
    );
    Ok(pid)
}

fn traceparent_of(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix("header traceparent: "))
        .map(str::to_owned)
}

/// The spans of `trace` in the receiver's file, as a tree.
fn tree(trace: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("python3")
        .arg(receiver())
        .args(["tree", &spans_file().to_string_lossy(), "--trace", trace])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "otlp_receiver.py tree: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (up to 5 s) for the spans of `trace` and prints them.
fn show_trace(trace: &str) -> anyhow::Result<()> {
    let mut shown = String::new();
    let arrived = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        shown = tree(trace).unwrap_or_default();
        shown.matches("[CLIENT]").count() >= 1
    });
    anyhow::ensure!(
        arrived,
        "the spans of trace {trace} did not reach the receiver within 5 s ({})",
        spans_file().display()
    );
    for line in shown.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// The tracing tour; `demo/echo` must use the waypoint.
pub fn tour(cluster: &Cluster) -> anyhow::Result<()> {
    let url = format!("http://{}/traced", demo::ECHO_VIP);
    // Unique enough for one tour: the clock and this process.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let trace = format!("{:032x}", mixed ^ u128::from(std::process::id()));
    let caller = "00f067aa0ba902b7";
    demo::banner("Tracing: curl sends traceparent 00-<trace>-<caller>-01 through the waypoint");
    let body = curl(
        cluster,
        &[
            "-H",
            &format!("traceparent: 00-{trace}-{caller}-01"),
            "-H",
            "baggage: user=alice",
            &url,
        ],
    )?;
    println!("  sent:     traceparent 00-{trace}-{caller}-01");
    println!(
        "  received: traceparent {} (same trace, the waypoint's attempt as parent)",
        traceparent_of(&body).unwrap_or_else(|| "none".into())
    );
    println!("  the waypoint's spans, from its OTLP export:");
    show_trace(&trace)?;

    demo::banner("curl -H 'x-weft-trace: 1': a new trace, kept although the sampler keeps 1%");
    let body = curl(cluster, &["-H", "x-weft-trace: 1", &url])?;
    let started = traceparent_of(&body).unwrap_or_default();
    println!("  received: traceparent {started}");
    if let Some(trace) = started.split('-').nth(1) {
        show_trace(trace)?;
    }
    println!(
        "  every span of the tour: python3 tests/py/otlp_receiver.py tree {}",
        spans_file().display()
    );

    demo::banner("weftctl graph --all: who talked to whom during the tour, from the agents' and the waypoint's records");
    demo::weftctl(&["graph", "--all", "--since", "10m"])?;
    let png = demo::state_dir().join("graph.png");
    demo::weftctl(&[
        "-o",
        "png",
        "graph",
        "--all",
        "--since",
        "10m",
        &png.to_string_lossy(),
    ])?;
    Ok(())
}
