//! Prometheus/OpenMetrics metrics under the `weft_` prefix. Labels are bounded: workloads,
//! namespaces and identities of this node's pods and their peers, services, directions,
//! security, verdicts and a fixed set of reasons; never ports, addresses or connection ids.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::connections::{Connection, Direction};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: &'static str,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub security: &'static str,
    pub verdict: &'static str,
    pub reason: &'static str,
}

fn split(workload: Option<&str>) -> (String, String) {
    match workload.and_then(|w| w.split_once('/')) {
        Some((namespace, name)) => (name.to_owned(), namespace.to_owned()),
        None => ("unknown".into(), "unknown".into()),
    }
}

impl ConnectionLabels {
    fn of(connection: &Connection) -> Self {
        let decision = connection.decision.as_ref();
        let unknown = || "unknown".to_owned();
        let local = split(Some(&connection.pod));
        let peer = split(connection.peer_workload.as_deref());
        let local_principal = connection.workload_identity.clone().unwrap_or_else(unknown);
        let peer_principal = connection.peer_identity.clone().unwrap_or_else(unknown);
        let (
            (source_workload, source_namespace),
            source_principal,
            (destination_workload, destination_namespace),
            destination_principal,
        ) = match connection.direction {
            Direction::Outbound => (local, local_principal, peer, peer_principal),
            Direction::Inbound => (peer, peer_principal, local, local_principal),
        };
        Self {
            direction: connection.direction.as_str(),
            source_workload,
            source_namespace,
            source_principal,
            destination_workload,
            destination_namespace,
            destination_principal,
            destination_service: connection.service.clone().unwrap_or_else(unknown),
            security: connection.security.as_str(),
            verdict: decision.map_or("allow", |d| {
                if d.verdict == crate::policy::Verdict::Allow {
                    "allow"
                } else {
                    "deny"
                }
            }),
            reason: connection.reason(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    failed: Family<ConnectionLabels, Counter>,
    bytes_received: Family<ConnectionLabels, Counter>,
    bytes_sent: Family<ConnectionLabels, Counter>,
    duration: Family<DirectionLabel, Histogram>,
    tunnel_setup: Histogram,
    /// Health, refreshed at each scrape.
    pub registry_objects: Family<NameLabel, Gauge>,
    pub cert_expiry_seconds: Family<NameLabel, Gauge>,
    pub ebpf_enrolled_pods: Gauge,
    /// Pods of enrolled namespaces on this node that have no capture: `attach_failed` (the
    /// program could not be attached in their netns) or `no_netns` (their netns was not found).
    pub ebpf_capture_missing_pods: Family<ReasonLabel, Gauge>,
    pub ebpf_program_events: Family<NameLabel, Gauge>,
    pub pool_connections: Gauge,
    pub pool_streams: Gauge,
    /// Kubernetes mode: watch errors so far, and whether each kind has listed, by kind.
    pub kube_watch_errors: Family<NameLabel, Gauge>,
    pub kube_watch_synced: Family<NameLabel, Gauge>,
    /// Every listener limit hit, by listener and limit.
    pub limits: std::sync::Arc<crate::limits::Limits>,
    /// Spans exported, failed and dropped, when tracing is on.
    pub trace: crate::trace::Counters,
}

/// The capture program's health: pods it serves, pods it does not, and its own counters.
fn register_ebpf(registry: &mut Registry, metrics: &Metrics) {
    registry.register(
        "ebpf_enrolled_pods",
        "Pods whose netns has the capture program attached",
        metrics.ebpf_enrolled_pods.clone(),
    );
    registry.register(
        "ebpf_capture_missing_pods",
        "Pods of enrolled namespaces on this node without capture, by reason (attach_failed, no_netns): their traffic bypasses the mesh",
        metrics.ebpf_capture_missing_pods.clone(),
    );
    registry.register(
        "ebpf_program_events",
        "Counters of the capture program, read from its per-CPU map",
        metrics.ebpf_program_events.clone(),
    );
}

/// Kubernetes mode's watch health (no series in local mode), and tracing's span counters (no
/// series while tracing is off).
fn register_optional(registry: &mut Registry, metrics: &Metrics) {
    metrics.trace.register(registry);
    registry.register(
        "kube_watch_errors",
        "Kubernetes mode: errors of each kind's watch since start (each retried with backoff)",
        metrics.kube_watch_errors.clone(),
    );
    registry.register(
        "kube_watch_synced",
        "Kubernetes mode: 1 once the kind has been listed, 0 before",
        metrics.kube_watch_synced.clone(),
    );
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let duration = Family::<DirectionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 10))
        });
        let tunnel_setup = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let metrics = Self {
            registry: Registry::default(),
            opened: Family::default(),
            closed: Family::default(),
            failed: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            duration,
            tunnel_setup,
            registry_objects: Family::default(),
            cert_expiry_seconds: Family::default(),
            ebpf_enrolled_pods: Gauge::default(),
            ebpf_capture_missing_pods: Family::default(),
            ebpf_program_events: Family::default(),
            pool_connections: Gauge::default(),
            pool_streams: Gauge::default(),
            kube_watch_errors: Family::default(),
            kube_watch_synced: Family::default(),
            limits: std::sync::Arc::default(),
            trace: crate::trace::Counters::default(),
        };
        register_optional(&mut registry, &metrics);
        registry.register(
            "limit_hits",
            "Times a listener limit was hit (deadline, size or connection cap), by listener and limit",
            metrics.limits.hits.clone(),
        );
        registry.register(
            "connections_opened",
            "Connections the agent decided on, with the verdict and its reason",
            metrics.opened.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections that ended",
            metrics.closed.clone(),
        );
        registry.register(
            "connections_failed",
            "Connections the agent could not carry",
            metrics.failed.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes received from clients",
            metrics.bytes_received.clone(),
        );
        registry.register(
            "sent_bytes",
            "Bytes sent to clients",
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "connection_duration_seconds",
            "How long connections lasted",
            metrics.duration.clone(),
        );
        registry.register(
            "tunnel_setup_seconds",
            "HBONE tunnel set-up: TLS (when a new HTTP/2 connection is needed) plus CONNECT",
            metrics.tunnel_setup.clone(),
        );
        registry.register(
            "registry_objects",
            "Objects in the registry, by kind",
            metrics.registry_objects.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until each SVID this agent holds expires",
            metrics.cert_expiry_seconds.clone(),
        );
        register_ebpf(&mut registry, &metrics);
        registry.register(
            "pool_connections",
            "Open pooled HBONE connections",
            metrics.pool_connections.clone(),
        );
        registry.register(
            "pool_streams",
            "Open HBONE streams",
            metrics.pool_streams.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn opened(&self, connection: &Connection) {
        self.opened
            .get_or_create(&ConnectionLabels::of(connection))
            .inc();
    }

    pub fn failed(&self, connection: &Connection) {
        self.failed
            .get_or_create(&ConnectionLabels::of(connection))
            .inc();
    }

    pub fn tunnel_setup(&self, elapsed: std::time::Duration) {
        self.tunnel_setup.observe(elapsed.as_secs_f64());
    }

    pub fn closed(
        &self,
        connection: &Connection,
        from_client: u64,
        to_client: u64,
        duration: std::time::Duration,
    ) {
        let labels = ConnectionLabels::of(connection);
        self.closed.get_or_create(&labels).inc();
        self.bytes_received
            .get_or_create(&labels)
            .inc_by(from_client);
        self.bytes_sent.get_or_create(&labels).inc_by(to_client);
        self.duration
            .get_or_create(&DirectionLabel {
                direction: connection.direction.as_str(),
            })
            .observe(duration.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        text
    }
}
