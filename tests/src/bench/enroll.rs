//! Enrollment under a burst: a node's agent is told about many new pods at once, as when a
//! Deployment scales up. The pods' namespaces exist first (their set-up is not timed); one
//! manifest then names them all, and the clock runs until the agent's `/workloads` lists every
//! one. A cluster of its own, so the other scenarios' agents and registries stay as they were.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    manifests::{self, Manifests},
    Cluster, ClusterSpec, PodSpec,
};

/// Pods in the burst. One node's pod CIDR is a /24 (hosts .10 to .254): 200 fit.
pub const BURST: usize = 200;
/// Excluded ports given to the agent: each adds per-pod routing rules, so the burst pays for
/// them as a node that excludes a couple of ports (SSH, a metrics port) would.
const EXCLUDED_PORTS: &str = "22,9100";
/// The longest the burst may take before the run fails.
const DEADLINE: Duration = Duration::from_mins(2);
const POLL: Duration = Duration::from_millis(20);

/// How fast one agent enrolled a burst of new pods.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EnrollmentBurst {
    pub pods: usize,
    pub excluded_ports: String,
    /// From the manifest's rename into the folder to `/workloads` listing every pod.
    pub seconds: f64,
    pub per_second: f64,
}

/// Builds a one-node cluster with [`BURST`] pods, starts `agent` on it and times the burst.
/// `work` receives the manifests and the agent's log.
pub fn measure(agent: &Path, work: &Path) -> anyhow::Result<EnrollmentBurst> {
    let spec = ClusterSpec {
        nodes: vec!["node0".into()],
        pods: (0..BURST)
            .map(|i| PodSpec::new("burst", &format!("p{i}"), "node0"))
            .collect(),
    };
    let started = Instant::now();
    let cluster = Cluster::start(&spec)?;
    eprintln!(
        "bench: {BURST} pod namespaces made in {:.1} s (not timed)",
        started.elapsed().as_secs_f64()
    );
    let node = cluster.node("node0").clone();
    let manifests = Manifests::create(&work.join("manifests"))?;
    manifests.write("namespaces.yaml", &manifests::namespace("burst", true))?;
    cluster.start_agent_logging(
        &node,
        agent,
        &manifests.dir,
        &work.join("logs"),
        &["--excluded-ports".into(), EXCLUDED_PORTS.into()],
        "info",
    )?;
    // One service account for all: a scaled-up Deployment's replicas share theirs, so the
    // burst issues one SVID, not 200.
    let pods: Vec<String> = cluster
        .pods
        .iter()
        .map(|p| manifests::pod_with_account(p, &[], "burst"))
        .collect();
    let yaml = pods.join("---\n");
    let started = Instant::now();
    manifests.write("pods.yaml", &yaml)?;
    let mut listed = 0;
    while listed < BURST {
        anyhow::ensure!(
            started.elapsed() < DEADLINE,
            "the agent listed only {listed} of {BURST} pods in /workloads after {DEADLINE:?} (see {})",
            work.join("logs").display()
        );
        std::thread::sleep(POLL);
        listed = cluster
            .admin(&node, "/workloads")?
            .as_array()
            .context("/workloads is not a list")?
            .len();
    }
    let seconds = started.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "a pod count")]
    let per_second = BURST as f64 / seconds;
    eprintln!("bench: enrolled a burst of {BURST} pods in {seconds:.2} s: {per_second:.1} pods/s");
    Ok(EnrollmentBurst {
        pods: BURST,
        excluded_ports: EXCLUDED_PORTS.into(),
        seconds,
        per_second,
    })
}
