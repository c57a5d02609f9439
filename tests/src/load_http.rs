//! HTTP/1.1 and HTTP/2 (prior knowledge) clients for the load loops ([`crate::load`]): one
//! keep-alive connection each, one `GET` at a time, the whole response read. hyper does the
//! protocol; each connection runs on its own current-thread runtime inside the loop's blocking
//! thread, so the loop's precise schedule is unchanged.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::load::Exchanger;

/// How long one connect or one response may take before it counts as an error.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

enum Sender {
    One(http1::SendRequest<Empty<Bytes>>),
    Shared(http2::SendRequest<Empty<Bytes>>),
}

/// One HTTP connection to `target`, asking for `path`.
pub struct HttpExchange {
    runtime: tokio::runtime::Runtime,
    sender: Sender,
    uri: http::Uri,
    authority: String,
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl std::fmt::Debug for HttpExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpExchange")
            .field("authority", &self.authority)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl HttpExchange {
    /// Connects to `target` and completes the HTTP handshake.
    pub fn connect(target: SocketAddr, http2: bool, path: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let sender = runtime.block_on(async {
            let io = TokioIo::new(tokio::net::TcpStream::from_std(stream)?);
            let handshake = async {
                if http2 {
                    let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(other)?;
                    tokio::spawn(connection);
                    Ok::<_, std::io::Error>(Sender::Shared(sender))
                } else {
                    let (sender, connection) = http1::handshake(io).await.map_err(other)?;
                    tokio::spawn(connection);
                    Ok(Sender::One(sender))
                }
            };
            tokio::time::timeout(IO_TIMEOUT, handshake)
                .await
                .map_err(other)?
        })?;
        Ok(Self {
            runtime,
            sender,
            uri: path.parse().map_err(other)?,
            authority: target.to_string(),
        })
    }
}

impl Exchanger for HttpExchange {
    fn exchange(&mut self) -> std::io::Result<()> {
        let mut request = http::Request::get(self.uri.clone());
        request = match &self.sender {
            Sender::One(_) => request.header(http::header::HOST, &self.authority),
            Sender::Shared(_) => request.uri(
                http::Uri::builder()
                    .scheme("http")
                    .authority(self.authority.as_str())
                    .path_and_query(self.uri.path())
                    .build()
                    .map_err(other)?,
            ),
        };
        let request = request.body(Empty::new()).map_err(other)?;
        let sender = &mut self.sender;
        self.runtime.block_on(async {
            let sending = async {
                let response = match sender {
                    Sender::One(s) => {
                        s.ready().await.map_err(other)?;
                        s.send_request(request).await.map_err(other)?
                    }
                    Sender::Shared(s) => {
                        s.ready().await.map_err(other)?;
                        s.send_request(request).await.map_err(other)?
                    }
                };
                let ok = response.status().is_success();
                response.into_body().collect().await.map_err(other)?;
                if ok {
                    Ok(())
                } else {
                    Err(other("the answer was not 2xx"))
                }
            };
            tokio::time::timeout(IO_TIMEOUT, sending)
                .await
                .map_err(other)?
        })
    }
}
