//! The HBONE pool in process: connections are reused per (source, identities, address),
//! tunnels opened at once share the one connection being set up, concurrent streams spread
//! over a few connections per peer before they share the least loaded, connections hold
//! at most `MAX_STREAMS` tunnels, give their stream slots back, are keyed by identity, refuse a
//! server that proves the wrong identity, and move to a new connection after an SVID renewal
//! while open tunnels finish on the old one.

mod common;

use std::time::Duration;

use common::{as_stream, echo_app, exchange, id, Mesh};
use weft_mesh::{
    hbone::{HboneError, MAX_STREAMS},
    socket::Plain,
};

#[tokio::test]
async fn sequential_tunnels_reuse_one_connection() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let pool = mesh.pool();
    for i in 0..10u8 {
        let tunnel = mesh.open(&pool, app, b"").await.expect("tunnel");
        assert_eq!(exchange(&mut as_stream(tunnel).await, &[i]).await, [i]);
    }
    assert_eq!(pool.stats().connections_opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_tunnels_wait_for_the_one_connection_being_set_up() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    // One connection per key, so a late opener cannot spread instead (spreading has its test).
    let pool = std::sync::Arc::new(mesh.pool_spreading(1));
    let mesh = std::sync::Arc::new(mesh);
    let opening: Vec<_> = (0..8u8)
        .map(|i| {
            let (mesh, pool) = (mesh.clone(), pool.clone());
            tokio::spawn(async move {
                let tunnel = mesh.open(&pool, app, b"").await.expect("tunnel");
                assert_eq!(exchange(&mut as_stream(tunnel).await, &[i]).await, [i]);
            })
        })
        .collect();
    for task in opening {
        task.await.expect("opener");
    }
    // Eight at once found no connection; one handshake served them all.
    assert_eq!(pool.stats().connections_opened, 1, "{:?}", pool.stats());
    assert_eq!(pool.openers(), 0);
}

#[tokio::test]
async fn a_connection_carries_at_most_max_streams_tunnels_then_another_opens() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let pool = mesh.pool_spreading(1);
    let mut held = Vec::new();
    for _ in 0..=MAX_STREAMS {
        held.push(mesh.open(&pool, app, b"").await.expect("tunnel"));
    }
    let stats = pool.stats();
    assert_eq!(stats.connections_opened, 2, "{stats:?}");
    assert_eq!(stats.streams_open, MAX_STREAMS as usize + 1);
    drop(held);
    assert_eq!(pool.stats().streams_open, 0, "slots are given back");
    // A freed connection takes new tunnels again.
    let tunnel = mesh.open(&pool, app, b"").await.expect("tunnel");
    drop(tunnel);
    assert_eq!(pool.stats().connections_opened, 2);
}

#[tokio::test]
async fn concurrent_streams_spread_over_up_to_spread_connections_then_share_the_least_loaded() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let pool = mesh.pool();
    let spread = weft_mesh::hbone::client::SPREAD_CONNECTIONS;
    let mut held = Vec::new();
    for i in 0..spread {
        held.push(mesh.open(&pool, app, b"").await.expect("tunnel"));
        // Each tunnel found every connection carrying a stream, so it opened its own.
        assert_eq!(pool.stats().connections_opened, i as u64 + 1);
    }
    // Past the spread, tunnels share: two more per connection, none opened.
    for _ in 0..2 * spread {
        held.push(mesh.open(&pool, app, b"").await.expect("tunnel"));
    }
    let stats = pool.stats();
    assert_eq!(stats.connections_opened, spread as u64, "{stats:?}");
    assert_eq!(stats.streams_open, 3 * spread);
    // Every held tunnel still carries its bytes, whichever connection it is on.
    for (i, tunnel) in held.into_iter().enumerate() {
        let byte = u8::try_from(i).expect("few tunnels");
        assert_eq!(
            exchange(&mut as_stream(tunnel).await, &[byte]).await,
            [byte]
        );
    }
    // A lone tunnel after that rides a pooled connection: idle ones are not multiplied.
    drop(mesh.open(&pool, app, b"").await.expect("tunnel"));
    assert_eq!(pool.stats().connections_opened, spread as u64);
}

#[tokio::test]
async fn tunnels_of_different_source_identities_never_share_a_connection() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let pool = mesh.pool();
    let first = mesh.open(&pool, app, b"").await.expect("tunnel");
    let other = id("other-client");
    let second = pool
        .open(
            weft_mesh::hbone::client::Source {
                name: "demo/other",
                identity: &other,
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                sockets: &Plain,
                carried: None,
                traceparent: None,
            },
            &mesh.tunnels.identity,
            mesh.server,
            app,
            Duration::from_secs(5),
            bytes::Bytes::new,
        )
        .await
        .expect("tunnel");
    assert_eq!(pool.stats().connections_opened, 2);
    drop((first, second));
}

#[tokio::test]
async fn a_server_proving_another_identity_than_expected_is_refused() {
    let mesh = Mesh::start().await;
    let app = echo_app().await;
    let pool = mesh.pool();
    let impostor_expected = id("somebody-else");
    let error = pool
        .open(
            mesh.source(),
            &impostor_expected,
            mesh.server,
            app,
            Duration::from_secs(5),
            bytes::Bytes::new,
        )
        .await
        .expect_err("wrong identity");
    assert!(matches!(error, HboneError::Tls { .. }), "{error}");
    assert_eq!(pool.stats().connections_open, 0);
}

#[tokio::test]
async fn after_an_svid_renewal_new_tunnels_take_a_new_connection_and_old_ones_finish() {
    // Renewal is due at 45-55% of the lifetime.
    let mesh = Mesh::with_lifetime(Duration::from_secs(4)).await;
    let app = echo_app().await;
    let pool = mesh.pool();
    let old = as_stream(mesh.open(&pool, app, b"").await.expect("tunnel")).await;
    let serial = mesh
        .certs
        .current(&mesh.client)
        .expect("svid")
        .serial
        .clone();
    let mut renewed = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        renewed += mesh.certs.renew_due().await;
        if mesh.certs.current(&mesh.client).expect("svid").serial != serial {
            break;
        }
    }
    assert!(renewed > 0, "nothing was renewed");
    let new = as_stream(mesh.open(&pool, app, b"").await.expect("tunnel")).await;
    assert_eq!(pool.stats().connections_opened, 2);
    let (mut old, mut new) = (old, new);
    assert_eq!(exchange(&mut new, b"new").await, b"new");
    assert_eq!(exchange(&mut old, b"old").await, b"old");
}

/// A listener that accepts and never completes TLS: a peer that does not answer.
async fn silent_peer() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

/// Opens a tunnel from the mesh's source to `peer`, which must prove the mesh's server identity.
async fn open_to(
    mesh: &Mesh,
    pool: &weft_mesh::hbone::client::Pool,
    peer: &tokio::net::TcpListener,
    connect_timeout: Duration,
) -> Result<weft_mesh::hbone::client::Tunnel, HboneError> {
    let address = peer.local_addr().expect("address");
    pool.open(
        mesh.source(),
        &mesh.tunnels.identity,
        address,
        address,
        connect_timeout,
        bytes::Bytes::new,
    )
    .await
}

#[tokio::test]
async fn a_destination_that_does_not_answer_in_time_is_a_timed_out_error() {
    let mesh = Mesh::start().await;
    let pool = mesh.pool();
    // The handshake must give up, not hang.
    let silent = silent_peer().await;
    let opening = open_to(&mesh, &pool, &silent, Duration::from_millis(300));
    let error = tokio::time::timeout(Duration::from_millis(500), opening)
        .await
        .map_or(HboneError::TimedOut, |r| r.expect_err("no answer"));
    assert!(error.timed_out(), "{error}");
}

#[tokio::test]
async fn an_open_its_caller_gives_up_on_leaves_no_opener_behind() {
    let mesh = Mesh::start().await;
    let pool = mesh.pool();
    let silent = silent_peer().await;
    let open = || open_to(&mesh, &pool, &silent, Duration::from_secs(5));
    // Two callers, one opening and one waiting behind it, both cancelled mid-handshake (as the
    // agent's outer connect deadline cancels them).
    let both = async { tokio::join!(open(), open()) };
    assert!(
        tokio::time::timeout(Duration::from_millis(200), both)
            .await
            .is_err(),
        "the silent peer never answers"
    );
    assert_eq!(pool.openers(), 0, "the gate went with its last opener");
}
