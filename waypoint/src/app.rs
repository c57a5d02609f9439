//! Wires the waypoint's parts together from a validated [`Config`]: the registry (a manifest
//! folder or the Kubernetes API), its SVID, the route table rebuilt on each registry change,
//! the HBONE listener, the admin, metrics and readiness ports, and the drain on SIGTERM.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tokio::sync::watch;
use weft_mesh::{
    hbone::client::Pool,
    identity::{CertStore, SpiffeId},
    limits::Limits,
    registry::{local, waypoints::WaypointRef, Registry},
    route::RoundRobin,
};

use crate::{
    config::{Config, Source},
    metrics::Requests,
    routing::{SharedTable, Table},
    upstream::Upstreams,
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Ca(#[from] weft_mesh::identity::CaError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] weft_mesh::admin::AdminError),
    #[error("connecting to the Kubernetes API (in-cluster service account or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Tracing(#[from] weft_mesh::trace::TraceError),
    #[error("a start-up task panicked: {0}")]
    Panicked(tokio::task::JoinError),
}

/// Everything a request or a tunnel needs, shared.
#[derive(Debug)]
pub struct Waypoint {
    pub gateway: WaypointRef,
    pub identity: SpiffeId,
    /// The trust domain endpoints' identities are in.
    pub identity_domain: String,
    pub registry: watch::Receiver<Arc<Registry>>,
    pub table: SharedTable,
    pub certs: Arc<CertStore>,
    pub pool: Pool,
    pub upstreams: Upstreams,
    pub rotation: RoundRobin,
    pub requests: Requests,
    pub limits: Arc<Limits>,
    pub ready: AtomicBool,
    /// Mirror copies in flight (see [`crate::mirror`]).
    pub mirrors: Arc<tokio::sync::Semaphore>,
    /// Recent requests, for `/requests` (see [`crate::telemetry`]).
    pub recent: weft_mesh::ring::Ring<weft_api::requests::RequestRecord>,
    /// Upgraded (WebSocket) connections open (see [`crate::upgrade`]).
    pub upgrades: Arc<tokio::sync::Semaphore>,
    /// Breakers, endpoint records, rate-limit buckets and retry budgets.
    pub resilience: crate::resilience::State,
    /// Key sets fetched from `jwksUri`s (see [`crate::jwks`]).
    pub jwks: crate::jwks::JwksCache,
    /// Spans for requests and their attempts, when tracing is on (see [`crate::trace`]).
    pub tracer: Option<weft_mesh::trace::Tracer>,
}

/// The registry's updates, and in Kubernetes mode the client route status is written with.
async fn start_source(
    config: &Config,
) -> Result<(watch::Receiver<Arc<Registry>>, Option<kube::Client>), AppError> {
    match &config.source {
        Source::Local { dir } => {
            let (folder, first) = local::first_read(dir.clone()).await;
            let (tx, rx) = watch::channel(Arc::new(first));
            tokio::spawn(local::watch(folder, tx));
            Ok((rx, None))
        }
        Source::Kube => {
            let client = kube::Client::try_default().await?;
            let (tx, rx) = watch::channel(Arc::new(Registry::default()));
            let _status = weft_mesh::registry::watch::spawn(&client, tx);
            Ok((rx, Some(client)))
        }
    }
}

/// Rebuilds the route table on every registry change, logs what it could not use, and hands
/// the routes' statuses to `statuses` (Kubernetes mode writes them to the API).
async fn follow_routes(
    waypoint: Arc<Waypoint>,
    mut updates: watch::Receiver<Arc<Registry>>,
    statuses: Option<watch::Sender<Vec<crate::routing::RouteStatus>>>,
) {
    let mut reported: Vec<String> = Vec::new();
    loop {
        let registry = updates.borrow_and_update().clone();
        let table = Table::build(
            &registry,
            &waypoint.gateway.namespace,
            &waypoint.gateway.name,
        );
        let problems: Vec<String> = table
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.route, p.problem))
            .collect();
        for problem in problems.iter().filter(|p| !reported.contains(p)) {
            tracing::warn!(%problem, "route rule not usable; the route's other rules still apply");
        }
        reported = problems;
        let services: Vec<&str> = table.services().collect();
        tracing::debug!(?services, "route table rebuilt");
        if let Some(statuses) = &statuses {
            statuses.send_if_modified(|current| {
                let changed = *current != table.statuses;
                if changed {
                    current.clone_from(&table.statuses);
                }
                changed
            });
        }
        waypoint.table.store(Arc::new(table));
        waypoint.resilience.retain(&registry);
        if updates.changed().await.is_err() {
            return;
        }
    }
}

/// The request tracer, when tracing is on; its counters are the waypoint's metrics.
fn start_tracer(
    config: &Config,
    requests: &Requests,
) -> Result<Option<weft_mesh::trace::Tracer>, AppError> {
    let Some(settings) = &config.tracing else {
        return Ok(None);
    };
    let attributes = vec![
        opentelemetry::KeyValue::new("k8s.namespace.name", config.namespace.clone()),
        opentelemetry::KeyValue::new("weft.waypoint", config.name.clone()),
    ];
    Ok(Some(weft_mesh::trace::Tracer::start(
        settings,
        requests.trace.clone(),
        attributes,
    )?))
}

/// Runs the waypoint until SIGTERM or Ctrl-C, then drains.
pub async fn run(
    config: Config,
    log_filter: Option<weft_mesh::admin::SetLogFilter>,
) -> Result<(), AppError> {
    let signer = {
        let (ca, domain) = (config.ca.clone(), config.trust_domain.clone());
        tokio::task::spawn_blocking(move || weft_mesh::identity::load_signer(&ca, &domain))
            .await
            .map_err(AppError::Panicked)??
    };
    let certs = Arc::new(CertStore::new(
        signer,
        &config.trust_domain,
        config.svid_lifetime,
    ));
    let identity = SpiffeId::new(&config.trust_domain, &config.namespace, &config.name);
    // Issued before the listener opens, so the first tunnel finds it.
    certs.get_async(&identity).await?;
    let (registry, client) = start_source(&config).await?;
    let limits = Arc::new(Limits::default());
    let (drain, draining) = weft_mesh::drain::channel();
    let requests = Requests::default();
    let tracer = start_tracer(&config, &requests)?;
    let waypoint = Arc::new(Waypoint {
        gateway: WaypointRef {
            namespace: config.namespace.clone(),
            name: config.name.clone(),
        },
        identity: identity.clone(),
        identity_domain: config.trust_domain.clone(),
        registry: registry.clone(),
        table: Arc::new(arc_swap::ArcSwap::from_pointee(Table::default())),
        certs: certs.clone(),
        pool: Pool::new(certs.clone()),
        upstreams: Upstreams::default(),
        rotation: RoundRobin::counted_by(limits.clone()),
        requests,
        limits: limits.clone(),
        ready: AtomicBool::new(false),
        mirrors: Arc::new(tokio::sync::Semaphore::new(
            crate::mirror::MAX_MIRRORS_IN_FLIGHT,
        )),
        upgrades: Arc::new(tokio::sync::Semaphore::new(crate::upgrade::MAX_UPGRADED)),
        recent: weft_mesh::ring::Ring::default(),
        resilience: crate::resilience::State::default(),
        jwks: crate::jwks::JwksCache::default(),
        tracer,
    });
    let statuses = client.map(|client| {
        let (tx, rx) = watch::channel(Vec::new());
        tokio::spawn(crate::route_status::follow(client, rx));
        tx
    });
    tokio::spawn(follow_routes(waypoint.clone(), registry, statuses));
    tokio::spawn(crate::resilience::health::run(waypoint.clone()));
    let listener = tokio::net::TcpListener::bind(config.hbone_addr)
        .await
        .map_err(|source| AppError::Bind {
            addr: config.hbone_addr,
            source,
        })?;
    let server = weft_mesh::hbone::server::Server {
        certs,
        limits,
        drain: draining.clone(),
    };
    tokio::spawn(weft_mesh::hbone::server::serve(
        listener,
        server,
        waypoint.clone(),
    ));
    crate::admin::start(&waypoint, &config, draining, log_filter).await?;
    waypoint.ready.store(true, Ordering::Relaxed);
    tracing::info!(waypoint = %waypoint.gateway, %identity, hbone = %config.hbone_addr, "waypoint ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AppError::Signals)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(open = drain.open(), deadline = ?config.drain_timeout, "draining: HBONE stops accepting, peers get GOAWAY, open requests may finish");
    match drain.drain(config.drain_timeout).await {
        weft_mesh::drain::Drained::Finished => tracing::info!("drained: every connection finished"),
        weft_mesh::drain::Drained::Cut(open) => {
            tracing::warn!(
                cut = open,
                "drain deadline passed: cutting the connections still open"
            );
        }
    }
    let flushing = waypoint.clone();
    // Blocks up to the export timeout, on a thread of its own.
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(tracer) = &flushing.tracer {
            tracer.shutdown();
        }
    })
    .await;
    Ok(())
}
