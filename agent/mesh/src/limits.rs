//! The limits every listener of the agent (and of its CA) runs under, the counter and the
//! rate-limited log line each one gets when it is hit, and the one accept/serve helper for the
//! HTTP/1 ports. ARCHITECTURE.md's limits table lists the same numbers with their reasons.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::{net::TcpListener, sync::Semaphore};

/// TLS handshake, HBONE (15008) and CA (15012): a peer that does not finish it in time is cut.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HBONE: the largest HTTP/2 header list (decoded) a peer may send; a CONNECT needs well under
/// 1 KiB, Istio's ztunnel sends about 300 bytes.
pub const HBONE_MAX_HEADER_LIST: u32 = 16 * 1024;
/// HBONE: a connection must have opened its first stream (a whole header block) this long
/// after its handshake; until then it is cut. h2 yields a stream only once its header block is
/// complete, so a peer that never ends one is cut by this deadline.
pub const HBONE_FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// HBONE: a connection with no open stream for this long is closed with GOAWAY. Above the
/// client pool's own idle release, so pooled connections are not cut under a client.
pub const HBONE_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_mins(15);
/// After GOAWAY, what is still open may finish for this long before the connection is dropped.
pub const HBONE_GOAWAY_GRACE: Duration = Duration::from_secs(5);
/// A proxied connection (captured TCP or HBONE stream) with no byte either way for this long
/// is closed, as Istio closes idle TCP after an hour.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_hours(1);
/// HTTP/1 ports (admin, metrics, readiness, CA): the request head must arrive in this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/1 ports: the largest request head hyper buffers.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How one HTTP/1 listener is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Http1Limits {
    pub listener: &'static str,
    /// Connections served at once; one more is accepted and closed at once, and counted.
    pub max_connections: usize,
    /// The whole connection (one request: keep-alive is off); `None` for streaming answers.
    pub connection_deadline: Option<Duration>,
}

/// Admin API (127.0.0.1:15000): weftctl and tests; `/flows?follow` streams without end.
pub const ADMIN: Http1Limits = Http1Limits {
    listener: "admin",
    max_connections: 64,
    connection_deadline: None,
};
/// Metrics (15020): a scrape of a large node encodes in well under a second.
pub const METRICS: Http1Limits = Http1Limits {
    listener: "metrics",
    max_connections: 16,
    connection_deadline: Some(Duration::from_secs(30)),
};
/// Readiness (15021): the kubelet probes once every few seconds.
pub const READINESS: Http1Limits = Http1Limits {
    listener: "readiness",
    max_connections: 64,
    connection_deadline: Some(Duration::from_secs(10)),
};
/// CA (15012): one CSR per identity and renewal; agents of a large cluster renewing together.
pub const CA: Http1Limits = Http1Limits {
    listener: "ca",
    max_connections: 256,
    connection_deadline: Some(Duration::from_secs(30)),
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub listener: &'static str,
    pub limit: &'static str,
}

/// Counts each limit hit and logs it at most once a second per listener and limit.
#[derive(Debug, Default)]
pub struct Limits {
    pub hits: Family<LimitLabels, Counter>,
    totals: Mutex<HashMap<(&'static str, &'static str), u64>>,
    last_logged: Mutex<HashMap<(&'static str, &'static str), Instant>>,
}

/// One limit's count, for `/stats`.
pub type LimitHit = weft_api::LimitHit;

impl Limits {
    pub fn hit(&self, listener: &'static str, limit: &'static str, detail: &dyn std::fmt::Display) {
        self.hits
            .get_or_create(&LimitLabels { listener, limit })
            .inc();
        let count = {
            let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
            let count = totals.entry((listener, limit)).or_default();
            *count += 1;
            *count
        };
        let now = Instant::now();
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = last
            .get(&(listener, limit))
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(1));
        if due {
            last.insert((listener, limit), now);
            tracing::warn!(listener, limit, hits = count, %detail, "limit hit (logged at most once a second per limit)");
        }
    }

    pub fn snapshot(&self) -> Vec<LimitHit> {
        let totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let mut hits: Vec<LimitHit> = totals
            .iter()
            .map(|(&(listener, limit), &hits)| LimitHit {
                listener: listener.to_owned(),
                limit: limit.to_owned(),
                hits,
            })
            .collect();
        hits.sort_by(|a, b| (&a.listener, &a.limit).cmp(&(&b.listener, &b.limit)));
        hits
    }
}

/// How long accept waits after an error (EMFILE, ENFILE, ENOBUFS) before trying again: the
/// error would come straight back, and retrying at once would spin a core.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts the next connection, pausing and counting on errors, never spinning.
pub async fn accept(
    listener: &TcpListener,
    name: &'static str,
    limits: &Limits,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                limits.hit(name, "accept_error", &e);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Serves HTTP/1.1 on `listener` under `bounds`: at most `max_connections` at once (one more
/// is closed at once), TLS first when `tls` is given (within [`TLS_HANDSHAKE_TIMEOUT`]), one
/// request per connection, its head within [`HEADER_READ_TIMEOUT`] and at most
/// [`MAX_REQUEST_HEAD`] bytes, the whole connection within `connection_deadline`.
pub async fn serve_http1<S, B>(
    listener: TcpListener,
    bounds: Http1Limits,
    limits: Arc<Limits>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    loop {
        let (stream, peer) = accept(&listener, bounds.listener, &limits).await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            limits.hit(
                bounds.listener,
                "max_connections",
                &format_args!(
                    "{peer} closed at once: {} connections already open",
                    bounds.max_connections
                ),
            );
            drop(stream);
            continue;
        };
        let (service, limits, tls) = (service.clone(), limits.clone(), tls.clone());
        tokio::spawn(async move {
            let served = async {
                match tls {
                    None => serve_one(stream, service, bounds, &limits, peer).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let tls = crate::hbone::closing::ClosingTls::from(tls);
                                serve_one(tls, service, bounds, &limits, peer).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            }
                            Err(_) => limits.hit(
                                bounds.listener,
                                "tls_handshake_timeout",
                                &format_args!("{peer} cut after {TLS_HANDSHAKE_TIMEOUT:?}"),
                            ),
                        }
                    }
                }
            };
            match bounds.connection_deadline {
                Some(deadline) => {
                    if tokio::time::timeout(deadline, served).await.is_err() {
                        limits.hit(
                            bounds.listener,
                            "connection_deadline",
                            &format_args!("{peer} cut after {deadline:?}"),
                        );
                    }
                }
                None => served.await,
            }
            drop(permit);
        });
    }
}

/// One request on one connection, its head bounded in time and size.
async fn serve_one<IO, S, B>(
    io: IO,
    service: S,
    bounds: Http1Limits,
    limits: &Limits,
    peer: SocketAddr,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(false);
    // A head that is late or too large ends the connection with an error hyper has answered
    // (408 or 431) where it could; both are limits, and counted.
    if let Err(e) = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
    {
        if e.is_timeout() {
            limits.hit(
                bounds.listener,
                "header_read_timeout",
                &format_args!("{peer}: {e}"),
            );
        } else if e.is_parse_too_large() {
            limits.hit(
                bounds.listener,
                "request_head_too_large",
                &format_args!("{peer}: {e}"),
            );
        }
    }
}

/// Completes once neither counter has moved for `idle`: a proxied connection that carries
/// nothing for that long is closed. Checked at a quarter of `idle`, so it ends between 1 and
/// 1.25 times `idle` after the last byte.
pub async fn idle(counters: [&AtomicU64; 2], idle: Duration) {
    let tick = idle / 4;
    let moved = || {
        counters[0]
            .load(Ordering::Relaxed)
            .wrapping_add(counters[1].load(Ordering::Relaxed))
    };
    let mut seen = moved();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = moved();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= idle {
            return;
        }
    }
}
