//! Where the sockets a proxy dials from come from. The agent makes them inside an enrolled
//! pod's network namespace, marked so they leave through the pod's interface instead of being
//! captured again; in-process tests and the waypoint make plain ones. Everything that dials
//! (the HBONE pool, direct connections) goes through [`SocketFactory`], so the data path runs
//! without root in unit tests.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

/// Makes the TCP sockets one source dials from.
pub trait SocketFactory: Send + Sync + std::fmt::Debug {
    /// A new, unconnected, non-blocking IPv4 TCP socket, with whatever marks the source needs.
    fn tcp_v4(&self) -> std::io::Result<socket2::Socket>;
}

/// Plain sockets of the process's own network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl SocketFactory for Plain {
    fn tcp_v4(&self) -> std::io::Result<socket2::Socket> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM.nonblocking().cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_tcp_nodelay(true)?;
        Ok(socket)
    }
}

/// Connects a socket from `factory` to `destination`, giving up after `timeout`.
pub async fn connect(
    factory: &dyn SocketFactory,
    destination: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    connect_socket(factory.tcp_v4()?, destination, timeout).await
}

/// Connects an already-made socket, giving up after `timeout`.
pub async fn connect_socket(
    socket: socket2::Socket,
    destination: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(timeout, socket.connect(destination))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}
