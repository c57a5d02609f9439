//! The playground's echo server: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, answering
//! with the peer address it saw, its own name, the request's headers and how many body bytes
//! it read (after `x-delay-ms` milliseconds when the request asks). `GET /bytes/<n>` streams
//! `n` bytes back instead, `/status/<code>` answers that status, `/delay/<ms>ms` (or `<s>s`)
//! answers after that long, and a request carrying `x-echo-fail-on: <this server's name>`
//! gets 503, as does `/fail-on/<this server's name>`, and `/fail-sometimes/<name>/<percent>` fails that share at
//! random. `GET /_peak` answers the most requests this server has had in flight at once
//! (for circuit-breaker tests). A third argument is the status every answer carries (a broken backend, for retry
//! tests).
//!
//! Beside it, gRPC (`grpc`): `weft.echo.v1.Echo`, health and reflection on `--grpc ADDR`,
//! by default port 9090 of the HTTP address (skipped quietly when that port is taken, as by a
//! second echo server in one pod; `--grpc none` turns it off). `weft-echo grpc HOST:PORT …`
//! is the client (`client`).
#![forbid(unsafe_code)]

mod client;
mod grpc;

/// The code tonic-prost-build generated from `tests/proto/weft/echo/v1/echo.proto`, and its
/// descriptor set (for reflection).
#[expect(
    clippy::allow_attributes,
    clippy::allow_attributes_without_reason,
    clippy::default_trait_access,
    clippy::too_many_lines,
    reason = "generated code: its own `#[allow]`s and tonic-build's style"
)]
mod pb {
    tonic::include_proto!("weft.echo.v1");

    pub const DESCRIPTOR: &[u8] = tonic::include_file_descriptor_set!("weft_echo_v1_descriptor");
}

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

/// Requests being answered now, and the most there have been at once.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
    Request, Response, StatusCode,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let all: Vec<String> = std::env::args().collect();
    if all.get(1).map(String::as_str) == Some("grpc") {
        let args = <client::Args as clap::Parser>::parse_from(&all[1..]);
        return client::run(args).await;
    }
    serve(&all[1..]).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `weft-echo [ADDR [NAME [STATUS]]] [--grpc ADDR|none]`.
async fn serve(all: &[String]) -> anyhow::Result<()> {
    let mut grpc_flag = None;
    let mut positional = Vec::new();
    let mut rest = all.iter();
    while let Some(arg) = rest.next() {
        if arg == "--grpc" {
            grpc_flag = Some(rest.next().context("--grpc wants ADDR or none")?.clone());
        } else if let Some(value) = arg.strip_prefix("--grpc=") {
            grpc_flag = Some(value.to_owned());
        } else {
            positional.push(arg.clone());
        }
    }
    let mut args = positional.into_iter();
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "0.0.0.0:8080".into())
        .parse()
        .context("listen address")?;
    let name = args.next().unwrap_or_else(|| "echo".into());
    let status = match args.next() {
        Some(code) => StatusCode::from_bytes(code.as_bytes()).context("status")?,
        None => StatusCode::OK,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    let grpc_listener = match grpc_flag.as_deref() {
        Some("none") => None,
        Some(addr) => {
            let addr: SocketAddr = addr.parse().context("--grpc address")?;
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind {addr}"))?,
            )
        }
        // The default port may be another echo server's in the same pod: HTTP alone then.
        None => tokio::net::TcpListener::bind(grpc::default_addr(listen))
            .await
            .ok(),
    };
    if let Some(grpc_listener) = grpc_listener {
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = grpc::serve(grpc_listener, name).await {
                eprintln!("weft-echo: gRPC stopped: {e:#}");
            }
        });
    }
    loop {
        let (stream, peer) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                async move {
                    if req.uri().path() == "/_peak" {
                        let peak = PEAK.load(Ordering::Relaxed);
                        return Ok(Response::new(full(format!("peak={peak}\n"))));
                    }
                    let now = IN_FLIGHT.fetch_add(1, Ordering::Relaxed) + 1;
                    PEAK.fetch_max(now, Ordering::Relaxed);
                    let answered = answer_after_delay(&name, peer, status, req).await;
                    IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(answered)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer_after_delay(
    name: &str,
    peer: SocketAddr,
    status: StatusCode,
    req: Request<Incoming>,
) -> Response<Body> {
    // `x-delay-ms` holds the answer back, for timeout tests (at most 60 s).
    let delay = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0)
        .min(60_000);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    // One line per request, for tests that count what reached this server.
    println!("request {} {}", req.method(), req.uri().path());
    answer(name, peer, status, req).await
}

/// The largest download `GET /bytes/<n>` serves.
const MAX_DOWNLOAD: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    name: &str,
    peer: SocketAddr,
    status: StatusCode,
    req: Request<Incoming>,
) -> Response<Body> {
    if let Some(n) = req.uri().path().strip_prefix("/bytes/") {
        let total = n.parse::<u64>().unwrap_or(0).min(MAX_DOWNLOAD);
        return download(total);
    }
    let mut status = status;
    if let Some(code) = req.uri().path().strip_prefix("/status/") {
        status = StatusCode::from_bytes(code.as_bytes()).unwrap_or(StatusCode::BAD_REQUEST);
    }
    // `/fail-sometimes/<name>/<percent>`: that server fails that share of requests, at
    // random (the bench's flaky endpoint).
    if let Some(rest) = req.uri().path().strip_prefix("/fail-sometimes/") {
        if let Some((failing, percent)) = rest.split_once('/') {
            let percent: u32 = percent.parse().unwrap_or(0);
            if failing == name && rand::random_range(0..100) < percent {
                status = StatusCode::SERVICE_UNAVAILABLE;
            }
        }
    }
    // A path failing on one server only: a health check that one endpoint fails.
    if let Some(failing) = req.uri().path().strip_prefix("/fail-on/") {
        if failing == name {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    if let Some(wait) = req.uri().path().strip_prefix("/delay/") {
        tokio::time::sleep(delay_of(wait)).await;
    }
    if req
        .headers()
        .get("x-echo-fail-on")
        .is_some_and(|v| v.as_bytes() == name.as_bytes())
    {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    let (parts, mut incoming) = req.into_parts();
    // Read as it streams, so a large upload costs no memory here.
    let mut read: u64 = 0;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let mut body = format!(
        "server={name}\npeer={peer}\nmethod={}\npath={}\nversion={:?}\nbody-bytes={read}\n",
        parts.method,
        parts.uri.path(),
        parts.version
    );
    for (key, value) in &parts.headers {
        let _ = writeln!(
            body,
            "header {key}: {}",
            value.to_str().unwrap_or("<binary>")
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    // Names the server where a client sees only headers (`curl -w '%header{x-echo-server}'`).
    if let Ok(value) = hyper::header::HeaderValue::from_str(name) {
        response.headers_mut().insert("x-echo-server", value);
    }
    response
}

/// `/delay/<n>ms` or `/delay/<n>s`, at most 60 s.
fn delay_of(text: &str) -> std::time::Duration {
    let (number, unit) = match text.strip_suffix("ms") {
        Some(n) => (n, 1),
        None => (text.strip_suffix('s').unwrap_or(text), 1000),
    };
    let ms = number.parse::<u64>().unwrap_or(0).saturating_mul(unit);
    std::time::Duration::from_millis(ms.min(60_000))
}

/// `total` bytes, streamed in chunks as the client reads them.
fn download(total: u64) -> Response<Body> {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let frames = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.slice(..n))),
                left - n as u64,
            ))
        }
    });
    let mut response = Response::new(StreamBody::new(frames).boxed());
    if let Ok(length) = hyper::header::HeaderValue::from_str(&total.to_string()) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, length);
    }
    response
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}
