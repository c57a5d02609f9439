//! The HBONE server: mutual TLS on IP:15008 presenting the listener's own SVID, HTTP/2 with
//! bounded deadlines, and one `CONNECT` stream per tunnel, handed to a [`Tunnels`]
//! implementation (the agent delivers into a pod). Status codes per the SPEC: 200 open, 400
//! malformed or not this listener's, 401 denied, 503 destination unreachable. Nothing a peer
//! sends can stop the listener; on drain it sends GOAWAY and lets open streams finish.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Request, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{HboneError, CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_STREAMS, STREAM_WINDOW};
use crate::{
    drain,
    identity::{self, CertStore, SpiffeId},
    limits::{self, Limits},
    serve::{OnDrain, Serving},
};

/// What an HBONE listener does with what it accepts: the agent delivers each tunnel into the
/// pod it serves; a waypoint serves it at L7. The server owns TLS, HTTP/2, deadlines and
/// draining; the implementation owns what a tunnel means.
pub trait Tunnels: Send + Sync + 'static {
    /// The identity this listener presents (its SVID is issued first if need be).
    fn identity(&self) -> &SpiffeId;
    /// Who the listener serves, for logs.
    fn name(&self) -> String;
    /// The target of a CONNECT, or why it is refused with 400.
    fn target(&self, method: &http::Method, uri: &http::Uri) -> Result<SocketAddr, &'static str>;
    /// A connection refused before it carried any tunnel (no TLS, no client identity).
    fn refused(&self, peer: SocketAddr, local: SocketAddr, reason: String);
    /// Carries one tunnel: answers it (200, 401, 503…) and moves its bytes until it ends.
    fn carry(self: Arc<Self>, tunnel: Inbound) -> impl Future<Output = ()> + Send;
}

/// One CONNECT stream the server accepted, from a proven client identity.
#[derive(Debug)]
pub struct Inbound {
    pub peer: SocketAddr,
    pub client: SpiffeId,
    /// Serial of the client's certificate, for the flow record.
    pub serial: Option<String>,
    pub target: SocketAddr,
    /// The original client's identity a waypoint carried in `baggage` (see
    /// [`carried_identity`]); the peer's own is `client`.
    pub carried: Option<SpiffeId>,
    /// The caller's span, from the CONNECT's `traceparent`.
    pub trace_parent: Option<opentelemetry::trace::SpanContext>,
    pub body: h2::RecvStream,
    pub respond: SendResponse<Bytes>,
}

/// The `baggage` member naming the original client when a waypoint tunnels on its behalf.
pub const CARRIED_IDENTITY_KEY: &str = "source.principal";
/// The longest `baggage` header read for it; longer ones carry nothing.
pub const MAX_BAGGAGE: usize = 1024;

/// The SPIFFE identity in a request's `baggage: source.principal=<id>`, if one parses. It is
/// the peer's claim, recorded beside the peer's proven identity, never used in its place.
pub fn carried_identity(headers: &http::HeaderMap) -> Option<SpiffeId> {
    let baggage = headers.get("baggage")?.to_str().ok()?;
    if baggage.len() > MAX_BAGGAGE {
        return None;
    }
    baggage.split(',').find_map(|member| {
        let (key, value) = member.split_once('=')?;
        (key.trim() == CARRIED_IDENTITY_KEY)
            .then(|| SpiffeId::parse(value.split(';').next().unwrap_or_default().trim()))
            .flatten()
    })
}

/// What every HBONE listener of a process shares.
#[derive(Debug, Clone)]
pub struct Server {
    pub certs: Arc<CertStore>,
    pub limits: Arc<Limits>,
    pub drain: drain::Signal,
}

/// Serves HBONE on `listener` until the drain; each connection holds the drain open.
pub async fn serve<T: Tunnels>(listener: TcpListener, server: Server, tunnels: Arc<T>) {
    let serving = Serving {
        name: "hbone",
        limits: server.limits.clone(),
        drain: server.drain.clone(),
        on_drain: OnDrain::Stop,
    };
    crate::serve::serve(listener, serving, move |tcp, peer| {
        // Small request/response writes must leave at once; Nagle would hold them for an ACK.
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        let (server, tunnels) = (server.clone(), tunnels.clone());
        async move {
            if let Err(e) = connection(tcp, peer, &server, &tunnels).await {
                tracing::info!(listener = %tunnels.name(), %peer, error = %e, "HBONE connection refused or failed");
                if matches!(e, HboneError::Tls { .. } | HboneError::Authority(_)) {
                    tunnels.refused(peer, local, format!("refused before any tunnel: {e}"));
                }
            }
        }
    })
    .await;
}

async fn connection<T: Tunnels>(
    tcp: TcpStream,
    peer: SocketAddr,
    server: &Server,
    tunnels: &Arc<T>,
) -> Result<(), HboneError> {
    // Issued if need be, so the sync TLS set-up below finds it cached.
    server.certs.get_async(tunnels.identity()).await?;
    let config = identity::server_config(&server.certs, tunnels.identity())?;
    let limits = &server.limits;
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
            () = server.drain.signaled(), if !draining => {
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
        let (tunnels, client, serial) = (tunnels.clone(), client.clone(), serial.clone());
        let streams = OpenStream::new(open.clone());
        let held = server.drain.hold();
        tokio::spawn(async move {
            accept_stream(request, respond, peer, (client, serial), tunnels).await;
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

/// Answers a tunnel with `status` and no body.
pub fn reply(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let response = http::Response::builder()
        .status(status)
        .body(())
        .unwrap_or_default();
    let _ = respond.send_response(response, true);
}

/// The IP:port a CONNECT names, or why it is not one.
pub fn connect_authority(
    method: &http::Method,
    uri: &http::Uri,
) -> Result<SocketAddr, &'static str> {
    if method != http::Method::CONNECT {
        return Err("method is not CONNECT");
    }
    let authority = uri.authority().ok_or("no :authority")?;
    authority
        .as_str()
        .parse()
        .map_err(|_| ":authority is not IP:port")
}

/// The target of a CONNECT: an IP:port that must be `pod_ip`, and not an agent port.
pub fn connect_target(
    method: &http::Method,
    uri: &http::Uri,
    pod_ip: std::net::Ipv4Addr,
) -> Result<SocketAddr, &'static str> {
    let target = connect_authority(method, uri)?;
    if target.ip() != pod_ip {
        return Err(":authority is not a workload of this pod");
    }
    if crate::ports::AGENT_PORTS.contains(&target.port()) {
        return Err(":authority names one of the agent's own ports, not a workload's");
    }
    Ok(target)
}

async fn accept_stream<T: Tunnels>(
    request: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    (client, serial): (SpiffeId, Option<String>),
    tunnels: Arc<T>,
) {
    let target = match tunnels.target(request.method(), request.uri()) {
        Ok(target) => target,
        Err(reason) => {
            tracing::info!(listener = %tunnels.name(), %peer, %client, %reason, "HBONE request refused with 400");
            reply(&mut respond, StatusCode::BAD_REQUEST);
            return;
        }
    };
    let carried = carried_identity(request.headers());
    let inbound = Inbound {
        peer,
        client,
        serial,
        target,
        carried,
        trace_parent: request
            .headers()
            .contains_key("traceparent")
            .then(|| crate::trace::propagate::extract(request.headers()).parent)
            .flatten(),
        body: request.into_body(),
        respond,
    };
    tunnels.carry(inbound).await;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::connect_target;
    use crate::ports::AGENT_PORTS;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

    #[test]
    fn a_carried_identity_is_read_from_baggage_and_nothing_else_is() {
        let headers = |value: &str| {
            let mut map = http::HeaderMap::new();
            map.insert("baggage", value.parse().expect("header"));
            map
        };
        let carried = super::carried_identity(&headers(
            "k8s.namespace.name=demo, source.principal=spiffe://cluster.local/ns/demo/sa/client;p=1",
        ))
        .expect("carried");
        assert_eq!(
            carried.to_string(),
            "spiffe://cluster.local/ns/demo/sa/client"
        );
        assert!(super::carried_identity(&headers("source.principal=not-spiffe")).is_none());
        assert!(super::carried_identity(&http::HeaderMap::new()).is_none());
        let long = format!(
            "x={},source.principal=spiffe://cluster.local/ns/a/sa/b",
            "y".repeat(2000)
        );
        assert!(
            super::carried_identity(&headers(&long)).is_none(),
            "an oversized header carries nothing"
        );
    }

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
}
