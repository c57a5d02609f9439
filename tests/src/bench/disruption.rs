//! What an agent upgrade or crash costs the traffic of its node. Open-loop requests at a fixed
//! rate, each on a new connection, go through a Service VIP from a pod on node0 while node0's
//! agent is upgraded (a new agent started beside it, the old one SIGTERMed once the new one
//! owns capture) or killed with SIGKILL and restarted. Reports failed requests (goal 0), the
//! longest gap between successful responses, and p99 during the disruption beside p99 before
//! it. A cluster of its own, like the enrollment burst.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use weft_mesh::connections::now_unix_ms;

use crate::{
    agent::Source,
    manifests::{self, Manifests},
    Cluster, ClusterSpec, PodSpec,
};

/// Which disruption to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// A second agent takes over, then the first one is SIGTERMed.
    Upgrade,
    /// `kill -9`, then the same agent started again.
    Crash,
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const PORT: u16 = 9100;
const SIZE: usize = 256;
/// Requests per second, each on a new connection.
pub const RATE: u32 = 200;
/// Load before the disruption, then after it.
const BEFORE: Duration = Duration::from_secs(5);
const AFTER: Duration = Duration::from_secs(8);
/// Worker threads of the load client: enough that a stalled request never delays the
/// schedule of the next ones at this rate.
const WORKERS: usize = 128;
/// How long one request may take before it counts as failed (a dropped SYN is retried after
/// 1 s, then 3 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request of the load: when it was due, how long it took from then, whether it worked.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub due_unix_ms: u64,
    pub latency_us: u64,
    pub ok: bool,
}

/// The disruption's effect on the node's traffic.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DisruptionReport {
    pub scenario: String,
    pub rate: u32,
    pub requests: usize,
    pub failed: usize,
    /// The longest time between two successful responses, anywhere in the run.
    pub longest_gap_ms: u64,
    pub p50_before_ms: f64,
    pub p99_before_ms: f64,
    /// Requests due from the disruption's start to 2 s after its end.
    pub p50_during_ms: f64,
    pub p99_during_ms: f64,
    pub requests_during: usize,
    /// From the disruption's start (new agent started, or the old one killed) to the new agent
    /// owning capture and answering.
    pub disruption_ms: u64,
    /// The new agent's own figure: process start to its first enrollment pass done.
    pub new_agent_ready_after_ms: Option<u64>,
    /// What the new agent reports lost with a dead predecessor.
    pub connections_lost_in_crash: u64,
}

fn one_request(target: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.write_all(&[7u8; SIZE])?;
    let mut answer = [0u8; SIZE];
    stream.read_exact(&mut answer)?;
    Ok(())
}

/// The load client, run in a pod: `rate` requests a second for `seconds`, each on a new
/// connection, on a schedule that does not wait for answers; latency counts from when each
/// was due. Bounded by the schedule (at most 600 s) and [`REQUEST_TIMEOUT`] per request.
pub fn churn(target: SocketAddr, rate: u32, length: Duration) -> Vec<Sample> {
    let length = length.min(Duration::from_mins(10));
    let total = u64::from(rate) * u64::try_from(length.as_millis()).unwrap_or(0) / 1000;
    let (jobs, queue) = mpsc::channel::<(Instant, u64)>();
    let queue = Arc::new(Mutex::new(queue));
    let (done, results) = mpsc::channel::<Sample>();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (queue, done) = (queue.clone(), done.clone());
            std::thread::spawn(move || loop {
                let job = queue.lock().map(|q| q.recv());
                let Ok(Ok((due, due_unix_ms))) = job else {
                    return;
                };
                let ok = one_request(target).is_ok();
                let latency_us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = done.send(Sample {
                    due_unix_ms,
                    latency_us,
                    ok,
                });
            })
        })
        .collect();
    drop(done);
    let start = Instant::now();
    let start_unix = now_unix_ms();
    for i in 0..total {
        let offset = Duration::from_nanos(i * 1_000_000_000 / u64::from(rate));
        let due = start + offset;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let due_unix_ms = start_unix + u64::try_from(offset.as_millis()).unwrap_or(0);
        if jobs.send((due, due_unix_ms)).is_err() {
            break;
        }
    }
    drop(jobs);
    for worker in workers {
        let _ = worker.join();
    }
    let mut samples: Vec<Sample> = results.into_iter().collect();
    samples.sort_by_key(|s| s.due_unix_ms);
    samples
}

/// The `per_mille` percentile of `latencies_us`, in milliseconds.
fn percentile_ms(latencies_us: &mut [u64], per_mille: usize) -> f64 {
    if latencies_us.is_empty() {
        return 0.0;
    }
    latencies_us.sort_unstable();
    let index = (latencies_us.len() - 1) * per_mille / 1000;
    Duration::from_micros(latencies_us[index]).as_secs_f64() * 1000.0
}

/// The disruption's cluster: a client and a local server on node0, a server on node1, a
/// Service over both servers, an agent per node.
struct Setup {
    cluster: Cluster,
    manifests: Manifests,
    exe: String,
    /// node0's agent.
    old: u32,
}

fn set_up(agent: &Path, work: &Path) -> anyhow::Result<Setup> {
    let spec = ClusterSpec {
        nodes: vec!["node0".into(), "node1".into()],
        pods: vec![
            PodSpec::new("mesh", "client", "node0"),
            PodSpec::new("mesh", "local", "node0"),
            PodSpec::new("mesh", "server", "node1"),
        ],
    };
    let cluster = Cluster::start(&spec)?;
    let exe = std::env::current_exe().context("locating weft-bench")?;
    let exe = exe.to_string_lossy().into_owned();
    let manifests = Manifests::create(&work.join("manifests"))?;
    manifests.write("namespaces.yaml", &manifests::namespace("mesh", true))?;
    let pods: Vec<String> = cluster
        .pods
        .iter()
        .map(|p| manifests::pod(p, &[]))
        .collect();
    manifests.write("pods.yaml", &pods.join("---\n"))?;
    let (server, local) = (
        cluster.pod("mesh", "server").clone(),
        cluster.pod("mesh", "local").clone(),
    );
    manifests.write(
        "services.yaml",
        &manifests::service("mesh", "echo", VIP, 80, PORT, &[server.ip, local.ip]),
    )?;
    let listen = format!("0.0.0.0:{PORT}");
    for pod in [&server, &local] {
        cluster.spawn_in_pod(pod, &exe, &["serve", &listen, &SIZE.to_string()])?;
    }
    let logs = work.join("logs");
    let node0 = cluster.node("node0").clone();
    let node1 = cluster.node("node1").clone();
    let old = cluster.start_agent_logging(&node0, agent, &manifests.dir, &logs, &[], "info")?;
    cluster.start_agent_logging(&node1, agent, &manifests.dir, &logs, &[], "info")?;
    Ok(Setup {
        cluster,
        manifests,
        exe,
        old,
    })
}

/// Builds a two-node cluster, starts the load from node0 and disrupts node0's agent.
pub fn measure(agent: &Path, work: &Path, scenario: Scenario) -> anyhow::Result<DisruptionReport> {
    let Setup {
        cluster,
        manifests,
        exe: exe_str,
        old,
    } = set_up(agent, work)?;
    let logs = work.join("logs");
    let node0 = cluster.node("node0").clone();
    std::thread::sleep(Duration::from_millis(500));
    let seconds = (BEFORE + AFTER).as_secs_f64();
    let client = cluster.pod("mesh", "client").clone();
    let load = Cluster::pod_command(
        &client,
        &exe_str,
        &[
            "churn",
            &format!("{VIP}:80"),
            "--rate",
            &RATE.to_string(),
            "--seconds",
            &seconds.to_string(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .context("starting the load client")?;
    std::thread::sleep(BEFORE);
    let generation = |s: &serde_json::Value| s["captureGeneration"].as_u64().unwrap_or(0);
    let before = generation(&cluster.admin(&node0, "/status")?);
    let began = Instant::now();
    let began_unix = now_unix_ms();
    match scenario {
        Scenario::Upgrade => {
            cluster.spawn_agent_from(
                &node0,
                agent,
                &Source::Manifests(&manifests.dir),
                &logs,
                &[],
                "info",
            )?;
            while !cluster
                .admin(&node0, "/status")
                .is_ok_and(|s| generation(&s) == before + 1 && s["ready"] == true)
            {
                anyhow::ensure!(
                    began.elapsed() < Duration::from_secs(15),
                    "the new agent did not take over within 15 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Scenario::Crash => {
            cluster.stop(old, nix::sys::signal::Signal::SIGKILL);
            cluster.start_agent_logging(&node0, agent, &manifests.dir, &logs, &[], "info")?;
        }
    }
    let disruption = began.elapsed();
    if scenario == Scenario::Upgrade {
        cluster.signal(old, nix::sys::signal::Signal::SIGTERM);
    }
    let status = cluster.admin(&node0, "/status")?;
    let out = load.wait_with_output().context("load client")?;
    let samples: Vec<Sample> =
        serde_json::from_slice(&out.stdout).context("parsing the load client's samples")?;
    let report = summarize(scenario, &samples, began_unix, disruption, &status)?;
    eprintln!(
        "bench: {scenario:?}: {} requests, {} failed, longest gap {} ms, p99 {:.2} ms before, {:.2} ms during",
        report.requests, report.failed, report.longest_gap_ms, report.p99_before_ms, report.p99_during_ms
    );
    Ok(report)
}

/// The report from the load's samples, the disruption's start and length, and the new agent's
/// `/status`.
fn summarize(
    scenario: Scenario,
    samples: &[Sample],
    began_unix: u64,
    disruption: Duration,
    status: &serde_json::Value,
) -> anyhow::Result<DisruptionReport> {
    let window_end = began_unix + u64::try_from(disruption.as_millis())? + 2_000;
    let (mut before_us, mut during_us) = (Vec::new(), Vec::new());
    for s in samples.iter().filter(|s| s.ok) {
        if s.due_unix_ms < began_unix {
            before_us.push(s.latency_us);
        } else if s.due_unix_ms <= window_end {
            during_us.push(s.latency_us);
        }
    }
    let mut finished: Vec<u64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.due_unix_ms * 1000 + s.latency_us)
        .collect();
    finished.sort_unstable();
    let longest_gap_ms = finished
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1000)
        .max()
        .unwrap_or(0);
    let requests_during = samples
        .iter()
        .filter(|s| (began_unix..=window_end).contains(&s.due_unix_ms))
        .count();
    Ok(DisruptionReport {
        scenario: format!("{scenario:?}").to_lowercase(),
        rate: RATE,
        requests: samples.len(),
        failed: samples.iter().filter(|s| !s.ok).count(),
        longest_gap_ms,
        p50_before_ms: percentile_ms(&mut before_us.clone(), 500),
        p99_before_ms: percentile_ms(&mut before_us, 990),
        p50_during_ms: percentile_ms(&mut during_us.clone(), 500),
        p99_during_ms: percentile_ms(&mut during_us, 990),
        requests_during,
        disruption_ms: u64::try_from(disruption.as_millis())?,
        new_agent_ready_after_ms: status["captureReadyAfterMs"].as_u64(),
        connections_lost_in_crash: status["connectionsLostInCrash"].as_u64().unwrap_or(0),
    })
}
