//! Enrollment: makes the node's set of captured pods follow the registry. For each enrolled
//! pod it prepares the pod's netns, opens the agent's listeners inside it, registers them with
//! the kernel and attaches the capture programs; for a pod that leaves, it undoes all of that
//! so the pod's direct path is restored.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex, PoisonError},
};

use serde::Serialize;
use tokio::{net::TcpListener, task::JoinHandle};
use weft_common::{PodConfig, INBOUND_PORT, OUTBOUND_PORT, POD_FLAG_ENROLLED};

use crate::{
    capture::{links, CaptureError, Programs},
    netns::{self, Netns},
    proxy::{self, PodContext, ProxyContext},
    registry::{PodPlacement, Registry},
};

/// Mark on the agent's delivery sockets. With `tcp_fwmark_accept` the application's accepted
/// socket inherits it, and a policy rule sends its replies to the agent over `lo`.
pub const DELIVERY_MARK: u32 = 0x5746;
const DELIVERY_TABLE: &str = "22342";

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
        source: CaptureError,
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
    node: String,
    programs: Programs,
    proxy: Arc<ProxyContext>,
    pods: BTreeMap<String, Enrolled>,
    pub status: Arc<Mutex<EnrollmentStatus>>,
}

impl Enrollment {
    pub fn new(node: String, programs: Programs, proxy: Arc<ProxyContext>) -> Self {
        Self {
            node,
            programs,
            proxy,
            pods: BTreeMap::new(),
            status: Arc::default(),
        }
    }

    /// Brings the captured set in line with the registry. Errors are per pod: one pod that
    /// cannot be enrolled is reported and the others still are.
    pub async fn reconcile(&mut self, registry: &Registry) {
        let (desired, unplaceable) = registry.enrolled_on(&self.node);
        let desired: BTreeMap<String, PodPlacement> =
            desired.into_iter().map(|p| (p.key(), p)).collect();
        let leaving: Vec<String> = self
            .pods
            .iter()
            .filter(|(key, pod)| desired.get(*key) != Some(&pod.context.placement))
            .map(|(key, _)| key.clone())
            .collect();
        for key in leaving {
            self.unenroll(&key);
        }
        // Links pinned by an earlier agent for pods that are no longer enrolled.
        for key in links::pinned_pods(&self.programs.pin_dir) {
            if !desired.contains_key(&key) {
                tracing::info!(pod = %key, "detaching capture left from an earlier run");
                if let Err(e) = links::detach(&self.programs.pin_dir, &key) {
                    tracing::warn!(pod = %key, error = %e, "detaching stale capture failed");
                }
            }
        }
        let mut failed = Vec::new();
        for (key, placement) in desired {
            if self.pods.contains_key(&key) {
                continue;
            }
            match self.enroll(placement).await {
                Ok(enrolled) => {
                    tracing::info!(pod = %enrolled.context.name(), ip = %enrolled.context.placement.ip, "pod enrolled; IPv6 TCP from it is refused (capture is IPv4 only)");
                    self.pods.insert(key, enrolled);
                }
                Err(e) => {
                    tracing::error!(error = %e, "enrollment failed");
                    failed.push(e.to_string());
                }
            }
        }
        for reason in &unplaceable {
            tracing::warn!(%reason, "enrolled pod cannot be captured");
        }
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

    async fn enroll(&mut self, placement: PodPlacement) -> Result<Enrolled, EnrollError> {
        let pod = format!("{}/{}", placement.namespace, placement.name);
        let io = |what| {
            let pod = pod.clone();
            move |source| EnrollError::Io { pod, what, source }
        };
        let capture = |source| EnrollError::Capture {
            pod: pod.clone(),
            source,
        };
        let ns = Netns::open(&placement.netns).map_err(io("opening its netns"))?;
        prepare_netns(&ns)
            .await
            .map_err(io("preparing its netns for transparent delivery"))?;
        let outbound = listen(&ns, Ipv4Addr::LOCALHOST, OUTBOUND_PORT)
            .map_err(io("opening the outbound listener"))?;
        let inbound = listen(&ns, Ipv4Addr::LOCALHOST, INBOUND_PORT)
            .map_err(io("opening the inbound listener"))?;
        let cookie = netns::netns_cookie(&outbound).map_err(io("reading its netns cookie"))?;
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
            maps.pods
                .insert(
                    cookie,
                    PodConfig {
                        pod_ip_be: ip_key,
                        flags: POD_FLAG_ENROLLED,
                    },
                    0,
                )
                .map_err(|e| capture(e.into()))?;
        }
        // Listeners exist before the programs attach: capture never points at nothing.
        let attached = links::attach(
            &mut self.programs,
            &placement.key(),
            &placement.cgroup,
            ns.file(),
        )
        .map_err(capture)?;
        tracing::debug!(%pod, attached, "capture links in place");
        let context = Arc::new(PodContext {
            placement,
            netns: ns,
            netns_cookie: cookie,
        });
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
        {
            let mut maps = self
                .proxy
                .maps
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = maps.pods.remove(&pod.context.netns_cookie);
            let _ = maps
                .inbound_listeners
                .remove(&u32::from_ne_bytes(pod.context.placement.ip.octets()));
        }
        if let Err(e) = pod.context.netns.run(
            "ip",
            &[
                "rule",
                "del",
                "fwmark",
                &DELIVERY_MARK.to_string(),
                "lookup",
                DELIVERY_TABLE,
            ],
        ) {
            tracing::debug!(pod = %key, error = %e, "removing the delivery rule");
        }
        tracing::info!(pod = %pod.context.name(), "pod unenrolled; its direct path is restored");
        drop(pod);
    }

    pub fn enrolled_count(&self) -> usize {
        self.pods.len()
    }
}

/// A listener inside the pod's netns.
fn listen(ns: &Netns, ip: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    let socket = ns.tcp_socket()?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((ip, port)).into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Lets the agent deliver inbound connections from the client's own address: marked sockets
/// (and the application sockets that inherit the mark) route through a table whose default is
/// local, so replies to a foreign client address come back to the agent. Idempotent.
async fn prepare_netns(ns: &Netns) -> std::io::Result<()> {
    ns.write_sysctl("net.ipv4.tcp_fwmark_accept", "1")?;
    let mark = DELIVERY_MARK.to_string();
    let rules = ns.run("ip", &["rule", "show", "fwmark", &mark])?;
    if String::from_utf8_lossy(&rules.stdout).trim().is_empty() {
        checked(ns.run(
            "ip",
            &[
                "rule",
                "add",
                "fwmark",
                &mark,
                "lookup",
                DELIVERY_TABLE,
                "pref",
                "100",
            ],
        )?)?;
    }
    checked(ns.run(
        "ip",
        &[
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            DELIVERY_TABLE,
        ],
    )?)
}

fn checked(output: std::process::Output) -> std::io::Result<()> {
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
