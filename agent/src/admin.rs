//! The admin API (JSON on 127.0.0.1:15000, for weftctl and tests) and the readiness endpoint
//! (`/healthz/ready` on 15021, for the kubelet).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    capture::Maps, connections::Connections, enrollment::EnrollmentStatus, identity::CertStore,
    proxy::ProxyContext, registry::Registry,
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr}: {source} (is another agent running on this node?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the admin API reads.
#[derive(Debug)]
pub struct AdminState {
    pub node: String,
    pub ready: AtomicBool,
    pub adopted_programs: bool,
    pub registry: watch::Receiver<Arc<Registry>>,
    pub enrollment: Arc<Mutex<EnrollmentStatus>>,
    pub connections: Arc<Connections>,
    pub maps: Arc<Mutex<Maps>>,
    pub certs: Arc<CertStore>,
    pub proxy: Arc<ProxyContext>,
}

impl AdminState {
    fn route(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let lock =
            |m: &Mutex<EnrollmentStatus>| m.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match path {
            "/" | "/status" => {
                let enrollment = lock(&self.enrollment);
                let registry = self.registry.borrow().clone();
                (
                    StatusCode::OK,
                    json!({
                        "node": self.node,
                        "version": env!("CARGO_PKG_VERSION"),
                        "ready": self.ready.load(Ordering::Relaxed),
                        "adoptedPinnedPrograms": self.adopted_programs,
                        "enrolledPods": enrollment.enrolled.len(),
                        "enrollmentFailures": enrollment.failed,
                        "unplaceablePods": enrollment.unplaceable,
                        "registry": {"namespaces": registry.namespaces.len(), "pods": registry.pods.len(), "services": registry.services.len(), "endpointSlices": registry.endpoint_slices.len(), "rejectedObjects": registry.errors},
                    }),
                )
            }
            "/workloads" => (StatusCode::OK, json!(lock(&self.enrollment).enrolled)),
            "/connections" => (StatusCode::OK, json!(self.connections.live())),
            "/stats" => {
                let kernel: serde_json::Map<String, serde_json::Value> = self
                    .maps
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .counters()
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), json!(value)))
                    .collect();
                (
                    StatusCode::OK,
                    json!({"proxy": self.connections.totals, "kernel": kernel, "pool": self.proxy.pool.stats()}),
                )
            }
            "/certs" => (StatusCode::OK, json!(self.certs.certs())),
            "/connections/recent" => (StatusCode::OK, json!(self.connections.recent())),
            "/policies" => (StatusCode::OK, json!(self.registry.borrow().policies)),
            "/config_dump" => (StatusCode::OK, json!(*self.registry.borrow().clone())),
            _ => (
                StatusCode::NOT_FOUND,
                json!({"error": format!("no such endpoint {path}"), "endpoints": ["/status", "/workloads", "/connections", "/connections/recent", "/stats", "/certs", "/policies", "/config_dump"]}),
            ),
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// A response body and its content type.
type Body = (StatusCode, &'static str, String);

fn json_body((status, value): (StatusCode, serde_json::Value)) -> Body {
    (status, "application/json", value.to_string())
}

async fn serve<F>(listener: TcpListener, handler: Arc<F>)
where
    F: Fn(&str) -> Body + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (status, content_type, body) = handler(req.uri().path());
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                response.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static(content_type),
                );
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the admin, metrics and readiness listeners (so a port clash fails start-up), then
/// serves them.
pub async fn start(
    state: Arc<AdminState>,
    admin: SocketAddr,
    metrics: SocketAddr,
    readiness: SocketAddr,
) -> Result<(), AdminError> {
    let admin_listener = bind(admin).await?;
    let metrics_listener = bind(metrics).await?;
    let ready_listener = bind(readiness).await?;
    let admin_state = state.clone();
    tokio::spawn(serve(
        admin_listener,
        Arc::new(move |path: &str| json_body(admin_state.route(path))),
    ));
    let metrics_state = state.clone();
    tokio::spawn(serve(
        metrics_listener,
        Arc::new(move |path: &str| match path {
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics_state.connections.metrics.encode(),
            ),
            _ => json_body((StatusCode::NOT_FOUND, json!({"error": "try /metrics"}))),
        }),
    ));
    tokio::spawn(serve(
        ready_listener,
        Arc::new(move |path: &str| {
            json_body(match path {
                "/healthz/ready" if state.ready.load(Ordering::Relaxed) => {
                    (StatusCode::OK, json!({"ready": true}))
                }
                "/healthz/ready" => (StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false})),
                _ => (
                    StatusCode::NOT_FOUND,
                    json!({"error": "try /healthz/ready"}),
                ),
            })
        }),
    ));
    Ok(())
}
