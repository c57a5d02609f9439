//! A neutral load generator beside the in-repo one: oha (open loop at a fixed rate, its own
//! latency correction for coordinated omission), run from the same pod against the same three
//! paths of the waypoint fixture (no-mesh baseline, Weft at L4, Weft through the waypoint), so
//! the two generators' figures can be checked against each other. `cargo xtask bench`'s
//! set-up installs oha (`cargo install --locked oha`).

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{load::Percentiles, waypoint_mesh::Mesh, PodHandle};

/// One oha run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OhaRun {
    /// `baseline`, `L4` or `waypoint`.
    pub path: String,
    pub connections: usize,
    pub rate: f64,
    pub requests_per_second: f64,
    pub success_rate: f64,
    /// oha's percentiles, in µs (`max` is its slowest request).
    pub latency_us: Percentiles,
}

/// oha on PATH, or where `cargo install` puts it.
pub fn oha() -> anyhow::Result<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin"));
    std::env::split_paths(&paths)
        .chain(cargo_bin)
        .map(|dir| dir.join("oha"))
        .find(|p| p.is_file())
        .context("oha is missing: `cargo xtask bench` installs it (cargo install --locked oha)")
}

/// Runs oha in `from`'s pod for `seconds` at `rate` over `connections` HTTP/1.1 connections.
pub fn run(
    mesh: &Mesh,
    from: &PodHandle,
    (path, url): (&str, &str),
    (rate, connections, seconds): (f64, usize, f64),
) -> anyhow::Result<OhaRun> {
    let oha = oha()?;
    let duration = format!("{}ms", (seconds * 1000.0).round());
    let (rate_arg, connections_arg) = (rate.to_string(), connections.to_string());
    let out = mesh.cluster.run_in_pod(
        from,
        oha.to_str().context("oha path")?,
        &[
            "-z",
            &duration,
            "-q",
            &rate_arg,
            "-c",
            &connections_arg,
            "-t",
            "5s",
            "--latency-correction",
            "--no-tui",
            "--output-format",
            "json",
            url,
        ],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "oha against {url}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("oha's JSON report")?;
    let seconds_as_us = |value: &serde_json::Value| value.as_f64().unwrap_or(f64::NAN) * 1e6;
    let percentile = |name: &str| seconds_as_us(&report["latencyPercentiles"][name]);
    Ok(OhaRun {
        path: path.to_owned(),
        connections,
        rate,
        requests_per_second: report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        success_rate: report["summary"]["successRate"].as_f64().unwrap_or(0.0),
        latency_us: Percentiles {
            p50: percentile("p50"),
            p90: percentile("p90"),
            p99: percentile("p99"),
            p999: percentile("p99.9"),
            max: seconds_as_us(&report["summary"]["slowest"]),
        },
    })
}

/// oha's figures beside the baseline it measured in the same run.
pub fn rows(runs: &[OhaRun]) -> Vec<super::Row> {
    let mut rows = Vec::new();
    for run in runs.iter().filter(|r| r.path != "baseline") {
        let Some(baseline) = runs
            .iter()
            .find(|b| b.path == "baseline" && b.connections == run.connections)
        else {
            continue;
        };
        let section = format!(
            "oha (external generator) http1 {:.0} rps {} conns",
            run.rate, run.connections
        );
        rows.extend(super::Row::percentiles(
            &section,
            &run.path,
            &baseline.latency_us,
            &run.latency_us,
        ));
    }
    rows
}
