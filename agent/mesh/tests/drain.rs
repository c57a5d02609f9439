//! Draining in process: on the signal the HBONE listener stops accepting, open tunnels keep
//! flowing and finish, a tunnel held past the deadline is reported as cut, and the serve
//! helper stops data-path listeners while admin-style ones keep answering.

mod common;

use std::{sync::Arc, time::Duration};

use common::{as_stream, echo_app, exchange, Mesh};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_mesh::{
    drain::{self, Drained},
    serve::{self, OnDrain, Serving},
};

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

/// A listener under `serve` whose connections each hold until the client closes.
async fn holding_listener(
    on_drain: OnDrain,
) -> (
    std::net::SocketAddr,
    drain::Trigger,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (trigger, signal) = drain::channel();
    let serving = Serving {
        name: "test",
        limits: Arc::default(),
        drain: signal,
        on_drain,
    };
    let served = tokio::spawn(serve::serve(listener, serving, |mut tcp, _| async move {
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest).await;
    }));
    (address, trigger, served)
}

#[tokio::test]
async fn a_stopping_listener_returns_on_the_drain_while_its_connection_holds_the_drain_open() {
    let (address, trigger, served) = holding_listener(OnDrain::Stop).await;
    let client = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let drained = tokio::spawn(trigger.drain(Duration::from_secs(5)));
    tokio::time::timeout(Duration::from_secs(2), served)
        .await
        .expect("the accept loop ended")
        .expect("task");
    assert!(
        !drained.is_finished(),
        "the open connection holds the drain"
    );
    drop(client);
    let outcome = tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("in time")
        .expect("task");
    assert_eq!(outcome, Drained::Finished);
}

#[tokio::test]
async fn a_keep_serving_listener_answers_through_the_drain_without_holding_it() {
    let (address, trigger, served) = holding_listener(OnDrain::KeepServing).await;
    let _held = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcome = trigger.drain(Duration::from_secs(5)).await;
    assert_eq!(
        outcome,
        Drained::Finished,
        "its connections do not hold the drain"
    );
    assert!(
        tokio::net::TcpStream::connect(address).await.is_ok(),
        "it still accepts"
    );
    assert!(!served.is_finished());
}
