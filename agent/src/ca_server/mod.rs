//! `weft-agent ca`: the cluster's SVID signer, run as a Deployment. It holds the signing key
//! (a root, or a user-supplied intermediate with its chain) from a mounted Secret, serves
//! `POST /v1/svid` over TLS on 15012, and signs a CSR only after [`authz::Authorizer`] has
//! tied the caller's token to a node running a pod of the requested service account.

pub mod authz;
#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;

use weft_mesh::identity::{CaError, CaSource, LocalCa};

/// A CSR body larger than this is refused unread.
const MAX_BODY: usize = 16 * 1024;

/// The CA's validated configuration.
#[derive(Clone, Debug)]
pub struct CaConfig {
    pub listen: SocketAddr,
    pub readiness: SocketAddr,
    pub signing: CaSource,
    pub trust_domain: String,
    pub agent_service_account: String,
    pub audience: String,
    pub svid_lifetime: Duration,
    /// DNS names of the CA's own serving certificate.
    pub dns_names: Vec<String>,
    /// The waypoint controller's Deployment image; `None`: no controller runs here.
    pub waypoint_image: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaServerError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("connecting to the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
    #[error("the signing certificate path {0} is not set: give --ca-cert and --ca-key")]
    NoKey(PathBuf),
    #[error("installing the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

/// After SIGTERM the CA finishes the signings in flight for at most this long. A signing
/// takes milliseconds; agents retry one that is cut.
pub const CA_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Signs what the authorizer allows.
#[derive(Debug)]
pub struct Signer {
    pub ca: LocalCa,
    pub authorizer: authz::Authorizer,
    pub lifetime: Duration,
}

impl Signer {
    /// The whole decision for one request: `(status, JSON body)`.
    pub async fn handle(
        &self,
        token: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, serde_json::Value) {
        let csr = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["csr"].as_str().map(str::to_owned));
        let Some(csr) = csr else {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "send {\"csr\": \"<PEM certificate request>\"}"}),
            );
        };
        let requested = match LocalCa::csr_identity(&csr) {
            Ok(id) => id,
            Err(e) => return (StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
        };
        let node = match self.authorizer.authorize(token, &requested).await {
            Ok(node) => node,
            Err(denied) => {
                tracing::warn!(identity = %requested, reason = %denied, "SVID request denied");
                let status = match denied {
                    authz::Denied::NoToken | authz::Denied::Unauthenticated(_) => {
                        StatusCode::UNAUTHORIZED
                    }
                    authz::Denied::Review(_) | authz::Denied::NotSynced => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    _ => StatusCode::FORBIDDEN,
                };
                return (status, json!({"error": denied.to_string()}));
            }
        };
        match self.ca.issue_for_csr(&requested, &csr, self.lifetime) {
            Ok(issued) => {
                tracing::info!(identity = %requested, %node, serial = %issued.serial, "SVID signed");
                let chain: String = issued
                    .chain
                    .iter()
                    .map(|der| pem_block("CERTIFICATE", der))
                    .collect();
                (
                    StatusCode::OK,
                    json!({"chain": chain, "serial": issued.serial}),
                )
            }
            Err(e) => (StatusCode::BAD_REQUEST, json!({"error": e.to_string()})),
        }
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// Runs the CA until the process is stopped.
pub async fn run(config: CaConfig) -> Result<(), CaServerError> {
    let client = kube::Client::try_default().await?;
    let pods = Arc::new(Mutex::new(authz::PodIndex::default()));
    authz::watch_pods(client.clone(), pods.clone());
    if let Some(image) = config.waypoint_image.clone() {
        tokio::spawn(crate::waypoint_controller::run(client.clone(), image));
    }
    let ready = TcpListener::bind(config.readiness)
        .await
        .map_err(|e| CaServerError::Bind(config.readiness, e))?;
    let (trigger, drain) = weft_mesh::drain::channel();
    let limits = Arc::new(weft_mesh::limits::Limits::default());
    let serving = |on_drain| weft_mesh::serve::Serving {
        name: "ca",
        limits: limits.clone(),
        drain: drain.clone(),
        on_drain,
    };
    // Readiness answers through the drain, so the Service stops sending here first.
    tokio::spawn(serve_health(
        ready,
        pods.clone(),
        serving(weft_mesh::serve::OnDrain::KeepServing),
    ));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| CaServerError::Bind(config.listen, e))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CaServerError::Signal)?;
    let serving = serving(weft_mesh::serve::OnDrain::Stop);
    tokio::select! {
        served = serve(&config, client, listener, pods, serving) => return served,
        _ = term.recv() => {}
    }
    tracing::info!(deadline = ?CA_DRAIN_TIMEOUT, "SIGTERM: the CA stops accepting and finishes the signings in flight");
    match trigger.drain(CA_DRAIN_TIMEOUT).await {
        weft_mesh::drain::Drained::Finished => tracing::info!("CA drained"),
        weft_mesh::drain::Drained::Cut(open) => {
            tracing::warn!(open, "CA drain deadline passed; cutting the rest");
        }
    }
    Ok(())
}

/// Serves `POST /v1/svid` on `listener`, checking callers through `client`'s API server
/// against `pods` (filled by [`authz::watch_pods`]).
pub async fn serve(
    config: &CaConfig,
    client: kube::Client,
    listener: TcpListener,
    pods: Arc<Mutex<authz::PodIndex>>,
    serving: weft_mesh::serve::Serving,
) -> Result<(), CaServerError> {
    let ca = {
        let (signing, trust_domain) = (config.signing.clone(), config.trust_domain.clone());
        tokio::task::spawn_blocking(move || LocalCa::load(&signing, &trust_domain))
            .await
            .map_err(|e| CaError::Remote {
                url: "loading the CA key".into(),
                reason: e.to_string(),
            })??
    };
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::from)?;
    let chain: Vec<CertificateDer<'static>> =
        ca.issue_server(&config.dns_names, &key, Duration::from_hours(24 * 365))?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )?;
    let signer = Arc::new(Signer {
        ca,
        authorizer: authz::Authorizer {
            client,
            pods,
            trust_domain: config.trust_domain.clone(),
            agent_service_account: config.agent_service_account.clone(),
            audience: config.audience.clone(),
        },
        lifetime: config.svid_lifetime,
    });
    tracing::info!(listen = %config.listen, trust_domain = %config.trust_domain, "CA serving");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let service = service_fn(move |req: Request<Incoming>| {
        let signer = signer.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&signer, req).await) }
    });
    weft_mesh::serve::serve_http1(
        listener,
        weft_mesh::limits::CA,
        serving,
        Some(acceptor),
        service,
    )
    .await;
    Ok(())
}

async fn answer(signer: &Signer, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if req.method() != hyper::Method::POST || req.uri().path() != "/v1/svid" {
        (StatusCode::NOT_FOUND, json!({"error": "POST /v1/svid"}))
    } else {
        let token = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
        match limited.collect().await {
            Ok(body) => signer.handle(token.as_deref(), &body.to_bytes()).await,
            Err(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "request body over 16 KiB"}),
            ),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

/// Live while the process serves; ready only once the pod watch has listed, since before
/// that every signing request would be refused.
async fn serve_health(
    listener: TcpListener,
    pods: Arc<Mutex<authz::PodIndex>>,
    serving: weft_mesh::serve::Serving,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let synced = pods.lock().unwrap_or_else(PoisonError::into_inner).synced();
        async move {
            let (status, body): (_, &'static [u8]) = match req.uri().path() {
                "/healthz/live" => (StatusCode::OK, b"{\"live\":true}"),
                "/healthz/ready" if synced => (StatusCode::OK, b"{\"ready\":true}"),
                "/healthz/ready" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    b"{\"ready\":false,\"reason\":\"the cluster's pods are not listed yet\"}",
                ),
                _ => (StatusCode::NOT_FOUND, b"{\"error\":\"try /healthz/ready\"}"),
            };
            let mut response = Response::new(Full::new(Bytes::from_static(body)));
            *response.status_mut() = status;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    weft_mesh::serve::serve_http1(
        listener,
        weft_mesh::limits::READINESS,
        serving,
        None,
        service,
    )
    .await;
}
