//! `weft-bench`: the benchmark driver (`run`, started by `cargo xtask bench`) and the load
//! client and echo server it starts inside the harness pods.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weft_harness::{bench, load};

#[derive(Parser)]
#[command(
    name = "weft-bench",
    about = "Weft benchmarks against a no-mesh baseline"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every scenario on a fresh two-node harness; writes the JSON report to --out.
    Run {
        #[arg(long)]
        quick: bool,
        /// Where the report and the run's manifests and agent logs go.
        #[arg(long)]
        out: PathBuf,
        /// The commit measured, recorded in the report.
        #[arg(long, default_value = "unknown")]
        commit: String,
    },
    /// Echo server: answers every SIZE bytes with SIZE bytes.
    Serve { listen: SocketAddr, size: usize },
    /// Fixed-rate load; prints a JSON report.
    OpenLoop {
        target: SocketAddr,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Back-to-back requests on each connection; prints a JSON report.
    ClosedLoop {
        target: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// One connection per request from CONNECTIONS threads; prints a JSON report.
    ConnectionRate {
        target: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Opens CONNECTIONS connections, prints `ready`, holds them until stdin closes.
    Idle {
        target: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
}

/// Load loops are bounded in time: no run may ask for more than ten minutes.
fn bounded(seconds: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        (0.0..=600.0).contains(&seconds),
        "--seconds must be between 0 and 600, got {seconds}"
    );
    Ok(Duration::from_secs_f64(seconds))
}

fn print(report: &load::LoadReport) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(report)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Run { quick, out, commit } => {
            let lengths = if quick {
                bench::Lengths::quick()
            } else {
                bench::Lengths::full()
            };
            std::fs::create_dir_all(&out)?;
            let report = bench::run(lengths, &out.join("work"), commit)?;
            let path = out.join("report.json");
            std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("bench: wrote {}", path.display());
        }
        Command::Serve { listen, size } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(load::serve(listen, size))?;
        }
        Command::OpenLoop {
            target,
            rate,
            connections,
            seconds,
            warmup,
            size,
        } => print(&load::open_loop(&load::OpenLoop {
            target,
            rate,
            connections,
            size,
            duration: bounded(seconds)?,
            warmup: bounded(warmup)?,
        }))?,
        Command::ClosedLoop {
            target,
            connections,
            seconds,
            size,
        } => print(&load::closed_loop(
            target,
            connections,
            size,
            bounded(seconds)?,
        ))?,
        Command::ConnectionRate {
            target,
            connections,
            seconds,
            size,
        } => print(&load::connection_rate(
            target,
            connections,
            size,
            bounded(seconds)?,
        ))?,
        Command::Idle {
            target,
            connections,
            size,
        } => {
            load::hold_idle(target, connections, size, bench::wait_for_release)?;
        }
    }
    Ok(())
}
