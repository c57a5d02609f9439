//! Bytes between a TCP socket and an HTTP/2 stream, both ways, with half-close passed on
//! (END_STREAM ↔ TCP FIN) and HTTP/2 flow control as back-pressure.

use std::{
    future::poll_fn,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{
    io::AsyncWriteExt as _,
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

use super::h2_io;
use crate::copy::{read_while_flowing, INITIAL_BUFFER, MAX_BUFFER};

/// Like [`crate::copy::one_way`], the buffer exists only while the socket has bytes to
/// read: an idle tunnel holds none. Read bytes are frozen and handed to h2 without a copy.
async fn tcp_to_h2(
    reader: &mut OwnedReadHalf,
    mut send: SendStream<Bytes>,
    progress: &AtomicU64,
) -> std::io::Result<()> {
    let mut buffer = BytesMut::new();
    let mut size = INITIAL_BUFFER;
    loop {
        // What h2 still holds of a given-back buffer stays alive only until it is sent.
        let n = read_while_flowing(reader.as_ref(), &mut buffer, size).await?;
        if n == 0 {
            return send.send_data(Bytes::new(), true).map_err(h2_io);
        }
        progress.fetch_add(n as u64, Ordering::Relaxed);
        if n >= size && size < MAX_BUFFER {
            size *= 2;
        }
        let mut chunk = buffer.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(granted) => granted.map_err(h2_io)?,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "tunnel stream closed",
                    ))
                }
            };
            if granted > 0 {
                send.send_data(chunk.split_to(granted.min(chunk.len())), false)
                    .map_err(h2_io)?;
            }
        }
    }
}

async fn h2_to_tcp(
    mut recv: RecvStream,
    writer: &mut OwnedWriteHalf,
    progress: &AtomicU64,
) -> std::io::Result<()> {
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_io)?;
        writer.write_all(&data).await?;
        progress.fetch_add(data.len() as u64, Ordering::Relaxed);
        let _ = recv.flow_control().release_capacity(data.len());
    }
    writer.shutdown().await
}

/// Carries a tunnel until both directions end, counting each on its counter. Returns the
/// first error.
pub async fn splice(
    tcp: TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
    tcp_to_tunnel: &AtomicU64,
    tunnel_to_tcp: &AtomicU64,
) -> Option<std::io::Error> {
    let (mut reader, mut writer) = tcp.into_split();
    crate::copy::run_both(
        tcp_to_h2(&mut reader, send, tcp_to_tunnel),
        h2_to_tcp(recv, &mut writer, tunnel_to_tcp),
    )
    .await
}
