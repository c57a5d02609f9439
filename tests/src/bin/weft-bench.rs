//! `weft-bench`: the benchmark driver (`run`, started by `cargo xtask bench`) and the load
//! client and echo server it starts inside the harness pods.
// Unsafe only for the counting allocator (`GlobalAlloc` is an unsafe trait).
#![deny(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weft_harness::{bench, load};

/// The system allocator, counting the bytes live: `kube-registry` reads the heap a data
/// structure holds, which RSS cannot show (freed pages are not returned at once).
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

#[expect(
    unsafe_code,
    reason = "a GlobalAlloc that defers every call to the system allocator"
)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let fresh = unsafe { System.realloc(ptr, layout, new_size) };
        if !fresh.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        fresh
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

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
    /// Only the enrollment burst, on a cluster of its own; prints a JSON report. The agent is
    /// the `weft-agent` beside this binary; --out receives its manifests and log.
    Enroll {
        #[arg(long)]
        out: PathBuf,
    },
    /// CPU profiles of both agents while one scenario runs on the Weft side: flame graphs and
    /// `profile-<scenario>.md` in --out.
    Profile {
        scenario: bench::profile::Scenario,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "unknown")]
        commit: String,
    },
    /// An agent upgrade or crash on node0 under open-loop requests through a Service VIP, on
    /// a cluster of its own; prints a JSON report. The agent is the `weft-agent` beside this
    /// binary; --out receives the manifests and logs.
    Disruption {
        scenario: bench::disruption::Scenario,
        #[arg(long)]
        out: PathBuf,
    },
    /// Open-loop requests at RATE per second, each on a new connection, for SECONDS; prints
    /// every request's JSON sample (the disruption scenarios' load client).
    Churn {
        target: SocketAddr,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: f64,
    },
    /// HTTP GETs to TARGET at RATE per second over CONNECTIONS keep-alive connections (RATE
    /// 0: back to back), HTTP/1.1 or HTTP/2 prior knowledge; prints a JSON report.
    HttpLoad(HttpLoad),
    /// The waypoint scenarios on the waypoint fixture (the binaries beside this one); prints a
    /// JSON report. --out receives the manifests and logs.
    Waypoint {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        quick: bool,
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
    /// Heap the Kubernetes-mode registry keeps for a generated cluster, against holding its
    /// objects whole; prints a JSON report. Needs no cluster: the API server is scripted.
    KubeRegistry {
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        #[arg(long, default_value_t = 2_000)]
        services: usize,
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

#[derive(clap::Args)]
struct HttpLoad {
    target: SocketAddr,
    #[arg(long)]
    rate: f64,
    #[arg(long)]
    connections: usize,
    #[arg(long)]
    seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long)]
    http2: bool,
    #[arg(long, default_value = "/bench")]
    path: String,
}

/// Load loops are bounded in time: no run may ask for more than ten minutes.
fn bounded(seconds: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        (0.0..=600.0).contains(&seconds),
        "--seconds must be between 0 and 600, got {seconds}"
    );
    Ok(Duration::from_secs_f64(seconds))
}

/// One thread per connection in the clients: more than this is a typo, not a benchmark.
fn workers(connections: usize) -> anyhow::Result<usize> {
    anyhow::ensure!(
        (1..=1_000).contains(&connections),
        "--connections must be between 1 and 1000 for a load client, got {connections}"
    );
    Ok(connections)
}

fn print(report: &load::LoadReport) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(report)?);
    Ok(())
}

/// `http-load`: open loop at `rate` (or closed loop when it is 0) over HTTP connections.
fn http_load(spec: HttpLoad) -> anyhow::Result<()> {
    let HttpLoad {
        target,
        rate,
        connections,
        seconds,
        warmup,
        http2,
        path,
    } = spec;
    let duration = bounded(seconds)?;
    let connections = workers(connections)?;
    let connect = move || weft_harness::load_http::HttpExchange::connect(target, http2, &path);
    let report = if rate > 0.0 {
        let spec = load::OpenLoop {
            target,
            rate,
            connections,
            size: 0,
            duration,
            warmup: bounded(warmup)?,
        };
        load::open_loop_with(&spec, connect)
    } else {
        load::closed_loop_with(connections, duration, connect)
    };
    print(&report)
}

/// The waypoint scenarios with the binaries beside this one.
fn waypoint(out: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    let bins = std::env::current_exe()
        .context("locating weft-bench")?
        .parent()
        .context("weft-bench's folder")?
        .to_owned();
    std::fs::create_dir_all(out)?;
    let report = bench::waypoint::run(&bins, out, quick)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The enrollment burst alone, with the `weft-agent` beside this binary.
fn enroll(out: &std::path::Path) -> anyhow::Result<()> {
    let agent = std::env::current_exe()
        .context("locating weft-bench")?
        .with_file_name("weft-agent");
    anyhow::ensure!(
        agent.exists(),
        "{} is missing: build with `cargo xtask build --release`",
        agent.display()
    );
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let report = bench::enroll::measure(&agent, out)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// An upgrade or crash scenario, with the `weft-agent` beside this binary.
fn disruption(scenario: bench::disruption::Scenario, out: &std::path::Path) -> anyhow::Result<()> {
    let agent = std::env::current_exe()
        .context("locating weft-bench")?
        .with_file_name("weft-agent");
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let report = bench::disruption::measure(&agent, out, scenario)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The disruption scenarios' load client: every request's sample as one JSON list.
fn churn(target: SocketAddr, rate: u32, seconds: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=2_000).contains(&rate),
        "--rate must be between 1 and 2,000 new connections a second, got {rate}"
    );
    let samples = bench::disruption::churn(target, rate, bounded(seconds)?);
    println!("{}", serde_json::to_string(&samples)?);
    Ok(())
}

/// Every scenario; the report goes to `<out>/report.json`.
fn run(quick: bool, out: &std::path::Path, commit: String) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let report = bench::run(lengths(quick), &out.join("work"), commit)?;
    let path = out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

/// How long each part runs: `--quick` is a smoke run.
fn lengths(quick: bool) -> bench::Lengths {
    if quick {
        bench::Lengths::quick()
    } else {
        bench::Lengths::full()
    }
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Run { quick, out, commit } => run(quick, &out, commit)?,
        Command::Enroll { out } => enroll(&out)?,
        Command::HttpLoad(spec) => http_load(spec)?,
        Command::Waypoint { out, quick } => waypoint(&out, quick)?,
        Command::Disruption { scenario, out } => disruption(scenario, &out)?,
        Command::Churn {
            target,
            rate,
            seconds,
        } => churn(target, rate, seconds)?,
        Command::Profile {
            scenario,
            out,
            quick,
            commit,
        } => {
            std::fs::create_dir_all(&out)?;
            let markdown =
                bench::profile(&lengths(quick), &out.join("work"), scenario, &out, &commit)?;
            println!("{markdown}");
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
            rate: {
                anyhow::ensure!(
                    rate > 0.0 && rate <= 1_000_000.0,
                    "--rate must be above 0 and at most 1,000,000 requests per second, got {rate}"
                );
                rate
            },
            connections: workers(connections)?,
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
            workers(connections)?,
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
            workers(connections)?,
            size,
            bounded(seconds)?,
        ))?,
        Command::KubeRegistry { pods, services } => {
            anyhow::ensure!(
                pods <= 200_000 && services <= 50_000,
                "at most 200,000 pods and 50,000 services"
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report =
                runtime.block_on(bench::kube_memory::measure(pods, services, live_bytes))?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Idle {
            target,
            connections,
            size,
        } => {
            anyhow::ensure!(
                (1..=50_000).contains(&connections),
                "--connections must be between 1 and 50,000 idle connections, got {connections}"
            );
            load::hold_idle(target, connections, size, bench::wait_for_release)?;
        }
    }
    Ok(())
}
