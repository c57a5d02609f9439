//! Wires the agent's parts together from a validated [`Config`].

use std::sync::{Arc, Mutex};

use aya::{programs::Program, EbpfLoader};
use tokio::sync::watch;

/// How often pods that could not be captured yet are tried again.
const ENROLLMENT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a running agent looks whether a newer one has claimed capture (one map lookup),
/// so that it hands the admin, metrics and readiness ports over within this time.
const OWNER_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

use weft_mesh::{
    connections::Connections,
    identity::{CertStore, Signer},
    registry::{local, Registry},
};

use crate::{
    admin::{self, AdminError, AdminState},
    capture::{self, CaptureError, Loaded, Owner, Programs},
    config::{Config, Source},
    enrollment::Enrollment,
    netns,
    proxy::ProxyContext,
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Tracing(#[from] weft_mesh::trace::TraceError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("cannot read the agent's own network namespace: {0}")]
    HostNetns(std::io::Error),
    #[error(transparent)]
    Ca(#[from] weft_mesh::identity::CaError),
    #[error("cannot create the state folder {0}: {1}")]
    StateDir(std::path::PathBuf, std::io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("connecting to the Kubernetes API (in-cluster service account or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
    #[error("no cgroup2 mount in /proc/mounts: give --cgroup-root")]
    NoCgroup2,
    #[error("a start-up or enrollment task panicked: {0}")]
    Panicked(tokio::task::JoinError),
}

/// Where the registry comes from, and how enrollment finds pods and reports on them.
struct SourceParts {
    registry: watch::Receiver<Arc<Registry>>,
    locate: Box<dyn weft_mesh::registry::Locate>,
    client: Option<kube::Client>,
    watches: Option<weft_mesh::registry::watch::WatchStatus>,
    /// Kubernetes mode: the registry is empty until every required kind has listed once.
    awaits_first_listing: bool,
}

async fn start_source(config: &Config) -> Result<SourceParts, AppError> {
    match &config.source {
        Source::Local { dir } => {
            let (folder, first) = local::first_read(dir.clone()).await;
            let (tx, rx) = watch::channel(Arc::new(first));
            tokio::spawn(local::watch(folder, tx));
            Ok(SourceParts {
                registry: rx,
                locate: Box::new(weft_mesh::registry::ByAnnotation),
                client: None,
                watches: None,
                awaits_first_listing: false,
            })
        }
        Source::Kube {
            host_proc,
            cgroup_root,
            node_netns,
        } => {
            let cgroup_root = match cgroup_root {
                Some(root) => root.clone(),
                None => tokio::task::spawn_blocking(cgroup2_mount)
                    .await
                    .ok()
                    .flatten()
                    .ok_or(AppError::NoCgroup2)?,
            };
            let client = kube::Client::try_default().await?;
            let (tx, rx) = watch::channel(Arc::new(Registry::default()));
            let watches = weft_mesh::registry::watch::spawn(&client, tx);
            let mut locate = crate::podns::HostProc::new(host_proc.clone(), cgroup_root);
            if let Some(node_netns) = node_netns {
                locate.node_netns.clone_from(node_netns);
            }
            Ok(SourceParts {
                registry: rx,
                locate: Box::new(locate),
                client: Some(client),
                watches: Some(watches),
                awaits_first_listing: true,
            })
        }
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "called under spawn_blocking at Kubernetes-mode start-up"
)]
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| point.into())
        })
}

/// What the agent needs from the kernel and the file system before it serves.
#[expect(
    clippy::disallowed_methods,
    reason = "called from run under spawn_blocking"
)]
fn prepare(
    config: &Config,
) -> Result<(Programs, capture::Maps, Owner, Signer, Arc<netns::Host>), AppError> {
    let host = netns::Host::current(proc_root(config)).map_err(AppError::HostNetns)?;
    let Loaded {
        programs,
        mut maps,
        owner,
    } = Programs::load_or_adopt(&config.bpffs_dir)?;
    maps.set_excluded_ports(&config.excluded_ports)?;
    let ca = weft_mesh::identity::load_signer(&config.ca, &config.trust_domain)?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| AppError::StateDir(config.state_dir.clone(), e))?;
    let owner = Owner::join(owner, &config.state_dir)?;
    Ok((programs, maps, owner, ca, host))
}

/// Runs the agent until SIGTERM or Ctrl-C. Capture stays attached and pinned when it exits:
/// enrolled pods then fail closed until an agent runs again and adopts the pins.
/// `log_filter` lets `POST /logging` change the log filter of the running process.
pub async fn run(
    config: Config,
    log_filter: Option<weft_mesh::admin::SetLogFilter>,
) -> Result<(), AppError> {
    let started = std::time::Instant::now();
    raise_open_file_limit();
    // Loading programs, reading the CA and creating the state folder block on the kernel and
    // the file system: done once, on a blocking thread.
    let prepare = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || prepare(&config))
    };
    let (programs, maps, owner, ca, host) = prepare.await.map_err(AppError::Panicked)??;
    let owner = Arc::new(owner);
    let adopted = programs.adopted;
    tracing::info!(pins = %config.bpffs_dir.display(), adopted, "kernel programs ready");
    let SourceParts {
        registry: registry_rx,
        locate,
        client,
        watches,
        awaits_first_listing,
    } = start_source(&config).await?;

    let maps = Arc::new(Mutex::new(maps));
    let connections = Arc::new(Connections::default());
    start_tracer(&config, &connections)?;
    let certs = Arc::new(CertStore::new(
        ca,
        &config.trust_domain,
        config.svid_lifetime,
    ));
    tokio::spawn(maintain_certs(certs.clone(), config.ca.clone()));
    let (drain, draining) = weft_mesh::drain::channel();
    let proxy = Arc::new(ProxyContext::new(
        registry_rx.clone(),
        certs.clone(),
        maps.clone(),
        connections.clone(),
        draining,
    ));
    let proxy_for_admin = proxy.clone();
    let mut enrollment = Enrollment::new(
        host,
        config.node_name.clone(),
        programs,
        proxy,
        config.excluded_ports.clone(),
        &config.state_dir,
        owner.clone(),
    )
    .with_locator(locate);
    if let Some(client) = client {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        enrollment = enrollment.with_conditions(tx);
        tokio::spawn(crate::conditions::publish(client, rx));
    }
    let state = Arc::new(AdminState {
        node: config.node_name.clone(),
        ready: false.into(),
        adopted_programs: adopted,
        owner: owner.clone(),
        ready_after_ms: u64::MAX.into(),
        lost_in_crash: 0.into(),
        registry: registry_rx.clone(),
        enrollment: enrollment.status.clone(),
        connections,
        maps,
        certs,
        proxy: proxy_for_admin,
        watches,
        log_filter,
    });
    let node_ports = admin::start(
        state.clone(),
        config.admin_addr,
        config.metrics_addr,
        config.readiness_addr,
    )
    .await?;
    let mut updates = registry_rx;
    if awaits_first_listing {
        // Enrolling from an empty registry would detach every pod an earlier agent captured.
        // Liveness and the admin API answer meanwhile (a large cluster can take longer to
        // list than the startup probe allows); readiness says what is awaited.
        tracing::info!("waiting for the first listing of namespaces, pods, services, endpoint slices and policies");
        if updates.changed().await.is_err() {
            return Ok(());
        }
    }
    let snapshot = updates.borrow_and_update().clone();
    enrollment = reconcile(enrollment, snapshot).await?;
    let ready_after = started.elapsed();
    state.mark_ready(ready_after, enrollment.lost_in_crash());
    tracing::info!(node = %config.node_name, enrolled = enrollment.enrolled_count(), admin = %config.admin_addr, generation = owner.generation(), ready_after_ms = ready_after.as_millis(), "agent ready: capture served by this agent");
    tokio::spawn(follow_owner(
        owner.clone(),
        node_ports,
        state.proxy.drain.clone(),
    ));

    follow_registry(updates, enrollment, &state).await?;
    drain_and_stop(drain, config.drain_timeout, &owner, &state.connections).await;
    Ok(())
}

/// A span per connection from now on, when tracing is on.
fn start_tracer(config: &Config, connections: &Connections) -> Result<(), AppError> {
    if let Some(settings) = &config.tracing {
        let node = opentelemetry::KeyValue::new("k8s.node.name", config.node_name.clone());
        let tracer = weft_mesh::trace::Tracer::start(
            settings,
            connections.metrics.trace.clone(),
            vec![node],
        )?;
        let _ = connections.tracer.set(tracer);
    }
    Ok(())
}

/// Lets the connections this agent carries finish, up to `deadline`, and leaves capture to
/// the next agent.
async fn drain_and_stop(
    drain: weft_mesh::drain::Trigger,
    deadline: std::time::Duration,
    owner: &Owner,
    connections: &Arc<Connections>,
) {
    tracing::info!(
        open = drain.open(),
        ?deadline,
        "draining: listeners stop accepting, HTTP/2 peers get GOAWAY, open connections may finish"
    );
    match drain.drain(deadline).await {
        weft_mesh::drain::Drained::Finished => tracing::info!("drained: every connection finished"),
        weft_mesh::drain::Drained::Cut(open) => tracing::warn!(
            cut = open,
            ?deadline,
            "drain deadline passed: cutting the connections still open"
        ),
    }
    // A clean exit carries nothing on: the next agent has nothing to report lost.
    owner.publish_carried(0);
    // The spans of the connections that just ended leave before the process does, within
    // FLUSH_TIMEOUT (the drain's 25 s plus this stay under the pod's 30 s grace period), on
    // a thread of its own.
    let flushing = connections.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(tracer) = flushing.tracer.get() {
            tracer.shutdown();
        }
    })
    .await;
    tracing::info!(
        "agent stopping; capture stays pinned (served by a newer agent if one took over, else failing closed until the next agent adopts it)"
    );
}

/// Keeps capture and live connections in line with each new registry snapshot until the agent
/// is told to stop.
async fn follow_registry(
    mut updates: watch::Receiver<Arc<weft_mesh::registry::Registry>>,
    mut enrollment: Enrollment,
    state: &AdminState,
) -> Result<(), AppError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AppError::Signals)?;
    // A pod whose sandbox process is not there yet, or whose enrollment failed, is tried
    // again on this beat even when the registry stays the same.
    let mut retry = tokio::time::interval(ENROLLMENT_RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = retry.tick(), if enrollment.has_pending() => {
                let snapshot = updates.borrow().clone();
                enrollment = reconcile(enrollment, snapshot).await?;
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = updates.borrow_and_update().clone();
                enrollment = reconcile(enrollment, snapshot.clone()).await?;
                let closed = state.connections.revalidate(&snapshot);
                if closed > 0 {
                    tracing::info!(closed, "policy change closed established connections");
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}

/// Publishes the connections this agent carries while it owns capture (what the next agent
/// reports lost should this one die), and once a newer agent has claimed capture, closes the
/// admin, metrics and readiness ports if that agent shares them (same network namespace, as
/// in local mode): from then on `weftctl`, Prometheus and the kubelet reach it, and this agent
/// only finishes the connections it carries until SIGTERM drains it. In separate namespaces
/// (Kubernetes pods) each keeps its own ports, so the old pod stays live until it is deleted.
async fn follow_owner(
    owner: Arc<Owner>,
    node_ports: admin::NodePorts,
    carried: weft_mesh::drain::Signal,
) {
    let mut tick = tokio::time::interval(OWNER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !owner.superseded() {
            owner.publish_carried(carried.open() as u64);
            continue;
        }
        let shared = owner.owner_shares_netns();
        if shared {
            node_ports.close();
        }
        tracing::warn!(
            generation = owner.generation(),
            owner = owner.current(),
            ports_handed_over = shared,
            "a newer agent owns capture: new connections go to it; this agent finishes the ones it carries and drains on SIGTERM"
        );
        return;
    }
}

/// Enrollment enters network namespaces, changes routes and bpf maps: it runs on a blocking
/// thread, never on the runtime's workers (which keep carrying traffic meanwhile).
async fn reconcile(
    mut enrollment: Enrollment,
    snapshot: Arc<Registry>,
) -> Result<Enrollment, AppError> {
    tokio::task::spawn_blocking(move || {
        enrollment.reconcile(&snapshot);
        enrollment
    })
    .await
    .map_err(AppError::Panicked)
}

/// Raises the open-file soft limit to the hard limit: each proxied connection holds two or
/// three descriptors, and the common default soft limit of 1,024 would cap a node at a few
/// hundred connections.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            let raised = soft >= hard || setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok();
            let now = if raised { hard } else { soft };
            tracing::info!(
                soft_was = soft,
                hard,
                soft_now = now,
                "open-file limit (each proxied connection holds 2-3 descriptors)"
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Reloads the trust bundle when its file changes (renewal is the certificate worker's). Each
/// check reads file metadata: it runs on a blocking thread.
async fn maintain_certs(certs: Arc<CertStore>, source: weft_mesh::identity::CaSource) {
    #[expect(
        clippy::disallowed_methods,
        reason = "called inside maintain_certs' spawn_blocking rounds"
    )]
    fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }
    let bundle = certs.bundle_file();
    let mut last = {
        let bundle = bundle.clone();
        tokio::task::spawn_blocking(move || modified(&bundle))
            .await
            .ok()
            .flatten()
    };
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let (certs, source, bundle) = (certs.clone(), source.clone(), bundle.clone());
        let round = tokio::task::spawn_blocking(move || {
            let now = modified(&bundle);
            if now != last {
                if let Err(e) = certs.reload(&source) {
                    tracing::error!(error = %e, file = %bundle.display(), "trust bundle changed but cannot be loaded; keeping the old one");
                }
            }
            now
        });
        match round.await {
            Ok(now) => last = now,
            Err(e) => tracing::error!(error = %e, "certificate maintenance panicked"),
        }
    }
}

/// What `weft-agent check` found: the kernel programs the verifier accepted.
#[derive(Debug)]
pub struct CheckReport {
    pub programs: Vec<String>,
}

/// Verifies that this kernel can run Weft: required features present and every kernel program
/// accepted by the verifier. Loads nothing it leaves behind: all is released on return.
#[expect(
    clippy::disallowed_methods,
    reason = "`weft-agent check` is a synchronous command; no runtime runs"
)]
pub fn check(config: &Config) -> Result<CheckReport, CaptureError> {
    let missing = capture::missing_kernel_features();
    if !missing.is_empty() {
        return Err(CaptureError::KernelFeature(missing.join("; ")));
    }
    // Pinned-by-name maps go to a throwaway folder beside the real pins, never the bpffs root.
    let scratch = config
        .bpffs_dir
        .with_file_name(format!("weft-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| CaptureError::Pin(format!("creating {}: {e}", scratch.display())))?;
    let loaded = EbpfLoader::new()
        .default_map_pin_directory(&scratch)
        .load(capture::kernel_object()?);
    let _ = std::fs::remove_dir_all(&scratch);
    let mut ebpf = loaded?;
    let mut programs = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        let result = match program {
            Program::CgroupSockAddr(p) => p.load(),
            Program::SockOps(p) => p.load(),
            Program::SkLookup(p) => p.load(),
            _ => continue,
        };
        result.map_err(|source| CaptureError::Program {
            name: name.to_owned(),
            source,
        })?;
        programs.push(name.to_owned());
    }
    programs.sort();
    Ok(CheckReport { programs })
}

/// `weft-agent uninstall`: removes every program, link and pin the agent made, and the capture
/// routing it installed in pods.
pub fn uninstall(config: &Config) -> Result<Vec<String>, CaptureError> {
    let host = netns::Host::current(proc_root(config))
        .map_err(|e| CaptureError::Pod(format!("reading the agent's own netns: {e}")))?;
    let mut removed = crate::enrollment::remove_recorded_routing(&host, &config.state_dir);
    removed.extend(capture::programs::uninstall(&config.bpffs_dir)?);
    Ok(removed)
}

/// The procfs sysctls are written through: the host's in Kubernetes mode, the agent's own
/// otherwise.
fn proc_root(config: &Config) -> &std::path::Path {
    match &config.source {
        Source::Kube { host_proc, .. } => host_proc,
        Source::Local { .. } => std::path::Path::new("/proc"),
    }
}
