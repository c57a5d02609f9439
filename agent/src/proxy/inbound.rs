//! Inbound: a connection to an enrolled pod, steered by `weft_sk_lookup` to the agent's
//! listener in the pod's netns. The accepted socket's local address is the original
//! destination; the agent delivers to it from the client's own address so the application
//! sees the real peer.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering, Arc, PoisonError},
};

use weft_common::DeliveryKey;

use tokio::net::{TcpListener, TcpStream};

use super::{splice, PodContext, ProxyContext};
use weft_mesh::connections::{Connection, Direction, Security};

use crate::capture::routing::DELIVERY_MARK;

/// Serves the pod's inbound capture listener until the drain; open connections finish.
pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, ctx: Arc<ProxyContext>) {
    let serving = ctx.serving("inbound");
    weft_mesh::serve::serve(listener, serving, move |client, peer| {
        // Small request/response writes must leave at once; Nagle would hold them for an ACK.
        let _ = client.set_nodelay(true);
        let (pod, ctx) = (pod.clone(), ctx.clone());
        async move { handle(client, peer, &pod, &ctx).await }
    })
    .await;
}

async fn handle(client: TcpStream, peer: SocketAddr, pod: &PodContext, ctx: &ProxyContext) {
    let Ok(original) = client.local_addr() else {
        return;
    };
    let registry = ctx.registry.borrow().clone();
    let connection = Connection {
        id: 0,
        direction: Direction::Inbound,
        pod: pod.name().to_owned(),
        workload_identity: Some(pod.identity.to_string()),
        source: peer,
        original_destination: original,
        destination: original,
        service: None,
        security: Security::Plaintext,
        peer_identity: None,
        peer_certificate_serial: None,
        peer_workload: registry.workload_at(peer.ip()),
        waypoint: None,
        carried_identity: None,
        connect_attempts: 0,
        failure: None,
        decision: None,
        started_unix_ms: 0,
        trace: None,
    };
    // Reached without capture (a process in the pod dialed 127.0.0.1:15006), or addressed to
    // an agent port: delivering it would come straight back to the agent.
    if let Some(reason) = super::loops_into_agent(pod.placement.ip, original) {
        let _ = client.set_zero_linger();
        tracing::warn!(pod = %pod.name(), %peer, %reason, "inbound connection refused");
        ctx.connections.refused_loop(connection, reason);
        return;
    }
    // A plaintext client carries no identity: only address and port rules can match it.
    let Some(guard) = super::authorize(ctx, &registry, pod, connection, None) else {
        // A reset, not a FIN: a clean close reads as an empty answer from the server.
        let _ = client.set_zero_linger();
        return;
    };
    // A long-lived connection must not keep the snapshot it began under alive.
    drop(registry);
    // Boxed, like the outbound side's tunnel opening: the future's size stays with the
    // connection for as long as it is open.
    match Box::pin(deliver(pod, ctx, peer, original)).await {
        Ok(server) => {
            tokio::select! {
                () = splice(client, server, &guard) => {}
                () = guard.revoked() => {}
            }
        }
        Err(e) => {
            ctx.connections
                .totals
                .failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pod = %pod.name(), %peer, %original, error = %e, "inbound delivery failed: nothing listens in the pod?");
        }
    }
}

/// How many random source ports a delivery tries before it lets the kernel choose one.
const DELIVERY_PORT_TRIES: usize = 8;

/// Connects to the application from the client's address: `IP_TRANSPARENT` lets the socket
/// bind a foreign address, and the mark routes the application's replies back to it.
///
/// The source port is picked at random and bound explicitly (with `SO_REUSEADDR`), not left to
/// `bind(port 0)`: on a foreign address the kernel's port-0 search skips every port that any
/// socket still holds, TIME_WAIT ones included, and each delivery leaves one behind, so that
/// search grew with every connection and the connection rate fell as a run went on (measured:
/// 6,000/s over 2 s, 3,400/s over 10 s). `connect` still refuses a 4-tuple in use; such a
/// collision just tries another port.
pub(crate) async fn deliver(
    pod: &PodContext,
    ctx: &ProxyContext,
    client: SocketAddr,
    destination: SocketAddr,
) -> std::io::Result<TcpStream> {
    let IpAddr::V4(client_ip) = client.ip() else {
        return Err(std::io::Error::other("inbound delivery is IPv4 only"));
    };
    for _ in 0..DELIVERY_PORT_TRIES {
        let port = rand::random_range(1024..=u16::MAX);
        match deliver_from(pod, ctx, client_ip, Some(port), destination).await {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                ) => {}
            result => return result,
        }
    }
    deliver_from(pod, ctx, client_ip, None, destination).await
}

/// One delivery attempt from `client_ip`:`port` (`None`: a port the kernel picks).
async fn deliver_from(
    pod: &PodContext,
    ctx: &ProxyContext,
    client_ip: std::net::Ipv4Addr,
    port: Option<u16>,
    destination: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = pod.netns.tcp_socket()?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_mark(DELIVERY_MARK)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_reuse_address(port.is_some())?;
    socket.bind(&SocketAddr::new(client_ip.into(), port.unwrap_or(0)).into())?;
    let Some(bound) = socket.local_addr()?.as_socket() else {
        return Err(std::io::Error::other("inbound delivery is IPv4 only"));
    };
    // Tell sk_lookup this SYN is the agent's own delivery, so it reaches the application
    // instead of being captured again.
    let key = DeliveryKey {
        client_ip_be: u32::from_ne_bytes(client_ip.octets()),
        client_port: bound.port(),
        app_port: destination.port(),
    };
    ctx.maps
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .deliveries
        .insert(key, 1, 0)
        .map_err(std::io::Error::other)?;
    let connected =
        weft_mesh::socket::connect_socket(socket, destination, weft_mesh::route::CONNECT_TIMEOUT)
            .await;
    let _ = ctx
        .maps
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .deliveries
        .remove(&key);
    connected
}
