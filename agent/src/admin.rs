//! The admin API (JSON on 127.0.0.1:15000, for weftctl and tests) and the readiness endpoint
//! (`/healthz/ready` on 15021, for the kubelet).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use hyper::StatusCode;
use serde_json::json;
use tokio::sync::watch;

pub use weft_mesh::admin::AdminError;
use weft_mesh::{
    admin::{
        bind, endpoint, flows_reply, json_reply, serve, set_log_level, Endpoint, Reply,
        SetLogFilter,
    },
    connections::Connections,
    identity::CertStore,
    metrics::NameLabel,
    registry::Registry,
};

use crate::{capture::Maps, enrollment::EnrollmentStatus, proxy::ProxyContext};

/// What the admin API reads.
#[derive(Debug)]
pub struct AdminState {
    pub node: String,
    pub ready: AtomicBool,
    pub adopted_programs: bool,
    /// This agent's claim on the node's capture.
    pub owner: Arc<crate::capture::Owner>,
    /// Milliseconds from start to the first enrollment pass done; `u64::MAX` until then.
    pub ready_after_ms: std::sync::atomic::AtomicU64,
    /// Connections the previous agent carried when it died (it did not drain).
    pub lost_in_crash: std::sync::atomic::AtomicU64,
    pub registry: watch::Receiver<Arc<Registry>>,
    pub enrollment: Arc<Mutex<EnrollmentStatus>>,
    pub connections: Arc<Connections>,
    pub maps: Arc<Mutex<Maps>>,
    pub certs: Arc<CertStore>,
    pub proxy: Arc<ProxyContext>,
    /// Kubernetes mode: each watched kind's sync state and errors.
    pub watches: Option<weft_mesh::registry::watch::WatchStatus>,
    /// `POST /logging` changes the filter through this, when the process has a reloadable one.
    pub log_filter: Option<SetLogFilter>,
}

impl AdminState {
    /// The first enrollment pass is done, `after` the process started.
    pub fn mark_ready(&self, after: std::time::Duration, lost_in_crash: u64) {
        self.ready_after_ms.store(
            u64::try_from(after.as_millis()).unwrap_or(u64::MAX - 1),
            Ordering::Relaxed,
        );
        self.lost_in_crash.store(lost_in_crash, Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    /// What readiness still waits for, in words for `kubectl describe`.
    fn not_ready_because(&self) -> String {
        let unsynced: Vec<&str> = self.watches.as_ref().map_or_else(Vec::new, |watches| {
            let watches = watches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            weft_mesh::registry::watch::REQUIRED
                .iter()
                .copied()
                .filter(|kind| !watches.get(kind).is_some_and(|s| s.synced))
                .collect()
        });
        if unsynced.is_empty() {
            "the first enrollment pass".into()
        } else {
            format!("the first listing of {}", unsynced.join(", "))
        }
    }

    fn status(&self) -> weft_api::Status {
        let enrollment = self
            .enrollment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let registry = self.registry.borrow().clone();
        let watches = self.watches.as_ref().map(|w| {
            w.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(kind, status)| ((*kind).to_owned(), status.into()))
                .collect()
        });
        weft_api::Status {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready: self.ready.load(Ordering::Relaxed),
            adopted_pinned_programs: self.adopted_programs,
            capture_generation: self.owner.generation(),
            capture_owner_generation: self.owner.current(),
            capture_ready_after_ms: Some(self.ready_after_ms.load(Ordering::Relaxed))
                .filter(|ms| *ms != u64::MAX),
            connections_lost_in_crash: self.lost_in_crash.load(Ordering::Relaxed),
            enrolled_pods: enrollment.enrolled.len(),
            enrollment_failures: enrollment.failed,
            unplaceable_pods: enrollment.unplaceable,
            registry: weft_api::RegistrySummary {
                namespaces: registry.namespaces.len(),
                pods: registry.pods.len(),
                services: registry.services.len(),
                endpoint_slices: registry.endpoint_slices.len(),
                routes: registry.routes.len(),
                authorization_policies: registry.policies.len(),
                traffic_policies: registry.traffic_policies.len(),
                rejected_objects: registry.errors.iter().map(Into::into).collect(),
                rejected_objects_not_shown: registry.errors_not_shown,
                ignored_objects: registry.ignored.clone(),
            },
            kubernetes_watches: watches,
        }
    }

    fn stats(&self) -> weft_api::Stats {
        let kernel = self
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        weft_api::Stats {
            proxy: self.connections.totals.snapshot(),
            kernel,
            pool: self.proxy.pool.stats(),
            limits: self.connections.metrics.limits.snapshot(),
            ca: weft_api::CaStats {
                signed: self.certs.signed(),
            },
        }
    }

    fn services(&self) -> Vec<weft_api::Service> {
        let registry = self.registry.borrow().clone();
        registry
            .services
            .iter()
            .map(|svc| weft_api::Service {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                cluster_ip: svc.cluster_ip,
                ports: svc.ports.iter().map(Into::into).collect(),
                endpoints: svc
                    .ports
                    .iter()
                    .flat_map(|p| registry.endpoints(svc, p))
                    .map(|e| e.to_string())
                    .collect(),
            })
            .collect()
    }

    /// Every `GET` but `/flows`, each answered with its `weft_api` type.
    fn route(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let ok = |value: serde_json::Value| (StatusCode::OK, value);
        match path {
            "/" | "/status" => ok(json!(self.status())),
            "/workloads" => {
                let enrollment = self
                    .enrollment
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let workloads: Vec<weft_api::Workload> =
                    enrollment.enrolled.iter().map(Into::into).collect();
                ok(json!(workloads))
            }
            "/connections" => {
                let live: Vec<weft_api::Connection> = self
                    .connections
                    .live()
                    .into_iter()
                    .map(Into::into)
                    .collect();
                ok(json!(live))
            }
            "/stats" => ok(json!(self.stats())),
            "/certs" => ok(json!(self.certs.certs())),
            "/services" => ok(json!(self.services())),
            "/policies" => {
                let registry = self.registry.borrow().clone();
                let policies: Vec<weft_api::AuthorizationPolicy> = registry
                    .policies
                    .iter()
                    .map(|p| {
                        let mut policy = weft_api::AuthorizationPolicy::from(p);
                        policy.enforced_at = registry.enforcement(p);
                        policy
                    })
                    .collect();
                ok(json!(policies))
            }
            "/trafficpolicies" => {
                let registry = self.registry.borrow().clone();
                let policies: Vec<weft_api::TrafficPolicy> = registry
                    .traffic_policies
                    .iter()
                    .map(|t| {
                        let mut policy = weft_api::TrafficPolicy::from(t);
                        let mut waypoints: Vec<String> = t
                            .services
                            .iter()
                            .filter_map(|name| registry.service(&t.namespace, name))
                            .filter_map(|s| registry.waypoint_for(s))
                            .map(|w| w.to_string())
                            .collect();
                        waypoints.sort();
                        waypoints.dedup();
                        policy.applied_by = waypoints;
                        policy
                    })
                    .collect();
                ok(json!(policies))
            }
            // The registry as the agent holds it, for debugging: deliberately untyped.
            "/config_dump" => ok(json!(*self.registry.borrow().clone())),
            _ => (
                StatusCode::NOT_FOUND,
                json!(weft_api::ErrorBody {
                    error: format!("no such endpoint {path}"),
                    valid: weft_api::ENDPOINTS
                        .iter()
                        .map(|e| (*e).to_owned())
                        .collect(),
                }),
            ),
        }
    }
}

impl AdminState {
    fn handle(self: &Arc<Self>, method: &http::Method, path: &str, query: Option<&str>) -> Reply {
        match endpoint(method, path, query) {
            Endpoint::Flows(query) => flows_reply(
                &self.connections.flows,
                query,
                weft_mesh::connections::now_unix_ms(),
            ),
            Endpoint::SetLogLevel(level) => {
                json_reply(set_log_level(self.log_filter.as_ref(), level))
            }
            Endpoint::Get(path) => json_reply(self.route(path)),
            Endpoint::NotAllowed => json_reply((
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "GET, or POST /logging?level=…"}),
            )),
        }
    }

    /// Brings the health gauges up to date before a scrape.
    fn refresh_metrics(&self) {
        let metrics = &self.connections.metrics;
        let registry = self.registry.borrow().clone();
        for (kind, count) in [
            ("namespaces", registry.namespaces.len()),
            ("pods", registry.pods.len()),
            ("services", registry.services.len()),
            ("endpoint_slices", registry.endpoint_slices.len()),
            ("authorization_policies", registry.policies.len()),
            ("traffic_policies", registry.traffic_policies.len()),
            ("routes", registry.routes.len()),
            ("rejected", registry.errors.len()),
        ] {
            metrics
                .registry_objects
                .get_or_create(&NameLabel { name: kind.into() })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        if let Some(watches) = &self.watches {
            let watches = watches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for (kind, status) in watches {
                let label = NameLabel { name: kind.into() };
                metrics
                    .kube_watch_errors
                    .get_or_create(&label)
                    .set(i64::try_from(status.errors).unwrap_or(i64::MAX));
                metrics
                    .kube_watch_synced
                    .get_or_create(&label)
                    .set(i64::from(status.synced));
            }
        }
        for cert in self.certs.certs() {
            metrics
                .cert_expiry_seconds
                .get_or_create(&NameLabel {
                    name: cert.identity,
                })
                .set(cert.seconds_to_expiry);
        }
        let (enrolled, failed, unplaceable) = {
            let enrollment = self
                .enrollment
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (
                enrollment.enrolled.len(),
                enrollment.failed.len(),
                enrollment.unplaceable.len(),
            )
        };
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        metrics.ebpf_enrolled_pods.set(count(enrolled));
        for (reason, pods) in [("attach_failed", failed), ("no_netns", unplaceable)] {
            metrics
                .ebpf_capture_missing_pods
                .get_or_create(&weft_mesh::metrics::ReasonLabel { reason })
                .set(count(pods));
        }
        for (name, value) in self
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters()
        {
            metrics
                .ebpf_program_events
                .get_or_create(&NameLabel { name: name.into() })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        let pool = self.proxy.pool.stats();
        metrics
            .pool_connections
            .set(i64::try_from(pool.connections_open).unwrap_or(i64::MAX));
        metrics
            .pool_streams
            .set(i64::try_from(pool.streams_open).unwrap_or(i64::MAX));
    }
}

/// Binds the admin, metrics and readiness listeners (so a port clash fails start-up), then
/// serves them.
/// The accept loops of the admin, metrics and readiness ports. Closing them hands the ports
/// over to a newer agent sharing them; connections already accepted still get their answer.
#[derive(Debug)]
pub struct NodePorts(Vec<tokio::task::JoinHandle<()>>);

impl NodePorts {
    pub fn close(&self) {
        for accept_loop in &self.0 {
            accept_loop.abort();
        }
    }
}

pub async fn start(
    state: Arc<AdminState>,
    admin: SocketAddr,
    metrics: SocketAddr,
    readiness: SocketAddr,
) -> Result<NodePorts, AdminError> {
    let admin_listener = bind(admin).await?;
    let metrics_listener = bind(metrics).await?;
    let ready_listener = bind(readiness).await?;
    let admin_state = state.clone();
    // Answering through the drain: readiness says 503 while the data path drains, and the
    // admin API and metrics show it.
    let kept = |bounds: weft_mesh::limits::Http1Limits| weft_mesh::serve::Serving {
        name: bounds.listener,
        limits: state.connections.metrics.limits.clone(),
        drain: state.proxy.drain.clone(),
        on_drain: weft_mesh::serve::OnDrain::KeepServing,
    };
    let admin_loop = tokio::spawn(serve(
        admin_listener,
        weft_mesh::limits::ADMIN,
        kept(weft_mesh::limits::ADMIN),
        Arc::new(
            move |method: &http::Method, path: &str, query: Option<&str>| {
                admin_state.handle(method, path, query)
            },
        ),
    ));
    let metrics_state = state.clone();
    let metrics_loop = tokio::spawn(serve(
        metrics_listener,
        weft_mesh::limits::METRICS,
        kept(weft_mesh::limits::METRICS),
        Arc::new(
            move |_: &http::Method, path: &str, _: Option<&str>| match path {
                "/metrics" => {
                    metrics_state.refresh_metrics();
                    Reply::Whole(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        metrics_state.connections.metrics.encode(),
                    )
                }
                _ => json_reply((StatusCode::NOT_FOUND, json!({"error": "try /metrics"}))),
            },
        ),
    ));
    let ready_loop = tokio::spawn(serve(
        ready_listener,
        weft_mesh::limits::READINESS,
        kept(weft_mesh::limits::READINESS),
        Arc::new(move |_: &http::Method, path: &str, _: Option<&str>| {
            json_reply(match path {
                "/healthz/ready" if state.proxy.drain.is_draining() => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "waitingFor": "nothing: the agent is draining and will exit"}),
                ),
                "/healthz/ready" if state.ready.load(Ordering::Relaxed) => {
                    (StatusCode::OK, json!({"ready": true}))
                }
                "/healthz/ready" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "waitingFor": state.not_ready_because()}),
                ),
                // Alive while this process answers: a restart cannot fix a pod it cannot capture.
                "/healthz/live" => (StatusCode::OK, json!({"live": true})),
                _ => (
                    StatusCode::NOT_FOUND,
                    json!({"error": "try /healthz/ready"}),
                ),
            })
        }),
    ));
    Ok(NodePorts(vec![admin_loop, metrics_loop, ready_loop]))
}
