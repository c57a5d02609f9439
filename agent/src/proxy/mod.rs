//! The transparent L4 proxy: accepts what capture redirected in each enrolled pod, resolves
//! the original destination through the registry and carries the bytes both ways.

pub mod copy;
pub mod inbound;
pub mod outbound;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{net::TcpStream, sync::watch};

use crate::{
    capture::Maps,
    connections::{Authorized, Connection, Connections, Guard},
    hbone::client::Pool,
    identity::{CertStore, SpiffeId},
    netns::Netns,
    policy::Verdict,
    registry::{PodPlacement, Registry},
};

/// The ports the agent itself serves (SPEC): capture 15001 and 15006, HBONE 15008, admin
/// 15000, metrics 15020, readiness 15021. A captured connection or a CONNECT to one of them
/// at a pod's address is refused: carried on, it would reach the agent again, and each
/// round would open another connection until file descriptors run out.
pub const AGENT_PORTS: [u16; 6] = [
    weft_common::OUTBOUND_PORT,
    weft_common::INBOUND_PORT,
    weft_common::HBONE_PORT,
    15000,
    15020,
    15021,
];

/// Why a captured connection is refused before anything is dialed, when it would loop back
/// into the agent.
pub fn loops_into_agent(pod_ip: std::net::Ipv4Addr, original: SocketAddr) -> Option<String> {
    if original.ip().is_loopback() {
        return Some(format!(
            "refused: {original} is loopback, so this connection reached the agent's listener without capture (a process in the pod dialed the agent directly)"
        ));
    }
    (original.ip() == pod_ip && AGENT_PORTS.contains(&original.port())).then(|| {
        format!(
            "refused: {original} is the agent's own port {} at the pod's address; carrying it would loop back into the agent",
            original.port()
        )
    })
}

/// Shared by every proxied connection on the node.
#[derive(Debug)]
pub struct ProxyContext {
    pub registry: watch::Receiver<Arc<Registry>>,
    pub certs: Arc<CertStore>,
    /// Issues enrolled pods' SVIDs ahead of their first connection, and renews them.
    pub cert_worker: crate::identity::CertWorker,
    pub pool: Pool,
    pub maps: Arc<Mutex<Maps>>,
    pub connections: Arc<Connections>,
    /// On SIGTERM: listeners stop accepting, connections finish.
    pub drain: crate::drain::Signal,
    round_robin: Mutex<HashMap<String, usize>>,
}

/// An enrolled pod as the proxy sees it.
#[derive(Debug)]
pub struct PodContext {
    pub placement: PodPlacement,
    pub identity: SpiffeId,
    pub netns: Netns,
}

impl PodContext {
    pub fn name(&self) -> String {
        format!("{}/{}", self.placement.namespace, self.placement.name)
    }
}

impl ProxyContext {
    pub fn new(
        registry: watch::Receiver<Arc<Registry>>,
        certs: Arc<CertStore>,
        maps: Arc<Mutex<Maps>>,
        connections: Arc<Connections>,
        drain: crate::drain::Signal,
    ) -> Self {
        let pool = Pool::new(certs.clone());
        Self {
            registry,
            cert_worker: crate::identity::CertWorker::spawn(certs.clone()),
            certs,
            pool,
            maps,
            connections,
            drain,
            round_robin: Mutex::new(HashMap::new()),
        }
    }

    /// Picks the next of `choices` for `key`, in turn.
    fn next_of(&self, key: &str, choices: &[SocketAddr]) -> Option<SocketAddr> {
        if choices.is_empty() {
            return None;
        }
        let mut counters = self
            .round_robin
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let counter = counters.entry(key.to_owned()).or_insert(0);
        let pick = choices[*counter % choices.len()];
        *counter = counter.wrapping_add(1);
        Some(pick)
    }
}

/// Decides an inbound connection under the current registry. A denial is recorded (access
/// log, metrics, recent connections) and `None` returned: the caller drops the client. An
/// allowed connection is opened so that a later policy change can close it again.
pub fn authorize<'c>(
    ctx: &'c ProxyContext,
    registry: &Registry,
    pod: &PodContext,
    mut connection: Connection,
    identity: Option<&SpiffeId>,
) -> Option<Guard<'c>> {
    let port = connection.original_destination.port();
    let source_ip = connection.source.ip();
    let decision = registry.authorize(&pod.placement, port, identity, source_ip);
    if !decision.notes.is_empty() {
        tracing::info!(target: "weft_audit", pod = %pod.name(), source = %connection.source, notes = ?decision.notes, "policy notes");
    }
    let denied = decision.verdict == Verdict::Deny;
    if denied {
        tracing::info!(pod = %pod.name(), source = %connection.source, peer_identity = identity.map(ToString::to_string).as_deref().unwrap_or("-"), reason = decision.reason.as_str(), detail = %decision.detail, "connection denied");
    }
    connection.decision = Some(decision);
    if denied {
        ctx.connections.refused(connection);
        return None;
    }
    let authorized = Authorized {
        pod: pod.placement.clone(),
        port,
        identity: identity.cloned(),
        source_ip,
    };
    Some(
        ctx.connections
            .open_authorized(connection, Some(authorized)),
    )
}

/// Connects a socket made in a pod's netns, giving up after `timeout`.
pub(crate) async fn connect_within(
    socket: socket2::Socket,
    destination: SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(timeout, socket.connect(destination))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Carries a proxied connection until both directions are done; a half-close on one side is
/// passed on as a shutdown of the other while the reverse direction keeps flowing.
pub async fn splice(mut client: TcpStream, mut server: TcpStream, guard: &Guard<'_>) {
    let bytes = guard.bytes();
    let copied = copy::both_ways(&mut client, &mut server, &bytes);
    let idle = crate::limits::idle(
        [&bytes.from_client, &bytes.to_client],
        crate::limits::STREAM_IDLE_TIMEOUT,
    );
    let ((from_client, to_client), error) = tokio::select! {
        copied = copied => copied,
        () = idle => {
            guard.limits().hit("proxy", "stream_idle_timeout", &"a proxied connection carried nothing");
            return;
        }
    };
    guard.finish(from_client, to_client);
    if let Some(e) = error {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
