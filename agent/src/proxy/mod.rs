//! The transparent L4 proxy: accepts what capture redirected in each enrolled pod, resolves
//! the original destination through the registry and carries the bytes both ways.

pub mod hbone_in;
pub mod inbound;
pub mod outbound;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{net::TcpStream, sync::watch};

use weft_mesh::{
    connections::{Authorized, Connection, Connections, Guard},
    copy,
    hbone::client::{Pool, Source},
    identity::{CertStore, SpiffeId},
    policy::Verdict,
    ports::AGENT_PORTS,
    registry::{PodPlacement, Registry},
    socket::SocketFactory,
};

use crate::{capture::routing::EGRESS_MARK, capture::Maps, netns::Netns};

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
    pub cert_worker: weft_mesh::identity::CertWorker,
    pub pool: Pool,
    pub maps: Arc<Mutex<Maps>>,
    pub connections: Arc<Connections>,
    /// On SIGTERM: listeners stop accepting, connections finish.
    pub drain: weft_mesh::drain::Signal,
    /// Which endpoint of each Service port is next.
    pub rotation: weft_mesh::route::RoundRobin,
    /// Connections open to each endpoint and its connect failures ([`weft_mesh::balance`]).
    pub endpoints: weft_mesh::balance::EndpointHealth,
}

/// An enrolled pod as the proxy sees it.
#[derive(Debug)]
pub struct PodContext {
    pub placement: PodPlacement,
    pub identity: SpiffeId,
    pub netns: Netns,
    /// `namespace/name`, made once: every log line and flow record names the pod.
    name: String,
}

impl PodContext {
    pub fn new(placement: PodPlacement, identity: SpiffeId, netns: Netns) -> Self {
        let name = format!("{}/{}", placement.namespace, placement.name);
        Self {
            placement,
            identity,
            netns,
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod as the source of HBONE tunnels.
    pub fn source(&self) -> Source<'_> {
        Source {
            name: &self.name,
            identity: &self.identity,
            ip: self.placement.ip.into(),
            sockets: self,
            carried: None,
            traceparent: None,
        }
    }
}

/// The agent's own outbound sockets, made in the pod's netns: the mark routes them out
/// through the pod's interface instead of into capture again.
impl SocketFactory for PodContext {
    fn tcp_v4(&self) -> std::io::Result<socket2::Socket> {
        let socket = self.netns.tcp_socket()?;
        socket.set_mark(EGRESS_MARK)?;
        socket.set_tcp_nodelay(true)?;
        Ok(socket)
    }
}

impl ProxyContext {
    pub fn new(
        registry: watch::Receiver<Arc<Registry>>,
        certs: Arc<CertStore>,
        maps: Arc<Mutex<Maps>>,
        connections: Arc<Connections>,
        drain: weft_mesh::drain::Signal,
    ) -> Self {
        let pool = Pool::new(certs.clone());
        let rotation = weft_mesh::route::RoundRobin::counted_by(connections.metrics.limits.clone());
        let endpoints =
            weft_mesh::balance::EndpointHealth::counted_by(connections.metrics.limits.clone());
        Self {
            registry,
            cert_worker: weft_mesh::identity::CertWorker::spawn(certs.clone()),
            certs,
            pool,
            maps,
            connections,
            drain,
            rotation,
            endpoints,
        }
    }

    /// How a data-path listener of this node is served: stopped by the drain.
    pub fn serving(&self, name: &'static str) -> weft_mesh::serve::Serving {
        weft_mesh::serve::Serving {
            name,
            limits: self.connections.metrics.limits.clone(),
            drain: self.drain.clone(),
            on_drain: weft_mesh::serve::OnDrain::Stop,
        }
    }

    /// What every pod's HBONE listener shares.
    pub fn hbone_server(&self) -> weft_mesh::hbone::server::Server {
        weft_mesh::hbone::server::Server {
            certs: self.certs.clone(),
            limits: self.connections.metrics.limits.clone(),
            drain: self.drain.clone(),
        }
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

/// Carries a proxied connection until both directions are done; a half-close on one side is
/// passed on as a shutdown of the other while the reverse direction keeps flowing.
pub async fn splice(mut client: TcpStream, mut server: TcpStream, guard: &Guard<'_>) {
    let bytes = guard.bytes();
    let copied = copy::both_ways(&mut client, &mut server, &bytes);
    let idle = weft_mesh::limits::idle(
        [&bytes.from_client, &bytes.to_client],
        weft_mesh::limits::STREAM_IDLE_TIMEOUT,
    );
    // The guard reports the bytes the copy counted as they moved, whichever way this ends.
    let error = tokio::select! {
        copied = copied => copied,
        () = idle => {
            guard.limits().hit("proxy", "stream_idle_timeout", &"a proxied connection carried nothing");
            return;
        }
    };
    if let Some(e) = error {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::loops_into_agent;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

    #[test]
    fn captured_connections_that_would_loop_into_the_agent_are_named() {
        assert!(loops_into_agent(POD, ([127, 0, 0, 1], 15006).into())
            .is_some_and(|r| r.contains("loopback")));
        assert!(loops_into_agent(POD, ([10, 244, 1, 5], 15021).into())
            .is_some_and(|r| r.contains("own port 15021")));
        assert_eq!(loops_into_agent(POD, ([10, 244, 1, 5], 8080).into()), None);
        // Another pod's 15020 is that pod's business, not a loop.
        assert_eq!(loops_into_agent(POD, ([10, 244, 1, 6], 15020).into()), None);
    }
}
