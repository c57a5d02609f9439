//! The HBONE server in process, on loopback: every SPEC status (200, 400, 401, 503), the
//! refusal of a client that does not speak TLS, half-close both ways, early data behind the
//! CONNECT, large transfers, and a server that keeps serving whatever a peer sends.

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use common::{as_stream, closed_port, echo_app, exchange, Answer, Mesh};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_mesh::{hbone::HboneError, ports::AGENT_PORTS};

fn connect(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .expect("request")
}

#[tokio::test]
async fn a_tunnel_carries_bytes_both_ways_and_is_counted() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let tunnel = mesh.open(&mesh.pool(), app, b"").await.expect("tunnel");
    let mut stream = as_stream(tunnel).await;
    assert_eq!(exchange(&mut stream, b"ping").await, b"ping");
    assert_eq!(mesh.tunnels.carried.load(Ordering::Relaxed), 1);
    assert_eq!(mesh.tunnels.from_client.load(Ordering::Relaxed), 4);
    assert_eq!(mesh.tunnels.to_client.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn a_connect_to_an_address_that_is_not_the_listeners_gets_400() {
    let mesh = Mesh::start().await;
    assert_eq!(
        mesh.status_of(connect("127.0.0.2:8080")).await,
        http::StatusCode::BAD_REQUEST
    );
    assert_eq!(mesh.tunnels.carried.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_request_that_is_not_a_connect_gets_400() {
    let mesh = Mesh::start().await;
    let get = http::Request::builder()
        .method(http::Method::GET)
        .uri("https://127.0.0.1:8080/")
        .body(())
        .expect("request");
    assert_eq!(mesh.status_of(get).await, http::StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_connect_to_one_of_the_proxys_own_ports_gets_400() {
    let mesh = Mesh::start().await;
    for port in AGENT_PORTS {
        assert_eq!(
            mesh.status_of(connect(&format!("127.0.0.1:{port}"))).await,
            http::StatusCode::BAD_REQUEST,
            "port {port}"
        );
    }
}

#[tokio::test]
async fn a_connect_to_a_name_instead_of_an_address_gets_400() {
    let mesh = Mesh::start().await;
    assert_eq!(
        mesh.status_of(connect("echo.demo.svc:8080")).await,
        http::StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_denied_tunnel_gets_401_and_its_early_data_reaches_nothing() {
    let mesh = Mesh::start().await;
    *mesh.tunnels.answer.lock().expect("lock") = Answer::Deny;
    let app = echo_app().await;
    let error = mesh
        .open(&mesh.pool(), app, b"early")
        .await
        .expect_err("denied");
    assert!(
        matches!(error, HboneError::Status(s) if s == http::StatusCode::UNAUTHORIZED),
        "{error}"
    );
    assert_eq!(mesh.tunnels.carried.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_unreachable_target_gets_503() {
    let mesh = Mesh::start().await;
    let nobody = closed_port().await;
    let error = mesh.open(&mesh.pool(), nobody, b"").await.expect_err("503");
    assert!(
        matches!(error, HboneError::Status(s) if s == http::StatusCode::SERVICE_UNAVAILABLE),
        "{error}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_speak_tls_is_refused_and_recorded_with_the_reason() {
    let mesh = Mesh::start().await;
    let mut plain = tokio::net::TcpStream::connect(mesh.server)
        .await
        .expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut rest)).await;
    for _ in 0..100 {
        if !mesh.tunnels.refusals().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refusals = mesh.tunnels.refusals();
    assert!(refusals.iter().any(|r| r.contains("TLS")), "{refusals:?}");
    // And the listener still serves a real client.
    let app = echo_app().await;
    let tunnel = mesh.open(&mesh.pool(), app, b"").await.expect("tunnel");
    assert_eq!(
        exchange(&mut as_stream(tunnel).await, b"after").await,
        b"after"
    );
}

#[tokio::test]
async fn the_clients_half_close_reaches_the_app_and_the_reply_still_flows() {
    let mesh = Mesh::start().await;
    // The app answers only once it has seen the client's FIN.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        tcp.read_to_end(&mut request).await.expect("read");
        tcp.write_all(format!("got {} bytes", request.len()).as_bytes())
            .await
            .expect("write");
        tcp.shutdown().await.expect("shutdown");
    });
    let tunnel = mesh.open(&mesh.pool(), app, b"").await.expect("tunnel");
    let mut stream = as_stream(tunnel).await;
    assert_eq!(exchange(&mut stream, b"12345").await, b"got 5 bytes");
}

#[tokio::test]
async fn the_apps_half_close_reaches_the_client_which_can_still_send() {
    let mesh = Mesh::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = listener.local_addr().expect("address");
    let (heard_tx, heard_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut read, mut write) = tcp.into_split();
        write.write_all(b"banner").await.expect("write");
        write.shutdown().await.expect("shutdown");
        let mut heard = Vec::new();
        read.read_to_end(&mut heard).await.expect("read");
        let _ = heard_tx.send(heard);
    });
    let tunnel = mesh.open(&mesh.pool(), app, b"").await.expect("tunnel");
    let mut stream = as_stream(tunnel).await;
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut banner))
        .await
        .expect("EOF in time")
        .expect("read");
    assert_eq!(banner, b"banner");
    stream
        .write_all(b"still here")
        .await
        .expect("write after EOF");
    stream.shutdown().await.expect("shutdown");
    let heard = tokio::time::timeout(Duration::from_secs(5), heard_rx)
        .await
        .expect("in time")
        .expect("heard");
    assert_eq!(heard, b"still here");
}

#[tokio::test]
async fn early_data_sent_with_the_connect_reaches_the_app_first_and_in_order() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let tunnel = mesh
        .open(&mesh.pool(), app, b"hello ")
        .await
        .expect("tunnel");
    let mut stream = as_stream(tunnel).await;
    assert_eq!(exchange(&mut stream, b"world").await, b"hello world");
}

#[tokio::test]
async fn eight_mebibytes_cross_a_tunnel_intact_under_flow_control() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let tunnel = mesh.open(&mesh.pool(), app, b"").await.expect("tunnel");
    let stream = as_stream(tunnel).await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut read, mut write) = stream.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.expect("write");
        write.shutdown().await.expect("shutdown");
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut echoed))
        .await
        .expect("in time")
        .expect("read");
    writer.await.expect("writer");
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the bytes came back changed");
}

#[tokio::test]
async fn streams_a_peer_resets_before_they_open_leave_the_server_serving() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let mut raw = mesh.raw_h2().await;
    for _ in 0..20 {
        raw = raw.ready().await.expect("ready");
        let (_response, mut stream) = raw
            .send_request(connect(&app.to_string()), false)
            .expect("send");
        stream.send_reset(h2::Reason::CANCEL);
    }
    let tunnel = mesh.open(&mesh.pool(), app, b"").await.expect("tunnel");
    assert_eq!(exchange(&mut as_stream(tunnel).await, b"ok").await, b"ok");
}
