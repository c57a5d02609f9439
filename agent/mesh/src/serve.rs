//! The one accept-and-serve loop every listener runs (capture, HBONE, admin, metrics,
//! readiness, the CA): accept errors pause and are counted (EMFILE never spins), every
//! connection is spawned holding the process's drain handle, and on the drain signal a
//! data-path listener stops accepting while what it accepted finishes. The bounded HTTP/1
//! server of the admin-style ports is built on it.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    drain,
    limits::{Http1Limits, Limits, HEADER_READ_TIMEOUT, MAX_REQUEST_HEAD, TLS_HANDSHAKE_TIMEOUT},
};

/// A hyper service the admin-style HTTP/1 ports can run: it never fails (errors are answers)
/// and its futures move between worker threads.
pub trait Http1Service<B>:
    hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, B> Http1Service<B> for S where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// A response body those services may answer with.
pub trait Http1Body:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> Http1Body for B where
    B: hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// What a listener does when the process starts draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrain {
    /// Stop accepting; each accepted connection holds the drain open until it ends. The data
    /// path (capture, HBONE) and the CA.
    Stop,
    /// Keep answering until the process exits, without holding the drain: readiness must say
    /// 503 to the kubelet while the rest drains, and metrics and the admin API show the drain.
    KeepServing,
}

/// How one listener is served.
#[derive(Debug, Clone)]
pub struct Serving {
    /// The `listener` label of its limit counters.
    pub name: &'static str,
    pub limits: Arc<Limits>,
    pub drain: drain::Signal,
    pub on_drain: OnDrain,
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

/// Accepts on `listener` until the drain (for [`OnDrain::Stop`]) and runs `handle` on its own
/// task for each connection, which holds the drain open until it ends.
pub async fn serve<H, F>(listener: TcpListener, serving: Serving, mut handle: H)
where
    H: FnMut(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    serve_some(listener, serving, move |stream, peer| {
        Some(handle(stream, peer))
    })
    .await;
}

/// Like [`serve`], but `handle` may refuse a connection at once (`None`, having dropped it):
/// a listener over its cap closes the socket in the accept loop, before any task exists, so a
/// flood holds no more descriptors than the cap.
pub async fn serve_some<H, F>(listener: TcpListener, serving: Serving, mut handle: H)
where
    H: FnMut(TcpStream, SocketAddr) -> Option<F>,
    F: Future<Output = ()> + Send + 'static,
{
    let stops = serving.on_drain == OnDrain::Stop;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, serving.name, &serving.limits) => accepted,
            () = serving.drain.signaled(), if stops => return,
        };
        let Some(connection) = handle(stream, peer) else {
            continue;
        };
        let held = stops.then(|| serving.drain.hold());
        tokio::spawn(async move {
            connection.await;
            drop(held);
        });
    }
}

/// Serves HTTP/1.1 on `listener` under `bounds`: at most `max_connections` at once (one more
/// is closed at once), TLS first when `tls` is given (within [`TLS_HANDSHAKE_TIMEOUT`]), one
/// request per connection, its head within [`HEADER_READ_TIMEOUT`] and at most
/// [`MAX_REQUEST_HEAD`] bytes, the whole connection within `connection_deadline`.
pub async fn serve_http1<S, B>(
    listener: TcpListener,
    bounds: Http1Limits,
    serving: Serving,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
) where
    S: Http1Service<B> + Clone,
    B: Http1Body,
{
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let limits = serving.limits.clone();
    serve_some(listener, serving, move |stream, peer| {
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
            return None;
        };
        let (service, limits, tls) = (service.clone(), limits.clone(), tls.clone());
        Some(async move {
            let served = serve_tls_or_plain(stream, peer, service, bounds, &limits, tls);
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
        })
    })
    .await;
}

async fn serve_tls_or_plain<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    bounds: Http1Limits,
    limits: &Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) where
    S: Http1Service<B>,
    B: Http1Body,
{
    match tls {
        None => serve_one(stream, service, bounds, limits, peer).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let tls = crate::hbone::closing::ClosingTls::from(tls);
                    serve_one(tls, service, bounds, limits, peer).await;
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
    S: Http1Service<B>,
    B: Http1Body,
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
