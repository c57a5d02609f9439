//! The remote CA client in process, against a CA served on loopback with hyper over rustls:
//! it gets a signed SVID for its own key with its token, names the status and reason of a
//! refusal, refuses an oversized answer, and refuses a CA it does not trust.
#![expect(
    clippy::disallowed_methods,
    reason = "tests write their token fixture synchronously"
)]

mod common;

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use bytes::Bytes;
use common::{id, TempDir, TRUST_DOMAIN};
use http_body_util::{BodyExt as _, Full};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_mesh::identity::{CaClient as _, CaSource, LocalCa, RemoteCa, SpiffeId};

/// What the in-process CA answers.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Sign,
    Refuse,
    Flood,
}

struct InProcessCa {
    url: String,
    dir: TempDir,
    requests: Arc<AtomicUsize>,
    tokens: Arc<Mutex<Vec<String>>>,
}

async fn serve_ca(behaviour: Behaviour) -> InProcessCa {
    let dir = TempDir::new();
    let ca = Arc::new(
        LocalCa::load(&CaSource::Generated { dir: dir.0.clone() }, TRUST_DOMAIN).expect("ca"),
    );
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let chain = ca
        .issue_server(&["localhost".into()], &key, Duration::from_hours(1))
        .expect("server certificate");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_no_client_auth()
    .with_single_cert(
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let (counted, seen) = (requests.clone(), tokens.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let (ca, counted, seen) = (ca.clone(), counted.clone(), seen.clone());
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let (ca, counted, seen) = (ca.clone(), counted.clone(), seen.clone());
                    async move {
                        counted.fetch_add(1, Ordering::Relaxed);
                        let token = request
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        seen.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(token);
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .expect("body")
                            .to_bytes();
                        let (status, answer) = answer(&ca, behaviour, &body);
                        let mut response = hyper::Response::new(Full::new(Bytes::from(answer)));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service),
            );
        }
    });
    std::fs::write(dir.0.join("token"), "secret-token\n").expect("token");
    InProcessCa {
        url: format!("https://localhost:{port}"),
        dir,
        requests,
        tokens,
    }
}

fn answer(ca: &LocalCa, behaviour: Behaviour, body: &[u8]) -> (http::StatusCode, String) {
    match behaviour {
        Behaviour::Sign => {
            let request: serde_json::Value = serde_json::from_slice(body).expect("json");
            let csr = request["csr"].as_str().expect("csr");
            let id = LocalCa::csr_identity(csr).expect("identity");
            let issued = ca
                .issue_for_csr(&id, csr, Duration::from_hours(1))
                .expect("issued");
            let pem: String = issued
                .chain
                .iter()
                .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
                .collect();
            (
                http::StatusCode::OK,
                serde_json::json!({ "chain": pem }).to_string(),
            )
        }
        Behaviour::Refuse => (
            http::StatusCode::FORBIDDEN,
            serde_json::json!({"error": "no pod of demo/client on this node"}).to_string(),
        ),
        Behaviour::Flood => (http::StatusCode::OK, "x".repeat(1024 * 1024)),
    }
}

fn client(ca: &InProcessCa, root_dir: &TempDir) -> RemoteCa {
    RemoteCa::new(&ca.url, &root_dir.0.join("ca.pem"), &ca.dir.0.join("token")).expect("client")
}

fn key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

#[tokio::test]
async fn the_remote_client_gets_an_svid_for_its_own_key_with_its_token() {
    let ca = serve_ca(Behaviour::Sign).await;
    let remote = client(&ca, &ca.dir);
    let me: SpiffeId = id("client");
    let issued = remote
        .sign(&me, &key(), Duration::from_hours(1))
        .await
        .expect("signed");
    let leaf = &issued.chain[0];
    assert_eq!(weft_mesh::identity::peer_identity(leaf), Some(me));
    assert_eq!(remote.signed(), 1);
    assert_eq!(ca.requests.load(Ordering::Relaxed), 1);
    assert_eq!(
        ca.tokens.lock().expect("tokens").as_slice(),
        ["Bearer secret-token"],
        "the token is sent trimmed, as a bearer token"
    );
}

#[tokio::test]
async fn a_refusal_names_the_status_and_the_cas_reason() {
    let ca = serve_ca(Behaviour::Refuse).await;
    let remote = client(&ca, &ca.dir);
    let error = remote
        .sign(&id("client"), &key(), Duration::from_hours(1))
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("403") && error.contains("no pod of demo/client on this node"),
        "{error}"
    );
    assert_eq!(remote.signed(), 0);
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let ca = serve_ca(Behaviour::Flood).await;
    let remote = client(&ca, &ca.dir);
    let error = remote
        .sign(&id("client"), &key(), Duration::from_hours(1))
        .await
        .expect_err("too large")
        .to_string();
    assert!(error.contains("reading the answer"), "{error}");
}

#[tokio::test]
async fn a_ca_not_signed_by_the_mounted_root_is_refused() {
    let ca = serve_ca(Behaviour::Sign).await;
    let other_root = TempDir::new();
    let _other = LocalCa::load(
        &CaSource::Generated {
            dir: other_root.0.clone(),
        },
        TRUST_DOMAIN,
    )
    .expect("other ca");
    let remote = client(&ca, &other_root);
    let error = remote
        .sign(&id("client"), &key(), Duration::from_hours(1))
        .await
        .expect_err("untrusted")
        .to_string();
    assert!(error.contains("TLS"), "{error}");
    assert_eq!(ca.requests.load(Ordering::Relaxed), 0);
}
