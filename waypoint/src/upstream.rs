//! Connections from the waypoint to backend endpoints, pooled: each is an HTTP/1.1 or HTTP/2
//! client connection (hyper) over an HBONE tunnel to the endpoint's agent, made under the
//! waypoint's identity, or over plain TCP to an endpoint outside the mesh. HTTP/1.1
//! connections go back to the pool when a response has been read; an HTTP/2 one is shared.
//! They are keyed by endpoint and original client address, because the tunnel's `forwarded`
//! header names the client.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_mesh::{
    hbone::{client::Pool, client::Source, io::TunnelIo},
    identity::SpiffeId,
    socket::Plain,
};

/// The body the waypoint sends upstream.
pub type UpstreamBody = BoxBody<Bytes, hyper::Error>;

/// Idle HTTP/1.1 connections kept per key; more are closed when they come back.
pub const MAX_IDLE_PER_KEY: usize = 16;
/// Keys (endpoint and client address) tracked; past it the idle connections are dropped.
pub const MAX_KEYS: usize = 4_096;
/// How long opening a connection to an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("HBONE tunnel to {endpoint}: {source}")]
    Tunnel {
        endpoint: SocketAddr,
        #[source]
        source: weft_mesh::hbone::HboneError,
    },
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP with {endpoint}: {source}")]
    Http {
        endpoint: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("no connection to {endpoint} within {CONNECT_TIMEOUT:?}")]
    TimedOut { endpoint: SocketAddr },
}

/// Where a request goes and as whom the waypoint gets there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub endpoint: SocketAddr,
    pub client: IpAddr,
    pub http2: bool,
    /// The client's identity, carried to the endpoint's agent in `baggage`.
    pub carried: Option<SpiffeId>,
}

enum Sender {
    One(http1::SendRequest<UpstreamBody>),
    Shared(http2::SendRequest<UpstreamBody>),
}

/// A connection checked out for one request.
pub struct Checked {
    sender: Sender,
    key: Key,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The waypoint's upstream connections.
#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<Key, Vec<http1::SendRequest<UpstreamBody>>>>,
    shared: Mutex<HashMap<Key, http2::SendRequest<UpstreamBody>>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

impl Upstreams {
    /// A connection for `key`: a pooled one that is still open, else a new one through
    /// `pool` (an HBONE tunnel when `identity` is the endpoint's) or plain TCP.
    pub async fn checkout(
        &self,
        pool: &Pool,
        waypoint: &SpiffeId,
        identity: Option<&SpiffeId>,
        key: Key,
    ) -> Result<Checked, UpstreamError> {
        if key.http2 {
            let reused = self
                .shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .filter(|s| !s.is_closed())
                .cloned();
            if let Some(sender) = reused {
                return Ok(Checked {
                    sender: Sender::Shared(sender),
                    key,
                });
            }
        } else {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(list) = idle.get_mut(&key) {
                // A connection whose last response body is still streaming is not ready yet;
                // it stays for a later request.
                list.retain(|s| !s.is_closed());
                if let Some(at) = list.iter().position(http1::SendRequest::is_ready) {
                    return Ok(Checked {
                        sender: Sender::One(list.swap_remove(at)),
                        key,
                    });
                }
            }
        }
        let opened = self.open(pool, waypoint, identity, &key).await?;
        if let Sender::Shared(sender) = &opened {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            if shared.len() >= MAX_KEYS {
                shared.clear();
            }
            shared.insert(key.clone(), sender.clone());
        }
        Ok(Checked {
            sender: opened,
            key,
        })
    }

    async fn open(
        &self,
        pool: &Pool,
        waypoint: &SpiffeId,
        identity: Option<&SpiffeId>,
        key: &Key,
    ) -> Result<Sender, UpstreamError> {
        let endpoint = key.endpoint;
        let http = |source| UpstreamError::Http { endpoint, source };
        let io = TokioIo::new(connect(pool, waypoint, identity, key).await?);
        if key.http2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(http)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Sender::Shared(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await.map_err(http)?;
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            Ok(Sender::One(sender))
        }
    }

    /// Sends `request` on `checked` and, for HTTP/1.1, gives the connection back once the
    /// response head has arrived (hyper queues the next request behind this body).
    pub async fn send(
        &self,
        checked: Checked,
        request: http::Request<UpstreamBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        let endpoint = checked.key.endpoint;
        let http = |source| UpstreamError::Http { endpoint, source };
        match checked.sender {
            Sender::Shared(mut sender) => sender.send_request(request).await.map_err(http),
            Sender::One(mut sender) => {
                let response = sender.send_request(request).await.map_err(http)?;
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() >= MAX_KEYS && !idle.contains_key(&checked.key) {
                    idle.clear();
                }
                let list = idle.entry(checked.key).or_default();
                if list.len() < MAX_IDLE_PER_KEY {
                    list.push(sender);
                }
                Ok(response)
            }
        }
    }
}

/// A byte stream to one endpoint: an HBONE tunnel through its agent (holding its pool slot
/// for as long as it lives), or plain TCP to an endpoint outside the mesh.
#[derive(Debug)]
pub enum UpstreamIo {
    Tunnel {
        io: TunnelIo,
        _slot: weft_mesh::hbone::client::StreamSlot,
    },
    Tcp(tokio::net::TcpStream),
}

/// Opens a byte stream to `key.endpoint` on behalf of `key.client`: through the endpoint's
/// agent under the waypoint's identity when `identity` is the endpoint's, else plain TCP.
pub async fn connect(
    pool: &Pool,
    waypoint: &SpiffeId,
    identity: Option<&SpiffeId>,
    key: &Key,
) -> Result<UpstreamIo, UpstreamError> {
    let endpoint = key.endpoint;
    let opening = async {
        if let Some(identity) = identity {
            let source = Source {
                name: "waypoint",
                identity: waypoint,
                ip: key.client,
                sockets: &Plain,
                carried: key.carried.as_ref(),
                traceparent: None,
            };
            let hbone = SocketAddr::new(endpoint.ip(), weft_mesh::ports::HBONE_PORT);
            let tunnel = pool
                .open(
                    source,
                    identity,
                    hbone,
                    endpoint,
                    CONNECT_TIMEOUT,
                    Bytes::new,
                )
                .await
                .map_err(|source| UpstreamError::Tunnel { endpoint, source })?;
            let weft_mesh::hbone::client::Tunnel { send, recv, slot } = tunnel;
            Ok(UpstreamIo::Tunnel {
                io: TunnelIo::new(send, recv),
                _slot: slot,
            })
        } else {
            weft_mesh::socket::connect(&Plain, endpoint, CONNECT_TIMEOUT)
                .await
                .map(UpstreamIo::Tcp)
                .map_err(|source| UpstreamError::Connect { endpoint, source })
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, opening)
        .await
        .map_err(|_| UpstreamError::TimedOut { endpoint })?
}

impl tokio::io::AsyncRead for UpstreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tunnel { io, .. } => std::pin::Pin::new(io).poll_read(cx, buf),
            Self::Tcp(tcp) => std::pin::Pin::new(tcp).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tunnel { io, .. } => std::pin::Pin::new(io).poll_write(cx, buf),
            Self::Tcp(tcp) => std::pin::Pin::new(tcp).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tunnel { io, .. } => std::pin::Pin::new(io).poll_flush(cx),
            Self::Tcp(tcp) => std::pin::Pin::new(tcp).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tunnel { io, .. } => std::pin::Pin::new(io).poll_shutdown(cx),
            Self::Tcp(tcp) => std::pin::Pin::new(tcp).poll_shutdown(cx),
        }
    }
}

/// The key for a request to `endpoint` on behalf of `client` (address and identity).
pub fn key(endpoint: SocketAddr, (client, carried): (IpAddr, &SpiffeId), http2: bool) -> Key {
    Key {
        endpoint,
        client,
        http2,
        carried: Some(carried.clone()),
    }
}

/// Shared by every tunnel.
pub type SharedUpstreams = Arc<Upstreams>;
