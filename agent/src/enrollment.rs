//! Enrollment: makes the node's set of captured pods follow the registry. For each enrolled
//! pod it opens the agent's listeners inside the pod's netns, registers them with the kernel,
//! installs the capture routing and attaches the capture program; for a pod that leaves, it
//! undoes all of that so the pod's direct path is restored.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};
use weft_common::{PodConfig, INBOUND_PORT, OUTBOUND_PORT, POD_FLAG_ENROLLED};

use weft_mesh::{
    hbone,
    identity::SpiffeId,
    registry::{Locate, PodPlacement, Registry},
};

use crate::{
    capture::{links, owner::Claim, routing, routing::EGRESS_MARK, CaptureError, Owner, Programs},
    netns::{self, Netns},
    proxy::{self, hbone_in::PodTunnels, PodContext, ProxyContext},
};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("pod {pod}: {what}: {source}")]
    Io {
        pod: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pod {pod}: {source}")]
    Capture {
        pod: String,
        #[source]
        source: Box<CaptureError>,
    },
    #[error("pod {pod}: installing capture routing: {source}")]
    Routing {
        pod: String,
        #[source]
        source: routing::RoutingError,
    },
}

/// A pod the agent currently captures.
#[derive(Debug)]
struct Enrolled {
    context: Arc<PodContext>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Enrolled {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the admin API shows about enrollment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EnrollmentStatus {
    pub enrolled: Vec<PodPlacement>,
    pub failed: Vec<String>,
    pub unplaceable: Vec<String>,
}

#[derive(Debug)]
pub struct Enrollment {
    /// The node's side of every pod netns the agent enters.
    host: Arc<netns::Host>,
    node: String,
    programs: Programs,
    proxy: Arc<ProxyContext>,
    excluded_ports: Vec<u16>,
    /// Where the netns paths of enrolled pods are recorded, for `weft-agent uninstall`.
    record: PathBuf,
    pods: BTreeMap<String, Enrolled>,
    pub status: Arc<Mutex<EnrollmentStatus>>,
    locate: Box<dyn Locate>,
    /// Kubernetes mode: where pod enrollment changes go to become pod conditions.
    conditions: Option<tokio::sync::mpsc::UnboundedSender<PodCondition>>,
    /// The condition last reported per gated pod, so each change is patched once.
    reported: BTreeMap<String, bool>,
    /// This agent's claim on the node's capture; a newer agent's claim ends its reconciling.
    owner: Arc<Owner>,
    /// Set once a newer agent owns capture: nothing is reconciled again.
    superseded: bool,
    /// Connections lost with a previous agent that died (see [`Claim`]).
    lost_in_crash: u64,
}

/// A pod's enrollment as a `weft.io/enrolled` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCondition {
    pub namespace: String,
    pub name: String,
    pub enrolled: bool,
    pub message: String,
}

impl Enrollment {
    pub fn new(
        host: Arc<netns::Host>,
        node: String,
        programs: Programs,
        proxy: Arc<ProxyContext>,
        excluded_ports: Vec<u16>,
        state_dir: &Path,
        owner: Arc<Owner>,
    ) -> Self {
        Self {
            owner,
            superseded: false,
            lost_in_crash: 0,
            host,
            node,
            programs,
            proxy,
            excluded_ports,
            record: state_dir.join("enrolled-netns.json"),
            pods: BTreeMap::new(),
            status: Arc::default(),
            locate: Box::new(weft_mesh::registry::ByAnnotation),
            conditions: None,
            reported: BTreeMap::new(),
        }
    }

    /// Finds pods' netns with `locate` instead of local-mode annotations.
    #[must_use]
    pub fn with_locator(mut self, locate: Box<dyn Locate>) -> Self {
        self.locate = locate;
        self
    }

    /// Reports each gated pod's enrollment to `conditions` (Kubernetes mode).
    #[must_use]
    pub fn with_conditions(
        mut self,
        conditions: tokio::sync::mpsc::UnboundedSender<PodCondition>,
    ) -> Self {
        self.conditions = Some(conditions);
        self
    }

    /// Brings the captured set in line with the registry, under the node's capture lock, as
    /// long as this agent owns capture: its first pass claims it (an upgrade's new agent takes
    /// over from the running one), and once a newer agent has claimed it, nothing is changed
    /// again. Errors are per pod: one pod that cannot be enrolled is reported and the others
    /// still are.
    pub fn reconcile(&mut self, registry: &Registry) {
        if self.superseded {
            return;
        }
        let lock = match self.owner.lock() {
            Ok(lock) => lock,
            Err(e) => {
                tracing::error!(error = %e, "cannot take the node's capture lock; capture left as it is");
                return;
            }
        };
        if self.owner.generation() == 0 {
            match self.owner.claim(&lock) {
                Ok(claim) => self.report_claim(claim),
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim capture in the pinned OWNER map; capture left as it is");
                    return;
                }
            }
        } else if self.owner.superseded() {
            tracing::warn!(
                generation = self.owner.generation(),
                owner = self.owner.current(),
                "a newer agent owns capture: this one reconciles nothing from now on and only finishes the connections it carries"
            );
            self.superseded = true;
            return;
        }
        self.reconcile_owned(registry);
        drop(lock);
    }

    fn report_claim(&mut self, claim: Claim) {
        let generation = self.owner.generation();
        match claim {
            Claim { previous: 0, .. } => {
                tracing::info!(generation, "this agent owns capture on the node");
            }
            Claim {
                previous,
                lost_in_crash: None,
            } => tracing::info!(
                generation,
                previous,
                "this agent takes capture over from the running one: its listeners replace the old ones pod by pod, and the old agent keeps the connections it carries until they end or it drains"
            ),
            Claim {
                previous,
                lost_in_crash: Some(lost),
            } => {
                self.lost_in_crash = lost;
                if lost > 0 {
                    tracing::warn!(
                        generation,
                        previous,
                        lost,
                        "the previous agent died without draining: the connections it carried are lost; capture resumes now"
                    );
                } else {
                    tracing::info!(generation, previous, "capture resumed from the pins the previous agent left");
                }
            }
        }
    }

    /// Connections the previous agent carried when it died, as it last published them.
    pub fn lost_in_crash(&self) -> u64 {
        self.lost_in_crash
    }

    fn reconcile_owned(&mut self, registry: &Registry) {
        // Retries run every second: each reason is logged once, not on every pass.
        let (known_failed, known_unplaceable) = {
            let status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            (status.failed.clone(), status.unplaceable.clone())
        };
        let (desired, unplaceable) = registry.enrolled_on(&self.node, self.locate.as_ref());
        let desired: BTreeMap<String, PodPlacement> =
            desired.into_iter().map(|p| (p.key(), p)).collect();
        let leaving: Vec<String> = self
            .pods
            .iter()
            .filter(|(key, pod)| {
                !desired
                    .get(*key)
                    .is_some_and(|d| d.same_as(&pod.context.placement))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in leaving {
            self.unenroll(&key);
        }
        self.forget_stale(&desired);
        let mut failed = Vec::new();
        for (key, placement) in desired {
            if self.pods.contains_key(&key) {
                continue;
            }
            match self.enroll(placement) {
                Ok(enrolled) => {
                    tracing::info!(pod = %enrolled.context.name(), ip = %enrolled.context.placement.ip, "pod enrolled; its IPv6 TCP is refused (capture is IPv4 only)");
                    self.pods.insert(key, enrolled);
                }
                Err(e) => {
                    let e = e.to_string();
                    if !known_failed.contains(&e) {
                        tracing::error!(error = %e, "enrollment failed");
                    }
                    failed.push(e);
                }
            }
        }
        for reason in unplaceable
            .iter()
            .filter(|r| !known_unplaceable.contains(r))
        {
            tracing::warn!(%reason, "enrolled pod cannot be captured");
        }
        self.write_record();
        self.report_conditions(registry);
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = EnrollmentStatus {
            enrolled: self
                .pods
                .values()
                .map(|p| p.context.placement.clone())
                .collect(),
            failed,
            unplaceable,
        };
    }

    /// Tells gated pods of this node whether they may turn Ready: captured, or not in the mesh
    /// at all (nothing to wait for); an enrolled pod not yet captured stays gated.
    fn report_conditions(&mut self, registry: &Registry) {
        let Some(conditions) = &self.conditions else {
            return;
        };
        let mut seen = Vec::new();
        for pod in registry
            .pods
            .iter()
            .filter(|p| p.enrollment_gate && p.node_name.as_deref() == Some(self.node.as_str()))
        {
            let key = format!("{}_{}", pod.namespace, pod.name);
            let (enrolled, message) = if pod.host_network {
                (true, "hostNetwork: shares the node's network, not captured")
            } else if !registry.is_enrolled(pod) {
                (true, "not in the mesh: nothing to capture")
            } else if self.pods.contains_key(&key) {
                (true, "traffic captured by weft-agent")
            } else {
                (
                    false,
                    "enrolled but not captured yet: see `weftctl workloads` on the node",
                )
            };
            if self.reported.get(&key) != Some(&enrolled) {
                let _ = conditions.send(PodCondition {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    enrolled,
                    message: message.into(),
                });
                self.reported.insert(key.clone(), enrolled);
            }
            seen.push(key);
        }
        self.reported.retain(|key, _| seen.contains(key));
    }

    /// Undoes capture an earlier agent left for pods that are no longer enrolled.
    fn forget_stale(&self, desired: &BTreeMap<String, PodPlacement>) {
        for key in links::pinned_pods(&self.programs.pin_dir)
            .into_iter()
            .filter(|k| !desired.contains_key(k))
        {
            tracing::info!(pod = %key, "detaching capture left by an earlier run");
            if let Err(e) = links::detach(&self.programs.pin_dir, &key) {
                tracing::warn!(pod = %key, error = %e, "detaching stale capture failed");
            }
        }
        for (key, netns) in read_record(&self.record) {
            if !desired.contains_key(&key) && !self.pods.contains_key(&key) {
                if let Ok(ns) = Netns::open(&self.host, &netns) {
                    routing::remove(&ns);
                }
            }
        }
    }

    fn enroll(&mut self, placement: PodPlacement) -> Result<Enrolled, EnrollError> {
        let pod = format!("{}/{}", placement.namespace, placement.name);
        let io = |what| {
            let pod = pod.clone();
            move |source| EnrollError::Io { pod, what, source }
        };
        let capture = |source: CaptureError| EnrollError::Capture {
            pod: pod.clone(),
            source: Box::new(source),
        };
        let ns = Netns::open(&self.host, &placement.netns).map_err(io("opening its netns"))?;
        let outbound =
            listen(&ns, OUTBOUND_PORT, true).map_err(io("opening the outbound listener"))?;
        let inbound =
            listen(&ns, INBOUND_PORT, false).map_err(io("opening the inbound listener"))?;
        let hbone_listener = listen_hbone(&ns, placement.ip)
            .map_err(io("opening the HBONE listener on port 15008"))?;
        // Each entry is replaced in one update: an old agent's listener keeps receiving SYNs
        // until the new one is in its place, never a moment with none.
        let ip_key = u32::from_ne_bytes(placement.ip.octets());
        {
            let mut maps = self
                .proxy
                .maps
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            maps.inbound_listeners
                .insert(ip_key, inbound.as_raw_fd(), 0)
                .map_err(|e| capture(e.into()))?;
            maps.outbound_listeners
                .insert(ip_key, outbound.as_raw_fd(), 0)
                .map_err(|e| capture(e.into()))?;
            maps.hbone_listeners
                .insert(ip_key, hbone_listener.as_raw_fd(), 0)
                .map_err(|e| capture(e.into()))?;
            let config = PodConfig {
                pod_ip_be: ip_key,
                flags: POD_FLAG_ENROLLED,
            };
            maps.pods
                .insert(ip_key, config, 0)
                .map_err(|e| capture(e.into()))?;
        }
        // Listeners exist before capture points at them.
        routing::install(&ns, placement.ip, &self.excluded_ports).map_err(|source| {
            EnrollError::Routing {
                pod: pod.clone(),
                source,
            }
        })?;
        let attached =
            links::attach(&mut self.programs, &placement.key(), ns.file()).map_err(capture)?;
        tracing::debug!(%pod, attached, "capture link in place");
        let identity = SpiffeId::new(
            &self.proxy.certs.trust_domain,
            &placement.namespace,
            &placement.service_account,
        );
        // Issued now, off the connection path, so the pod's first connection finds it.
        self.proxy.cert_worker.want(identity.clone());
        let context = Arc::new(PodContext::new(placement, identity, ns));
        let tasks = vec![
            tokio::spawn(proxy::outbound::serve(
                outbound,
                context.clone(),
                self.proxy.clone(),
            )),
            tokio::spawn(proxy::inbound::serve(
                inbound,
                context.clone(),
                self.proxy.clone(),
            )),
            tokio::spawn(hbone::server::serve(
                hbone_listener,
                self.proxy.hbone_server(),
                Arc::new(PodTunnels {
                    pod: context.clone(),
                    ctx: self.proxy.clone(),
                }),
            )),
        ];
        Ok(Enrolled { context, tasks })
    }

    fn unenroll(&mut self, key: &str) {
        let Some(pod) = self.pods.remove(key) else {
            return;
        };
        if let Err(e) = links::detach(&self.programs.pin_dir, key) {
            tracing::warn!(pod = %key, error = %e, "detaching capture failed");
        }
        routing::remove(&pod.context.netns);
        {
            let ip_key = u32::from_ne_bytes(pod.context.placement.ip.octets());
            let mut maps = self
                .proxy
                .maps
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = maps.pods.remove(&ip_key);
            let _ = maps.inbound_listeners.remove(&ip_key);
            let _ = maps.outbound_listeners.remove(&ip_key);
            let _ = maps.hbone_listeners.remove(&ip_key);
        }
        tracing::info!(pod = %pod.context.name(), "pod unenrolled; its direct path is restored");
    }

    pub fn enrolled_count(&self) -> usize {
        self.pods.len()
    }

    /// Whether an enrolled pod of this node is not captured yet (its process not found, an
    /// enrollment step failed): the agent tries again on a timer, since nothing in the
    /// registry may change to prompt it.
    pub fn has_pending(&self) -> bool {
        if self.superseded {
            return false;
        }
        let status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        !status.failed.is_empty() || !status.unplaceable.is_empty()
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "enrollment runs on a blocking thread"
    )]
    fn write_record(&self) {
        let record: BTreeMap<&String, &Path> = self
            .pods
            .iter()
            .map(|(k, p)| (k, p.context.placement.netns.as_path()))
            .collect();
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&self.record, json));
        if let Err(e) = written {
            tracing::warn!(path = %self.record.display(), error = %e, "cannot record enrolled pods; `weft-agent uninstall` will not find their routing");
        }
    }
}

/// The enrolled pods' netns paths an agent recorded in `record`.
#[expect(
    clippy::disallowed_methods,
    reason = "enrollment runs on a blocking thread; uninstall is synchronous"
)]
fn read_record(record: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read(record)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .unwrap_or_default()
}

/// Removes the capture routing from every pod an agent with this state folder recorded.
#[expect(
    clippy::disallowed_methods,
    reason = "`weft-agent uninstall` is a synchronous command"
)]
pub fn remove_recorded_routing(host: &Arc<netns::Host>, state_dir: &Path) -> Vec<String> {
    let record = state_dir.join("enrolled-netns.json");
    let mut cleaned = Vec::new();
    for (key, netns) in read_record(&record) {
        if let Ok(ns) = Netns::open(host, &netns) {
            routing::remove(&ns);
            cleaned.push(format!("routing of {key} ({})", netns.display()));
        }
    }
    let _ = std::fs::remove_file(record);
    cleaned
}

/// The pod's HBONE listener on its own IP. Marked for egress: its replies leave through the
/// pod's interface. `weft_sk_lookup` steers port 15008 to the one in `HBONE_LISTENERS`.
/// Every pod listener shares its port (`SO_REUSEPORT`) so that an upgrade's new agent can
/// open its own beside the old one's; the program assigns SYNs with `NO_REUSEPORT`, so only
/// the listener in the map receives them.
fn listen_hbone(ns: &Netns, ip: Ipv4Addr) -> std::io::Result<TcpListener> {
    let socket = ns.tcp_socket()?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_mark(EGRESS_MARK)?;
    socket.bind(&SocketAddr::from((ip, weft_common::HBONE_PORT)).into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A listener on the pod's loopback. The outbound one is transparent: `weft_sk_lookup` hands
/// it connections to any destination, and their accepted sockets keep that address. The
/// inbound one is marked for egress.
fn listen(ns: &Netns, port: u16, transparent: bool) -> std::io::Result<TcpListener> {
    let socket = ns.tcp_socket()?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if transparent {
        socket.set_ip_transparent_v4(true)?;
    } else {
        // Accepted sockets inherit the mark, so their replies to the network take the pod's
        // normal routes instead of the capture route.
        socket.set_mark(EGRESS_MARK)?;
    }
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
