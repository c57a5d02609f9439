//! The plumbing of the admin-style ports (admin API, metrics, readiness) both binaries serve:
//! binding, bounded HTTP/1 serving, JSON and streamed replies, request classification, and the
//! run-time log filter. Each binary keeps its own routes.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::flows::{FlowFilter, Flows};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr}: {source} (is another program listening there?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds an admin-style listener, naming the address when it is taken. The port is shared
/// (`SO_REUSEPORT`, same user only) so that during an upgrade the new agent can listen beside
/// the old one, which closes its own once it sees it is superseded: the port is handed over
/// without a moment in which nothing answers.
#[expect(
    clippy::unused_async,
    reason = "callers bind on the runtime; binding itself does not wait"
)]
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    let bound = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    bound().map_err(|source| AdminError::Bind { addr, source })
}

/// What a handler answers: a whole body, or a stream of lines (`/flows?follow`).
#[derive(Debug)]
pub enum Reply {
    Whole(StatusCode, &'static str, String),
    Lines(mpsc::Receiver<Bytes>),
}

pub fn json_reply((status, value): (StatusCode, serde_json::Value)) -> Reply {
    Reply::Whole(status, "application/json", value.to_string())
}

pub type ResponseBody = BoxBody<Bytes, Infallible>;

pub fn respond(reply: Reply) -> Response<ResponseBody> {
    match reply {
        Reply::Whole(status, content_type, body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
            *response.status_mut() = status;
            response.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static(content_type),
            );
            response
        }
        Reply::Lines(lines) => {
            let stream = tokio_stream::wrappers::ReceiverStream::new(lines)
                .map(|line| Ok::<_, Infallible>(Frame::data(line)));
            let mut response = Response::new(StreamBody::new(stream).boxed());
            response.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
    }
}

/// Serves one HTTP/1 admin-style port under `bounds`, answering with `handler`.
pub async fn serve<F>(
    listener: TcpListener,
    bounds: crate::limits::Http1Limits,
    serving: crate::serve::Serving,
    handler: Arc<F>,
) where
    F: Fn(&http::Method, &str, Option<&str>) -> Reply + Send + Sync + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let reply = handler(req.method(), req.uri().path(), req.uri().query());
        async move { Ok::<_, Infallible>(respond(reply)) }
    });
    crate::serve::serve_http1(listener, bounds, serving, None, service).await;
}

/// `?key=value` from a query string.
pub fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// Streams the kept flows `filter` selects, then new ones, as JSON lines until the client goes
/// away.
pub fn follow_flows(flows: &Flows, filter: FlowFilter) -> Reply {
    follow_lines(flows, move |flow| filter.matches(flow))
}

/// Streams the kept records of `ring` that `matches`, then each new one, as JSON lines until
/// the client goes away. It subscribes before it reads the kept ones, so nothing recorded in
/// between is missed (a record may then come twice, never not at all); a follower that falls
/// behind gets a `{"event":"lagged"}` line instead of what it missed.
pub fn follow_lines<T>(
    ring: &crate::ring::Ring<T>,
    matches: impl Fn(&T) -> bool + Send + 'static,
) -> Reply
where
    T: serde::Serialize + Clone + Send + 'static,
{
    let (tx, rx) = mpsc::channel(256);
    let mut live = ring.follow();
    let backlog: Vec<T> = ring.recent().into_iter().filter(|r| matches(r)).collect();
    let as_line = |record: &T| Bytes::from(format!("{}\n", json!(record)));
    tokio::spawn(async move {
        for record in backlog {
            if tx.send(as_line(&record)).await.is_err() {
                return;
            }
        }
        loop {
            // A follower whose filter matches nothing still ends when its client goes away.
            let received = tokio::select! {
                () = tx.closed() => return,
                received = live.recv() => received,
            };
            match received {
                Ok(record) if !matches(&record) => {}
                Ok(record) => {
                    if tx.send(as_line(&record)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                    let note = json!({"event": "lagged", "skipped": skipped});
                    if tx.send(Bytes::from(format!("{note}\n"))).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Reply::Lines(rx)
}

/// Sets the log filter from its text form (`POST /logging?level=debug` or any EnvFilter
/// text). `main` makes it beside the subscriber and hands it down; a process started without a
/// reloadable filter has none.
pub struct SetLogFilter(Box<FilterSetter>);

type FilterSetter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl SetLogFilter {
    pub fn new(set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Box::new(set))
    }
}

impl SetLogFilter {
    /// Installs the process's subscriber: stdout, JSON lines when `json`, filtered by
    /// `RUST_LOG` (default `info`), and returns the setter `POST /logging` changes it with.
    /// Both binaries' `main` call it once.
    pub fn init(json: bool) -> Self {
        use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        if json {
            registry
                .with(tracing_subscriber::fmt::layer().json())
                .init();
        } else {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            registry
                .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
                .init();
        }
        Self::new(move |text: &str| {
            let filter = tracing_subscriber::EnvFilter::try_new(text)
                .map_err(|e| format!("bad filter {text:?}: {e}"))?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
}

impl std::fmt::Debug for SetLogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetLogFilter")
    }
}

/// Changes the log filter at run time through `filter`.
pub fn set_log_level(
    filter: Option<&SetLogFilter>,
    level: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let Some(level) = level else {
        return (
            StatusCode::BAD_REQUEST,
            json!({"error": "give ?level=<filter>, e.g. ?level=debug or ?level=info,weft_agent=trace"}),
        );
    };
    match filter.map(|set| (set.0)(level)) {
        Some(Ok(())) => (StatusCode::OK, json!({"level": level})),
        Some(Err(e)) => (StatusCode::BAD_REQUEST, json!({"error": e})),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "this agent was started without a reloadable log filter"}),
        ),
    }
}

/// What an admin request asks for, decided from its method, path and query alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `GET /flows` with its query, selected (and followed) by the server.
    Flows(Option<&'a str>),
    SetLogLevel(Option<&'a str>),
    Get(&'a str),
    NotAllowed,
}

/// Classifies an admin request; nothing in it can fail or panic, whatever a client sends.
pub fn endpoint<'a>(method: &http::Method, path: &'a str, query: Option<&'a str>) -> Endpoint<'a> {
    match (method, path) {
        (&http::Method::GET, "/flows") => Endpoint::Flows(query),
        (&http::Method::POST, "/logging") => Endpoint::SetLogLevel(query_value(query, "level")),
        (&http::Method::GET, _) => Endpoint::Get(path),
        _ => Endpoint::NotAllowed,
    }
}

/// Answers `GET /flows?…`: the kept flows the query selects as one JSON array, or, with
/// `follow`, a stream of JSON lines. A query it cannot read is refused with 400 and the valid
/// values.
pub fn flows_reply(flows: &Flows, query: Option<&str>, now_unix_ms: u64) -> Reply {
    match FlowFilter::parse(query, now_unix_ms) {
        Ok(filter) if filter.query.follow => follow_flows(flows, filter),
        Ok(filter) => json_reply((StatusCode::OK, json!(filter.apply(flows.recent())))),
        Err(e) => json_reply((
            StatusCode::BAD_REQUEST,
            json!(weft_api::ErrorBody {
                error: e.to_string(),
                valid: e.valid(),
            }),
        )),
    }
}
