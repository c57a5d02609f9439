//! The CA service over real TLS, signing with a user-supplied intermediate, deciding from a
//! TokenReview and its pod watch answered by the fake API server; the agent's remote signer is
//! the client.
#![expect(
    clippy::disallowed_methods,
    reason = "tests write their fixtures synchronously"
)]

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;

use super::{
    authz::{watch_pods, PodIndex, NODE_NAME_EXTRA},
    serve, CaConfig,
};
use weft_fake_api::FakeApi;
use weft_mesh::identity::{CaError, CaSource, RemoteCa, Signer, SpiffeId};

/// A listener's serving with a drain that stays off while the trigger is held.
fn serving() -> (weft_mesh::drain::Trigger, weft_mesh::serve::Serving) {
    let (trigger, drain) = weft_mesh::drain::channel();
    let serving = weft_mesh::serve::Serving {
        name: "ca",
        limits: Arc::default(),
        drain,
        on_drain: weft_mesh::serve::OnDrain::Stop,
    };
    (trigger, serving)
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A user root and an intermediate under it, written as the `weft-ca` Secret would mount them.
fn user_intermediate(dir: &TempDir) -> (CaSource, PathBuf) {
    let key = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let ca_params = |name: &str| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
    };
    let (root_key, root_params) = (key(), ca_params("user root"));
    let root = root_params.self_signed(&root_key).expect("root");
    let issuer = rcgen::Issuer::new(root_params, root_key);
    let mid_key = key();
    let mid = ca_params("user intermediate")
        .signed_by(&mid_key, &issuer)
        .expect("intermediate");
    let path = |name: &str| dir.0.join(name);
    std::fs::write(path("tls.crt"), mid.pem()).expect("write");
    std::fs::write(path("tls.key"), mid_key.serialize_pem()).expect("write");
    std::fs::write(path("chain.pem"), root.pem()).expect("write");
    std::fs::write(path("root.pem"), root.pem()).expect("write");
    std::fs::write(path("token"), "agent-token-node-a\n").expect("write");
    let source = CaSource::Files {
        cert: path("tls.crt"),
        key: path("tls.key"),
        chain: Some(path("chain.pem")),
    };
    (source, path("root.pem"))
}

fn pod(namespace: &str, name: &str, service_account: &str, node: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": {"nodeName": node, "serviceAccountName": service_account, "containers": []}})
}

/// A CA serving over TLS with the user's intermediate, the fake API server answering its pod
/// watch (`pods`) and TokenReviews (as the agent of node-a); the agent's remote signer for it.
async fn serving_ca(pods: Vec<serde_json::Value>) -> (Signer, FakeApi, TempDir) {
    let dir =
        TempDir(std::env::temp_dir().join(format!("weft-ca-test-{:016x}", rand::random::<u64>())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let (signing, root) = user_intermediate(&dir);
    let (client, fake) = FakeApi::start();
    fake.set_list("/api/v1/pods", pods);
    fake.set_token_review(json!({
        "authenticated": true,
        "user": {"username": "system:serviceaccount:weft-system:weft-agent", "extra": {NODE_NAME_EXTRA: ["node-a"]}},
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let config = CaConfig {
        listen: listener.local_addr().expect("addr"),
        readiness: "127.0.0.1:0".parse().expect("addr"),
        signing,
        trust_domain: "cluster.local".into(),
        agent_service_account: "weft-system/weft-agent".into(),
        audience: "weft-ca".into(),
        svid_lifetime: Duration::from_hours(1),
        dns_names: vec!["localhost".into()],
        waypoint_image: None,
    };
    let pods = Arc::new(Mutex::new(PodIndex::default()));
    watch_pods(client.clone(), pods.clone());
    let (trigger, serving) = serving();
    tokio::spawn(async move {
        let _trigger = trigger;
        serve(&config, client, listener, pods, serving).await
    });

    let remote: Signer = Arc::new(
        RemoteCa::new(
            &format!("https://localhost:{port}"),
            &root,
            &dir.0.join("token"),
        )
        .expect("remote CA"),
    );
    (remote, fake, dir)
}

/// Signs `id`, trying again while the CA answers 503: its pod watch may still be listing.
async fn sign_once_listed(
    remote: &Signer,
    id: &SpiffeId,
    key: &rcgen::KeyPair,
) -> Result<weft_mesh::identity::Issued, CaError> {
    let mut issued = remote.sign(id, key, Duration::from_hours(1)).await;
    for _ in 0..100 {
        if !matches!(&issued, Err(CaError::Remote { reason, .. }) if reason.contains("503")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        issued = remote.sign(id, key, Duration::from_hours(1)).await;
    }
    issued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_only_service_accounts_with_a_pod_on_the_callers_node() {
    let (remote, fake, _dir) = serving_ca(vec![
        pod("shop", "web-1", "web", "node-a"),
        pod("shop", "db-1", "db", "node-b"),
        {
            let mut done = pod("shop", "report-1", "batch", "node-a");
            done["status"] = json!({"phase": "Succeeded"});
            done
        },
    ])
    .await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let web = SpiffeId::new("cluster.local", "shop", "web");
    let issued = sign_once_listed(&remote, &web, &key)
        .await
        .expect("web has a pod on node-a: signed");
    assert_eq!(issued.chain.len(), 2, "leaf and the user's intermediate");
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).expect("leaf");
    assert_eq!(
        weft_mesh::identity::peer_identity(&issued.chain[0]),
        Some(web.clone())
    );
    assert!(leaf.issuer().to_string().contains("user intermediate"));

    let db = SpiffeId::new("cluster.local", "shop", "db");
    let refused = remote
        .sign(&db, &key, Duration::from_hours(1))
        .await
        .expect_err("db runs only on node-b");
    let text = refused.to_string();
    assert!(
        text.contains("403")
            && text.contains("no pod of service account shop/db runs on node node-a"),
        "{text}"
    );

    // A completed Job's pod is still listed on node-a, but it gives no right to its identity.
    let batch = SpiffeId::new("cluster.local", "shop", "batch");
    let refused = remote
        .sign(&batch, &key, Duration::from_hours(1))
        .await
        .expect_err("batch's only pod on node-a has finished");
    assert!(
        refused
            .to_string()
            .contains("no pod of service account shop/batch"),
        "{refused}"
    );

    let other_domain = SpiffeId::new("evil.example", "shop", "web");
    let refused = remote
        .sign(&other_domain, &key, Duration::from_hours(1))
        .await
        .expect_err("foreign trust domain");
    assert!(refused.to_string().contains("trust domain"), "{refused}");

    // The token was reviewed for the CA's audience.
    let review = fake
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/tokenreviews"))
        .expect("a TokenReview");
    assert_eq!(review.body["spec"]["audiences"], json!(["weft-ca"]));
    assert_eq!(review.body["spec"]["token"], "agent-token-node-a");

    fake.set_token_review(json!({"authenticated": false, "error": "token expired"}));
    let refused = remote
        .sign(&web, &key, Duration::from_hours(1))
        .await
        .expect_err("unauthenticated");
    assert!(refused.to_string().contains("401"), "{refused}");
}

/// Plain HTTP/1.0 GET; returns the status line.
async fn get_status(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut reply = String::new();
    let _ = tcp.read_to_string(&mut reply).await;
    reply.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_ca_is_ready_only_once_its_pod_watch_has_listed() {
    let pods = Arc::new(Mutex::new(PodIndex::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, serving) = serving();
    let pods_for_health = pods.clone();
    tokio::spawn(async move {
        let _trigger = trigger;
        super::serve_health(listener, pods_for_health, serving).await;
    });
    assert!(get_status(addr, "/healthz/live").await.contains("200"));
    let before = get_status(addr, "/healthz/ready").await;
    assert!(before.contains("503"), "{before}");

    let (client, fake) = FakeApi::start();
    fake.set_list("/api/v1/pods", vec![pod("shop", "web-1", "web", "node-a")]);
    watch_pods(client, pods);
    let mut after = String::new();
    for _ in 0..500 {
        after = get_status(addr, "/healthz/ready").await;
        if after.contains("200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(after.contains("200"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_gets_only_its_own_identity_and_a_workloads_own_token_nothing() {
    let (remote, fake, _dir) = serving_ca(vec![pod("shop", "web-1", "web", "node-a"), {
        let mut waypoint = pod("shop", "wp-1", "wp", "node-a");
        waypoint["metadata"]["labels"] = json!({"gateway.networking.k8s.io/gateway-name": "wp"});
        waypoint
    }])
    .await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let web = SpiffeId::new("cluster.local", "shop", "web");
    let db = SpiffeId::new("cluster.local", "shop", "db");
    sign_once_listed(&remote, &web, &key)
        .await
        .expect("signed as the agent of node-a");
    // A workload's own token gets nothing: only a waypoint's pod may ask for its identity.
    fake.set_token_review(json!({
        "authenticated": true,
        "user": {"username": "system:serviceaccount:shop:web", "extra": {NODE_NAME_EXTRA: ["node-a"]}},
    }));
    let refused = remote
        .sign(&web, &key, Duration::from_hours(1))
        .await
        .expect_err("web is not a waypoint");
    assert!(
        refused
            .to_string()
            .contains("no waypoint pod of service account shop/web"),
        "{refused}"
    );
    // Nor may it ask for another identity, whatever pods run where.
    let refused = remote
        .sign(&db, &key, Duration::from_hours(1))
        .await
        .expect_err("not the agent");
    assert!(
        refused.to_string().contains("not the Weft agent"),
        "{refused}"
    );
    // A waypoint's own pod-bound token gets its own identity, on the node its pod runs on.
    fake.set_token_review(json!({
        "authenticated": true,
        "user": {"username": "system:serviceaccount:shop:wp", "extra": {NODE_NAME_EXTRA: ["node-a"]}},
    }));
    let waypoint = SpiffeId::new("cluster.local", "shop", "wp");
    let issued = remote
        .sign(&waypoint, &key, Duration::from_hours(1))
        .await
        .expect("the waypoint's own identity");
    assert_eq!(
        weft_mesh::identity::peer_identity(&issued.chain[0]),
        Some(waypoint)
    );
    let refused = remote
        .sign(&web, &key, Duration::from_hours(1))
        .await
        .expect_err("a waypoint gets only its own identity");
    assert!(
        refused.to_string().contains("not the Weft agent"),
        "{refused}"
    );
}
