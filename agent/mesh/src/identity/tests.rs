//! Handshakes between real rustls peers over an in-memory pipe: what is accepted and what is
//! refused, and why.
#![expect(
    clippy::disallowed_methods,
    reason = "tests write their fixtures synchronously"
)]

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("weft-identity-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn store(dir: &TempDir, trust_domain: &str) -> CertStore {
    let ca = LocalCa::load(&CaSource::Generated { dir: dir.0.clone() }, trust_domain).expect("ca");
    CertStore::new(Arc::new(ca), trust_domain, Duration::from_hours(1))
}

fn id(td: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td, "demo", sa)
}

/// Runs a TLS handshake and one byte each way; returns the identity the server saw.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<SpiffeId, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server)
            .accept(a)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().and_then(peer_identity));
        tokio::io::AsyncWriteExt::write_all(&mut tls, b"s")
            .await
            .map_err(|e| e.to_string())?;
        tokio::io::AsyncWriteExt::flush(&mut tls)
            .await
            .map_err(|e| e.to_string())?;
        peer.ok_or_else(|| "no client identity".to_owned())
    };
    let client_side = async move {
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = TlsConnector::from(client)
            .connect(name, b)
            .await
            .map_err(|e| format!("client: {e}"))?;
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut tls, &mut byte)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        Ok::<_, String>(())
    };
    let (server_result, client_result) = tokio::join!(server_side, client_side);
    match (server_result, client_result) {
        (Ok(id), Ok(())) => Ok(id),
        (server, client) => Err(format!("{:?} | {:?}", server.err(), client.err())),
    }
}

/// The HBONE server configuration for `own`, its SVID issued first.
fn server_cfg(store: &CertStore, own: &SpiffeId) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    rt().block_on(store.get_async(own)).expect("svid");
    server_config(store, own)
}

/// The HBONE client configuration for `own` expecting `expected`, its SVID issued first.
fn client_cfg(
    store: &CertStore,
    own: &SpiffeId,
    expected: &SpiffeId,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    rt().block_on(store.get_async(own)).expect("svid");
    client_config(store, own, expected)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn spiffe_ids_parse_only_kubernetes_form() {
    let parsed = SpiffeId::parse("spiffe://cluster.local/ns/demo/sa/client").expect("valid");
    assert_eq!(parsed, id("cluster.local", "client"));
    assert_eq!(
        parsed.to_string(),
        "spiffe://cluster.local/ns/demo/sa/client"
    );
    for bad in [
        "spiffe://cluster.local/ns/demo",
        "https://x/ns/a/sa/b",
        "spiffe://td/ns/a/sa/b/extra",
        "spiffe:///ns/a/sa/b",
    ] {
        assert!(SpiffeId::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn mutual_tls_with_the_expected_identity_succeeds_and_names_the_client() {
    let dir = TempDir::new();
    let store = store(&dir, "cluster.local");
    let (server, client) = (id("cluster.local", "echo"), id("cluster.local", "client"));
    let seen = rt()
        .block_on(handshake(
            server_cfg(&store, &server).expect("server"),
            client_cfg(&store, &client, &server).expect("client"),
        ))
        .expect("handshake");
    assert_eq!(seen, client);
    let certs = store.certs();
    assert_eq!(certs.len(), 2);
    assert!(certs.iter().all(|c| c.seconds_to_expiry > 3500));
}

#[test]
fn a_server_with_another_identity_is_refused_secure_naming() {
    let dir = TempDir::new();
    let store = store(&dir, "cluster.local");
    let client = id("cluster.local", "client");
    let result = rt().block_on(handshake(
        server_cfg(&store, &id("cluster.local", "impostor")).expect("server"),
        client_cfg(&store, &client, &id("cluster.local", "echo")).expect("client"),
    ));
    let error = result.expect_err("must refuse");
    assert!(
        error.contains("expected spiffe://cluster.local/ns/demo/sa/echo"),
        "{error}"
    );
}

#[test]
fn peers_from_another_root_are_refused_both_ways() {
    let (dir_a, dir_b) = (TempDir::new(), TempDir::new());
    let (ours, theirs) = (
        store(&dir_a, "cluster.local"),
        store(&dir_b, "cluster.local"),
    );
    let (server, client) = (id("cluster.local", "echo"), id("cluster.local", "client"));
    let foreign_server = rt().block_on(handshake(
        server_cfg(&theirs, &server).expect("server"),
        client_cfg(&ours, &client, &server).expect("client"),
    ));
    assert!(foreign_server
        .expect_err("server from another root")
        .contains("client:"));
    let foreign_client = rt().block_on(handshake(
        server_cfg(&ours, &server).expect("server"),
        client_cfg(&theirs, &client, &server).expect("client"),
    ));
    let error = foreign_client.expect_err("client from another root");
    assert!(
        error.contains("UnknownIssuer"),
        "the server refused it: {error}"
    );
}

#[test]
fn a_client_from_another_trust_domain_is_refused() {
    let dir = TempDir::new();
    let store = store(&dir, "cluster.local");
    let server = id("cluster.local", "echo");
    // Same CA, but the SVID names another trust domain.
    let result = rt().block_on(handshake(
        server_cfg(&store, &server).expect("server"),
        client_cfg(&store, &id("evil.example", "client"), &server).expect("client"),
    ));
    assert!(
        result.expect_err("must refuse").contains("server:"),
        "the server refused it"
    );
}

#[test]
fn expired_certificates_and_missing_client_certificates_are_refused() {
    let dir = TempDir::new();
    let store = store(&dir, "cluster.local");
    let server = id("cluster.local", "echo");
    let client = id("cluster.local", "client");
    // An expired server certificate signed by our own CA.
    let ca =
        LocalCa::load(&CaSource::Generated { dir: dir.0.clone() }, "cluster.local").expect("ca");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let now = std::time::SystemTime::now();
    let issued = ca
        .issue_valid_between(
            &server,
            &key,
            now - Duration::from_hours(2),
            now - Duration::from_hours(1),
        )
        .expect("issue");
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut expired = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_no_client_auth()
    .with_single_cert(issued.chain, key_der)
    .expect("config");
    expired.alpn_protocols = vec![b"h2".to_vec()];
    let result = rt().block_on(handshake(
        Arc::new(expired),
        client_cfg(&store, &client, &server).expect("client"),
    ));
    assert!(result
        .expect_err("expired")
        .to_lowercase()
        .contains("expired"));

    // A client that presents no certificate at all.
    let mut anonymous = (*client_cfg(&store, &client, &server).expect("client")).clone();
    anonymous.client_auth_cert_resolver = Arc::new(NoClientCert);
    let result = rt().block_on(handshake(
        server_cfg(&store, &server).expect("server"),
        Arc::new(anonymous),
    ));
    let error = result.expect_err("no client certificate");
    assert!(
        error.contains("server: peer sent no certificates"),
        "{error}"
    );
}

#[test]
fn renewal_at_half_life_issues_a_new_serial() {
    let dir = TempDir::new();
    let ca =
        LocalCa::load(&CaSource::Generated { dir: dir.0.clone() }, "cluster.local").expect("ca");
    let store = CertStore::new(Arc::new(ca), "cluster.local", Duration::from_secs(2));
    let client = id("cluster.local", "client");
    let first = rt()
        .block_on(store.get_async(&client))
        .expect("svid")
        .serial
        .clone();
    let config = server_cfg(&store, &client).expect("config");
    assert!(
        Arc::ptr_eq(&config, &server_cfg(&store, &client).expect("config")),
        "handshakes reuse the configuration"
    );
    assert_eq!(rt().block_on(store.renew_due()), 0, "not before half-life");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(rt().block_on(store.renew_due()), 1);
    assert_ne!(
        rt().block_on(store.get_async(&client))
            .expect("svid")
            .serial,
        first
    );
    assert!(
        !Arc::ptr_eq(&config, &server_cfg(&store, &client).expect("config")),
        "a renewed SVID gets a new configuration"
    );
}

#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[test]
fn a_user_supplied_intermediate_signs_svids_that_chain_to_its_root() {
    let dir = TempDir::new();
    let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "user root");
    let root = root_params.self_signed(&root_key).expect("root");
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let mid_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut mid_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    mid_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    mid_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "user intermediate");
    let mid = mid_params
        .signed_by(&mid_key, &root_issuer)
        .expect("intermediate");
    let path = |name: &str| dir.0.join(name);
    std::fs::write(path("mid.crt"), mid.pem()).expect("write");
    std::fs::write(path("mid.key"), mid_key.serialize_pem()).expect("write");
    std::fs::write(path("chain.pem"), root.pem()).expect("write");
    let source = CaSource::Files {
        cert: path("mid.crt"),
        key: path("mid.key"),
        chain: Some(path("chain.pem")),
    };
    let ca = LocalCa::load(&source, "cluster.local").expect("user CA");
    assert_eq!(
        ca.roots(),
        [root.der().clone()],
        "the chain's self-signed end is the trust anchor"
    );
    let store = CertStore::new(Arc::new(ca), "cluster.local", Duration::from_mins(10));
    let (server, client) = (id("cluster.local", "echo"), id("cluster.local", "client"));
    assert_eq!(
        rt().block_on(store.get_async(&client))
            .expect("svid")
            .certified
            .cert
            .len(),
        2,
        "leaf and intermediate are presented"
    );
    let seen = rt()
        .block_on(handshake(
            server_cfg(&store, &server).expect("server"),
            client_cfg(&store, &client, &server).expect("client"),
        ))
        .expect("handshake through the intermediate");
    assert_eq!(seen, client);
}

#[test]
fn reloading_the_trust_bundle_admits_peers_of_the_new_root() {
    let (ours, theirs) = (TempDir::new(), TempDir::new());
    let store = store(&ours, "cluster.local");
    let other = self::store(&theirs, "cluster.local");
    let (server, client) = (id("cluster.local", "echo"), id("cluster.local", "client"));
    let before = rt().block_on(handshake(
        server_cfg(&store, &server).expect("server"),
        client_cfg(&other, &client, &server).expect("client"),
    ));
    assert!(
        before.is_err(),
        "another root is refused before the bundle changes"
    );
    // The operator replaces the CA file with the other root; the agent reloads it.
    std::fs::copy(theirs.0.join("ca.pem"), ours.0.join("ca.pem")).expect("replace CA");
    store
        .reload(&CaSource::Generated {
            dir: ours.0.clone(),
        })
        .expect("reload");
    let after = rt().block_on(handshake(
        server_cfg(&store, &server).expect("server"),
        client_cfg(&other, &client, &server).expect("client"),
    ));
    assert_eq!(after.expect("admitted after reload"), client);
}

/// A CA that takes its time, as a remote one does: every caller that misses the cache is
/// still waiting when the others arrive.
#[derive(Debug)]
struct SlowCa(LocalCa);

impl CaClient for SlowCa {
    fn sign<'a>(
        &'a self,
        id: &'a SpiffeId,
        key: &'a rcgen::KeyPair,
        lifetime: Duration,
    ) -> Signing<'a> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.0.sign(id, key, lifetime).await
        })
    }

    fn roots(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        self.0.roots()
    }

    fn bundle_file(&self) -> &std::path::Path {
        &self.0.bundle_file
    }

    fn signed(&self) -> u64 {
        self.0.signed()
    }
}

#[test]
fn concurrent_requests_for_one_identity_share_one_issuance() {
    let dir = TempDir::new();
    let ca =
        LocalCa::load(&CaSource::Generated { dir: dir.0.clone() }, "cluster.local").expect("ca");
    let store = Arc::new(CertStore::new(
        Arc::new(SlowCa(ca)),
        "cluster.local",
        Duration::from_hours(1),
    ));
    let client = id("cluster.local", "client");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let serials: Vec<String> = runtime.block_on(async {
        let asks: Vec<_> = (0..50)
            .map(|_| {
                let (store, client) = (store.clone(), client.clone());
                tokio::spawn(
                    async move { store.get_async(&client).await.map(|s| s.serial.clone()) },
                )
            })
            .collect();
        let mut serials = Vec::new();
        for ask in asks {
            serials.push(ask.await.expect("task").expect("svid"));
        }
        serials
    });
    assert_eq!(store.signed(), 1, "fifty callers, one issuance");
    assert!(
        serials.iter().all(|s| *s == serials[0]),
        "all got the same SVID"
    );
    assert!(
        matches!(
            store.current(&id("cluster.local", "other")),
            Err(CaError::NotIssued(_))
        ),
        "TLS set-up never issues on its own"
    );
}
