//! `cargo xtask bench`: the scenarios, their no-mesh baseline in the same run, and the report
//! they produce (`target/bench/report.json`; xtask renders the table and plots from it).

pub mod disruption;
pub mod enroll;
pub mod external;
pub mod kube_memory;
mod process;
pub mod profile;
mod run;
pub mod waypoint;
pub mod waypoint_authz;
pub mod waypoint_resilience;
pub mod waypoint_tracing;

use serde::{Deserialize, Serialize};

use crate::load::LoadReport;
pub use enroll::EnrollmentBurst;
pub use kube_memory::KubeRegistryMemory;

pub use process::{cpu_seconds, peak_rss_kib, reset_peak_rss, rss_kib};
pub use run::{profile, run, wait_for_release, Lengths};

/// One request/response latency scenario, measured without and with the mesh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyCase {
    /// `cross-node` or `same-node`.
    pub placement: String,
    /// 1,000 rps, or 70% of what Weft sustained closed-loop on the same path and connections.
    pub rate: f64,
    pub near_saturation: bool,
    pub connections: usize,
    pub baseline: LoadReport,
    pub weft: LoadReport,
    /// CPU seconds of the benchmark's server process in each run.
    pub baseline_server_cpu_s: f64,
    pub weft_server_cpu_s: f64,
    /// CPU seconds each agent used during the Weft run.
    pub agents_cpu_s: AgentsCpu,
}

/// CPU seconds of the agent on the client's node and of the one on the server's node.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct AgentsCpu {
    pub client_node: f64,
    pub server_node: f64,
}

impl AgentsCpu {
    pub fn total(self) -> f64 {
        self.client_node + self.server_node
    }

    #[must_use]
    pub fn since(self, before: Self) -> Self {
        Self {
            client_node: self.client_node - before.client_node,
            server_node: self.server_node - before.server_node,
        }
    }
}

/// One bulk-throughput scenario (iperf3, cross-node).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThroughputCase {
    pub streams: u32,
    pub baseline_gbps: f64,
    pub weft_gbps: f64,
    /// Bytes the receiver got in the Weft run.
    pub weft_bytes: f64,
    pub baseline_bytes: f64,
    /// iperf3's own CPU (client + server) in the baseline run.
    pub baseline_app_cpu_s: f64,
    pub agents_cpu_s: AgentsCpu,
}

/// Connections per second with one connection per request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionRate {
    pub workers: usize,
    pub baseline: LoadReport,
    pub weft: LoadReport,
    pub agents_cpu_s: AgentsCpu,
}

/// Peak resident memory of one process, in MiB.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    /// Agent of the client's node and of the server's node.
    pub agent_client_node_mib: f64,
    pub agent_server_node_mib: f64,
    /// The benchmark server process in the baseline run under the same load: what the
    /// application itself needs, the yardstick for the agents.
    pub baseline_server_mib: f64,
}

/// Agent CPU per unit of work, beside what the application used for the same work without
/// the mesh.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CpuCost {
    pub agents_s_per_gib: f64,
    pub client_node_agent_s_per_gib: f64,
    pub server_node_agent_s_per_gib: f64,
    pub baseline_app_s_per_gib: f64,
    pub agents_s_per_1000_requests: f64,
    /// Over the cross-node cases only, where each request passes both agents.
    pub client_node_agent_s_per_1000_requests: f64,
    pub server_node_agent_s_per_1000_requests: f64,
    pub baseline_app_s_per_1000_requests: f64,
}

/// Agent memory holding a large generated registry, against the same agent before it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RegistryMemory {
    pub pods: usize,
    pub services: usize,
    pub baseline_rss_mib: f64,
    pub loaded_rss_mib: f64,
    pub load_seconds: f64,
}

/// Everything one `cargo xtask bench` run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub commit: String,
    pub quick: bool,
    pub machine: String,
    pub load_generator: String,
    pub latency: Vec<LatencyCase>,
    pub throughput: Vec<ThroughputCase>,
    pub connection_rate: ConnectionRate,
    pub cpu: CpuCost,
    pub memory_idle: Memory,
    pub memory_load: Memory,
    pub memory_idle_connections: Memory,
    pub idle_connections: usize,
    pub registry: RegistryMemory,
    /// Kubernetes mode: heap kept for the same cluster size, served through the watches.
    pub kube_registry: KubeRegistryMemory,
    /// One agent enrolling a burst of new pods (a cluster of its own, after the others).
    #[serde(default)]
    pub enrollment: EnrollmentBurst,
    /// Wall-clock seconds the measuring took (cluster up to report), without the build.
    pub wall_seconds: f64,
}

impl Report {
    /// Every figure as (section, name, baseline, weft, unit, whether lower is better).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        self.latency_rows(&mut rows);
        for case in &self.throughput {
            rows.push(Row::higher(
                "throughput cross-node",
                &format!("{} stream(s)", case.streams),
                case.baseline_gbps,
                case.weft_gbps,
                "Gbit/s",
            ));
        }
        rows.push(Row::higher(
            "connections",
            "new connections per second",
            self.connection_rate.baseline.per_second,
            self.connection_rate.weft.per_second,
            "conn/s",
        ));
        self.cpu_rows(&mut rows);
        self.memory_rows(&mut rows);
        rows.push(self.enrollment.row());
        rows
    }

    fn latency_rows(&self, rows: &mut Vec<Row>) {
        for case in &self.latency {
            let section = format!(
                "latency {} {:.0} rps {} conns",
                case.placement, case.rate, case.connections
            );
            rows.extend(Row::percentiles(
                &section,
                "",
                &case.baseline.latency_us,
                &case.weft.latency_us,
            ));
            rows.push(Row::higher(
                &section,
                "achieved rps",
                case.baseline.per_second,
                case.weft.per_second,
                "req/s",
            ));
            #[expect(clippy::cast_precision_loss, reason = "error counts fit")]
            rows.push(Row::lower(
                &section,
                "errors (failed or never sent)",
                case.baseline.errors as f64,
                case.weft.errors as f64,
                "",
            ));
        }
    }

    fn cpu_rows(&self, rows: &mut Vec<Row>) {
        let cpu = &self.cpu;
        for (name, agents) in [
            ("CPU s per GiB, both agents (vs app)", cpu.agents_s_per_gib),
            (
                "CPU s per GiB, agent on client node (vs app)",
                cpu.client_node_agent_s_per_gib,
            ),
            (
                "CPU s per GiB, agent on server node (vs app)",
                cpu.server_node_agent_s_per_gib,
            ),
        ] {
            rows.push(Row::lower(
                "cpu",
                name,
                cpu.baseline_app_s_per_gib,
                agents,
                "s",
            ));
        }
        for (name, agents) in [
            (
                "CPU s per 1000 requests, both agents (vs app)",
                cpu.agents_s_per_1000_requests,
            ),
            (
                "CPU s per 1000 cross-node requests, agent on client node (vs app)",
                cpu.client_node_agent_s_per_1000_requests,
            ),
            (
                "CPU s per 1000 cross-node requests, agent on server node (vs app)",
                cpu.server_node_agent_s_per_1000_requests,
            ),
        ] {
            rows.push(Row::lower(
                "cpu",
                name,
                cpu.baseline_app_s_per_1000_requests,
                agents,
                "s",
            ));
        }
    }

    fn memory_rows(&self, rows: &mut Vec<Row>) {
        for (phase, memory) in [
            ("idle", &self.memory_idle),
            ("under load", &self.memory_load),
            (
                &*format!("{} idle connections", self.idle_connections),
                &self.memory_idle_connections,
            ),
        ] {
            let section = format!("peak RSS {phase}");
            rows.push(Row::lower(
                &section,
                "agent, client node",
                memory.baseline_server_mib,
                memory.agent_client_node_mib,
                "MiB",
            ));
            rows.push(Row::lower(
                &section,
                "agent, server node",
                memory.baseline_server_mib,
                memory.agent_server_node_mib,
                "MiB",
            ));
        }
        // What each held connection costs above idle: the agents' against the application's
        // own (the server holding the same connections without the mesh).
        #[expect(clippy::cast_precision_loss, reason = "a connection count")]
        let per_connection = |held: f64, idle: f64| {
            (held - idle).max(0.0) * 1024.0 / self.idle_connections.max(1) as f64
        };
        let held = &self.memory_idle_connections;
        let idle = &self.memory_idle;
        let server = per_connection(held.baseline_server_mib, idle.baseline_server_mib);
        for (name, agent) in [
            (
                "agent, client node",
                per_connection(held.agent_client_node_mib, idle.agent_client_node_mib),
            ),
            (
                "agent, server node",
                per_connection(held.agent_server_node_mib, idle.agent_server_node_mib),
            ),
        ] {
            rows.push(Row::lower(
                "memory per idle connection (above idle)",
                name,
                server,
                agent,
                "KiB",
            ));
        }
        rows.push(Row::lower(
            "registry",
            &format!(
                "agent RSS with {} pods, {} services",
                self.registry.pods, self.registry.services
            ),
            self.registry.baseline_rss_mib,
            self.registry.loaded_rss_mib,
            "MiB",
        ));
        let kube = &self.kube_registry;
        #[expect(clippy::cast_precision_loss, reason = "byte counts fit")]
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        rows.push(Row::lower(
            "registry, Kubernetes mode",
            &format!(
                "heap kept for {} pods, {} services (baseline: the objects held whole)",
                kube.pods, kube.services
            ),
            mib(kube.whole_objects_bytes),
            mib(kube.kept_bytes),
            "MiB",
        ));
        rows.push(Row::lower(
            "registry lookup",
            &format!(
                "one outbound resolution at {} pods, {} services (baseline: scanning the lists)",
                kube.pods, kube.services
            ),
            kube.lookup_scan_ns,
            kube.lookup_ns,
            "ns",
        ));
        rows.push(Row {
            lower_is_better: true,
            ..Row::alone(
                "registry rebuild",
                &format!(
                    "one snapshot with its indexes at {} pods, {} services",
                    kube.pods, kube.services
                ),
                kube.rebuild_ms,
                "ms",
            )
        });
    }
}

/// One line of the report table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub section: String,
    pub name: String,
    pub baseline: f64,
    pub weft: f64,
    pub unit: String,
    pub lower_is_better: bool,
}

impl Row {
    pub(crate) fn lower(section: &str, name: &str, baseline: f64, weft: f64, unit: &str) -> Self {
        Self {
            section: section.into(),
            name: name.into(),
            baseline,
            weft,
            unit: unit.into(),
            lower_is_better: true,
        }
    }

    pub(crate) fn higher(section: &str, name: &str, baseline: f64, weft: f64, unit: &str) -> Self {
        Self {
            lower_is_better: false,
            ..Self::lower(section, name, baseline, weft, unit)
        }
    }

    /// p50, p90, p99 and p99.9 of `weft` against `baseline`, each named `<prefix> pNN` (or
    /// `pNN` with no prefix).
    pub(crate) fn percentiles(
        section: &str,
        prefix: &str,
        baseline: &crate::load::Percentiles,
        weft: &crate::load::Percentiles,
    ) -> Vec<Self> {
        [
            ("p50", baseline.p50, weft.p50),
            ("p90", baseline.p90, weft.p90),
            ("p99", baseline.p99, weft.p99),
            ("p999", baseline.p999, weft.p999),
        ]
        .into_iter()
        .map(|(name, b, w)| {
            let name = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix} {name}")
            };
            Self::lower(section, &name, b, w, "µs")
        })
        .collect()
    }

    /// A figure without the mesh has no counterpart: its baseline is NaN, shown as n/a.
    pub(crate) fn alone(section: &str, name: &str, weft: f64, unit: &str) -> Self {
        Self {
            lower_is_better: false,
            ..Self::lower(section, name, f64::NAN, weft, unit)
        }
    }

    /// Weft's figure divided by the baseline's (None when the baseline is zero or absent).
    pub fn ratio(&self) -> Option<f64> {
        (self.baseline.abs() > f64::EPSILON).then(|| self.weft / self.baseline)
    }
}

impl EnrollmentBurst {
    /// The report's line for this figure.
    pub fn row(&self) -> Row {
        Row::alone(
            "enrollment",
            &format!(
                "pods enrolled per second, burst of {} (excluded ports {})",
                self.pods, self.excluded_ports
            ),
            self.per_second,
            "pods/s",
        )
    }
}
