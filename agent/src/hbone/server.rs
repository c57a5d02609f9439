//! The HBONE server of one enrolled pod: mutual TLS on the pod's IP:15008 (presenting the
//! pod's own SVID), then one `CONNECT` stream per tunnel, delivered into the pod from the
//! client's address. Status codes per the SPEC: 200 open, 400 malformed or not this pod,
//! 503 destination unreachable. Nothing a peer sends can stop the listener.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{HboneError, CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_STREAMS, STREAM_WINDOW};
use crate::{
    connections::{Connection, Direction, Security},
    identity::{self, SpiffeId},
    limits,
    proxy::{authorize, inbound::deliver, PodContext, ProxyContext},
};

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>, ctx: Arc<ProxyContext>) {
    let limits = ctx.connections.metrics.limits.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = limits::accept(&listener, "hbone", &limits) => accepted,
            () = ctx.drain.signaled() => return,
        };
        // Small request/response writes must leave at once; Nagle would hold them for an ACK.
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        let (pod, ctx, held) = (pod.clone(), ctx.clone(), ctx.drain.hold());
        tokio::spawn(async move {
            let _held = held;
            if let Err(e) = connection(tcp, peer, &pod, &ctx).await {
                tracing::info!(pod = %pod.name(), %peer, error = %e, "HBONE connection refused or failed");
                if matches!(e, HboneError::Tls { .. } | HboneError::Authority(_)) {
                    refused(
                        &ctx,
                        &pod,
                        peer,
                        local,
                        format!("refused before any tunnel: {e}"),
                    );
                }
            }
        });
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    pod: &Arc<PodContext>,
    ctx: &Arc<ProxyContext>,
) -> Result<(), HboneError> {
    // Issued (on a blocking thread) if need be, so the sync TLS set-up below finds it cached.
    ctx.certs.get_async(&pod.identity).await?;
    let config = identity::server_config(&ctx.certs, &pod.identity)?;
    let limits = &ctx.connections.metrics.limits;
    let tls = tokio::time::timeout(
        limits::TLS_HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(config).accept(tcp),
    )
    .await
    .map_err(|_| {
        limits.hit("hbone", "tls_handshake_timeout", &peer);
        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
    })
    .and_then(|r| r)
    .map_err(|source| HboneError::Tls { addr: peer, source })?;
    let client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let serial = client_cert.and_then(identity::serial_of);
    let client = client_cert.and_then(identity::peer_identity);
    let tls = super::closing::ClosingTls::from(tls);
    let Some(client) = client else {
        return Err(HboneError::Authority(
            "client presented no SPIFFE identity".into(),
        ));
    };
    let h2 = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(limits::HBONE_MAX_HEADER_LIST)
        .handshake(tls);
    let Ok(connection) = tokio::time::timeout(limits::HBONE_FIRST_STREAM_TIMEOUT, h2).await else {
        limits.hit("hbone", "first_stream_timeout", &peer);
        return Ok(());
    };
    let mut h2 = connection?;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Until the first stream, the deadline is short: a peer that never completes a header
    // block (h2 yields a stream only once it is whole) or sends nothing is cut by it.
    let (mut deadline, mut limit) = (limits::HBONE_FIRST_STREAM_TIMEOUT, "first_stream_timeout");
    let mut draining = false;
    loop {
        let accepted = tokio::select! {
            accepted = h2.accept() => accepted,
            // Draining: GOAWAY tells the peer to open no more streams here; the open ones
            // finish, and the connection closes when the last one has.
            () = ctx.drain.signaled(), if !draining => {
                draining = true;
                h2.graceful_shutdown();
                continue;
            }
            () = quiet_for(&open, deadline) => {
                limits.hit("hbone", limit, &peer);
                h2.graceful_shutdown();
                let _ = tokio::time::timeout(limits::HBONE_GOAWAY_GRACE, async {
                    while let Some(Ok(_)) = h2.accept().await {}
                })
                .await;
                return Ok(());
            }
        };
        let Some(stream) = accepted else { break };
        let (request, respond) = stream?;
        (deadline, limit) = (
            limits::HBONE_IDLE_CONNECTION_TIMEOUT,
            "idle_connection_timeout",
        );
        let (pod, ctx, client, serial) = (pod.clone(), ctx.clone(), client.clone(), serial.clone());
        let streams = OpenStream::new(open.clone());
        let held = ctx.drain.hold();
        tokio::spawn(async move {
            tunnel(request, respond, peer, (client, serial), &pod, &ctx).await;
            drop((streams, held));
        });
    }
    Ok(())
}

/// Counts a stream as open for as long as it lives.
struct OpenStream(Arc<std::sync::atomic::AtomicUsize>);

impl OpenStream {
    fn new(open: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Completes once no stream has been open for `quiet`, checked every tenth of it (at least a
/// second apart): a pooled connection idling for minutes wakes once a minute and a half, not
/// every second.
async fn quiet_for(open: &std::sync::atomic::AtomicUsize, quiet: Duration) {
    let mut since = tokio::time::Instant::now();
    let tick = (quiet / 10).max(Duration::from_secs(1)).min(quiet);
    loop {
        tokio::time::sleep(tick).await;
        if open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// The record of an inbound HBONE connection from `peer` to `target`, with the client's
/// identity and certificate serial once TLS has proven them.
fn record(
    registry: &crate::registry::Registry,
    pod: &PodContext,
    peer: SocketAddr,
    target: SocketAddr,
    client: Option<(&SpiffeId, Option<String>)>,
) -> Connection {
    Connection {
        id: 0,
        started_unix_ms: 0,
        decision: None,
        direction: Direction::Inbound,
        pod: pod.name(),
        workload_identity: Some(pod.identity.to_string()),
        source: peer,
        original_destination: target,
        destination: target,
        service: None,
        security: Security::Mtls,
        peer_identity: client.as_ref().map(|(id, _)| id.to_string()),
        peer_certificate_serial: client.and_then(|(_, serial)| serial),
        peer_workload: registry.workload_at(peer.ip()),
        failure: None,
    }
}

/// Records a connection refused before it could carry a tunnel (no TLS, no identity), so
/// `weftctl flows` says why.
fn refused(
    ctx: &ProxyContext,
    pod: &PodContext,
    peer: SocketAddr,
    local: SocketAddr,
    reason: String,
) {
    let registry = ctx.registry.borrow().clone();
    ctx.connections
        .failed(record(&registry, pod, peer, local, None), reason);
}

fn reply(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let response = http::Response::builder()
        .status(status)
        .body(())
        .unwrap_or_default();
    let _ = respond.send_response(response, true);
}

/// The target of a CONNECT: an IP:port that must be `pod_ip`, and not an agent port.
pub fn connect_target(
    method: &http::Method,
    uri: &http::Uri,
    pod_ip: std::net::Ipv4Addr,
) -> Result<SocketAddr, &'static str> {
    if method != http::Method::CONNECT {
        return Err("method is not CONNECT");
    }
    let authority = uri.authority().ok_or("no :authority")?;
    let target: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|_| ":authority is not IP:port")?;
    if target.ip() != pod_ip {
        return Err(":authority is not a workload of this pod");
    }
    if crate::proxy::AGENT_PORTS.contains(&target.port()) {
        return Err(":authority names one of the agent's own ports, not a workload's");
    }
    Ok(target)
}

async fn tunnel(
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    (client, serial): (SpiffeId, Option<String>),
    pod: &PodContext,
    ctx: &ProxyContext,
) {
    let target = match connect_target(request.method(), request.uri(), pod.placement.ip) {
        Ok(target) => target,
        Err(reason) => {
            tracing::info!(pod = %pod.name(), %peer, %client, %reason, "HBONE request refused with 400");
            reply(&mut respond, StatusCode::BAD_REQUEST);
            return;
        }
    };
    let registry = ctx.registry.borrow().clone();
    let connection = record(&registry, pod, peer, target, Some((&client, serial)));
    let Some(guard) = authorize(ctx, &registry, pod, connection, Some(&client)) else {
        reply(&mut respond, StatusCode::UNAUTHORIZED);
        return;
    };
    // The client agent connects from the client pod's own address: deliver from it.
    let server = match deliver(pod, ctx, SocketAddr::new(peer.ip(), 0), target).await {
        Ok(server) => server,
        Err(e) => {
            tracing::warn!(pod = %pod.name(), %client, %target, error = %e, "HBONE destination unreachable: 503");
            ctx.connections
                .totals
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            reply(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
    };
    let response = http::Response::builder()
        .status(StatusCode::OK)
        .body(())
        .unwrap_or_default();
    let send = match respond.send_response(response, false) {
        Ok(send) => send,
        Err(e) => {
            tracing::debug!(error = %e, "HBONE stream reset before it opened");
            return;
        }
    };
    // The TCP side here is the application: what it sends goes back to the client.
    let bytes = guard.bytes();
    let tunnel = super::stream::splice(
        server,
        send,
        request.into_body(),
        &bytes.to_client,
        &bytes.from_client,
    );
    let ((to_client, from_client), error) = tokio::select! {
        result = tunnel => result,
        () = guard.revoked() => return,
        () = limits::idle([&bytes.to_client, &bytes.from_client], limits::STREAM_IDLE_TIMEOUT) => {
            ctx.connections.metrics.limits.hit("hbone", "stream_idle_timeout", &peer);
            return;
        }
    };
    guard.finish(from_client, to_client);
    if let Some(e) = error {
        tracing::debug!(error = %e, "HBONE tunnel ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::connect_target;
    use crate::proxy::{loops_into_agent, AGENT_PORTS};

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

    fn decide(
        method: &http::Method,
        authority: &str,
    ) -> Result<std::net::SocketAddr, &'static str> {
        let uri: http::Uri = authority.parse().expect("a URI");
        connect_target(method, &uri, POD)
    }

    #[test]
    fn a_connect_to_an_agent_port_or_elsewhere_is_refused_with_its_reason() {
        assert_eq!(
            decide(&http::Method::CONNECT, "10.244.1.5:8080"),
            Ok(([10, 244, 1, 5], 8080).into())
        );
        for port in AGENT_PORTS {
            assert!(
                decide(&http::Method::CONNECT, &format!("10.244.1.5:{port}"))
                    .is_err_and(|e| e.contains("agent's own ports"))
            );
        }
        assert!(decide(&http::Method::GET, "10.244.1.5:8080").is_err());
        assert!(decide(&http::Method::CONNECT, "10.244.1.6:8080").is_err());
        assert!(decide(&http::Method::CONNECT, "echo.demo:8080").is_err());
    }

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
