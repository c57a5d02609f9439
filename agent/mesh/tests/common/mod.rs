//! In-process fixtures for the data-path tests: a local CA and SVID store, an HBONE server on
//! loopback whose tunnels reach loopback applications, a pool dialing through plain sockets,
//! and tunnels turned back into TCP streams. No root, no kernel programs, no namespaces.
#![expect(
    clippy::disallowed_methods,
    reason = "fixtures write their temporary CA synchronously"
)]
#![expect(dead_code, reason = "each test file uses part of the fixtures")]

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use weft_mesh::{
    drain,
    hbone::{
        self,
        client::{Pool, Source, Tunnel},
        server::{reply, Inbound, Server, Tunnels},
    },
    identity::{CaSource, CertStore, LocalCa, SpiffeId},
    limits::Limits,
    socket::{self, Plain},
};

pub const TRUST_DOMAIN: &str = "cluster.local";

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("weft-mesh-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn id(service_account: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, "demo", service_account)
}

/// A store whose SVIDs live `lifetime`, signed by a CA generated in `dir`.
pub fn store(dir: &TempDir, lifetime: Duration) -> Arc<CertStore> {
    let ca = LocalCa::load(&CaSource::Generated { dir: dir.0.clone() }, TRUST_DOMAIN).expect("ca");
    Arc::new(CertStore::new(Arc::new(ca), TRUST_DOMAIN, lifetime))
}

/// What the test server does with a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Connect to the target on loopback and carry the bytes (503 if it cannot).
    Deliver,
    /// Refuse with 401, as a denying policy does.
    Deny,
}

/// The server side's stand-in for a pod: tunnels to 127.0.0.1:<port> reach loopback.
#[derive(Debug)]
pub struct LoopbackTunnels {
    pub identity: SpiffeId,
    pub answer: Mutex<Answer>,
    pub refusals: Mutex<Vec<String>>,
    pub carried: AtomicUsize,
    pub to_client: AtomicU64,
    pub from_client: AtomicU64,
}

impl LoopbackTunnels {
    pub fn refusals(&self) -> Vec<String> {
        self.refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Tunnels for LoopbackTunnels {
    fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    fn name(&self) -> String {
        "test/server".into()
    }

    fn target(&self, method: &http::Method, uri: &http::Uri) -> Result<SocketAddr, &'static str> {
        hbone::server::connect_target(method, uri, Ipv4Addr::LOCALHOST)
    }

    fn refused(&self, _peer: SocketAddr, _local: SocketAddr, reason: String) {
        self.refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reason);
    }

    async fn carry(self: Arc<Self>, tunnel: Inbound) {
        let Inbound {
            target,
            body,
            mut respond,
            ..
        } = tunnel;
        let answer = *self.answer.lock().unwrap_or_else(PoisonError::into_inner);
        if answer == Answer::Deny {
            reply(&mut respond, http::StatusCode::UNAUTHORIZED);
            return;
        }
        let Ok(app) = socket::connect(&Plain, target, Duration::from_secs(2)).await else {
            reply(&mut respond, http::StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let ok = http::Response::builder()
            .status(200)
            .body(())
            .expect("response");
        let Ok(send) = respond.send_response(ok, false) else {
            return;
        };
        self.carried.fetch_add(1, Ordering::Relaxed);
        let _ = hbone::stream::splice(app, send, body, &self.to_client, &self.from_client).await;
    }
}

/// An HBONE server on 127.0.0.1 with its CA, its drain trigger and its tunnel handler.
pub struct Mesh {
    pub dir: TempDir,
    pub certs: Arc<CertStore>,
    pub limits: Arc<Limits>,
    pub server: SocketAddr,
    pub tunnels: Arc<LoopbackTunnels>,
    pub trigger: Option<drain::Trigger>,
    pub client: SpiffeId,
}

impl Mesh {
    pub async fn start() -> Self {
        Self::with_lifetime(Duration::from_hours(1)).await
    }

    pub async fn with_lifetime(lifetime: Duration) -> Self {
        let dir = TempDir::new();
        let certs = store(&dir, lifetime);
        let limits = Arc::new(Limits::default());
        let (trigger, signal) = drain::channel();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let server = listener.local_addr().expect("address");
        let tunnels = Arc::new(LoopbackTunnels {
            identity: id("server"),
            answer: Mutex::new(Answer::Deliver),
            refusals: Mutex::default(),
            carried: AtomicUsize::new(0),
            to_client: AtomicU64::new(0),
            from_client: AtomicU64::new(0),
        });
        let shared = Server {
            certs: certs.clone(),
            limits: limits.clone(),
            drain: signal,
        };
        tokio::spawn(hbone::server::serve(listener, shared, tunnels.clone()));
        Self {
            dir,
            certs,
            limits,
            server,
            tunnels,
            trigger: Some(trigger),
            client: id("client"),
        }
    }

    pub fn pool(&self) -> Pool {
        Pool::new(self.certs.clone())
    }

    /// A pool that spreads concurrent streams over at most `spread` connections per peer.
    pub fn pool_spreading(&self, spread: usize) -> Pool {
        Pool::with_spread(self.certs.clone(), spread)
    }

    pub fn source(&self) -> Source<'_> {
        Source {
            name: "demo/client",
            identity: &self.client,
            ip: Ipv4Addr::LOCALHOST.into(),
            sockets: &Plain,
            carried: None,
            traceparent: None,
        }
    }

    /// Opens a tunnel to `target` through the pool, `early` riding with the CONNECT.
    pub async fn open(
        &self,
        pool: &Pool,
        target: SocketAddr,
        early: &'static [u8],
    ) -> Result<Tunnel, hbone::HboneError> {
        pool.open(
            self.source(),
            &self.tunnels.identity,
            self.server,
            target,
            Duration::from_secs(5),
            || Bytes::from_static(early),
        )
        .await
    }

    /// A raw HTTP/2 connection to the server with the client's SVID, for requests no pool
    /// would send.
    pub async fn raw_h2(&self) -> h2::client::SendRequest<Bytes> {
        self.certs
            .get_async(&self.client)
            .await
            .expect("client SVID");
        let config =
            weft_mesh::identity::client_config(&self.certs, &self.client, &self.tunnels.identity)
                .expect("client config");
        let tcp = TcpStream::connect(self.server).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(
                rustls::pki_types::ServerName::IpAddress(self.server.ip().into()),
                tcp,
            )
            .await
            .expect("TLS");
        let (send, connection) = h2::client::handshake(tls).await.expect("h2");
        tokio::spawn(connection);
        send
    }

    /// The status the server answers a request with.
    pub async fn status_of(&self, request: http::Request<()>) -> http::StatusCode {
        let mut send = self.raw_h2().await.ready().await.expect("ready");
        let (response, _stream) = send.send_request(request, false).expect("send");
        response.await.expect("response").status()
    }
}

/// A tunnel as a TCP stream: the returned stream's bytes go through the tunnel.
pub async fn as_stream(tunnel: Tunnel) -> TcpStream {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let near = TcpStream::connect(listener.local_addr().expect("address"))
        .await
        .expect("connect");
    let (far, _) = listener.accept().await.expect("accept");
    tokio::spawn(async move {
        let Tunnel { send, recv, slot } = tunnel;
        let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
        let _ = hbone::stream::splice(far, send, recv, &a, &b).await;
        drop(slot);
    });
    near
}

/// An application on loopback that echoes what it reads and closes its side after the
/// client's FIN: the target of most tunnels.
pub async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

/// Writes `bytes`, closes the write side, and reads until the peer closes.
pub async fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    stream.write_all(bytes).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the tunnel ended in time")
        .expect("read");
    out
}

/// A loopback address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    listener.local_addr().expect("address")
}
