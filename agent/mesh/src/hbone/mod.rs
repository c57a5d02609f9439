//! HBONE, Istio's tunnel protocol: one HTTP/2 `CONNECT` stream per proxied TCP connection,
//! over mutual TLS between workload identities, to the destination pod's port 15008. The
//! server side accepts tunnels into the pods of this node; the client side pools HTTP/2
//! connections per (source pod and identity, destination identity, destination address).

pub mod client;
pub mod closing;
pub mod io;
pub mod server;
pub mod stream;

use std::time::Duration;

/// HTTP/2 flow control and framing, measured with iperf3 through two agents on the demo
/// playground (one tunnel, 2 cores): h2's defaults (64 KiB windows, 16 KiB frames) moved
/// 0.03 Gbit/s; a 1 MiB stream window 2.55; 4 MiB stream / 16 MiB connection windows with
/// 16 KiB frames 1.94, and with 64 KiB frames 2.76. The connection window lets several busy
/// streams share one HTTP/2 connection without starving each other. 1 MiB frames (ztunnel's
/// size) against 64 KiB, in two quick benches each on one machine: one stream 8.57 and 8.67
/// against 7.50 and 6.76 Gbit/s, both agents' CPU per GiB 1.40 and 1.39 against 1.63 and 1.82
/// s, peak RSS unchanged (a frame is cut at the copy buffer, 256 KiB, before this bound).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Streams per pooled connection before the pool opens another.
pub const MAX_STREAMS: u32 = 100;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::identity::TlsError),
    #[error("no SVID: {0}")]
    Identity(#[from] crate::identity::CaError),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("the destination answered {0}")]
    Status(http::StatusCode),
    #[error("bad CONNECT target {0}")]
    Authority(String),
    #[error("the tunnel was not open within the connect timeout")]
    TimedOut,
}

impl HboneError {
    /// Whether the tunnel failed for lack of time rather than for an answer.
    pub fn timed_out(&self) -> bool {
        match self {
            Self::TimedOut => true,
            Self::Connect { source, .. } | Self::Tls { source, .. } => {
                source.kind() == std::io::ErrorKind::TimedOut
            }
            _ => false,
        }
    }
}

pub(crate) fn h2_io(error: h2::Error) -> std::io::Error {
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| std::io::Error::other("h2 I/O error"))
    } else {
        std::io::Error::other(error)
    }
}
