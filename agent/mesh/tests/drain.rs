//! Draining in process: on the signal the HBONE listener stops accepting, open tunnels keep
//! flowing and finish, and a tunnel held past the deadline is reported as cut.

mod common;

use std::time::Duration;

use common::{as_stream, echo_app, exchange, Mesh};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_mesh::drain::Drained;

#[tokio::test]
async fn a_drain_stops_new_connections_and_lets_the_open_tunnel_finish() {
    let mut mesh = Mesh::start().await;
    let app = echo_app().await;
    let pool = mesh.pool();
    let mut open = as_stream(mesh.open(&pool, app, b"").await.expect("tunnel")).await;
    open.write_all(b"before ").await.expect("write");
    let trigger = mesh.trigger.take().expect("trigger");
    let drained = tokio::spawn(trigger.drain(Duration::from_secs(10)));
    // The listener goes: a new TCP connection is refused.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(mesh.server).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts while draining");
    // The open tunnel still carries both ways.
    assert_eq!(exchange(&mut open, b"after").await, b"before after");
    drop(open);
    drop(pool);
    let outcome = tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("drained in time")
        .expect("task");
    assert_eq!(outcome, Drained::Finished);
}

#[tokio::test]
async fn a_tunnel_held_past_the_deadline_is_reported_cut() {
    let mut mesh = Mesh::start().await;
    let app = echo_app().await;
    let pool = mesh.pool();
    let mut open = as_stream(mesh.open(&pool, app, b"").await.expect("tunnel")).await;
    open.write_all(b"x").await.expect("write");
    let mut byte = [0u8; 1];
    open.read_exact(&mut byte).await.expect("echo");
    let trigger = mesh.trigger.take().expect("trigger");
    let outcome = trigger.drain(Duration::from_millis(300)).await;
    assert!(matches!(outcome, Drained::Cut(n) if n >= 1), "{outcome:?}");
}
