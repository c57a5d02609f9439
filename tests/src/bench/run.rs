//! The benchmark run: a two-node harness cluster where namespace `mesh` is enrolled and
//! namespace `plain` is not, with the same pods in each. Every scenario runs on `plain` (the
//! no-mesh baseline) and on `mesh` back to back, through the same veths, bridges and kernel.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    cpu_seconds, peak_rss_kib, reset_peak_rss, rss_kib, AgentsCpu, ConnectionRate, CpuCost,
    LatencyCase, Memory, RegistryMemory, Report, ThroughputCase,
};
use crate::{
    load::LoadReport,
    manifests::{self, Manifests},
    netns, Cluster, ClusterSpec, NodeHandle, PodHandle, PodSpec,
};

const ECHO_PORT: u16 = 7000;
const IPERF_PORT: u16 = 5201;
const REQUEST_SIZE: usize = 1024;
/// "Near saturation" starts at this share of the rate Weft sustains closed-loop on the same
/// path and connection count. At 80% the open-loop runs tipped into overload whenever the short
/// probe overestimated capacity.
const SATURATION_SHARE: f64 = 0.7;
/// A near-saturation run past the knee (it fell behind its schedule, lost requests, or its
/// median grew beyond this multiple of the same path's median at 1,000 rps) is measured again
/// at [`STEP_DOWN`] of its rate, at most [`MAX_STEPS`] times: the figure is then near
/// saturation, not overload.
const KNEE_MEDIAN_FACTOR: f64 = 10.0;
/// The tail's share of the knee rule: a p99 beyond this multiple of the 1,000 rps p99 means
/// requests queue in bursts even when the median holds (a full run measured p99 at 35 ms, 65x,
/// with a median that passed).
const KNEE_P99_FACTOR: f64 = 20.0;
const STEP_DOWN: f64 = 0.8;
/// Workers opening connections in the connection-rate run (and its profile).
const CONNECTION_RATE_WORKERS: usize = 8;
const MAX_STEPS: usize = 3;

/// How long each part runs: `--quick` is a smoke run, the full run is the measurement.
#[derive(Clone, Debug)]
pub struct Lengths {
    pub quick: bool,
    pub latency: Duration,
    pub warmup: Duration,
    pub probe: Duration,
    pub throughput_secs: u32,
    pub connection_rate: Duration,
    pub idle_connections: usize,
}

impl Lengths {
    pub fn quick() -> Self {
        Self {
            quick: true,
            latency: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            probe: Duration::from_secs(2),
            throughput_secs: 2,
            connection_rate: Duration::from_secs(2),
            idle_connections: 2_000,
        }
    }

    pub fn full() -> Self {
        Self {
            quick: false,
            latency: Duration::from_secs(15),
            warmup: Duration::from_secs(2),
            probe: Duration::from_secs(5),
            throughput_secs: 10,
            connection_rate: Duration::from_secs(10),
            idle_connections: 10_000,
        }
    }
}

/// The pods of one side (baseline or Weft): a client and a local server on node0, a server on
/// node1.
struct Side {
    is_baseline: bool,
    client: PodHandle,
    remote: PodHandle,
    local: PodHandle,
    remote_server_pid: u32,
    local_server_pid: u32,
}

struct Bench {
    cluster: Cluster,
    exe: PathBuf,
    /// The agents of node0 (clients), node1 (remote servers) and node2 (the registry test).
    agents: [u32; 3],
    baseline: Side,
    weft: Side,
    lengths: Lengths,
    manifests: Manifests,
}

fn side_pods(namespace: &str) -> [PodSpec; 3] {
    [
        PodSpec::new(namespace, "client", "node0"),
        PodSpec::new(namespace, "server", "node1"),
        PodSpec::new(namespace, "local", "node0"),
    ]
}

fn mib(kib: u64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "memory sizes fit")]
    let value = kib as f64 / 1024.0;
    value
}

/// Runs every scenario and returns the report; `work` holds manifests and agent logs.
pub fn run(lengths: Lengths, work: &Path, commit: String) -> anyhow::Result<Report> {
    raise_open_files(lengths.idle_connections + 2_000)?;
    // A previous run's manifests (its 10,000 generated pods among them) must not leak in.
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let bench = Bench::start(lengths, work)?;
    let mut report = bench.measure(commit)?;
    let agent = bench.exe.with_file_name("weft-agent");
    // Its own cluster: the burst's 200 pods would otherwise share the nodes measured above.
    drop(bench);
    let started = Instant::now();
    report.enrollment = super::enroll::measure(&agent, &work.join("enroll"))?;
    report.wall_seconds += started.elapsed().as_secs_f64();
    Ok(report)
}

/// Runs one scenario on the Weft side only while perf samples both agents, and writes the
/// flame graphs and `profile-<scenario>.md` into `out`; returns the Markdown.
pub fn profile(
    lengths: &Lengths,
    work: &Path,
    scenario: super::profile::Scenario,
    out: &Path,
    commit: &str,
) -> anyhow::Result<String> {
    use super::profile::{record, Scenario};
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let bench = Bench::start(lengths.clone(), work)?;
    let seconds = 2 + match scenario {
        Scenario::Latency => (lengths.latency + lengths.warmup).as_secs(),
        Scenario::Throughput => u64::from(lengths.throughput_secs),
        Scenario::Connections => lengths.connection_rate.as_secs(),
    };
    let recordings = [
        record(bench.agents[0], "client", scenario, seconds, out)?,
        record(bench.agents[1], "server", scenario, seconds, out)?,
    ];
    // perf attaches within a few milliseconds; the scenario starts after it.
    std::thread::sleep(Duration::from_millis(500));
    match scenario {
        Scenario::Latency => {
            let (report, _, _) = bench.open_loop_run(
                &bench.weft,
                "cross-node",
                1000.0,
                4,
                &mut Memory::default(),
            )?;
            eprintln!(
                "bench: profiled latency run: p50 {:.0} µs",
                report.latency_us.p50
            );
        }
        Scenario::Throughput => {
            let (gbps, _, _) = bench.iperf(&bench.weft, 1)?;
            eprintln!("bench: profiled throughput run: {gbps:.2} Gbit/s");
        }
        Scenario::Connections => {
            let report = bench.client(&bench.weft, &bench.connection_rate_args(&bench.weft))?;
            eprintln!("bench: profiled connection run: {:.0}/s", report.per_second);
        }
    }
    let profiles = recordings
        .into_iter()
        .map(|recording| recording.finish(scenario, out))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let markdown = super::profile::markdown(scenario, commit, &profiles);
    std::fs::write(
        out.join(format!("profile-{}.md", scenario.name())),
        &markdown,
    )?;
    Ok(markdown)
}

fn raise_open_files(needed: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // Ten thousand idle connections need more descriptors than the usual 1024, in the client,
    // the server and both agents; children inherit the soft limit, raised to the hard one.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    anyhow::ensure!(
        hard >= needed as u64,
        "the open-file hard limit is {hard}; the idle-connection scenario needs {needed} (raise `ulimit -Hn`)"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .context("raising RLIMIT_NOFILE to its hard limit")
}

impl Bench {
    fn start(lengths: Lengths, work: &Path) -> anyhow::Result<Self> {
        let mut pods = side_pods("plain").to_vec();
        pods.extend(side_pods("mesh"));
        let spec = ClusterSpec {
            // node2 runs no pods: its agent holds the generated registry, untouched by load.
            nodes: vec!["node0".into(), "node1".into(), "node2".into()],
            pods,
        };
        let cluster = Cluster::start(&spec)?;
        let exe = std::env::current_exe().context("locating weft-bench")?;
        let agent = exe.with_file_name("weft-agent");
        anyhow::ensure!(
            agent.exists(),
            "{} is missing: build with `cargo xtask build --release`",
            agent.display()
        );
        let manifests = Manifests::create(&work.join("manifests"))?;
        manifests.write(
            "namespaces.yaml",
            &[
                manifests::namespace("plain", false),
                manifests::namespace("mesh", true),
            ]
            .join("---\n"),
        )?;
        let pods: Vec<String> = cluster
            .pods
            .iter()
            .map(|p| manifests::pod(p, &[]))
            .collect();
        manifests.write("pods.yaml", &pods.join("---\n"))?;
        let exe_str = exe.to_string_lossy().into_owned();
        let mut sides = Vec::new();
        for namespace in ["plain", "mesh"] {
            let pod = |name: &str| cluster.pod(namespace, name).clone();
            let (client, remote, local) = (pod("client"), pod("server"), pod("local"));
            for p in [&client, &remote, &local] {
                tune_pod_netns(p)?;
            }
            let listen = format!("0.0.0.0:{ECHO_PORT}");
            let size = REQUEST_SIZE.to_string();
            let remote_server_pid =
                cluster.spawn_in_pod(&remote, &exe_str, &["serve", &listen, &size])?;
            let local_server_pid =
                cluster.spawn_in_pod(&local, &exe_str, &["serve", &listen, &size])?;
            cluster.spawn_in_pod(&remote, "iperf3", &["-s", "-p", &IPERF_PORT.to_string()])?;
            sides.push(Side {
                is_baseline: namespace == "plain",
                client,
                remote,
                local,
                remote_server_pid,
                local_server_pid,
            });
        }
        let logs = work.join("logs");
        let mut agents = [0; 3];
        for (slot, node) in agents.iter_mut().zip(["node0", "node1", "node2"]) {
            let node = cluster.node(node).clone();
            // The production default: info, access log included.
            *slot =
                cluster.start_agent_logging(&node, &agent, &manifests.dir, &logs, &[], "info")?;
        }
        let weft = sides.pop().context("mesh side")?;
        let baseline = sides.pop().context("plain side")?;
        let bench = Self {
            cluster,
            exe,
            agents,
            baseline,
            weft,
            lengths,
            manifests,
        };
        bench.wait_enrolled(&bench.cluster.node("node0").clone(), 2)?;
        bench.wait_enrolled(&bench.cluster.node("node1").clone(), 1)?;
        Ok(bench)
    }

    fn wait_enrolled(&self, node: &NodeHandle, pods: usize) -> anyhow::Result<()> {
        for _ in 0..200 {
            let enrolled = self.cluster.admin(node, "/workloads")?;
            if enrolled.as_array().map_or(0, Vec::len) >= pods {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("{} did not enroll {pods} pods within 10 s", node.name)
    }

    fn agents_cpu(&self) -> AgentsCpu {
        AgentsCpu {
            client_node: cpu_seconds(self.agents[0]),
            server_node: cpu_seconds(self.agents[1]),
        }
    }

    fn reset_peaks(&self, side: &Side) {
        for pid in self.agents[..2]
            .iter()
            .chain([&side.remote_server_pid, &side.local_server_pid])
        {
            reset_peak_rss(*pid);
        }
    }

    fn peaks(&self, side: &Side) -> Memory {
        Memory {
            agent_client_node_mib: mib(peak_rss_kib(self.agents[0])),
            agent_server_node_mib: mib(peak_rss_kib(self.agents[1])),
            baseline_server_mib: mib(
                peak_rss_kib(side.remote_server_pid).max(peak_rss_kib(side.local_server_pid))
            ),
        }
    }

    /// Runs `weft-bench <args>` in the side's client pod and reads its JSON report.
    fn client(&self, side: &Side, args: &[String]) -> anyhow::Result<LoadReport> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = self
            .cluster
            .run_in_pod(&side.client, &self.exe.to_string_lossy(), &args)?;
        anyhow::ensure!(
            output.status.success(),
            "load client {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).context("load client report")
    }

    fn measure(&self, commit: String) -> anyhow::Result<Report> {
        let started = Instant::now();
        let settle = if self.lengths.quick { 1 } else { 3 };
        self.reset_peaks(&self.baseline);
        std::thread::sleep(Duration::from_secs(settle));
        let memory_idle = self.peaks(&self.baseline);
        eprintln!(
            "bench: idle agents {:.1} / {:.1} MiB",
            memory_idle.agent_client_node_mib, memory_idle.agent_server_node_mib
        );

        let (latency, mut memory_load) = self.latency_cases()?;
        let throughput = self.throughput_cases()?;
        let connection_rate = self.connection_rate()?;
        // No peak was reset since the last latency run, so these peaks also cover bulk
        // throughput and the connection-rate run: "under load" means all of them.
        let traffic = self.peaks(&self.baseline);
        memory_load.agent_client_node_mib = memory_load
            .agent_client_node_mib
            .max(traffic.agent_client_node_mib);
        memory_load.agent_server_node_mib = memory_load
            .agent_server_node_mib
            .max(traffic.agent_server_node_mib);
        let (memory_idle_connections, idle_connections) = self.idle_connections()?;
        let registry = self.registry_memory()?;
        let kube_registry = self.kube_registry_memory(registry.pods, registry.services)?;
        let cpu = cpu_cost(&latency, &throughput);
        Ok(Report {
            date: String::new(),
            commit,
            quick: self.lengths.quick,
            machine: machine(),
            load_generator: "in-repo (tests/src/load.rs): blocking thread per connection, HdrHistogram, open-loop from intended send times; iperf3 for bulk throughput".into(),
            latency,
            throughput,
            connection_rate,
            cpu,
            memory_idle,
            memory_load,
            memory_idle_connections,
            idle_connections,
            registry,
            kube_registry,
            enrollment: super::EnrollmentBurst::default(),
            wall_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// What Weft sustains closed-loop to the given server over `connections` connections.
    fn saturation(&self, server: &PodHandle, connections: usize) -> anyhow::Result<f64> {
        let probe = self.client(
            &self.weft,
            &[
                "closed-loop".into(),
                target(server).to_string(),
                "--connections".into(),
                connections.to_string(),
                "--seconds".into(),
                self.lengths.probe.as_secs_f64().to_string(),
            ],
        )?;
        let rate = (probe.per_second * SATURATION_SHARE).round().max(100.0);
        eprintln!(
            "bench: Weft sustains {:.0} rps closed-loop over {connections} connections; near saturation = {rate:.0} rps",
            probe.per_second
        );
        Ok(rate)
    }

    /// One open-loop run on `side` at `rate`, with the CPU the server and the agents used.
    fn open_loop_run(
        &self,
        side: &Side,
        placement: &str,
        rate: f64,
        connections: usize,
        load: &mut Memory,
    ) -> anyhow::Result<(LoadReport, f64, AgentsCpu)> {
        let (server, server_pid) = if placement == "cross-node" {
            (&side.remote, side.remote_server_pid)
        } else {
            (&side.local, side.local_server_pid)
        };
        self.reset_peaks(side);
        let (agents_before, server_before) = (self.agents_cpu(), cpu_seconds(server_pid));
        let report = self.client(
            side,
            &[
                "open-loop".into(),
                target(server).to_string(),
                "--rate".into(),
                rate.to_string(),
                "--connections".into(),
                connections.to_string(),
                "--seconds".into(),
                self.lengths.latency.as_secs_f64().to_string(),
                "--warmup".into(),
                self.lengths.warmup.as_secs_f64().to_string(),
            ],
        )?;
        let server_cpu = cpu_seconds(server_pid) - server_before;
        let agents_cpu = self.agents_cpu().since(agents_before);
        let peaks = self.peaks(side);
        load.agent_client_node_mib = load.agent_client_node_mib.max(peaks.agent_client_node_mib);
        load.agent_server_node_mib = load.agent_server_node_mib.max(peaks.agent_server_node_mib);
        if side.is_baseline {
            load.baseline_server_mib = load.baseline_server_mib.max(peaks.baseline_server_mib);
        }
        Ok((report, server_cpu, agents_cpu))
    }

    fn latency_cases(&self) -> anyhow::Result<(Vec<LatencyCase>, Memory)> {
        let mut cases = Vec::new();
        let mut load = Memory::default();
        for placement in ["cross-node", "same-node"] {
            for connections in [4, 64] {
                let server = if placement == "cross-node" {
                    &self.weft.remote
                } else {
                    &self.weft.local
                };
                let probed = self.saturation(server, connections)?;
                let mut weft_at_1000: Option<(f64, f64)> = None;
                for (rate, near) in [(1000.0, false), (probed, true)] {
                    // Weft first: near saturation, its rate may step down before the baseline
                    // runs at the rate finally used.
                    let mut rate = rate;
                    let mut weft =
                        self.open_loop_run(&self.weft, placement, rate, connections, &mut load)?;
                    for _ in 0..MAX_STEPS {
                        let report = &weft.0;
                        let (median_knee, p99_knee) = weft_at_1000
                            .map_or((f64::INFINITY, f64::INFINITY), |(p50, p99)| {
                                (p50 * KNEE_MEDIAN_FACTOR, p99 * KNEE_P99_FACTOR)
                            });
                        let past_knee = report.per_second < rate * 0.95
                            || report.errors > 0
                            || report.latency_us.p50 > median_knee
                            || report.latency_us.p99 > p99_knee;
                        if !near || !past_knee {
                            break;
                        }
                        eprintln!(
                            "bench: {rate:.0} rps is past the knee (achieved {:.0}, errors {}, p50 {:.0} µs, p99 {:.0} µs); stepping down",
                            report.per_second, report.errors, report.latency_us.p50, report.latency_us.p99
                        );
                        rate = (rate * STEP_DOWN).round();
                        weft = self.open_loop_run(
                            &self.weft,
                            placement,
                            rate,
                            connections,
                            &mut load,
                        )?;
                    }
                    let (baseline, baseline_server_cpu_s, _) = self.open_loop_run(
                        &self.baseline,
                        placement,
                        rate,
                        connections,
                        &mut load,
                    )?;
                    let (weft, weft_server_cpu_s, agents_cpu_s) = weft;
                    if !near {
                        weft_at_1000 = Some((weft.latency_us.p50, weft.latency_us.p99));
                    }
                    eprintln!(
                        "bench: {placement} {rate:.0} rps {connections} conns: p50 {:.0} -> {:.0} µs, p99 {:.0} -> {:.0} µs",
                        baseline.latency_us.p50, weft.latency_us.p50, baseline.latency_us.p99, weft.latency_us.p99
                    );
                    cases.push(LatencyCase {
                        placement: placement.into(),
                        near_saturation: near,
                        rate,
                        connections,
                        baseline,
                        weft,
                        baseline_server_cpu_s,
                        weft_server_cpu_s,
                        agents_cpu_s,
                    });
                }
            }
        }
        Ok((cases, load))
    }

    fn iperf(&self, side: &Side, streams: u32) -> anyhow::Result<(f64, f64, f64)> {
        let server = side.remote.ip.to_string();
        // iperf3 has no overall deadline of its own: `timeout` bounds a stalled run.
        let limit = (self.lengths.throughput_secs + 30).to_string();
        let output = self.cluster.run_in_pod(
            &side.client,
            "timeout",
            &[
                &limit,
                "iperf3",
                "-c",
                &server,
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                &self.lengths.throughput_secs.to_string(),
                "-P",
                &streams.to_string(),
                "--connect-timeout",
                "3000",
                "-J",
            ],
        )?;
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!("iperf3 output: {}", String::from_utf8_lossy(&output.stderr))
            })?;
        if let Some(error) = json.get("error") {
            anyhow::bail!("iperf3 to {server}: {error}");
        }
        let end = &json["end"];
        let received = &end["sum_received"];
        let bytes = received["bytes"].as_f64().context("iperf3 bytes")?;
        let gbps = received["bits_per_second"]
            .as_f64()
            .context("iperf3 rate")?
            / 1e9;
        let seconds = received["seconds"]
            .as_f64()
            .unwrap_or(f64::from(self.lengths.throughput_secs));
        let cpu = &end["cpu_utilization_percent"];
        let app_cpu = (cpu["host_total"].as_f64().unwrap_or(0.0)
            + cpu["remote_total"].as_f64().unwrap_or(0.0))
            / 100.0
            * seconds;
        Ok((gbps, bytes, app_cpu))
    }

    fn throughput_cases(&self) -> anyhow::Result<Vec<ThroughputCase>> {
        let mut cases = Vec::new();
        for streams in [1, 8] {
            let (baseline_gbps, baseline_bytes, baseline_app_cpu_s) =
                self.iperf(&self.baseline, streams)?;
            let before = self.agents_cpu();
            let (weft_gbps, weft_bytes, _) = self.iperf(&self.weft, streams)?;
            let agents_cpu_s = self.agents_cpu().since(before);
            eprintln!("bench: throughput {streams} stream(s): {baseline_gbps:.2} -> {weft_gbps:.2} Gbit/s");
            cases.push(ThroughputCase {
                streams,
                baseline_gbps,
                weft_gbps,
                weft_bytes,
                baseline_bytes,
                baseline_app_cpu_s,
                agents_cpu_s,
            });
        }
        Ok(cases)
    }

    /// The load tool's arguments for the connection-rate run against `side`'s remote server.
    fn connection_rate_args(&self, side: &Side) -> Vec<String> {
        vec![
            "connection-rate".to_string(),
            target(&side.remote).to_string(),
            "--connections".into(),
            CONNECTION_RATE_WORKERS.to_string(),
            "--seconds".into(),
            self.lengths.connection_rate.as_secs_f64().to_string(),
        ]
    }

    fn connection_rate(&self) -> anyhow::Result<ConnectionRate> {
        let workers = CONNECTION_RATE_WORKERS;
        let args = |side: &Side| self.connection_rate_args(side);
        let baseline = self.client(&self.baseline, &args(&self.baseline))?;
        // Let the baseline's TIME_WAIT sockets age out of the way.
        std::thread::sleep(Duration::from_secs(1));
        let before = self.agents_cpu();
        let weft = self.client(&self.weft, &args(&self.weft))?;
        let agents_cpu_s = self.agents_cpu().since(before);
        eprintln!(
            "bench: new connections/s: {:.0} -> {:.0}",
            baseline.per_second, weft.per_second
        );
        Ok(ConnectionRate {
            workers,
            baseline,
            weft,
            agents_cpu_s,
        })
    }

    /// Holds `idle_connections` open through each side and reads peak RSS while they are open.
    fn idle_connections(&self) -> anyhow::Result<(Memory, usize)> {
        let count = self.lengths.idle_connections;
        let mut memory = Memory::default();
        for (side, is_weft) in [(&self.baseline, false), (&self.weft, true)] {
            self.reset_peaks(side);
            let mut child = Cluster::pod_command(
                &side.client,
                &self.exe.to_string_lossy(),
                &[
                    "idle",
                    &target(&side.remote).to_string(),
                    "--connections",
                    &count.to_string(),
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the idle-connection client")?;
            let stdout = child.stdout.take().context("idle client stdout")?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            let peaks = self.peaks(side);
            // Closing its stdin tells the client to let go.
            drop(child.stdin.take());
            let status = child.wait()?;
            anyhow::ensure!(
                status.success() && line.starts_with("ready"),
                "idle client failed: {line}"
            );
            if is_weft {
                memory.agent_client_node_mib = peaks.agent_client_node_mib;
                memory.agent_server_node_mib = peaks.agent_server_node_mib;
            } else {
                memory.baseline_server_mib = peaks.baseline_server_mib;
            }
        }
        eprintln!(
            "bench: {count} idle connections: agents {:.1} / {:.1} MiB, server alone {:.1} MiB",
            memory.agent_client_node_mib, memory.agent_server_node_mib, memory.baseline_server_mib
        );
        Ok((memory, count))
    }

    /// Loads 10,000 pods and 2,000 services into the registries through local-mode manifests and
    /// reads node2's agent, which has carried no traffic, before and after.
    fn registry_memory(&self) -> anyhow::Result<RegistryMemory> {
        const PODS: usize = 10_000;
        const SERVICES: usize = 2_000;
        let node = self.cluster.node("node2").clone();
        let agent = self.agents[2];
        let baseline_rss_mib = mib(rss_kib(agent));
        let started = Instant::now();
        self.manifests
            .write("scale.yaml", &scale_manifests(PODS, SERVICES))?;
        let deadline = started + Duration::from_mins(2);
        loop {
            let status = self.cluster.admin(&node, "/status")?;
            let pods = status["registry"]["pods"].as_u64().unwrap_or(0);
            let services = status["registry"]["services"].as_u64().unwrap_or(0);
            if pods >= PODS as u64 && services >= SERVICES as u64 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "registry reached only {pods} pods, {services} services in 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let load_seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let loaded_rss_mib = mib(rss_kib(agent));
        eprintln!("bench: registry {PODS} pods / {SERVICES} services: {baseline_rss_mib:.1} -> {loaded_rss_mib:.1} MiB (loaded in {load_seconds:.1} s)");
        Ok(RegistryMemory {
            pods: PODS,
            services: SERVICES,
            baseline_rss_mib,
            loaded_rss_mib,
            load_seconds,
        })
    }
}

impl Bench {
    /// The Kubernetes-mode registry's heap for the same cluster size, in a process of its own
    /// (`weft-bench kube-registry`: the agent's watches against its scripted API server).
    fn kube_registry_memory(
        &self,
        pods: usize,
        services: usize,
    ) -> anyhow::Result<super::KubeRegistryMemory> {
        let output = std::process::Command::new("timeout")
            .arg("300")
            .arg(&self.exe)
            .args([
                "kube-registry",
                "--pods",
                &pods.to_string(),
                "--services",
                &services.to_string(),
            ])
            .output()
            .context("running weft-bench kube-registry")?;
        anyhow::ensure!(
            output.status.success(),
            "weft-bench kube-registry failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: super::KubeRegistryMemory =
            serde_json::from_slice(&output.stdout).context("kube-registry report")?;
        #[expect(clippy::cast_precision_loss, reason = "byte counts fit")]
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        eprintln!(
            "bench: Kubernetes mode, {pods} pods / {services} services: served {:.1} MiB of JSON, whole objects {:.1} MiB of heap, kept {:.1} MiB",
            mib(report.served_json_bytes),
            mib(report.whole_objects_bytes),
            mib(report.kept_bytes)
        );
        eprintln!(
            "bench: registry at {pods} pods / {services} services: rebuild {:.0} ms, one resolution {:.0} ns indexed against {:.0} ns scanning",
            report.rebuild_ms, report.lookup_ns, report.lookup_scan_ns
        );
        Ok(report)
    }
}

fn target(pod: &PodHandle) -> SocketAddr {
    SocketAddr::from((pod.ip, ECHO_PORT))
}

/// Lets a client pod open connections back to back without running out of ports.
fn tune_pod_netns(pod: &PodHandle) -> anyhow::Result<()> {
    netns::sysctl(&pod.netns, "net.ipv4.tcp_tw_reuse", "1")?;
    netns::sysctl(&pod.netns, "net.ipv4.ip_local_port_range", "1024 65000")
}

fn cpu_cost(latency: &[LatencyCase], throughput: &[ThroughputCase]) -> CpuCost {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let per = |cpu: f64, units: f64| if units > 0.0 { cpu / units } else { 0.0 };
    #[expect(clippy::cast_precision_loss, reason = "request counts fit")]
    let thousands = |r: &LoadReport| r.sent as f64 / 1000.0;
    let gib = throughput.iter().map(|c| c.weft_bytes).sum::<f64>() / GIB;
    let gib_cpu =
        |pick: fn(AgentsCpu) -> f64| throughput.iter().map(|c| pick(c.agents_cpu_s)).sum();
    let cross: Vec<&LatencyCase> = latency
        .iter()
        .filter(|c| c.placement == "cross-node")
        .collect();
    let cross_thousands: f64 = cross.iter().map(|c| thousands(&c.weft)).sum();
    let cross_cpu = |pick: fn(AgentsCpu) -> f64| cross.iter().map(|c| pick(c.agents_cpu_s)).sum();
    CpuCost {
        agents_s_per_gib: per(gib_cpu(AgentsCpu::total), gib),
        client_node_agent_s_per_gib: per(gib_cpu(|a| a.client_node), gib),
        server_node_agent_s_per_gib: per(gib_cpu(|a| a.server_node), gib),
        baseline_app_s_per_gib: per(
            throughput.iter().map(|c| c.baseline_app_cpu_s).sum(),
            throughput.iter().map(|c| c.baseline_bytes).sum::<f64>() / GIB,
        ),
        agents_s_per_1000_requests: per(
            latency.iter().map(|c| c.agents_cpu_s.total()).sum(),
            latency.iter().map(|c| thousands(&c.weft)).sum(),
        ),
        client_node_agent_s_per_1000_requests: per(cross_cpu(|a| a.client_node), cross_thousands),
        server_node_agent_s_per_1000_requests: per(cross_cpu(|a| a.server_node), cross_thousands),
        baseline_app_s_per_1000_requests: per(
            latency
                .iter()
                .map(|c| c.baseline.client_cpu_s + c.baseline_server_cpu_s)
                .sum(),
            latency.iter().map(|c| thousands(&c.baseline)).sum(),
        ),
    }
}

/// `pods` pods over 100 namespaces and 100 other nodes, `services` services with an
/// EndpointSlice of five of those pods each: a big cluster as an agent sees it.
fn scale_manifests(pods: usize, services: usize) -> String {
    let mut yaml = String::with_capacity(pods * 400);
    let offset = |base: [u8; 4], n: usize| {
        Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + u32::try_from(n).unwrap_or(0))
    };
    let ip = |n: usize| offset([10, 128, 0, 0], n);
    for ns in 0..100 {
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scale-{ns}\n---\n"
        );
    }
    for n in 0..pods {
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{n}\n  namespace: scale-{}\n  labels:\n    app: svc-{}\nspec:\n  nodeName: far-{}\n  serviceAccountName: sa-{}\n  containers:\n  - name: main\n    image: app\nstatus:\n  podIP: {}\n---\n",
            n % 100,
            n % services.max(1),
            n % 100,
            n % 7,
            ip(n)
        );
    }
    for s in 0..services {
        let vip = offset([10, 100, 0, 0], s);
        let backends: Vec<Ipv4Addr> = (0..5)
            .map(|k| ip((s + k * services) % pods.max(1)))
            .collect();
        yaml.push_str(&manifests::service(
            &format!("scale-{}", s % 100),
            &format!("svc-{s}"),
            vip,
            80,
            8080,
            &backends,
        ));
        yaml.push_str("---\n");
    }
    yaml
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = nix::sys::utsname::uname().map_or_else(
        |_| "?".into(),
        |u| u.release().to_string_lossy().into_owned(),
    );
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {kernel}")
}

/// For the idle client: prints the ready line, then holds until stdin closes (at most 120 s).
pub fn wait_for_release(report: &LoadReport) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "ready {}",
        serde_json::to_string(report).unwrap_or_default()
    );
    let _ = stdout.flush();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_mins(2));
}
