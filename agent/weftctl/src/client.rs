//! The admin API client: HTTP/1.1 over a tokio `TcpStream` with hyper, one connection per
//! request, bounded in connect time, response time and size. Statuses come from hyper, and a
//! non-2xx answer is an error carrying the agent's own message.

use std::{net::SocketAddr, time::Duration};

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// How long weftctl waits, and how much it reads.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub connect: Duration,
    /// From sending the request to the last byte of a whole answer (to the head of a stream).
    pub response: Duration,
    /// The largest whole answer: the config dump of a large cluster fits with room to spare.
    pub max_body: usize,
    /// The longest line of a `/flows?follow` stream.
    pub max_line: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            response: Duration::from_secs(10),
            max_body: 64 << 20,
            max_line: 1 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agent answers at {addr}: is it running? On a playground node use --node NAME; in a \
         cluster, `kubectl -n weft-system port-forward pod/<weft-agent pod> 15000` first ({source})"
    )]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no agent answers at {addr} within {after:?}: is the address right?")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("talking to the agent at {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("the agent at {addr} did not answer {path} within {after:?}")]
    Timeout {
        addr: SocketAddr,
        path: String,
        after: Duration,
    },
    #[error("the agent's answer to {path} is larger than {limit} bytes: refused")]
    TooLarge { path: String, limit: usize },
    #[error("the agent answered {path} with {status}: {message}")]
    Status {
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("the agent's answer to {path} is not what weftctl {version} expects: {source}")]
    Json {
        path: String,
        version: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("bad request target {0:?}")]
    Request(String),
}

/// One agent's admin API.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    pub bounds: Bounds,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            bounds: Bounds::default(),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::POST, path).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let whole = async {
            let response = self.send(method, path).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.bounds.max_body)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(source) => ClientError::Http {
                        addr: self.addr,
                        source: *source,
                    },
                    // The only other error Limited raises is its length limit.
                    Err(_) => ClientError::TooLarge {
                        path: path.to_owned(),
                        limit: self.bounds.max_body,
                    },
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.bounds.response, whole)
            .await
            .map_err(|_| self.timeout(path))??;
        if !status.is_success() {
            return Err(status_error(path, status, &body));
        }
        serde_json::from_slice(&body).map_err(|source| json_error(path, source))
    }

    /// Opens a stream of JSON lines (`/flows?follow=1`).
    pub async fn lines(&self, path: &str) -> Result<Lines, ClientError> {
        let response = tokio::time::timeout(self.bounds.response, self.send(Method::GET, path))
            .await
            .map_err(|_| self.timeout(path))??;
        let status = response.status();
        if !status.is_success() {
            let body = Limited::new(response.into_body(), 64 << 10)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            return Err(status_error(path, status, &body));
        }
        Ok(Lines {
            path: path.to_owned(),
            addr: self.addr,
            body: response.into_body(),
            pending: BytesMut::new(),
            max_line: self.bounds.max_line,
        })
    }

    fn timeout(&self, path: &str) -> ClientError {
        ClientError::Timeout {
            addr: self.addr,
            path: path.to_owned(),
            after: self.bounds.response,
        }
    }

    async fn send(&self, method: Method, path: &str) -> Result<Response<Incoming>, ClientError> {
        let addr = self.addr;
        let stream = tokio::time::timeout(self.bounds.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                addr,
                after: self.bounds.connect,
            })?
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Http { addr, source })?;
        // The connection task ends when the answer has been read and the sender dropped.
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|_| ClientError::Request(path.to_owned()))?;
        sender
            .send_request(request)
            .await
            .map_err(|source| ClientError::Http { addr, source })
    }
}

fn status_error(path: &str, status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<weft_api::ErrorBody>(body).map_or_else(
        |_| String::from_utf8_lossy(body).trim().to_owned(),
        |e| {
            if e.valid.is_empty() {
                e.error
            } else {
                format!("{} (valid: {})", e.error, e.valid.join(", "))
            }
        },
    );
    ClientError::Status {
        path: path.to_owned(),
        status,
        message,
    }
}

fn json_error(path: &str, source: serde_json::Error) -> ClientError {
    ClientError::Json {
        path: path.to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        source,
    }
}

/// A stream of JSON lines, one value per line, each line bounded.
#[derive(Debug)]
pub struct Lines {
    path: String,
    addr: SocketAddr,
    body: Incoming,
    pending: BytesMut,
    max_line: usize,
}

impl Lines {
    /// The next value, or `None` when the agent ends the stream. Lines that are not a `T`
    /// (the agent's `{"event": "lagged"}` notes) come back as errors the caller may skip.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, ClientError>> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line = self.pending.split_to(end + 1);
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(line).map_err(|e| json_error(&self.path, e)));
            }
            if self.pending.len() > self.max_line {
                return Some(Err(ClientError::TooLarge {
                    path: self.path.clone(),
                    limit: self.max_line,
                }));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.pending.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Err(source) => {
                    return Some(Err(ClientError::Http {
                        addr: self.addr,
                        source,
                    }))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, sync::Arc};

    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// Serves every connection on 127.0.0.1 with `answer(path)` as (status, body).
    async fn agent(answer: fn(&str) -> (StatusCode, String)) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        let (status, body) = answer(&path);
                        async move {
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn answer(path: &str) -> (StatusCode, String) {
        match path {
            "/certs" => (
                StatusCode::OK,
                r#"[{"identity":"spiffe://cluster.local/ns/demo/sa/a","serial":"01","notBefore":"x","notAfter":"y","secondsToExpiry":60}]"#.into(),
            ),
            "/flows?verdict=bogus" => (
                StatusCode::BAD_REQUEST,
                r#"{"error":"verdict \"bogus\" is not one of allow, deny, failed","valid":["allow","deny","failed"]}"#.into(),
            ),
            "/big" => (StatusCode::OK, format!("[\"{}\"]", "x".repeat(4096))),
            "/stream" => (
                StatusCode::OK,
                "{\"level\":\"a\"}\n{\"event\":\"lagged\",\"skipped\":2}\n{\"level\":\"b\"}\n".into(),
            ),
            "/snake" => (StatusCode::OK, r#"{"seconds_to_expiry": 1}"#.into()),
            _ => (StatusCode::NOT_FOUND, "no such endpoint".into()),
        }
    }

    #[tokio::test]
    async fn typed_answers_statuses_and_sizes() {
        let addr = agent(answer).await;
        let client = Client::new(addr);
        let certs: Vec<weft_api::Cert> = client.get("/certs").await.expect("certs");
        assert_eq!(certs[0].seconds_to_expiry, 60);

        let error = client
            .get::<Vec<weft_api::Flow>>("/flows?verdict=bogus")
            .await
            .expect_err("400");
        assert!(
            matches!(&error, ClientError::Status { status, .. } if *status == StatusCode::BAD_REQUEST),
            "{error}"
        );
        let text = error.to_string();
        assert!(
            text.contains("400 Bad Request") && text.contains("allow, deny, failed"),
            "{text}"
        );

        let error = client
            .get::<serde_json::Value>("/nothing")
            .await
            .expect_err("404");
        assert!(
            error
                .to_string()
                .contains("404 Not Found: no such endpoint"),
            "{error}"
        );

        let small = Client {
            bounds: Bounds {
                max_body: 1024,
                ..Bounds::default()
            },
            ..client
        };
        let error = small
            .get::<Vec<String>>("/big")
            .await
            .expect_err("too large");
        assert!(
            matches!(error, ClientError::TooLarge { limit: 1024, .. }),
            "{error}"
        );

        let error = client
            .get::<weft_api::Cert>("/snake")
            .await
            .expect_err("wrong shape");
        assert!(matches!(error, ClientError::Json { .. }), "{error}");
    }

    #[tokio::test]
    async fn streams_yield_each_line_and_end() {
        let addr = agent(answer).await;
        let mut lines = Client::new(addr).lines("/stream").await.expect("stream");
        let first: weft_api::LogLevel = lines.next().await.expect("one").expect("a");
        assert_eq!(first.level, "a");
        assert!(lines
            .next::<weft_api::LogLevel>()
            .await
            .expect("two")
            .is_err());
        let third: weft_api::LogLevel = lines.next().await.expect("three").expect("b");
        assert_eq!(third.level, "b");
        assert!(lines.next::<weft_api::LogLevel>().await.is_none());
    }

    #[tokio::test]
    async fn nobody_listening_says_how_to_fix_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let error = Client::new(addr)
            .get::<serde_json::Value>("/status")
            .await
            .expect_err("refused");
        assert!(error.to_string().contains("is it running?"), "{error}");
    }
}
