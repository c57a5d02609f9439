//! The tracing scenario of the waypoint bench: what a span per request costs, and that a
//! collector that is down costs nothing more. A second fixture's waypoint samples every request
//! (`always_on`) and exports over OTLP/gRPC to a receiver in its netns; at 500 requests a second
//! over 8 connections to `demo/guarded` it runs with the receiver up, then with the receiver
//! stopped. The baseline is the first fixture's `no policy` authz case (tracing off, the same
//! load on the same Service, in the same run). Spans exported, failed and dropped and the
//! traced waypoint's peak RSS are reported beside.

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    load::LoadReport,
    waypoint_mesh::{Extras, Mesh, GUARDED},
};

/// One configuration's run, with the span counters after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TracingCase {
    pub config: String,
    pub load: LoadReport,
    pub spans_exported: u64,
    pub spans_failed: u64,
    pub spans_dropped: u64,
    pub waypoint_peak_rss_mib: f64,
}

fn counter(metrics: &str, outcome: &str) -> u64 {
    let series = format!("weft_trace_spans_total{{outcome=\"{outcome}\"}}");
    crate::waypoint_mesh::metric_value(metrics, &series)
}

/// Runs both configurations on a traced fixture of its own.
pub fn run(
    bins: &Path,
    out: &Path,
    (seconds, warmup): (f64, f64),
) -> anyhow::Result<Vec<TracingCase>> {
    let extras = Extras {
        waypoint_env: [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4317",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
        agent_flags: Vec::new(),
    };
    let mesh = Mesh::start_with(bins, out, "info", &extras)?;
    let spans = mesh.logs.join("bench-spans.jsonl");
    let receiver_log = mesh.logs.join("bench-receiver.log");
    let receiver = mesh.cluster.spawn_in_pod_logged(
        &mesh.pod("waypoint"),
        "python3",
        &[
            &Mesh::python_helper("otlp_receiver.py"),
            "serve",
            "--grpc",
            "127.0.0.1:4317",
            "--out",
            &spans.to_string_lossy(),
        ],
        &[],
        std::fs::File::create(&receiver_log)?,
    )?;
    let listening = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(&receiver_log).is_ok_and(|l| l.contains("ready"))
    });
    anyhow::ensure!(listening, "the bench's OTLP receiver did not start");
    let client = mesh.pod("client");
    let target = SocketAddr::new(GUARDED.into(), 80);
    let mut cases = Vec::new();
    for config in [
        "every request traced, collector up",
        "every request traced, collector down",
    ] {
        if config.ends_with("down") {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(receiver)?),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            std::thread::sleep(Duration::from_millis(300));
        }
        let load = super::waypoint::load(
            &mesh,
            &client,
            (target, "/"),
            false,
            (500.0, 8, seconds, warmup),
        )?;
        anyhow::ensure!(
            load.errors == 0,
            "waypoint bench: tracing, {config}: {} requests failed",
            load.errors
        );
        // The last batch leaves within the schedule delay.
        std::thread::sleep(Duration::from_millis(600));
        let metrics = mesh.waypoint_admin_at(15020, "/metrics");
        #[expect(clippy::cast_precision_loss, reason = "KiB counts fit")]
        let peak = super::process::peak_rss_kib(mesh.waypoint_pid) as f64 / 1024.0;
        eprintln!(
            "waypoint bench: tracing, {config}: p50 {:.0} µs, p99 {:.0} µs",
            load.latency_us.p50, load.latency_us.p99
        );
        cases.push(TracingCase {
            config: config.to_owned(),
            load,
            spans_exported: counter(&metrics, "exported"),
            spans_failed: counter(&metrics, "export_failed"),
            spans_dropped: counter(&metrics, "dropped_queue_full"),
            waypoint_peak_rss_mib: peak,
        });
    }
    Ok(cases)
}

/// Each traced configuration's latency against tracing off, and its span counts.
pub fn rows(untraced: Option<&LoadReport>, cases: &[TracingCase]) -> Vec<super::Row> {
    let section = "waypoint tracing (500 rps, 8 connections)";
    let mut rows = Vec::new();
    for case in cases {
        if let Some(off) = untraced {
            for (name, baseline, weft) in [
                ("p50", off.latency_us.p50, case.load.latency_us.p50),
                ("p99", off.latency_us.p99, case.load.latency_us.p99),
            ] {
                rows.push(super::Row::lower(
                    section,
                    &format!("{name}, {} (baseline: tracing off)", case.config),
                    baseline,
                    weft,
                    "µs",
                ));
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "span counts fit")]
        for (what, count) in [
            ("spans exported", case.spans_exported),
            ("spans failed (collector unreachable)", case.spans_failed),
            ("spans dropped (queue full)", case.spans_dropped),
        ] {
            rows.push(super::Row::alone(
                section,
                &format!("{what} so far, after: {}", case.config),
                count as f64,
                "",
            ));
        }
        rows.push(super::Row {
            lower_is_better: true,
            ..super::Row::alone(
                section,
                &format!("traced waypoint peak RSS, after: {}", case.config),
                case.waypoint_peak_rss_mib,
                "MiB",
            )
        });
    }
    rows
}
