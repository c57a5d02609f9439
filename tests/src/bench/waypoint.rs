//! The waypoint scenarios: HTTP/1.1 and HTTP/2 requests on three paths measured in the same
//! run, on the waypoint fixture ([`crate::waypoint_mesh`]): the no-mesh baseline (legacy pod to
//! legacy pod), Weft at L4 (an enrolled client to `demo/direct`, agent to agent) and Weft
//! through the waypoint (`demo/bench`, client's agent to the waypoint to the backend's agent).
//! Each runs open-loop at 1,000 requests/s over 4 and 64 connections, and near saturation
//! (70% of what the waypoint path sustained closed-loop over 64 connections); the waypoint's
//! CPU per 1,000 requests and its idle and peak RSS are read from `/proc`.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    bench::{cpu_seconds, peak_rss_kib, rss_kib},
    load::LoadReport,
    waypoint_mesh::{Mesh, BENCH, DIRECT},
};

/// One protocol, connection count and rate on the three paths.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaypointCase {
    /// `http1` or `http2`.
    pub protocol: String,
    pub connections: usize,
    pub rate: f64,
    pub near_saturation: bool,
    pub baseline: LoadReport,
    pub l4: LoadReport,
    pub waypoint: LoadReport,
    /// The waypoint process's CPU seconds during the waypoint run.
    pub waypoint_cpu_s: f64,
}

/// Everything the waypoint scenarios measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WaypointReport {
    pub quick: bool,
    pub cases: Vec<WaypointCase>,
    /// What the waypoint path sustained closed-loop over 64 connections, by protocol.
    pub saturation_rps: Vec<(String, f64)>,
    pub waypoint_cpu_s_per_1000_requests: f64,
    pub waypoint_idle_rss_mib: f64,
    pub waypoint_peak_rss_mib: f64,
    /// One of two endpoints failing 10% of requests, by the policy in force.
    #[serde(default)]
    pub resilience: Vec<super::waypoint_resilience::ResilienceCase>,
    /// L7 policies and JWT verification, by the configuration in force.
    #[serde(default)]
    pub authz: Vec<super::waypoint_authz::AuthzCase>,
    /// Every request traced, with the collector up and down, on a second fixture.
    #[serde(default)]
    pub tracing: Vec<super::waypoint_tracing::TracingCase>,
    /// oha on the same three paths at 1,000 rps (HTTP/1.1), beside the in-repo generator.
    #[serde(default)]
    pub external: Vec<super::external::OhaRun>,
}

/// How long each open-loop run measures, after its warm-up.
fn lengths(quick: bool) -> (f64, f64) {
    if quick {
        (1.0, 0.3)
    } else {
        (10.0, 1.0)
    }
}

/// Runs `weft-bench http-load` in a pod and reads its report.
pub(crate) fn load(
    mesh: &Mesh,
    from: &crate::PodHandle,
    (target, path): (SocketAddr, &str),
    http2: bool,
    (rate, connections, seconds, warmup): (f64, usize, f64, f64),
) -> anyhow::Result<LoadReport> {
    let bench = mesh.bin("weft-bench")?;
    let mut args = vec![
        "http-load".to_owned(),
        target.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--connections".into(),
        connections.to_string(),
        "--seconds".into(),
        seconds.to_string(),
        "--warmup".into(),
        warmup.to_string(),
        "--path".into(),
        path.to_owned(),
    ];
    if http2 {
        args.push("--http2".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mesh
        .cluster
        .run_in_pod(from, bench.to_str().context("path")?, &args)?;
    anyhow::ensure!(
        out.status.success(),
        "weft-bench http-load {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("parsing the load report")
}

/// Runs every waypoint scenario on a fresh fixture; `bins` holds the release binaries.
pub fn run(bins: &Path, out: &Path, quick: bool) -> anyhow::Result<WaypointReport> {
    // The waypoint as shipped: `info`, so one access-log line per request is written.
    let mesh = Mesh::start_logging(bins, out, "info")?;
    let waypoint = mesh.waypoint_pid;
    // Settled before anything is measured: first SVIDs issued, pools empty.
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(waypoint);
    let (seconds, warmup) = lengths(quick);
    let plain_client = mesh.plain_pod("plain-client");
    let client = mesh.pod("client");
    let baseline_target = SocketAddr::new(mesh.plain_pod("plain-echo").ip.into(), 8080);
    let l4_target = SocketAddr::new(DIRECT.into(), 80);
    let waypoint_target = SocketAddr::new(BENCH.into(), 80);
    let mut report = WaypointReport {
        quick,
        ..WaypointReport::default()
    };
    let (mut waypoint_cpu, mut waypoint_requests) = (0.0, 0_u64);
    for http2 in [false, true] {
        let protocol = if http2 { "http2" } else { "http1" };
        let saturated = load(
            &mesh,
            &client,
            (waypoint_target, "/bench"),
            http2,
            (0.0, 64, seconds.min(3.0), 0.0),
        )?;
        report
            .saturation_rps
            .push((protocol.to_owned(), saturated.per_second));
        let near = (saturated.per_second * 0.7).max(100.0);
        for (rate, connections, near_saturation) in
            [(1000.0, 4, false), (1000.0, 64, false), (near, 64, true)]
        {
            let shape = (rate, connections, seconds, warmup);
            let baseline = load(
                &mesh,
                &plain_client,
                (baseline_target, "/bench"),
                http2,
                shape,
            )?;
            let l4 = load(&mesh, &client, (l4_target, "/bench"), http2, shape)?;
            let before = cpu_seconds(waypoint);
            let through = load(&mesh, &client, (waypoint_target, "/bench"), http2, shape)?;
            let cpu = cpu_seconds(waypoint) - before;
            waypoint_cpu += cpu;
            waypoint_requests += through.sent;
            eprintln!(
                "waypoint bench: {protocol} {connections} conns {rate:.0} rps: p50 {:.0}/{:.0}/{:.0} µs (baseline/L4/waypoint)",
                baseline.latency_us.p50, l4.latency_us.p50, through.latency_us.p50
            );
            report.cases.push(WaypointCase {
                protocol: protocol.to_owned(),
                connections,
                rate,
                near_saturation,
                baseline,
                l4,
                waypoint: through,
                waypoint_cpu_s: cpu,
            });
        }
    }
    for connections in [4, 64] {
        let paths = [
            (
                "baseline",
                &plain_client,
                format!("http://{baseline_target}/bench"),
            ),
            ("L4", &client, format!("http://{l4_target}/bench")),
            (
                "waypoint",
                &client,
                format!("http://{waypoint_target}/bench"),
            ),
        ];
        for (path, from, url) in paths {
            let run =
                super::external::run(&mesh, from, (path, &url), (1000.0, connections, seconds))?;
            eprintln!(
                "waypoint bench: oha http1 {connections} conns 1000 rps {path}: p50 {:.0} µs, p99 {:.0} µs, success {:.3}",
                run.latency_us.p50, run.latency_us.p99, run.success_rate
            );
            report.external.push(run);
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "request counts fit")]
    let per_1000 = waypoint_cpu / (waypoint_requests.max(1) as f64) * 1000.0;
    report.waypoint_cpu_s_per_1000_requests = per_1000;
    #[expect(clippy::cast_precision_loss, reason = "KiB counts fit")]
    let mib = |kib: u64| kib as f64 / 1024.0;
    report.waypoint_idle_rss_mib = mib(idle_rss);
    report.waypoint_peak_rss_mib = mib(peak_rss_kib(waypoint));
    report.resilience = super::waypoint_resilience::run(&mesh, (seconds, warmup))?;
    report.authz = super::waypoint_authz::run(&mesh, (seconds, warmup))?;
    drop(mesh);
    report.tracing = super::waypoint_tracing::run(bins, out, (seconds, warmup))?;
    Ok(report)
}

impl WaypointReport {
    /// The report's rows: each case's percentiles for L4 and the waypoint against the
    /// baseline, then the waypoint's cost.
    pub fn rows(&self) -> Vec<super::Row> {
        let mut rows = Vec::new();
        for case in &self.cases {
            let section = format!(
                "waypoint {} {:.0} rps {} conns{}",
                case.protocol,
                case.rate,
                case.connections,
                if case.near_saturation {
                    " (near saturation)"
                } else {
                    ""
                }
            );
            for (path, r) in [("L4", &case.l4), ("waypoint", &case.waypoint)] {
                rows.extend(super::Row::percentiles(
                    &section,
                    path,
                    &case.baseline.latency_us,
                    &r.latency_us,
                ));
                #[expect(clippy::cast_precision_loss, reason = "error counts fit")]
                rows.push(super::Row::lower(
                    &section,
                    &format!("{path} errors"),
                    case.baseline.errors as f64,
                    r.errors as f64,
                    "",
                ));
            }
        }
        for (protocol, rps) in &self.saturation_rps {
            rows.push(super::Row::alone(
                "waypoint saturation",
                &format!("{protocol} closed-loop over 64 connections through the waypoint"),
                *rps,
                "req/s",
            ));
        }
        rows.push(super::Row {
            lower_is_better: true,
            ..super::Row::alone(
                "waypoint cost",
                "waypoint CPU s per 1000 requests",
                self.waypoint_cpu_s_per_1000_requests,
                "s",
            )
        });
        for (name, value) in [
            ("waypoint RSS idle", self.waypoint_idle_rss_mib),
            ("waypoint peak RSS", self.waypoint_peak_rss_mib),
        ] {
            rows.push(super::Row {
                lower_is_better: true,
                ..super::Row::alone("waypoint cost", name, value, "MiB")
            });
        }
        rows.extend(super::waypoint_resilience::rows(&self.resilience));
        rows.extend(super::waypoint_authz::rows(&self.authz));
        rows.extend(super::external::rows(&self.external));
        let untraced = self.authz.first().map(|case| &case.load);
        rows.extend(super::waypoint_tracing::rows(untraced, &self.tracing));
        rows
    }
}
