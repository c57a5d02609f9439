//! The playground's echo server: HTTP/1.1 and HTTP/2 (prior knowledge) on one port, answering
//! with the peer address it saw, its own name and the request's headers (after `x-delay-ms`
//! milliseconds when the request asks).
#![forbid(unsafe_code)]

use std::{convert::Infallible, fmt::Write as _, net::SocketAddr};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "0.0.0.0:8080".into())
        .parse()
        .context("listen address")?;
    let name = args.next().unwrap_or_else(|| "echo".into());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                async move {
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
                    Ok::<_, Infallible>(answer(&name, peer, &req))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(name: &str, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut body = format!(
        "server={name}\npeer={peer}\nmethod={}\npath={}\nversion={:?}\n",
        req.method(),
        req.uri().path(),
        req.version()
    );
    for (key, value) in req.headers() {
        let _ = writeln!(
            body,
            "header {key}: {}",
            value.to_str().unwrap_or("<binary>")
        );
    }
    Response::new(Full::new(Bytes::from(body)))
}
