//! The HBONE client: a pool of HTTP/2 connections per (source pod, source identity,
//! destination identity, destination address), each carrying up to [`MAX_STREAMS`] tunnels.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use bytes::Bytes;
use h2::{client::SendRequest, RecvStream, SendStream};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{
    HboneError, CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE, MAX_STREAMS, STREAM_WINDOW,
};
use crate::{
    identity::{self, CertStore, SpiffeId},
    socket::SocketFactory,
};

/// Who opens a tunnel: the source workload (its name keys the pool), its identity, its
/// address (sent as `forwarded: for=`) and where its sockets come from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub name: &'a str,
    pub identity: &'a SpiffeId,
    pub ip: std::net::IpAddr,
    pub sockets: &'a dyn SocketFactory,
    /// A waypoint tunnelling on a client's behalf: that client's identity, sent as
    /// `baggage: source.principal=<id>` for the destination's records.
    pub carried: Option<&'a SpiffeId>,
    /// The connection's span as a `traceparent`, sent with the CONNECT so the destination's
    /// span is its child.
    pub traceparent: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    source_pod: String,
    source: SpiffeId,
    destination: SpiffeId,
    address: SocketAddr,
}

#[derive(Debug)]
struct Connection {
    send: SendRequest<Bytes>,
    /// Serial of the client SVID this connection's TLS session was made with.
    serial: String,
    streams: AtomicUsize,
    closed: Arc<AtomicBool>,
}

/// An open tunnel stream. Keep `slot` alive while the stream is in use: it counts against
/// its connection's streams.
#[derive(Debug)]
pub struct Tunnel {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub slot: StreamSlot,
}

#[derive(Debug)]
pub struct Pool {
    certs: Arc<CertStore>,
    connections: Mutex<HashMap<PoolKey, Vec<Arc<Connection>>>>,
    /// One opener per key at a time: tunnels that find no connection while one is being set
    /// up wait for it instead of each opening their own (a burst of N first connections to a
    /// peer made N TLS handshakes and N HTTP/2 connections).
    opening: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    /// HTTP/2 connections this pool has opened.
    pub opened: AtomicU64,
    /// Dials refused by the peer and tried again.
    refusals_retried: AtomicU64,
    /// Most connections per key that concurrent streams are spread over.
    spread: usize,
}

/// Connections per key that concurrent streams are spread over before they share. One
/// HTTP/2 connection is one task on one core and one TLS session: parallel bulk streams on it
/// queue behind each other's records. A new tunnel that finds every pooled connection already
/// carrying a stream opens another, up to this many; past it, tunnels go to the least loaded.
/// Four covers the agent's workers on most nodes and costs a few TLS sessions per peer pair.
pub const SPREAD_CONNECTIONS: usize = 4;

/// How long a dial the peer refused waits before trying again. A peer agent refuses for the
/// moment it restarts (its pod's port 15008 has no listener yet): a tunnel opened then waits
/// for it, within the connect timeout, as a plain client waits out a dropped SYN.
pub const REFUSED_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Pool sizes for the admin API.
pub type PoolStats = weft_api::PoolStats;

impl Pool {
    pub fn new(certs: Arc<CertStore>) -> Self {
        Self::with_spread(certs, SPREAD_CONNECTIONS)
    }

    /// A pool that spreads concurrent streams over at most `spread` connections per key
    /// (at least one).
    pub fn with_spread(certs: Arc<CertStore>, spread: usize) -> Self {
        Self {
            certs,
            connections: Mutex::default(),
            opening: Mutex::default(),
            opened: AtomicU64::new(0),
            refusals_retried: AtomicU64::new(0),
            spread: spread.max(1),
        }
    }

    /// Keys with an opener at work or waiting (0 once every open has ended, however).
    pub fn openers(&self) -> usize {
        self.opening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn stats(&self) -> PoolStats {
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let live = connections
            .values()
            .flatten()
            .filter(|c| !c.closed.load(Ordering::Relaxed));
        let (mut open, mut streams) = (0, 0);
        for connection in live {
            open += 1;
            streams += connection.streams.load(Ordering::Relaxed);
        }
        PoolStats {
            connections_opened: self.opened.load(Ordering::Relaxed),
            connections_open: open,
            streams_open: streams,
            connect_refusals_retried: self.refusals_retried.load(Ordering::Relaxed),
        }
    }

    /// Opens a tunnel from `pod` to `target` (the original destination, pod IP:port) through
    /// the HBONE listener at `address`, which must present `destination`. What `early` returns
    /// (the bytes the client has already sent) follows the `CONNECT` at once instead of after
    /// its `200`: the destination agent holds them in the stream until it has authorized and
    /// connected, and a client that speaks first saves a round trip per connection.
    pub async fn open(
        &self,
        pod: Source<'_>,
        destination: &SpiffeId,
        address: SocketAddr,
        target: SocketAddr,
        connect_timeout: std::time::Duration,
        early: impl FnOnce() -> Bytes,
    ) -> Result<Tunnel, HboneError> {
        let key = PoolKey {
            source_pod: pod.name.to_owned(),
            source: pod.identity.clone(),
            destination: destination.clone(),
            address,
        };
        // A connection made with an SVID that has since been renewed takes no new streams: new
        // tunnels use the new certificate, open ones finish on the old connection.
        let serial = self.certs.get_async(&key.source).await?.serial.clone();
        // A pooled connection the destination has just closed (GOAWAY after its idle timeout)
        // may still look open here: a request it refuses before any byte of this tunnel was
        // sent is tried once more on a new connection, so the client never sees the race.
        let (slot, response, mut stream) =
            match self.request_pooled(pod, &key, &serial, target).await {
                Pooled::Opened(opened) => opened,
                Pooled::Crowded(slot) => {
                    self.spread_or_share(pod, &key, serial, target, connect_timeout, slot)
                        .await?
                }
                Pooled::Refused => {
                    self.request_on_new(pod, &key, serial, target, connect_timeout)
                        .await?
                }
                Pooled::NoneFree => {
                    self.request_after_others(pod, &key, serial, target, connect_timeout)
                        .await?
                }
            };
        let early = early();
        if !early.is_empty() {
            stream.send_data(early, false)?;
        }
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        Ok(Tunnel {
            send: stream,
            recv: response.into_body(),
            slot,
        })
    }

    /// Sends the CONNECT on `connection`, without waiting for its answer.
    async fn request(
        connection: &Connection,
        pod: Source<'_>,
        target: SocketAddr,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), HboneError> {
        let mut send = connection.send.clone().ready().await?;
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(target.to_string())
            .header("forwarded", format!("for={}", pod.ip));
        if let Some(carried) = pod.carried {
            request = request.header(
                "baggage",
                format!("{}={carried}", crate::hbone::server::CARRIED_IDENTITY_KEY),
            );
        }
        if let Some(traceparent) = pod.traceparent {
            request = request.header("traceparent", traceparent);
        }
        let request = request
            .body(())
            .map_err(|e| HboneError::Authority(e.to_string()))?;
        Ok(send.send_request(request, false)?)
    }

    /// Sends the CONNECT on the least loaded pooled connection with room, if there is one,
    /// unless every one already carries a stream and the key may have another
    /// ([`Pooled::Crowded`]). One that refuses the stream (the GOAWAY race `open` describes) is
    /// marked closed and its slot given back.
    async fn request_pooled(
        &self,
        pod: Source<'_>,
        key: &PoolKey,
        serial: &str,
        target: SocketAddr,
    ) -> Pooled {
        let Some((connection, crowded)) = self.checkout(key, serial) else {
            return Pooled::NoneFree;
        };
        // The slot is taken at checkout: dropped on failure, it is given back.
        let slot = StreamSlot(connection);
        if crowded {
            return Pooled::Crowded(slot);
        }
        Self::request_on_slot(pod, key, target, slot).await
    }

    async fn request_on_slot(
        pod: Source<'_>,
        key: &PoolKey,
        target: SocketAddr,
        slot: StreamSlot,
    ) -> Pooled {
        match Self::request(&slot.0, pod, target).await {
            Ok((response, stream)) => Pooled::Opened((slot, response, stream)),
            Err(e) => {
                tracing::debug!(address = %key.address, error = %e, "pooled HBONE connection refused a stream; opening a new one");
                slot.0.closed.store(true, Ordering::Relaxed);
                Pooled::Refused
            }
        }
    }

    /// With no connection to reuse: waits (within `connect_timeout`) for any opener of the
    /// same key ahead of it, takes the connection that one made if it has room, and opens one
    /// itself otherwise.
    async fn request_after_others(
        &self,
        pod: Source<'_>,
        key: &PoolKey,
        serial: String,
        target: SocketAddr,
        connect_timeout: std::time::Duration,
    ) -> Result<Opened, HboneError> {
        let gate = OpenerGate::join(self, key);
        let started = tokio::time::Instant::now();
        let _turn = tokio::time::timeout(connect_timeout, gate.gate.lock())
            .await
            .map_err(|_| HboneError::TimedOut)?;
        // Whoever held the gate just made a connection: share it rather than spread again.
        let pooled = match self.request_pooled(pod, key, &serial, target).await {
            Pooled::Crowded(slot) => Self::request_on_slot(pod, key, target, slot).await,
            pooled => pooled,
        };
        if let Pooled::Opened(opened) = pooled {
            return Ok(opened);
        }
        let left = connect_timeout.saturating_sub(started.elapsed());
        self.request_on_new(pod, key, serial, target, left).await
    }

    /// Every pooled connection carries a stream and the key may have another: opens one unless
    /// an opener for the key is already at work, and shares `slot`'s connection otherwise, or if
    /// the new one cannot be opened (the tunnel then does not fail for want of a spare).
    async fn spread_or_share(
        &self,
        pod: Source<'_>,
        key: &PoolKey,
        serial: String,
        target: SocketAddr,
        connect_timeout: std::time::Duration,
        slot: StreamSlot,
    ) -> Result<Opened, HboneError> {
        let gate = OpenerGate::join(self, key);
        if let Ok(_turn) = gate.gate.try_lock() {
            match self
                .request_on_new(pod, key, serial.clone(), target, connect_timeout)
                .await
            {
                Ok(opened) => return Ok(opened),
                Err(e) => {
                    tracing::debug!(address = %key.address, error = %e, "could not open another HBONE connection; sharing a pooled one");
                }
            }
        }
        match Self::request_on_slot(pod, key, target, slot).await {
            Pooled::Opened(opened) => Ok(opened),
            _ => {
                self.request_on_new(pod, key, serial, target, connect_timeout)
                    .await
            }
        }
    }

    /// Opens a new pooled connection for `key` and sends the CONNECT on it.
    async fn request_on_new(
        &self,
        pod: Source<'_>,
        key: &PoolKey,
        serial: String,
        target: SocketAddr,
        connect_timeout: std::time::Duration,
    ) -> Result<Opened, HboneError> {
        let connection = Arc::new(self.connect(pod, key, serial, connect_timeout).await?);
        connection.streams.fetch_add(1, Ordering::Relaxed);
        {
            let mut connections = self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = connections.entry(key.clone()).or_default();
            entry.retain(|c| !c.closed.load(Ordering::Relaxed));
            entry.push(connection.clone());
        }
        let slot = StreamSlot(connection.clone());
        let (response, stream) = Self::request(&connection, pod, target).await?;
        Ok((slot, response, stream))
    }

    /// Takes a stream slot on the least loaded connection of `key` made with `serial` and
    /// with room. `true` beside it: that connection already carried a stream and the key has
    /// fewer than `spread` connections, so another may be opened.
    fn checkout(&self, key: &PoolKey, serial: &str) -> Option<(Arc<Connection>, bool)> {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let list = connections.get_mut(key)?;
        list.retain(|c| !c.closed.load(Ordering::Relaxed));
        let current = list.iter().filter(|c| c.serial == serial);
        let connection = current
            .clone()
            .filter(|c| c.streams.load(Ordering::Relaxed) < MAX_STREAMS as usize)
            .min_by_key(|c| c.streams.load(Ordering::Relaxed))?
            .clone();
        let carried = connection.streams.fetch_add(1, Ordering::Relaxed);
        let crowded = carried > 0 && current.count() < self.spread;
        Some((connection, crowded))
    }

    /// Connects to `address`, trying again after [`REFUSED_RETRY_PAUSE`] while it refuses,
    /// until `timeout` has passed.
    async fn dial(
        &self,
        sockets: &dyn crate::socket::SocketFactory,
        address: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match crate::socket::connect(sockets, address, left).await {
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && left > REFUSED_RETRY_PAUSE =>
                {
                    self.refusals_retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(REFUSED_RETRY_PAUSE).await;
                }
                dialed => return dialed,
            }
        }
    }

    async fn connect(
        &self,
        pod: Source<'_>,
        key: &PoolKey,
        serial: String,
        connect_timeout: std::time::Duration,
    ) -> Result<Connection, HboneError> {
        let config = identity::client_config(&self.certs, &key.source, &key.destination)?;
        let tcp = self
            .dial(pod.sockets, key.address, connect_timeout)
            .await
            .map_err(|source| HboneError::Connect {
                addr: key.address,
                source,
            })?;
        let name = ServerName::IpAddress(key.address.ip().into());
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))
        .and_then(|r| r)
        .map_err(|source| HboneError::Tls {
            addr: key.address,
            source,
        })?;
        let tls = super::closing::ClosingTls::from(tls);
        let (send, driver) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(crate::limits::HBONE_MAX_HEADER_LIST)
            .handshake(tls)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let address = key.address;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(%address, error = %e, "HBONE connection ended");
            }
            flag.store(true, Ordering::Relaxed);
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%address, source = %key.source, destination = %key.destination, "HBONE connection opened");
        Ok(Connection {
            send,
            streams: AtomicUsize::new(0),
            closed,
            serial,
        })
    }
}

/// A CONNECT sent on a pooled connection: its stream slot, the answer to await, the stream.
type Opened = (
    StreamSlot,
    h2::client::ResponseFuture,
    h2::SendStream<Bytes>,
);

/// What trying the pool's open connections gave.
enum Pooled {
    Opened(Opened),
    /// None with room for this key and SVID.
    NoneFree,
    /// The least loaded has room but carries a stream, and the key may have another
    /// connection: the slot is taken on it, the CONNECT not yet sent.
    Crowded(StreamSlot),
    /// One had room but refused the stream: it is marked closed.
    Refused,
}

/// A place among the openers of one pool key. Dropped (the tunnel opened, failed, or its
/// caller gave up on a timeout), the last one out removes the key's gate, so gates never
/// outlive their openers whichever way an open ends.
struct OpenerGate<'p> {
    pool: &'p Pool,
    key: PoolKey,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'p> OpenerGate<'p> {
    fn join(pool: &'p Pool, key: &PoolKey) -> Self {
        let gate = pool
            .opening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        Self {
            pool,
            key: key.clone(),
            gate,
        }
    }
}

impl Drop for OpenerGate<'_> {
    fn drop(&mut self) {
        let mut opening = self
            .pool
            .opening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The map's and ours: no other opener holds or waits on it.
        if Arc::strong_count(&self.gate) == 2 {
            opening.remove(&self.key);
        }
    }
}

/// One stream's place on a pooled connection, given back when dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<Connection>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}
