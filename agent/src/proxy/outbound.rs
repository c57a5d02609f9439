//! Outbound: a connection an enrolled pod made, steered by `weft_sk_lookup` to the agent's
//! listener in the pod's netns. The agent connects onward from the same netns, so packets leave
//! with the pod's address.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use tokio::net::{TcpListener, TcpStream};

use super::{splice, PodContext, ProxyContext};
use weft_common::HBONE_PORT;

use weft_mesh::{
    connections::{Connection, Direction, FailReason, Failure, Security},
    hbone::{stream as hbone_stream, HboneError},
    identity::SpiffeId,
    registry::Registry,
    route, socket,
};

/// Serves the pod's outbound capture listener until the drain; open connections finish.
pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, ctx: Arc<ProxyContext>) {
    let serving = ctx.serving("outbound");
    weft_mesh::serve::serve(listener, serving, move |client, peer| {
        // Small request/response writes must leave at once; Nagle would hold them for an ACK.
        let _ = client.set_nodelay(true);
        let (pod, ctx) = (pod.clone(), ctx.clone());
        async move { handle(client, peer, &pod, &ctx).await }
    })
    .await;
}

async fn handle(client: TcpStream, peer: SocketAddr, pod: &PodContext, ctx: &ProxyContext) {
    // The listener is transparent and `weft_sk_lookup` handed it the pod's SYN, so the
    // accepted socket's local address is what the pod dialed. A connection that reached the
    // listener any other way (someone in the pod dialing 127.0.0.1:15001) is refused: the
    // listener can never serve as an open relay.
    let Ok(SocketAddr::V4(original)) = client.local_addr() else {
        return;
    };
    let registry = ctx.registry.borrow().clone();
    let mut connection = Connection {
        id: 0,
        direction: Direction::Outbound,
        pod: pod.name().to_owned(),
        workload_identity: Some(pod.identity.to_string()),
        source: SocketAddr::from((pod.placement.ip, peer.port())),
        original_destination: SocketAddr::V4(original),
        destination: SocketAddr::V4(original),
        service: None,
        security: Security::Plaintext,
        peer_identity: None,
        peer_certificate_serial: None,
        peer_workload: None,
        waypoint: None,
        carried_identity: None,
        connect_attempts: 0,
        failure: None,
        decision: None,
        started_unix_ms: 0,
        // Begun before the connect, so the CONNECT can carry it to the destination.
        trace: ctx.connections.tracer.get().map(|tracer| {
            tracer.begin(
                None,
                "connect",
                opentelemetry::trace::SpanKind::Client,
                false,
            )
        }),
    };
    if let Some(reason) = super::loops_into_agent(pod.placement.ip, SocketAddr::V4(original)) {
        if original.ip().is_loopback() {
            ctx.connections
                .totals
                .refused_not_captured
                .fetch_add(1, Ordering::Relaxed);
        }
        let _ = client.set_zero_linger();
        tracing::warn!(pod = %pod.name(), %peer, %reason, "outbound connection refused");
        ctx.connections.refused_loop(connection, reason);
        return;
    }
    // One registry snapshot decides the whole connection: route, identity and names.
    let route = match route::resolve(
        (&ctx.rotation, &ctx.endpoints),
        &registry,
        (pod.placement.ip.into(), original),
    ) {
        Ok(route) => route,
        Err(e) => {
            // A reset, as for a failed connect below: no endpoint is not an empty answer.
            let _ = client.set_zero_linger();
            tracing::warn!(pod = %pod.name(), %original, reason = e.reason(), error = %e, "outbound connection failed");
            ctx.connections.failed(connection, e.into());
            return;
        }
    };
    connection.service.clone_from(&route.service);
    connection.waypoint = route.via.as_ref().map(ToString::to_string);
    // An enrolled destination, or a waypoint, gets an HBONE tunnel; anything else plain TCP.
    let candidates: Vec<Candidate> = std::iter::once(route.destination)
        .chain(route.alternatives.iter().copied())
        .map(|destination| {
            let (identity, target) = tunnel_peer(ctx, &registry, &route, original, destination);
            Candidate {
                destination,
                identity,
                target,
                workload: registry.workload_at(destination.ip()),
            }
        })
        .collect();
    // A long-lived connection must not keep the snapshot it began under alive.
    drop(registry);
    connect_any(client, pod, ctx, &route, candidates, connection).await;
}

/// Connects to the first candidate that answers, within the route's connect timeout, and
/// carries the connection; a refused or failed connect moves on to the next candidate.
async fn connect_any(
    client: TcpStream,
    pod: &PodContext,
    ctx: &ProxyContext,
    route: &route::Route,
    candidates: Vec<Candidate>,
    mut connection: Connection,
) {
    let deadline = std::time::Instant::now() + route.connect_timeout;
    // What the client sent before its tunnel opened: read once, sent with every attempt.
    let mut early: Option<bytes::Bytes> = None;
    let attempts = candidates.len();
    for (tried, candidate) in candidates.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        connection.destination = candidate.destination;
        connection.peer_workload.clone_from(&candidate.workload);
        connection.connect_attempts = u32::try_from(tried + 1).unwrap_or(u32::MAX);
        connection.security = Security::Plaintext;
        connection.peer_identity = None;
        if let Some(identity) = &candidate.identity {
            connection.security = Security::Mtls;
            connection.peer_identity = Some(identity.to_string());
        }
        let traceparent = connection
            .trace
            .as_ref()
            .and_then(|t| weft_mesh::trace::propagate::traceparent(&t.context));
        let opened = open(
            (&client, pod, traceparent.as_deref()),
            ctx,
            route,
            &candidate,
            left,
            &mut early,
        )
        .await;
        let failure = match opened {
            Ok(Opened::Tunnel(tunnel, early_bytes)) => {
                let _active = ctx.endpoints.connected(candidate.destination);
                carry_tunnel(client, tunnel, ctx, connection, early_bytes).await;
                return;
            }
            Ok(Opened::Direct(server)) => {
                let _active = ctx.endpoints.connected(candidate.destination);
                let guard = ctx.connections.open(connection);
                splice(client, server, &guard).await;
                return;
            }
            Err(failure) => failure,
        };
        let retryable = failure.endpoint_failed && route.service.is_some() && route.via.is_none();
        if retryable {
            if let Some(skipped) =
                ctx.endpoints
                    .failed(candidate.destination, &route.endpoints, route.skip_rule)
            {
                tracing::warn!(service = ?route.service, endpoint = %candidate.destination, failures = skipped.failures, skip = ?skipped.duration, "endpoint skipped after connect failures in a row");
            }
        }
        let time_left = deadline > std::time::Instant::now();
        if retryable && tried + 1 < attempts && time_left {
            tracing::debug!(pod = %pod.name(), endpoint = %candidate.destination, detail = %failure.failure.detail, "connect failed; trying another endpoint");
            continue;
        }
        // The client learns of the failure by a reset, as from a rejecting firewall: a FIN
        // would read as a server that closed after an empty answer (the client's first bytes
        // may already have been taken to ride with the CONNECT).
        let _ = client.set_zero_linger();
        let mut failure = failure.failure;
        if tried > 0 {
            failure.detail = format!("{} (after {} endpoints)", failure.detail, tried + 1);
        }
        tracing::warn!(pod = %pod.name(), original = %connection.original_destination, destination = %candidate.destination, reason = failure.reason.as_str(), detail = %failure.detail, "outbound connection failed");
        ctx.connections.failed(connection, failure);
        return;
    }
}

/// One endpoint a connection may go to, with the identity it must prove.
struct Candidate {
    destination: SocketAddr,
    identity: Option<SpiffeId>,
    target: SocketAddr,
    workload: Option<String>,
}

/// A connection opened to a candidate.
enum Opened {
    Tunnel(weft_mesh::hbone::client::Tunnel, u64),
    Direct(TcpStream),
}

/// Why a candidate could not be reached, and whether the endpoint is to blame (a refused or
/// failed connect, not a timeout or a policy's refusal).
struct NotOpened {
    failure: Failure,
    endpoint_failed: bool,
}

/// Opens a tunnel (or a direct connection) to `candidate` within `left`.
async fn open(
    (client, pod, traceparent): (&TcpStream, &PodContext, Option<&str>),
    ctx: &ProxyContext,
    route: &route::Route,
    candidate: &Candidate,
    left: std::time::Duration,
    early: &mut Option<bytes::Bytes>,
) -> Result<Opened, NotOpened> {
    match &candidate.identity {
        Some(identity) => {
            let hbone = SocketAddr::new(candidate.destination.ip(), HBONE_PORT);
            let started = std::time::Instant::now();
            let mut early_bytes = 0;
            // Boxed: opening a tunnel (a TLS and HTTP/2 handshake when no pooled connection
            // fits) is the largest state this future passes through, and unboxed its size
            // would stay with every connection for as long as it is open.
            let mut source = pod.source();
            source.traceparent = traceparent;
            let opening =
                Box::pin(
                    ctx.pool
                        .open(source, identity, hbone, candidate.target, left, || {
                            let sent = early.get_or_insert_with(|| already_sent(client)).clone();
                            early_bytes = sent.len() as u64;
                            sent
                        }),
                );
            match tokio::time::timeout(left, opening)
                .await
                .unwrap_or_else(|_| Err(HboneError::TimedOut))
            {
                Ok(tunnel) => {
                    ctx.connections.metrics.tunnel_setup(started.elapsed());
                    Ok(Opened::Tunnel(tunnel, early_bytes))
                }
                Err(e) => Err(NotOpened {
                    endpoint_failed: endpoint_failed(&e),
                    failure: tunnel_failure(&e, hbone, route),
                }),
            }
        }
        None => match socket::connect(pod, candidate.destination, left).await {
            Ok(server) => Ok(Opened::Direct(server)),
            Err(e) => Err(NotOpened {
                endpoint_failed: e.kind() != std::io::ErrorKind::TimedOut,
                failure: connect_failure(&e, route),
            }),
        },
    }
}

/// Whether a tunnel failure is the endpoint's: its agent could not connect to it (502, 503,
/// 504) or could not be reached; not a timeout, nor a refusal by policy (401, 403).
fn endpoint_failed(error: &HboneError) -> bool {
    match error {
        HboneError::Status(status) => matches!(status.as_u16(), 502..=504),
        other => !other.timed_out(),
    }
}

/// Why a tunnel could not be opened, with its bounded reason.
fn tunnel_failure(error: &HboneError, hbone: SocketAddr, route: &route::Route) -> Failure {
    if error.timed_out() {
        return Failure::new(
            FailReason::ConnectTimeout,
            format!("HBONE tunnel to {hbone}: {}", route.timed_out()),
        );
    }
    let reason = match error {
        HboneError::Status(_) => FailReason::TunnelRefused,
        // No TCP connection to the peer's port 15008 (its agent is down, or no route): the
        // same failure as a plain connect's, whatever would have ridden on it.
        HboneError::Connect { .. } => FailReason::Unreachable,
        _ => FailReason::TunnelFailed,
    };
    Failure::new(reason, format!("HBONE tunnel to {hbone} failed: {error}"))
}

/// Why a direct connection could not be opened, with its bounded reason.
fn connect_failure(error: &std::io::Error, route: &route::Route) -> Failure {
    if error.kind() == std::io::ErrorKind::TimedOut {
        Failure::new(FailReason::ConnectTimeout, route.timed_out())
    } else {
        Failure::new(
            FailReason::Unreachable,
            format!("destination unreachable: {error}"),
        )
    }
}

/// At most this much of what the client sent before its tunnel opened rides with the CONNECT.
const EARLY_DATA: usize = 16 * 1024;

/// What the client has sent already, without waiting for more: a client that speaks first has
/// usually written its request by the time the agent asks for a tunnel.
fn already_sent(client: &TcpStream) -> bytes::Bytes {
    let mut buffer = bytes::BytesMut::with_capacity(EARLY_DATA);
    match client.try_read_buf(&mut buffer) {
        Ok(n) if n > 0 => buffer.freeze(),
        // Nothing yet, or its FIN (which the copy will read again): nothing rides early.
        _ => bytes::Bytes::new(),
    }
}

/// Carries an accepted connection through its open HBONE tunnel until both directions end.
/// `early_bytes` went with the CONNECT already.
async fn carry_tunnel(
    client: TcpStream,
    tunnel: weft_mesh::hbone::client::Tunnel,
    ctx: &ProxyContext,
    connection: Connection,
    early_bytes: u64,
) {
    let guard = ctx.connections.open(connection);
    let weft_mesh::hbone::client::Tunnel { send, recv, slot } = tunnel;
    // The guard reports the bytes counted as they moved, the early ones included.
    let error = {
        let bytes = guard.bytes();
        bytes.from_client.fetch_add(early_bytes, Ordering::Relaxed);
        hbone_stream::splice(client, send, recv, &bytes.from_client, &bytes.to_client).await
    };
    drop(slot);
    if let Some(e) = error {
        tracing::debug!(error = %e, "tunnel ended with an error");
    }
}

/// The identity the far end of the tunnel must prove, and the tunnel's target: a waypoint
/// proves its Gateway's (its name is its service account) for the VIP:port the client
/// dialed; an enrolled pod proves its own, for its address; anything else gets no tunnel.
fn tunnel_peer(
    ctx: &ProxyContext,
    registry: &Registry,
    route: &route::Route,
    original: std::net::SocketAddrV4,
    destination: SocketAddr,
) -> (Option<SpiffeId>, SocketAddr) {
    match &route.via {
        Some(waypoint) => (
            Some(SpiffeId::new(
                &ctx.certs.trust_domain,
                &waypoint.namespace,
                &waypoint.name,
            )),
            SocketAddr::V4(original),
        ),
        None => (hbone_identity(ctx, registry, destination), destination),
    }
}

/// The identity a destination must prove, when it is an enrolled pod.
fn hbone_identity(
    ctx: &ProxyContext,
    registry: &Registry,
    destination: SocketAddr,
) -> Option<SpiffeId> {
    let std::net::IpAddr::V4(ip) = destination.ip() else {
        return None;
    };
    let pod = registry.pod_by_ip(ip).filter(|p| registry.is_enrolled(p))?;
    Some(SpiffeId::new(
        &ctx.certs.trust_domain,
        &pod.namespace,
        &pod.service_account,
    ))
}
