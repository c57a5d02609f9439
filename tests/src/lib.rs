//! The simulated-cluster harness: Kubernetes-like nodes and pods built from network namespaces,
//! veth pairs, bridges and cgroup v2, for Weft's end-to-end tests and for `cargo xtask demo`.
//!
//! Everything a run creates is named `weft-<run>-…` (or `weft-…` for the fixed-name demo), is
//! removed when the [`Cluster`] drops, also after a panic, and is swept at the start of the next
//! run if a crash left it behind. See `tests/README.md`.

pub mod agent;
pub mod bench;
pub mod cgroup;
pub mod cluster;
pub mod hbone_client;
pub mod jwt;
pub mod load;
pub mod load_http;
pub mod manifests;
pub mod netns;
pub mod privileges;
pub mod run;
pub mod waypoint_mesh;

pub use cluster::{Cluster, ClusterSpec, NodeHandle, PodHandle, PodSpec};
pub use privileges::require_privileges;
pub use run::RunId;

/// Polls `check` every 50 ms until it holds, failing the test after `limit` with `what`.
pub fn eventually(limit: std::time::Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what} (waited {limit:?})");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
