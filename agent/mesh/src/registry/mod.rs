//! The registry: namespaces, pods, services and endpoints the agent acts on, in one immutable
//! snapshot per change. Local mode fills it from manifests ([`Registry::from_objects`]),
//! Kubernetes mode from kube-runtime reflectors ([`watch`]); both parse into the same typed
//! objects ([`typed`]) and settle them the same way.

mod index;
mod kinds;
mod labels;
pub mod local;
#[cfg(test)]
mod local_tests;
mod objects;
pub mod routes;
pub mod typed;
pub mod watch;
#[cfg(test)]
mod watch_tests;
pub mod waypoints;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::Arc,
};

pub use objects::{
    AppProtocol, Endpoint, EndpointSlice, Labels, Namespace, Pod, Rejection, Route, Service,
    ServicePort,
};
use serde::Serialize;

/// Now, as a Kubernetes condition's `lastTransitionTime` (RFC 3339).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Label that opts a namespace in (`enabled`) or a pod out (`disabled`).
pub const MESH_LABEL: &str = "weft.io/mesh";
/// Local mode: the pod's network namespace file.
pub const NETNS_ANNOTATION: &str = "weft.io/netns";
/// Local mode: the pod's cgroup folder (recorded; capture needs only the netns).
pub const CGROUP_ANNOTATION: &str = "weft.io/cgroup";
/// The pod condition the agent sets once a pod's traffic is captured; pods list it in
/// `spec.readinessGates` to stay unready until then.
pub const ENROLLED_CONDITION: &str = "weft.io/enrolled";

/// Reports kept per snapshot, whatever the sources hold; one more entry says how many were
/// left out.
pub const MAX_REPORTS: usize = 100;
/// A report's reason is cut at this many bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// An object that was skipped, and why: shown in logs, the admin API and a metric.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectError {
    pub source: String,
    pub object: String,
    /// What to fix, in words.
    pub reason: String,
    /// The bounded label of the problem (`bad_field`, `bad_duration`, `unreadable_file`…).
    pub problem: &'static str,
}

/// One consistent view of the cluster as this node needs it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Registry {
    pub namespaces: BTreeMap<String, Namespace>,
    /// Nodes by name, for their zone and region (locality-aware balancing).
    pub nodes: BTreeMap<String, objects::Node>,
    /// Shared with the watch stores (and between snapshots): a rebuild copies no object.
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Gateway API HTTPRoutes and GRPCRoutes (for waypoints).
    pub routes: Vec<Route>,
    pub policies: Vec<crate::policy::Policy>,
    /// `TrafficPolicy` objects, sorted by namespace and name (the first one targeting a
    /// Service applies).
    pub traffic_policies: Vec<crate::policy::TrafficSettings>,
    /// `RequestAuthentication` objects (for waypoints).
    pub request_auths: Vec<crate::policy::request_auth::RequestAuth>,
    pub errors: Vec<ObjectError>,
    /// Objects of kinds Weft knows but does not act on (a ServiceAccount, a Deployment), by
    /// `apiVersion/kind`: accepted without a report.
    pub ignored: BTreeMap<String, usize>,
    /// Reports left out past [`MAX_REPORTS`].
    pub errors_not_shown: usize,
    /// The per-connection lookups, built once per snapshot.
    #[serde(skip)]
    index: index::Indexes,
}

/// Finds an enrolled pod's network namespace (and cgroup) on this node.
pub trait Locate: Send + Sync {
    fn locate(&self, pod: &Pod) -> Result<(PathBuf, Option<PathBuf>), String>;
}

impl std::fmt::Debug for dyn Locate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Locate")
    }
}

/// Local mode: the pod's manifest names its netns and cgroup in annotations.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByAnnotation;

impl Locate for ByAnnotation {
    fn locate(&self, pod: &Pod) -> Result<(PathBuf, Option<PathBuf>), String> {
        let netns = pod
            .annotations
            .get(NETNS_ANNOTATION)
            .ok_or_else(|| format!("needs status.podIP and the annotation {NETNS_ANNOTATION}"))?;
        Ok((
            netns.into(),
            pod.annotations.get(CGROUP_ANNOTATION).map(PathBuf::from),
        ))
    }
}

/// Where an enrolled pod lives on this node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodPlacement {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub service_account: String,
    pub netns: PathBuf,
    /// The netns itself (device and inode), when it could be read: a pod's netns may be
    /// reached through another of its processes' `/proc/<pid>/ns/net` from one pass to the
    /// next, and that is no reason to capture it again.
    #[serde(skip)]
    pub netns_id: Option<(u64, u64)>,
    pub cgroup: Option<PathBuf>,
}

impl PodPlacement {
    /// The netns a path leads to, as device and inode, when it can be read.
    #[expect(
        clippy::disallowed_methods,
        reason = "placements are made during enrollment, on a blocking thread"
    )]
    pub fn netns_id_of(path: &std::path::Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    /// Whether `other` places the same pod in the same netns, however its path was found.
    pub fn same_as(&self, other: &Self) -> bool {
        let same_netns = match (self.netns_id, other.netns_id) {
            (Some(a), Some(b)) => a == b,
            _ => self.netns == other.netns,
        };
        same_netns
            && (
                &self.namespace,
                &self.name,
                self.ip,
                &self.service_account,
                &self.cgroup,
            ) == (
                &other.namespace,
                &other.name,
                other.ip,
                &other.service_account,
                &other.cgroup,
            )
    }

    /// A name unique on the node and valid in bpffs (which refuses dots): `<namespace>_<name>`.
    /// Kubernetes names never contain `_`, so the key is unambiguous.
    pub fn key(&self) -> String {
        format!("{}_{}", self.namespace, self.name)
    }
}

impl Registry {
    /// Builds a snapshot from parsed YAML/JSON documents. Objects that do not parse or fail
    /// validation are recorded in `errors` and skipped; the rest is kept.
    pub fn from_objects(docs: impl IntoIterator<Item = (String, serde_yaml::Value)>) -> Self {
        let mut registry = Self::default();
        for (source, doc) in docs {
            registry.add_document(source, &doc);
        }
        registry.finish()
    }

    /// Adds one parsed YAML/JSON document, or records why it was skipped.
    pub fn add_document(&mut self, source: String, doc: &serde_yaml::Value) {
        if let Err(error) = objects::add(self, doc) {
            self.report(source, &error);
        }
    }

    /// Adds one settled typed object (a watch store's), or records why it was rejected.
    /// `source` names where it came from, asked only when there is something to report.
    pub fn add_settled<K: typed::Settle>(&mut self, source: impl FnOnce() -> String, object: &K) {
        match object.settled().outcome() {
            Ok(Some(kept)) => K::keep(kept, self),
            Ok(None) => {}
            Err(error) => self.report(source(), error),
        }
    }

    fn report(&mut self, source: String, error: &Rejection) {
        self.errors.push(ObjectError {
            source,
            object: error.object.clone(),
            reason: error.problem.to_string(),
            problem: error.problem.reason(),
        });
    }

    /// Completes a snapshot: bounds its reports and builds its indexes.
    #[must_use]
    pub fn finish(mut self) -> Self {
        self.traffic_policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.bound_errors();
        self.index = index::Indexes::build(&self);
        self
    }

    /// Keeps at most [`MAX_REPORTS`] reports of at most [`MAX_REASON_BYTES`] each, and counts
    /// what it left out.
    pub fn bound_errors(&mut self) {
        if self.errors.len() > MAX_REPORTS {
            self.errors_not_shown += self.errors.len() - MAX_REPORTS;
            self.errors.truncate(MAX_REPORTS);
        }
        for error in &mut self.errors {
            for text in [&mut error.reason, &mut error.object, &mut error.source] {
                if text.len() > MAX_REASON_BYTES {
                    let mut end = MAX_REASON_BYTES;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                    text.push('…');
                }
            }
        }
    }

    /// Whether the mesh captures this pod (SPEC labels). A hostNetwork pod never is: its
    /// netns is the node's. Nor is a waypoint's: it speaks HBONE itself.
    pub fn is_enrolled(&self, pod: &Pod) -> bool {
        if pod.host_network {
            return false;
        }
        let namespace_on = self
            .namespaces
            .get(&pod.namespace)
            .is_some_and(|ns| ns.labels.get(MESH_LABEL).is_some_and(|v| v == "enabled"));
        let pod_off = pod.labels.get(MESH_LABEL).is_some_and(|v| v == "disabled");
        namespace_on && !pod_off && !waypoints::is_waypoint_pod(pod)
    }

    /// Enrolled pods scheduled on `node`.
    pub fn enrolled_pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .iter()
            .map(Arc::as_ref)
            .filter(move |p| p.node_name.as_deref() == Some(node) && self.is_enrolled(p))
    }

    /// Enrolled pods scheduled on `node` that have an address and a netns `locate` can find.
    /// Pods enrolled but not placeable are reported through `unplaceable`.
    pub fn enrolled_on(&self, node: &str, locate: &dyn Locate) -> (Vec<PodPlacement>, Vec<String>) {
        let mut placed = Vec::new();
        let mut unplaceable = Vec::new();
        for pod in self.enrolled_pods_on(node) {
            let Some(ip) = pod.ip else {
                unplaceable.push(format!(
                    "{}/{}: has no status.podIP yet",
                    pod.namespace, pod.name
                ));
                continue;
            };
            match locate.locate(pod) {
                Ok((netns, cgroup)) => placed.push(PodPlacement {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    ip,
                    service_account: pod.service_account.clone(),
                    netns_id: PodPlacement::netns_id_of(&netns),
                    netns,
                    cgroup,
                }),
                Err(reason) => {
                    unplaceable.push(format!("{}/{}: {reason}", pod.namespace, pod.name));
                }
            }
        }
        placed.sort();
        (placed, unplaceable)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        // A hash hit is checked; the same hash may name another object.
        self.index
            .pods_named(namespace, name)
            .filter_map(|i| self.pods.get(i))
            .map(Arc::as_ref)
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Names of the Services whose endpoints include this pod IP.
    pub fn services_of(&self, namespace: &str, ip: Ipv4Addr) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for slice in self
            .index
            .slices_at(ip)
            .filter_map(|i| self.endpoint_slices.get(i))
            .filter(|s| s.namespace == namespace)
        {
            if !names.contains(&slice.service_name) {
                names.push(slice.service_name.clone());
            }
        }
        names
    }

    /// Whether a pod's mTLS mode is strict: its own annotation, else its namespace's.
    pub fn mtls_strict(&self, pod: &Pod) -> bool {
        let mode = pod
            .annotations
            .get(crate::policy::MTLS_MODE_ANNOTATION)
            .or_else(|| {
                self.namespaces
                    .get(&pod.namespace)
                    .and_then(|ns| ns.annotations.get(crate::policy::MTLS_MODE_ANNOTATION))
            });
        mode.is_some_and(|m| m == "strict")
    }

    /// Decides an inbound connection to one of this node's pods.
    pub fn authorize(
        &self,
        pod: &PodPlacement,
        port: u16,
        identity: Option<&crate::identity::SpiffeId>,
        source_ip: std::net::IpAddr,
    ) -> crate::policy::Decision {
        let empty = Labels::default();
        let found = self.pod(&pod.namespace, &pod.name);
        let services = self.services_of(&pod.namespace, pod.ip);
        let enforced_by_waypoint = identity.map_or_else(Vec::new, |id| {
            self.served_by_waypoint(&pod.namespace, &services, id)
        });
        let request = crate::policy::Request {
            namespace: &pod.namespace,
            labels: found.map_or(&empty, |p| &p.labels),
            services: &services,
            port,
            identity,
            source_ip,
            strict: found.is_some_and(|p| self.mtls_strict(p)),
            l7: None,
            gateway: None,
            enforced_by_waypoint: &enforced_by_waypoint,
        };
        let in_namespace = self
            .index
            .policies_by_namespace
            .get(&pod.namespace)
            .map_or(&[][..], Vec::as_slice);
        crate::policy::evaluate(
            in_namespace
                .iter()
                .filter_map(|&i| self.policies.get(i as usize)),
            &request,
        )
    }

    /// The workload behind an address, as `namespace/name`, when the registry knows it.
    pub fn workload_at(&self, ip: std::net::IpAddr) -> Option<String> {
        let std::net::IpAddr::V4(ip) = ip else {
            return None;
        };
        self.pod_by_ip(ip)
            .map(|p| format!("{}/{}", p.namespace, p.name))
    }

    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        self.index
            .pods_by_ip
            .get(&ip)
            .and_then(|&i| self.pods.get(i as usize))
            .map(Arc::as_ref)
    }

    /// The node the pod at `ip` runs on, with its zone and region, when the registry has it.
    pub fn node_of(&self, ip: std::net::IpAddr) -> Option<&objects::Node> {
        let std::net::IpAddr::V4(ip) = ip else {
            return None;
        };
        let node = self.pod_by_ip(ip)?.node_name.as_deref()?;
        self.nodes.get(node)
    }

    /// How near each of `endpoints` is to `client`: 0 in its zone, 1 in its region, 2 further
    /// or unknown.
    pub fn nearness(&self, client: Option<&objects::Node>, endpoints: &[SocketAddr]) -> Vec<u8> {
        endpoints
            .iter()
            .map(|e| {
                let (Some(client), Some(node)) = (client, self.node_of(e.ip())) else {
                    return 2;
                };
                let same_region = client.region.is_some() && client.region == node.region;
                if same_region && client.zone.is_some() && client.zone == node.zone {
                    0
                } else if same_region {
                    1
                } else {
                    2
                }
            })
            .collect()
    }

    /// The `TrafficPolicy` that applies to an HTTPRoute: the first, by name, that targets it.
    pub fn traffic_for_route(
        &self,
        namespace: &str,
        route: &str,
    ) -> Option<&crate::policy::TrafficSettings> {
        self.traffic_policies
            .iter()
            .find(|t| t.namespace == namespace && t.routes.iter().any(|r| r == route))
    }

    /// The `TrafficPolicy` that applies to a Service: the first, by name, that targets it.
    pub fn traffic_for(&self, service: &Service) -> Option<&crate::policy::TrafficSettings> {
        self.index
            .traffic_of(&service.namespace, &service.name)
            .filter_map(|i| self.traffic_policies.get(i))
            .find(|t| t.namespace == service.namespace && t.services.contains(&service.name))
    }

    /// The Service and port a virtual IP and port belong to.
    pub fn service_by_vip(&self, dst: SocketAddrV4) -> Option<(&Service, &ServicePort)> {
        let &(service, port) = self.index.services_by_vip.get(&dst)?;
        let service = self.services.get(service as usize)?;
        Some((service, service.ports.get(port as usize)?))
    }

    /// Ready backends of a Service port, as addresses with the target port resolved: the
    /// EndpointSlice port of the same name, else the Service's numeric targetPort.
    pub fn endpoints(&self, service: &Service, port: &ServicePort) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for slice in self
            .index
            .slices_of(&service.namespace, &service.name)
            .filter_map(|i| self.endpoint_slices.get(i))
            .filter(|e| e.namespace == service.namespace && e.service_name == service.name)
        {
            let target = slice
                .ports
                .iter()
                .find(|p| p.name == port.name)
                .map(|p| p.port)
                .or(port.target_port);
            let Some(target) = target else { continue };
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                out.extend(
                    endpoint
                        .addresses
                        .iter()
                        .map(|a| SocketAddr::from((*a, target))),
                );
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Logs the reports that are new since the last snapshot: a bad object is said once, not at
/// every reload.
pub fn log_new_errors(old: &[ObjectError], new: &[ObjectError]) {
    let known: std::collections::HashMap<(&str, &str), &str> = old
        .iter()
        .map(|e| ((e.source.as_str(), e.object.as_str()), e.reason.as_str()))
        .collect();
    for e in new {
        if known.get(&(e.source.as_str(), e.object.as_str())) != Some(&e.reason.as_str()) {
            tracing::warn!(source = %e.source, object = %e.object, reason = %e.reason, "object rejected");
        }
    }
}

#[cfg(test)]
mod tests;

impl From<&PodPlacement> for weft_api::Workload {
    fn from(p: &PodPlacement) -> Self {
        Self {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            ip: p.ip,
            service_account: p.service_account.clone(),
            netns: p.netns.display().to_string(),
            cgroup: p.cgroup.as_ref().map(|c| c.display().to_string()),
        }
    }
}

impl From<&ObjectError> for weft_api::RejectedObject {
    fn from(e: &ObjectError) -> Self {
        Self {
            source: e.source.clone(),
            object: e.object.clone(),
            reason: e.reason.clone(),
            problem: e.problem.to_owned(),
        }
    }
}

impl From<&ServicePort> for weft_api::ServicePort {
    fn from(p: &ServicePort) -> Self {
        Self {
            name: p.name.clone(),
            port: p.port,
            target_port: p.target_port,
        }
    }
}

impl From<&watch::KindStatus> for weft_api::WatchStatus {
    fn from(s: &watch::KindStatus) -> Self {
        Self {
            synced: s.synced,
            objects: s.objects,
            events: s.events,
            errors: s.errors,
            last_error: s.last_error.clone(),
        }
    }
}
