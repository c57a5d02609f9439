//! TLS streams that end with a `close_notify` however they end. A graceful HTTP/2 or HTTP/1
//! close shuts the stream down (rustls sends the alert then), but a connection dropped for a
//! deadline, a drain or an error would end with a bare FIN, which an Istio ztunnel peer logs
//! as an error each time. On drop this queues the alert and writes what rustls holds with
//! non-blocking writes: nothing waits, and a full send buffer only loses the courtesy.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A client or server TLS stream over TCP that says `close_notify` when dropped.
#[derive(Debug)]
pub struct ClosingTls(pub tokio_rustls::TlsStream<TcpStream>);

impl From<tokio_rustls::server::TlsStream<TcpStream>> for ClosingTls {
    fn from(tls: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Self(tls.into())
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for ClosingTls {
    fn from(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Self(tls.into())
    }
}

/// `std::io::Write` over a tokio socket without waiting.
struct TryWrite<'a>(&'a TcpStream);

impl io::Write for TryWrite<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.try_write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ClosingTls {
    fn drop(&mut self) {
        match &mut self.0 {
            tokio_rustls::TlsStream::Client(tls) => {
                let (tcp, connection) = tls.get_mut();
                say_close_notify(tcp, connection);
            }
            tokio_rustls::TlsStream::Server(tls) => {
                let (tcp, connection) = tls.get_mut();
                say_close_notify(tcp, connection);
            }
        }
    }
}

/// Queues `close_notify` and writes what rustls holds, as far as the socket takes it now.
fn say_close_notify<Data>(tcp: &TcpStream, connection: &mut rustls::ConnectionCommon<Data>) {
    connection.send_close_notify();
    let mut out = TryWrite(tcp);
    while connection.wants_write() {
        match connection.write_tls(&mut out) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

impl AsyncRead for ClosingTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClosingTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncReadExt as _;

    use super::ClosingTls;

    /// A dropped server stream sends `close_notify`: the client reads a clean end of stream,
    /// not an "unexpected EOF" error.
    #[tokio::test]
    async fn a_dropped_stream_says_close_notify() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(tcp)
                .await
                .expect("handshake");
            drop(ClosingTls::from(tls));
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect("localhost".try_into().expect("name"), tcp)
            .await
            .expect("client handshake");
        serving.await.expect("server");
        let mut rest = Vec::new();
        let read = tls.read_to_end(&mut rest).await;
        assert!(read.is_ok(), "a clean close, not {read:?}");
    }
}
