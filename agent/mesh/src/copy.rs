//! Moving bytes both ways between two TCP streams with buffers that exist only while bytes
//! flow and grow only for busy connections: an idle connection holds no buffer at all, a
//! request/response exchange a small one, a bulk transfer a large one. Half-close is passed on;
//! back-pressure comes from awaiting each write. Bytes are counted as they move, so live
//! connections show their progress.

pub use crate::connections::ByteCounters;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    net::{tcp::ReadHalf, TcpStream},
};

/// First buffer per direction. Request/response traffic rarely needs more.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// Largest buffer per direction. Measured with iperf3 through two agents on the demo
/// playground (loopback veths, 2 cores): 8 KiB moved 2.4 Gbit/s, 64 KiB 5.0, 256 KiB 6.8.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Copies `reader` to `writer` until EOF, then shuts `writer` down (passing the half-close on).
/// What moved is counted on `progress` as it moves, the one count a connection reports.
/// A buffer is taken when the socket turns readable and given back once it has nothing more to
/// read, so a connection waiting for its next request costs no buffer; its size doubles, up to
/// [`MAX_BUFFER`], each time a read fills it, and the size (not the memory) is remembered.
pub async fn one_way<W>(
    reader: &ReadHalf<'_>,
    writer: &mut W,
    progress: &AtomicU64,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let socket: &TcpStream = reader.as_ref();
    let mut size = INITIAL_BUFFER;
    let mut buffer = BytesMut::new();
    loop {
        let n = read_while_flowing(socket, &mut buffer, size).await?;
        if n == 0 {
            return writer.shutdown().await;
        }
        writer.write_all(&buffer).await?;
        progress.fetch_add(n as u64, Ordering::Relaxed);
        if n >= size && size < MAX_BUFFER {
            size *= 2;
        }
        buffer.clear();
    }
}

/// Reads what `socket` has into `buffer`, which holds memory only while bytes flow: with no
/// room it waits for readability first, then makes room for `size` bytes, and it gives the
/// memory back (leaving `buffer` empty) whenever a read would block.
pub async fn read_while_flowing(
    socket: &TcpStream,
    buffer: &mut BytesMut,
    size: usize,
) -> std::io::Result<usize> {
    loop {
        if buffer.capacity() == 0 {
            socket.readable().await?;
        }
        buffer.reserve(size);
        match socket.try_read_buf(buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => *buffer = BytesMut::new(),
            read => return read,
        }
    }
}

/// Runs both directions of a connection. A direction that ends cleanly (EOF, passed on as a
/// half-close) lets the other go on; one that fails ends both, so a reset on either side
/// never leaves the other side hanging. Returns the error, if any; the bytes are the
/// directions' counters.
pub async fn run_both<A, B>(up: A, down: B) -> Option<std::io::Error>
where
    A: std::future::Future<Output = std::io::Result<()>>,
    B: std::future::Future<Output = std::io::Result<()>>,
{
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let result = tokio::select! {
            result = &mut up, if !up_done => {
                up_done = true;
                result
            }
            result = &mut down, if !down_done => {
                down_done = true;
                result
            }
        };
        if let Err(e) = result {
            return Some(e);
        }
    }
    None
}

/// Copies both ways until both directions have ended (or one failed), counting on `bytes`.
/// Returns the error, if any.
pub async fn both_ways(
    client: &mut TcpStream,
    server: &mut TcpStream,
    bytes: &ByteCounters,
) -> Option<std::io::Error> {
    let (client_read, mut client_write) = client.split();
    let (server_read, mut server_write) = server.split();
    run_both(
        one_way(&client_read, &mut server_write, &bytes.from_client),
        one_way(&server_read, &mut client_write, &bytes.to_client),
    )
    .await
}
