//! `/status` (the agent, its registry and its watches) and `/workloads` (the pods it captures).

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

/// `GET /status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node: String,
    pub version: String,
    pub ready: bool,
    /// The kernel program was already pinned (a previous agent's) and this one adopted it.
    pub adopted_pinned_programs: bool,
    /// This agent's claim on the node's capture (0 before its first enrollment pass).
    #[serde(default)]
    pub capture_generation: u64,
    /// The generation that owns capture now: above `capture_generation`, a newer agent has
    /// taken over and this one only finishes the connections it carries.
    #[serde(default)]
    pub capture_owner_generation: u64,
    /// Milliseconds from the process's start to its first enrollment pass done (capture
    /// served again after a restart), once it has happened.
    #[serde(default)]
    pub capture_ready_after_ms: Option<u64>,
    /// Connections the previous agent was carrying when it died without draining (`kill -9`,
    /// OOM): lost with it, as it last published them (at most 200 ms old).
    #[serde(default)]
    pub connections_lost_in_crash: u64,
    pub enrolled_pods: usize,
    /// Pods that should be captured but are not, each with why.
    pub enrollment_failures: Vec<String>,
    /// Pods on this node whose network namespace could not be found.
    pub unplaceable_pods: Vec<String>,
    pub registry: RegistrySummary,
    /// Kubernetes mode only: each watched kind's state, by kind.
    pub kubernetes_watches: Option<BTreeMap<String, WatchStatus>>,
}

/// How much of each kind the registry holds, and what it refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySummary {
    pub namespaces: usize,
    pub pods: usize,
    pub services: usize,
    pub endpoint_slices: usize,
    pub routes: usize,
    pub authorization_policies: usize,
    pub traffic_policies: usize,
    pub rejected_objects: Vec<RejectedObject>,
    /// Reports left out past the registry's cap.
    pub rejected_objects_not_shown: usize,
    /// Objects of kinds Weft accepts without acting on, by `apiVersion/kind`.
    pub ignored_objects: BTreeMap<String, usize>,
}

/// An object the registry skipped, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedObject {
    /// The file or watch it came from.
    pub source: String,
    pub object: String,
    pub reason: String,
    /// The bounded label of the problem (`bad_field`, `bad_duration`, `unreadable_file`…).
    #[serde(default)]
    pub problem: String,
}

/// One watched kind in Kubernetes mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchStatus {
    pub synced: bool,
    pub objects: usize,
    pub events: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// `GET /workloads`: one element per pod this node captures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub service_account: String,
    pub netns: String,
    pub cgroup: Option<String>,
}
