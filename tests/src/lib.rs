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
pub mod load;
pub mod manifests;
pub mod netns;
pub mod privileges;
pub mod run;

pub use cluster::{Cluster, ClusterSpec, NodeHandle, PodHandle, PodSpec};
pub use privileges::require_privileges;
pub use run::RunId;
