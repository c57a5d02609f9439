//! `cargo xtask bench [--quick]`: release build, then `weft-bench run` on a fresh harness (two
//! nodes carry the traffic; a third, idle one holds the large registry; the enrollment burst
//! gets a one-node cluster of its own), then the report: `target/bench/report.json`,
//! `report.md` (every figure beside its baseline, as a ratio) and PNG plots.
//! `--only enroll` runs the enrollment burst alone (`target/bench/enroll.{json,md}`);
//! `--profile SCENARIO` records CPU profiles of both agents under one scenario.

use std::{fmt::Write as _, process::Command};

use anyhow::Context as _;
use weft_harness::bench::{waypoint::WaypointReport, EnrollmentBurst, Report, Row};

use crate::{build, plot, setup, shell};

pub fn run(quick: bool) -> anyhow::Result<()> {
    setup::run()?;
    setup::ensure_oha()?;
    let bins = build::bench()?;
    let out = shell::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let mut cmd = Command::new(bins.join("weft-bench"));
    cmd.args(["run", "--out"])
        .arg(&out)
        .args(["--commit", &commit()]);
    if quick {
        cmd.arg("--quick");
    }
    shell::run(&mut cmd)?;
    let path = out.join("report.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut report: Report = serde_json::from_str(&text).context("parsing report.json")?;
    let date = shell::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    date.trim().clone_into(&mut report.date);
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    let mut markdown = markdown(&report);
    let waypoint = run_waypoint(&bins, &out, quick)?;
    markdown.push('\n');
    markdown.push_str(&waypoint_markdown(&waypoint));
    std::fs::write(out.join("report.md"), &markdown)?;
    let plots = plot::all(&report, &out)?;
    println!("{markdown}");
    println!(
        "bench: wrote {}/report.json, report.md and {} plots",
        out.display(),
        plots.len()
    );
    Ok(())
}

/// `--profile SCENARIO`: the release build, then CPU profiles of both agents while the
/// scenario runs (`target/bench/profile-<scenario>*.{md,svg,folded}`).
pub fn profile(scenario: &str, quick: bool) -> anyhow::Result<()> {
    setup::run()?;
    setup::ensure_oha()?;
    let bins = build::bench()?;
    let out = shell::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let mut cmd = Command::new(bins.join("weft-bench"));
    cmd.args(["profile", scenario, "--out"])
        .arg(&out)
        .args(["--commit", &commit()]);
    if quick {
        cmd.arg("--quick");
    }
    shell::run(&mut cmd)
}

/// The waypoint scenarios on a cluster of their own (`target/bench/waypoint.json`).
fn run_waypoint(
    bins: &std::path::Path,
    out: &std::path::Path,
    quick: bool,
) -> anyhow::Result<WaypointReport> {
    let mut cmd = Command::new(bins.join("weft-bench"));
    cmd.args(["waypoint", "--out"])
        .arg(out.join("work-waypoint"))
        .stderr(std::process::Stdio::inherit());
    if quick {
        cmd.arg("--quick");
    }
    let stdout = shell::output(&mut cmd)?;
    let report: WaypointReport =
        serde_json::from_str(stdout.trim()).context("parsing weft-bench waypoint")?;
    std::fs::write(
        out.join("waypoint.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}

/// The waypoint section: each path's latency against the no-mesh baseline, then its cost.
fn waypoint_markdown(report: &WaypointReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## The waypoint (L7){}

- Paths, measured in the same run on the waypoint fixture: baseline = a pod outside the mesh to a pod outside the mesh (no agent, no waypoint); L4 = an enrolled client to a Service without a waypoint (both agents, HBONE); waypoint = an enrolled client to a Service that uses the waypoint (client's agent, HBONE to the waypoint, HTTP routed there, HBONE to the backend's agent).\n- Load: `weft-bench http-load`, open-loop HTTP GETs on keep-alive connections (hyper), latency from each request's intended send time.\n- Near saturation: 70% of what the waypoint path sustained closed-loop over 64 connections.\n",
        if report.quick { " (quick smoke run)" } else { "" }
    );
    table(&mut md, &report.rows());
    md
}

/// One measurement that `--only` runs by itself.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Only {
    /// Pods enrolled per second, a burst of 200 pod arrivals on one node.
    Enroll,
    /// An agent upgrade under open-loop requests through a Service VIP.
    Upgrade,
    /// `kill -9` and a restart of an agent under the same load.
    Crash,
    /// The waypoint's latency beside L4 and the no-mesh baseline, its CPU and memory.
    Waypoint,
}

pub fn run_only(only: Only) -> anyhow::Result<()> {
    setup::run()?;
    setup::ensure_oha()?;
    let bins = build::bench()?;
    let out = shell::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    match only {
        Only::Waypoint => {
            let report = run_waypoint(&bins, &out, false)?;
            let md = waypoint_markdown(&report);
            std::fs::write(out.join("waypoint.md"), &md)?;
            println!("{md}");
            println!(
                "bench: wrote {}/waypoint.json and waypoint.md",
                out.display()
            );
        }
        Only::Enroll => {
            let stdout = shell::output(
                Command::new(bins.join("weft-bench"))
                    .arg("enroll")
                    .arg("--out")
                    .arg(out.join("work-enroll"))
                    // Its progress shows as it runs; only the report is read.
                    .stderr(std::process::Stdio::inherit()),
            )?;
            let burst: EnrollmentBurst =
                serde_json::from_str(stdout.trim()).context("parsing weft-bench enroll")?;
            let date = shell::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
            let mut md = String::new();
            let _ = writeln!(
                md,
                "# Weft benchmark: enrollment burst only\n\n- Date: {}\n- Commit: `{}`\n- {} pods enrolled in {:.2} s\n",
                date.trim(),
                commit(),
                burst.pods,
                burst.seconds
            );
            table(&mut md, &[burst.row()]);
            std::fs::write(
                out.join("enroll.json"),
                serde_json::to_string_pretty(&burst)?,
            )?;
            std::fs::write(out.join("enroll.md"), &md)?;
            println!("{md}");
            println!("bench: wrote {}/enroll.json and enroll.md", out.display());
        }
        Only::Upgrade | Only::Crash => {
            let name = if matches!(only, Only::Upgrade) {
                "upgrade"
            } else {
                "crash"
            };
            let stdout = shell::output(
                Command::new(bins.join("weft-bench"))
                    .args(["disruption", name, "--out"])
                    .arg(out.join(format!("work-{name}")))
                    .stderr(std::process::Stdio::inherit()),
            )?;
            let report: serde_json::Value =
                serde_json::from_str(stdout.trim()).context("parsing weft-bench disruption")?;
            let date = shell::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
            let md = disruption_markdown(name, date.trim(), &commit(), &report);
            std::fs::write(
                out.join(format!("{name}.json")),
                serde_json::to_string_pretty(&report)?,
            )?;
            std::fs::write(out.join(format!("{name}.md")), &md)?;
            println!("{md}");
            println!("bench: wrote {}/{name}.json and {name}.md", out.display());
        }
    }
    Ok(())
}

fn disruption_markdown(name: &str, date: &str, commit: &str, r: &serde_json::Value) -> String {
    let ms = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Weft benchmark: agent {name} under load\n\n- Date: {date}\n- Commit: `{commit}`\n- Load: {} requests/s through a Service VIP, each on a new connection, from node0 (the node disrupted)\n",
        r["rate"]
    );
    let _ = writeln!(md, "| figure | value | goal |\n|---|---|---|");
    let rows = [
        ("requests", r["requests"].to_string(), ""),
        ("failed requests", r["failed"].to_string(), "0"),
        (
            "longest gap between successes (ms)",
            r["longest_gap_ms"].to_string(),
            "",
        ),
        (
            "p50 before / during (ms)",
            format!(
                "{:.2} / {:.2}",
                ms(&r["p50_before_ms"]),
                ms(&r["p50_during_ms"])
            ),
            "",
        ),
        (
            "p99 before / during (ms)",
            format!(
                "{:.2} / {:.2}",
                ms(&r["p99_before_ms"]),
                ms(&r["p99_during_ms"])
            ),
            "",
        ),
        (
            "disruption: start to the new agent owning capture (ms)",
            r["disruption_ms"].to_string(),
            "",
        ),
        (
            "new agent: process start to capture served (ms)",
            r["new_agent_ready_after_ms"].to_string(),
            "< 200",
        ),
        (
            "connections lost with a dead agent",
            r["connections_lost_in_crash"].to_string(),
            "",
        ),
    ];
    for (figure, value, goal) in rows {
        let _ = writeln!(md, "| {figure} | {value} | {goal} |");
    }
    md
}

/// The commit measured, marked dirty when the tree has uncommitted changes.
fn commit() -> String {
    let root = shell::root();
    let head = shell::output(Command::new("git").arg("-C").arg(&root).args([
        "rev-parse",
        "--short=12",
        "HEAD",
    ]))
    .map_or_else(|_| "unknown".into(), |h| h.trim().to_owned());
    let dirty = shell::output(Command::new("git").arg("-C").arg(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_ok_and(|s| !s.trim().is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

fn figure(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The table: one row per figure, Weft beside the no-mesh baseline and their ratio.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Weft benchmark{}\n",
        if report.quick {
            " (quick smoke run: figures are indicative only)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "- Date: {}\n- Commit: `{}`\n- Machine: {}",
        report.date, report.commit, report.machine
    );
    let _ = writeln!(md, "- Load: {}", report.load_generator);
    let _ = writeln!(
        md,
        "- Baseline: the same pods in a namespace that is not enrolled, on the same nodes, veths and kernel, measured in the same run.\n- Ratio: Weft / baseline. For latency, CPU and memory lower is better; for rates and throughput higher is better.\n- CPU and memory rows compare the agents (each, and both summed for CPU; each agent's peak RSS) with what the application itself used for the same work without the mesh: there is no agent without the mesh, so the yardstick is the application's own cost. Peak RSS under load covers every latency, throughput and connection-rate run; memory per idle connection is the rise above idle divided by the connections held, for each agent and for the server holding them without the mesh. The registry rows compare the agent with a large registry to the same agent before it (local mode) and the heap Kubernetes mode keeps to the same objects held whole.\n- Measuring took {:.0} s (cluster up to report, without the build).\n",
        report.wall_seconds
    );
    table(&mut md, &report.rows());
    let _ = writeln!(md, "\nNear-saturation rates start at 70% of what Weft sustained closed-loop on the same path and connection count, and step down by 20% (up to three times) while Weft's run falls behind its schedule, loses requests, or has a median over 10x or a p99 over 20x its figures at 1,000 rps; the baseline then runs at the rate used.");
    let _ = writeln!(
        md,
        "Registry: {} pods and {} services loaded in {:.1} s.",
        report.registry.pods, report.registry.services, report.registry.load_seconds
    );
    let _ = writeln!(
        md,
        "Enrollment: {} new pods named at once in one manifest on one node, from the manifest's arrival to `/workloads` listing all of them: {:.2} s.",
        report.enrollment.pods, report.enrollment.seconds
    );
    md
}

/// The rows as a Markdown table: each figure beside its baseline and their ratio.
fn table(md: &mut String, rows: &[Row]) {
    let _ = writeln!(
        md,
        "| Scenario | Figure | Baseline | Weft | Weft / baseline |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    for row in rows {
        let ratio = row
            .ratio()
            .map_or_else(|| "n/a".into(), |r| format!("{r:.2}x"));
        // Counts (no unit) are whole numbers.
        let figure = |value: f64| {
            if value.is_nan() {
                "n/a".to_owned()
            } else if row.unit.is_empty() {
                format!("{value:.0}")
            } else {
                format!("{} {}", figure(value), row.unit)
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            row.section,
            row.name,
            figure(row.baseline),
            figure(row.weft),
            ratio
        );
    }
}
