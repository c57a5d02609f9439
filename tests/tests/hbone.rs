//! HBONE between agents on the real kernel: what crosses the fabric is TLS 1.3 to port 15008
//! and nothing else, identities are proven and recorded, tunnels share pooled HTTP/2
//! connections, SVIDs rotate under load, malformed input never stops an agent, and SIGTERM
//! drains: open connections finish and the agent exits within `--drain-timeout`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use weft_harness::{eventually, netns, require_privileges};
use weft_mesh::identity::SpiffeId;

mod common;
use common::{Fixture, Report, TESTPOD, VIP};

fn id(name: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "demo", name)
}

/// The admin API's live connections of a node.
fn connections(f: &Fixture, node: &str) -> Vec<serde_json::Value> {
    let list = f
        .cluster
        .admin(f.cluster.node(node), "/connections")
        .expect("connections");
    list.as_array().cloned().unwrap_or_default()
}

fn cert_serial(f: &Fixture, node: &str, identity: &SpiffeId) -> Option<String> {
    let certs = f
        .cluster
        .admin(f.cluster.node(node), "/certs")
        .expect("certs");
    certs
        .as_array()?
        .iter()
        .find(|c| c["identity"] == identity.to_string())
        .and_then(|c| c["serial"].as_str().map(str::to_owned))
}

fn pool_opened(f: &Fixture, node: &str) -> u64 {
    let stats = f
        .cluster
        .admin(f.cluster.node(node), "/stats")
        .expect("stats");
    stats["pool"]["connectionsOpened"]
        .as_u64()
        .expect("pool counter")
}

/// Starts `weft-testpod send` in the background; returns the child to wait on.
fn send_in_background(f: &Fixture, from: &str, to: &str, args: &[&str]) -> std::process::Child {
    let pod = f.pod("demo", from);
    let mut full = vec!["send", to];
    full.extend_from_slice(args);
    weft_harness::Cluster::pod_command(pod, TESTPOD, &full)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start testpod")
}

fn wait_report(child: std::process::Child) -> Report {
    let out = child.wait_with_output().expect("testpod");
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Report::parse(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn cross_node_traffic_is_tls13_on_15008_and_the_server_records_the_client_identity() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let (client, server) = (
        f.pod("demo", "client").clone(),
        f.pod("demo", "server-a").clone(),
    );
    let pcap = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-fabric.pcap", f.cluster.run_id().root_name()));
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            f.cluster.fabric_netns(),
            "tcpdump",
            "-i",
            "weft-fabric",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(500));
    let marker = format!("WEFT-MARKER-{:016x}", rand::random::<u64>());
    let held = send_in_background(
        &f,
        "client",
        &format!("{}:9000", server.ip),
        &["1048576", "--marker", &marker, "--hold-ms", "1500"],
    );
    // While the connection is open, both agents show it with the peer's proven identity.
    eventually(
        Duration::from_secs(5),
        "server agent never showed the mTLS connection",
        || {
            connections(&f, "node1").iter().any(|c| {
                // Live connections show the bytes they moved so far (the 1 MiB sent before the hold).
                c["security"] == "mtls"
                    && c["peerIdentity"] == id("client").to_string()
                    && c["direction"] == "inbound"
                    && c["bytesFromClient"]
                        .as_u64()
                        .is_some_and(|b| b >= 1_048_576)
            })
        },
    );
    assert!(connections(&f, "node0")
        .iter()
        .any(|c| c["peerIdentity"] == id("server-a").to_string()));
    let report = wait_report(held);
    report.assert_intact(1_048_576 + marker.len() as u64);
    assert_eq!(
        report.server_saw(),
        client.ip.to_string(),
        "the echo server sees the client pod IP"
    );
    std::thread::sleep(Duration::from_millis(300));
    #[expect(clippy::cast_possible_wrap, reason = "PIDs fit in i32")]
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = tcpdump.wait();

    assert_only_tls_crossed(&pcap, &marker);
    let _ = std::fs::remove_file(&pcap);
}

/// What the fabric capture must show: the transfer, as TLS 1.3 to 15008, and no plaintext.
fn assert_only_tls_crossed(pcap: &std::path::Path, marker: &str) {
    let bytes = std::fs::read(pcap).expect("pcap");
    assert!(
        bytes.len() > 1_048_576,
        "the capture saw the transfer ({} bytes)",
        bytes.len()
    );
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the marker crossed the fabric in plaintext"
    );
    let tshark = |filter: &str, field: &str| -> String {
        let out = Command::new("tshark")
            .args(["-r"])
            .arg(pcap)
            .args(["-Y", filter, "-T", "fields", "-e", field])
            .output()
            .expect("tshark");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !tshark(
            "tls.handshake.type == 1 && tcp.dstport == 15008",
            "tcp.dstport"
        )
        .trim()
        .is_empty(),
        "a ClientHello to 15008"
    );
    assert!(
        tshark(
            "tls.handshake.type == 2",
            "tls.handshake.extensions.supported_version"
        )
        .contains("0x0304"),
        "TLS 1.3"
    );
    assert!(
        tshark("tcp.port == 9000", "frame.number").trim().is_empty(),
        "no plaintext connection to the app port crossed"
    );
}

#[test]
fn a_thousand_short_connections_ride_a_handful_of_http2_connections() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let server = f.pod("demo", "server-a").clone();
    let (pool0, out0, in1) = (
        pool_opened(&f, "node0"),
        f.stat("node0", "outboundOpened"),
        f.stat("node1", "inboundOpened"),
    );
    let out = f
        .cluster
        .run_in_pod(
            f.pod("demo", "client"),
            TESTPOD,
            &[
                "send",
                &format!("{}:9000", server.ip),
                "64",
                "--count",
                "1000",
            ],
        )
        .expect("testpod");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = Report::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report.get("connections"), "1000");
    report.assert_intact(64);
    assert_eq!(f.stat("node0", "outboundOpened") - out0, 1000);
    assert_eq!(f.stat("node1", "inboundOpened") - in1, 1000);
    let pooled = pool_opened(&f, "node0") - pool0;
    assert!(
        (1..=4).contains(&pooled),
        "1000 tunnels used {pooled} HTTP/2 connections"
    );
    // A Service VIP to an enrolled backend rides the same kind of tunnel.
    let via_service = f
        .send(f.pod("demo", "client"), &format!("{VIP}:80"), 4096)
        .expect("service");
    via_service.assert_intact(4096);
}

/// A request every 50 ms through the Service VIP, each on a new connection, from demo/client
/// until [`RequestLoop::finish`].
struct RequestLoop {
    child: std::process::Child,
    stop: PathBuf,
}

impl RequestLoop {
    fn start(f: &Fixture, name: &str) -> Self {
        let stop = f.logs.join(format!("stop-{name}"));
        let child = background(
            f.pod("demo", "client"),
            TESTPOD,
            &[
                "loop",
                &format!("{VIP}:80"),
                "--every-ms",
                "50",
                "--stop-file",
                stop.to_str().expect("path"),
            ],
        );
        Self { child, stop }
    }

    /// Stops the loop and asserts it ran and nothing failed.
    fn finish(self, what: &str) {
        std::fs::write(&self.stop, b"").expect("stop file");
        let out = self.child.wait_with_output().expect("request loop");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = stdout
            .lines()
            .find(|l| l.starts_with("ok="))
            .unwrap_or_else(|| panic!("no summary from the loop: {stdout}"));
        let ok: u64 = summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("ok="))
            .and_then(|v| v.parse().ok())
            .expect("ok=");
        assert!(ok > 20, "{what}: the loop ran: {summary}");
        assert!(
            summary.contains(" failed=0 "),
            "{what}: no request failed: {summary}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn svids_rotate_at_half_life_without_breaking_open_connections() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start_with(&["--svid-lifetime-secs", "20"]);
    let requests = RequestLoop::start(&f, "rotation");
    let server = f.pod("demo", "server-a").clone();
    let target = format!("{}:9000", server.ip);
    let long = send_in_background(&f, "client", &target, &["262144", "--hold-ms", "24000"]);
    eventually(
        Duration::from_secs(5),
        "the long connection never opened",
        || {
            connections(&f, "node1")
                .iter()
                .any(|c| c["peerIdentity"] == id("client").to_string())
        },
    );
    let first = cert_serial(&f, "node0", &id("client")).expect("client SVID");
    eventually(
        Duration::from_secs(15),
        "the client SVID was not renewed at half-life",
        || cert_serial(&f, "node0", &id("client")).is_some_and(|s| s != first),
    );
    let renewed = cert_serial(&f, "node0", &id("client")).expect("renewed SVID");
    // A new connection proves the new certificate to the server.
    let fresh = send_in_background(&f, "client", &target, &["1024", "--hold-ms", "2000"]);
    eventually(
        Duration::from_secs(5),
        "the server never saw the renewed certificate",
        || {
            connections(&f, "node1")
                .iter()
                .any(|c| c["peerCertificateSerial"] == renewed.as_str())
        },
    );
    wait_report(fresh).assert_intact(1024);
    // The connection opened under the first certificate completes across the renewal.
    wait_report(long).assert_intact(262_144);
    requests.finish("SVID renewal under a request loop");
}

#[test]
fn a_trust_bundle_reload_under_a_request_loop_fails_no_connection() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let requests = RequestLoop::start(&f, "reload");
    std::thread::sleep(Duration::from_secs(2));
    let before = cert_serial(&f, "node0", &id("client")).expect("client SVID");
    // Rewritten in place, as a Secret update lands: both agents see the bundle change, swap
    // their roots and reissue every SVID, while connections keep opening.
    let bundle = f.logs.join("ca").join("ca.pem");
    let staged = bundle.with_extension("pem.new");
    std::fs::copy(&bundle, &staged).expect("copy bundle");
    std::fs::rename(&staged, &bundle).expect("replace bundle");
    eventually(
        Duration::from_secs(5),
        "both agents reloaded the trust bundle",
        || {
            f.log("node0").contains("trust bundle reloaded")
                && f.log("node1").contains("trust bundle reloaded")
        },
    );
    eventually(
        Duration::from_secs(5),
        "the client's SVID was reissued after the reload",
        || cert_serial(&f, "node0", &id("client")).is_some_and(|s| s != before),
    );
    std::thread::sleep(Duration::from_secs(2));
    requests.finish("trust bundle reload");
}

async fn h2_connect(
    config: Arc<rustls::ClientConfig>,
    server: SocketAddr,
) -> anyhow::Result<h2::client::SendRequest<bytes::Bytes>> {
    let tls = weft_harness::hbone_client::tls_connect(config, server).await?;
    let (send, driver) = h2::client::handshake(tls).await?;
    tokio::spawn(driver);
    Ok(send)
}

async fn status_of(
    send: &h2::client::SendRequest<bytes::Bytes>,
    method: http::Method,
    uri: &str,
) -> anyhow::Result<u16> {
    let mut send = send.clone().ready().await?;
    let request = http::Request::builder().method(method).uri(uri).body(())?;
    let (response, _stream) = send.send_request(request, false)?;
    Ok(response.await?.status().as_u16())
}

#[test]
fn malformed_hbone_input_gets_the_spec_status_or_a_closed_connection_and_the_agent_keeps_serving() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let server = f.pod("demo", "server-a").clone();
    let other_node_pod = f.pod("demo", "client").clone();
    let node1 = f.cluster.node("node1").netns.clone();
    let hbone = SocketAddr::new(server.ip.into(), 15008);
    let (server_ip, elsewhere) = (server.ip, other_node_pod.ip);
    let statuses = weft_harness::hbone_client::run(
        &f.logs.join("ca"),
        &node1,
        &id("client"),
        &id("server-a"),
        hbone,
        Box::new(move |config, addr| {
            Box::pin(async move {
                let send = h2_connect(config, addr).await?;
                Ok(vec![
                    status_of(
                        &send,
                        http::Method::GET,
                        &format!("http://{server_ip}:9000/"),
                    )
                    .await?,
                    status_of(&send, http::Method::CONNECT, "weft.invalid:9000").await?,
                    status_of(&send, http::Method::CONNECT, &format!("{elsewhere}:9000")).await?,
                    status_of(&send, http::Method::CONNECT, &format!("{server_ip}:9999")).await?,
                    status_of(&send, http::Method::CONNECT, &format!("{server_ip}:15008")).await?,
                    status_of(&send, http::Method::CONNECT, &format!("{server_ip}:15006")).await?,
                    status_of(&send, http::Method::CONNECT, &format!("{server_ip}:9000")).await?,
                ])
            })
        }),
    )
    .expect("HBONE requests");
    // GET, a name instead of IP:port, a pod on another node: 400; nothing on 9999: 503; the
    // agent's own HBONE and capture ports: 400 at once; ok: 200.
    assert_eq!(statuses, [400, 400, 400, 503, 400, 400, 200]);

    assert!(
        garbage_is_closed(&f, &node1, hbone),
        "the agent closed a connection that sent garbage"
    );
    assert!(
        junk_certificate_is_refused(&node1, hbone),
        "a junk certificate was refused"
    );
    assert!(
        f.log("node1")
            .contains("HBONE connection refused or failed"),
        "the agent logged why"
    );

    // And the agent still serves real traffic.
    f.send(
        f.pod("demo", "client"),
        &format!("{}:9000", server.ip),
        4096,
    )
    .expect("still serving")
    .assert_intact(4096);
}

/// A verifier that trusts any server: the junk client is only here to be refused.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sends garbage after a good TLS handshake; true when the agent closes the connection.
fn garbage_is_closed(f: &Fixture, node1: &str, hbone: SocketAddr) -> bool {
    weft_harness::hbone_client::run(
        &f.logs.join("ca"),
        node1,
        &id("client"),
        &id("server-a"),
        hbone,
        Box::new(|config, addr| {
            Box::pin(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut tls = weft_harness::hbone_client::tls_connect(config, addr).await?;
                tls.write_all(b"GARBAGE\x00\x01\x02 this is not an HTTP/2 preface at all\r\n\r\n")
                    .await?;
                let mut buffer = vec![0u8; 4096];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        match tls.read(&mut buffer).await {
                            Ok(0) | Err(_) => return true,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                Ok(read.unwrap_or(false))
            })
        }),
    )
    .expect("garbage exchange")
}

/// Handshakes with a self-signed certificate; true when the agent refuses it.
fn junk_certificate_is_refused(node1: &str, hbone: SocketAddr) -> bool {
    let server_ip = hbone.ip();
    netns::block_on(node1, move || async move {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["junk.example".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        // TLS 1.3 may finish the client side before the server has refused the certificate;
        // then the first request fails instead of the handshake.
        let refused = match h2_connect(Arc::new(config), hbone).await {
            Err(_) => true,
            Ok(send) => status_of(&send, http::Method::CONNECT, &format!("{server_ip}:9000"))
                .await
                .is_err(),
        };
        Ok(refused)
    })
    .unwrap_or(false)
}

/// SVIDs signed by a node's CA so far (`/stats` `ca.signed`).
fn signed(f: &Fixture, node: &str) -> u64 {
    let stats = f
        .cluster
        .admin(f.cluster.node(node), "/stats")
        .expect("stats");
    stats["ca"]["signed"].as_u64().expect("ca.signed")
}

#[test]
fn fifty_concurrent_first_connections_of_a_new_identity_cause_one_issuance() {
    if !require_privileges() {
        return;
    }
    let f = Fixture::start();
    let before = signed(&f, "node0");
    // demo/client comes back under a new service account: a new identity, never issued.
    let pods: String = f
        .cluster
        .pods
        .iter()
        .map(|p| {
            let yaml = weft_harness::manifests::pod(p, &[]);
            if p.name == "client" {
                yaml.replace(
                    "serviceAccountName: client",
                    "serviceAccountName: client-v2",
                )
            } else {
                yaml
            }
        })
        .collect::<Vec<_>>()
        .join("---\n");
    f.manifests.write("pods.yaml", &pods).expect("pods");
    eventually(
        Duration::from_secs(5),
        "client re-enrolled as client-v2",
        || {
            f.cluster
                .admin(f.cluster.node("node0"), "/workloads")
                .is_ok_and(|w| w.to_string().contains("client-v2"))
        },
    );
    let target = format!("{}:9000", f.pod("demo", "server-a").ip);
    let senders: Vec<std::process::Child> = (0..50)
        .map(|_| send_in_background(&f, "client", &target, &["4096"]))
        .collect();
    for sender in senders {
        wait_report(sender).assert_intact(4096);
    }
    assert_eq!(
        signed(&f, "node0") - before,
        1,
        "one SVID for the new identity, however many connections asked for it at once"
    );
    assert!(
        cert_serial(&f, "node0", &id("client-v2")).is_some(),
        "the new identity holds its SVID"
    );
}

const DRAIN_SECS: u64 = 8;

fn background(pod: &weft_harness::PodHandle, program: &str, args: &[&str]) -> std::process::Child {
    weft_harness::Cluster::pod_command(pod, program, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start in pod")
}

#[test]
fn sigterm_lets_open_connections_finish_and_exits_within_the_drain_deadline() {
    if !require_privileges() {
        return;
    }
    let drain = DRAIN_SECS.to_string();
    let f = Fixture::start_with(&["--drain-timeout-secs", &drain]);
    let (client, server) = (
        f.pod("demo", "client").clone(),
        f.pod("demo", "server-a").clone(),
    );
    let echo = std::path::Path::new(TESTPOD).with_file_name("weft-echo");
    f.cluster
        .spawn_in_pod(
            &server,
            echo.to_str().expect("path"),
            &["0.0.0.0:8080", "server-a"],
        )
        .expect("echo server");
    let url = format!("http://{}:8080/", server.ip);
    eventually(
        Duration::from_secs(5),
        "the echo server answers through the mesh",
        || {
            f.cluster
                .run_in_pod(
                    &client,
                    "curl",
                    &["-s", "-o", "/dev/null", "--max-time", "1", &url],
                )
                .is_ok_and(|o| o.status.success())
        },
    );
    // Twenty transfers that stay open 5 s, through node1's agent (the one stopped).
    let target = format!("{}:9000", server.ip);
    let transfers: Vec<std::process::Child> = (0..20)
        .map(|_| {
            background(
                &client,
                TESTPOD,
                &["send", &target, "65536", "--hold-ms", "5000"],
            )
        })
        .collect();
    // And 50 requests at 10 a second over one kept-alive connection.
    let requests = format!("http://{}:8080/[1-50]", server.ip);
    let request_loop = background(
        &client,
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            "--rate",
            "10/s",
            "--max-time",
            "30",
            &requests,
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let stopping = Instant::now();
    f.cluster
        .stop(f.agents[1], nix::sys::signal::Signal::SIGTERM);
    let exited_after = stopping.elapsed();
    for transfer in transfers {
        let out = transfer.wait_with_output().expect("transfer");
        assert!(
            out.status.success(),
            "a long transfer failed across the drain: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Report::parse(&String::from_utf8_lossy(&out.stdout)).assert_intact(65536);
    }
    let out = request_loop.wait_with_output().expect("curl");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 50, "every request answered: {lines:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("200 ")),
        "no request failed during the drain: {lines:?}"
    );
    let connects: u32 = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
        .sum();
    assert_eq!(connects, 1, "the requests rode one kept-alive connection");
    assert!(
        exited_after < Duration::from_secs(DRAIN_SECS + 2),
        "the agent exited {exited_after:?} after SIGTERM; the drain deadline is {DRAIN_SECS} s"
    );
    let agent_log = f.log("node1");
    assert!(
        agent_log.contains("draining: listeners stop accepting"),
        "the drain is logged"
    );
    assert!(
        agent_log.contains("drained: every connection finished"),
        "the open connections finished before the deadline"
    );
}
