//! How the waypoint speaks inside one tunnel: what the Service port declares (`appProtocol` or
//! its name's prefix) decides HTTP/1.1, HTTP/2 or L4; an undeclared port is sniffed from its
//! first bytes, and anything that is not HTTP passes through to an endpoint at L4, bytes
//! unchanged.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use weft_mesh::registry::AppProtocol;

use crate::{app::Waypoint, forward};

/// How long an undeclared port's client may stay silent before the waypoint treats the
/// connection as L4: a server-first protocol (SMTP, MySQL) sends nothing until it is greeted.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);
/// Bytes read to decide: the HTTP/2 preface's length, longer than every HTTP/1.1 method.
pub const SNIFF_BYTES: usize = 24;

/// The methods whose `<METHOD> ` start marks HTTP/1.1; `PRI` starts the HTTP/2 preface.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PRI",
];

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http,
    Opaque,
    /// Too few bytes yet to tell.
    Undecided,
}

/// Classifies the first bytes: an HTTP method (or the HTTP/2 preface) and a space is HTTP, and
/// so is any other upper-case token followed by ` /` or ` *` (an extension method such as
/// `PROPFIND`); empty lines before the request line are skipped, as HTTP servers skip them.
/// Anything else, or [`SNIFF_BYTES`] bytes without a verdict, is opaque: a client must not
/// get past the routes by sending what a backend would still read as HTTP.
pub fn classify(first: &[u8]) -> Sniffed {
    let start = first
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(first.len());
    let line = first.get(start..).unwrap_or_default();
    let token_end = line.iter().position(|b| !b.is_ascii_uppercase());
    match token_end {
        Some(0) => Sniffed::Opaque,
        Some(end) if line[end] == b' ' => {
            let token = std::str::from_utf8(&line[..end]).unwrap_or_default();
            match line.get(end + 1) {
                _ if METHODS.contains(&token) => Sniffed::Http,
                Some(b'/' | b'*') => Sniffed::Http,
                Some(_) => Sniffed::Opaque,
                None if first.len() >= SNIFF_BYTES => Sniffed::Opaque,
                None => Sniffed::Undecided,
            }
        }
        Some(_) => Sniffed::Opaque,
        None if first.len() >= SNIFF_BYTES => Sniffed::Opaque,
        None => Sniffed::Undecided,
    }
}

/// Reads from `io` until its first bytes say HTTP or not, within [`SNIFF_TIMEOUT`]; a silent
/// or closed client counts as opaque. Returns the verdict and the bytes read, which the
/// caller replays.
pub async fn sniff<T: AsyncRead + Unpin>(io: &mut T) -> (Sniffed, Bytes) {
    let mut first = BytesMut::with_capacity(SNIFF_BYTES);
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut first)).await;
        match read {
            Ok(Ok(n)) if n > 0 => match classify(&first) {
                Sniffed::Undecided if first.len() < SNIFF_BYTES => {}
                Sniffed::Undecided => return (Sniffed::Opaque, first.freeze()),
                verdict => return (verdict, first.freeze()),
            },
            _ => return (Sniffed::Opaque, first.freeze()),
        }
    }
}

/// A stream whose first bytes, already read by [`sniff`], are read again.
#[derive(Debug)]
pub struct Replayed<T> {
    first: Bytes,
    inner: T,
}

impl<T> Replayed<T> {
    pub fn new(first: Bytes, inner: T) -> Self {
        Self { first, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Replayed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.first.has_remaining() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first[..n]);
            this.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Replayed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How a tunnel is carried, once the port (and, when undeclared, the first bytes) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// HTTP/1.1 only (`http`).
    Http1,
    /// HTTP/2 prior knowledge only (`h2c`, `grpc`).
    Http2,
    /// Either, as hyper tells them apart (a sniffed HTTP connection).
    Auto,
    /// Bytes to one endpoint.
    Opaque,
}

impl Carry {
    /// How a port that declares `declared` is carried; `None`: sniff it.
    pub fn declared(declared: AppProtocol) -> Option<Self> {
        match declared {
            AppProtocol::Http1 => Some(Self::Http1),
            AppProtocol::Http2 | AppProtocol::Grpc => Some(Self::Http2),
            AppProtocol::Tcp => Some(Self::Opaque),
            AppProtocol::Unknown => None,
        }
    }
}

/// Carries `io` at L4 to one ready endpoint of the Service the client dialed (through that
/// endpoint's agent, under the waypoint's identity), bytes unchanged both ways.
pub async fn pass_through<T>(waypoint: Arc<Waypoint>, tunnel: Arc<forward::Tunnel>, mut io: T)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let backends = [tunnel.service_itself()];
    let (_, endpoint, identity) = match forward::pick(&waypoint, &backends, tunnel.service_port) {
        Ok(picked) => picked,
        Err((_, reason, detail)) => {
            tracing::info!(service = %tunnel.service, reason = reason.as_str(), %detail, "L4 connection refused");
            waypoint.requests.passed_through(&tunnel.service, reason);
            return;
        }
    };
    let key = crate::upstream::key(endpoint, (tunnel.client_ip, &tunnel.client), false);
    let mut upstream = match crate::upstream::connect(
        &waypoint.pool,
        &waypoint.identity,
        identity.as_ref(),
        &key,
    )
    .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::info!(service = %tunnel.service, %endpoint, error = %e, "L4 connection to the endpoint failed");
            waypoint
                .requests
                .passed_through(&tunnel.service, forward::Reason::UpstreamFailed);
            return;
        }
    };
    let moved = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
    waypoint
        .requests
        .passed_through(&tunnel.service, forward::Reason::Routed);
    tracing::info!(
        target: "weft_waypoint::access",
        service = %tunnel.service,
        %endpoint,
        client = %tunnel.client,
        client_ip = %tunnel.client_ip,
        bytes = ?moved.as_ref().ok(),
        error = moved.as_ref().err().map(ToString::to_string),
        "L4 connection"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_methods_and_the_h2_preface_are_http_and_the_rest_is_opaque() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Sniffed::Http);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Sniffed::Http);
        assert_eq!(classify(b"POST"), Sniffed::Undecided);
        assert_eq!(classify(b"HELLO world"), Sniffed::Opaque);
        assert_eq!(classify(b"\x16\x03\x01"), Sniffed::Opaque, "a TLS hello");
        assert_eq!(classify(b"get / HTTP/1.1"), Sniffed::Opaque);
        assert_eq!(classify(&[b'A'; SNIFF_BYTES]), Sniffed::Opaque);
        assert_eq!(
            classify(b"\r\nGET / HTTP/1.1"),
            Sniffed::Http,
            "a leading empty line"
        );
        assert_eq!(
            classify(b"PROPFIND /x HTTP/1.1"),
            Sniffed::Http,
            "an extension method"
        );
        assert_eq!(classify(b"HELLO"), Sniffed::Undecided);
        assert_eq!(classify(b"\r\n"), Sniffed::Undecided);
    }

    #[tokio::test]
    async fn sniffed_bytes_are_read_again() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET /x HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut server = server;
        let (verdict, first) = sniff(&mut server).await;
        assert_eq!(verdict, Sniffed::Http);
        let mut replayed = Replayed::new(first, server);
        let mut line = [0u8; 17];
        replayed.read_exact(&mut line).await.expect("read");
        assert_eq!(&line, b"GET /x HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_sniff_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (verdict, first) = sniff(&mut server).await;
        assert_eq!(verdict, Sniffed::Opaque);
        assert!(first.is_empty());
    }
}
