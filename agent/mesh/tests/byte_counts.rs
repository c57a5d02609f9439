//! Byte counts in process: what a connection reports when it ends (its flow, the totals) is
//! what moved, however it ends. A reset mid-transfer keeps the bytes each direction carried
//! before it, and a clean end reports every byte both peers sent.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use weft_mesh::{
    connections::{Connection, Connections, Direction, Security},
    copy,
};

fn connection(address: SocketAddr) -> Connection {
    Connection {
        id: 0,
        direction: Direction::Outbound,
        pod: "demo/client".into(),
        source: address,
        original_destination: address,
        destination: address,
        service: None,
        security: Security::Plaintext,
        peer_identity: None,
        peer_certificate_serial: None,
        workload_identity: None,
        peer_workload: None,
        waypoint: None,
        carried_identity: None,
        connect_attempts: 0,
        failure: None,
        decision: None,
        started_unix_ms: 0,
        trace: None,
    }
}

/// Two ends of one loopback TCP connection.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (dialed, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    (dialed.expect("connect"), accepted.expect("accept").0)
}

/// What the last closed connection reported: its flow's bytes and the totals' bytes.
fn reported(connections: &Connections) -> ((u64, u64), (u64, u64)) {
    let flow = connections.flows.recent().pop().expect("a closed flow");
    let totals = connections.totals.snapshot();
    (
        (flow.bytes_from_client, flow.bytes_to_client),
        (totals.bytes_from_clients, totals.bytes_to_clients),
    )
}

#[tokio::test]
async fn a_reset_mid_transfer_keeps_the_bytes_each_direction_moved() {
    let (mut client, mut from_client) = pair().await;
    let (mut to_server, mut server) = pair().await;
    let connections = Connections::default();
    let guard = connections.open(connection(client.local_addr().expect("address")));
    let bytes = guard.bytes();
    let copying = copy::both_ways(&mut from_client, &mut to_server, &bytes);
    let peers = async {
        client
            .write_all(&vec![1; 100_000])
            .await
            .expect("client sends");
        let mut request = vec![0; 100_000];
        server.read_exact(&mut request).await.expect("server reads");
        server
            .write_all(&vec![2; 30_000])
            .await
            .expect("server answers");
        let mut answer = vec![0; 30_000];
        client.read_exact(&mut answer).await.expect("client reads");
        // Neither direction has ended when the server resets.
        server.set_zero_linger().expect("linger");
        drop(server);
    };
    let (error, ()) = tokio::join!(copying, peers);
    assert!(error.is_some(), "the reset ends the copy with an error");
    drop(guard);
    let (flow, totals) = reported(&connections);
    assert_eq!(flow, (100_000, 30_000), "the flow keeps what moved");
    assert_eq!(totals, (100_000, 30_000), "so do the totals");
}

#[tokio::test]
async fn a_clean_end_reports_every_byte_both_peers_sent() {
    let (mut client, mut from_client) = pair().await;
    let (mut to_server, mut server) = pair().await;
    let connections = Connections::default();
    let guard = connections.open(connection(client.local_addr().expect("address")));
    let bytes = guard.bytes();
    let copying = copy::both_ways(&mut from_client, &mut to_server, &bytes);
    let peers = async {
        client
            .write_all(&vec![1; 65_537])
            .await
            .expect("client sends");
        client.shutdown().await.expect("client half-closes");
        let mut request = Vec::new();
        server
            .read_to_end(&mut request)
            .await
            .expect("server reads");
        server.write_all(&[2; 1_234]).await.expect("server answers");
        server.shutdown().await.expect("server half-closes");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("client reads");
        (request.len(), answer.len())
    };
    let (error, (request, answer)) = tokio::join!(copying, peers);
    assert!(error.is_none(), "{error:?}");
    assert_eq!((request, answer), (65_537, 1_234));
    let counted = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (counted(&bytes.from_client), counted(&bytes.to_client)),
        (65_537, 1_234)
    );
    drop(guard);
    let (flow, totals) = reported(&connections);
    assert_eq!(flow, (65_537, 1_234));
    assert_eq!(totals, (65_537, 1_234));
}
