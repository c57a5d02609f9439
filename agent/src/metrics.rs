//! Prometheus/OpenMetrics metrics under the `weft_` prefix. Labels are bounded: workloads and
//! identities of this node's pods and their peers, directions, security, verdicts and a fixed
//! set of reasons; never ports, addresses or connection ids.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::connections::Connection;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: &'static str,
    /// The enrolled pod on this node (`namespace/name`).
    pub workload: String,
    /// The peer's proven identity, or `unknown` for plaintext.
    pub peer_identity: String,
    pub security: &'static str,
    pub verdict: &'static str,
    pub reason: &'static str,
}

impl ConnectionLabels {
    fn of(connection: &Connection) -> Self {
        let decision = connection.decision.as_ref();
        Self {
            direction: connection.direction.as_str(),
            workload: connection.pod.clone(),
            peer_identity: connection
                .peer_identity
                .clone()
                .unwrap_or_else(|| "unknown".into()),
            security: connection.security.as_str(),
            verdict: decision.map_or("allow", |d| {
                if d.verdict == crate::policy::Verdict::Allow {
                    "allow"
                } else {
                    "deny"
                }
            }),
            reason: decision.map_or("none", |d| d.reason.as_str()),
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
    bytes_received: Family<ConnectionLabels, Counter>,
    bytes_sent: Family<ConnectionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let opened = Family::default();
        let closed = Family::default();
        let bytes_received = Family::default();
        let bytes_sent = Family::default();
        registry.register(
            "connections_opened",
            "Connections the agent decided on, with the verdict and its reason",
            opened.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections that ended",
            closed.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes received from clients",
            bytes_received.clone(),
        );
        registry.register("sent_bytes", "Bytes sent to clients", bytes_sent.clone());
        Self {
            registry,
            opened,
            closed,
            bytes_received,
            bytes_sent,
        }
    }
}

impl Metrics {
    pub fn opened(&self, connection: &Connection) {
        self.opened
            .get_or_create(&ConnectionLabels::of(connection))
            .inc();
    }

    pub fn closed(&self, connection: &Connection, from_client: u64, to_client: u64) {
        let labels = ConnectionLabels::of(connection);
        self.closed.get_or_create(&labels).inc();
        self.bytes_received
            .get_or_create(&labels)
            .inc_by(from_client);
        self.bytes_sent.get_or_create(&labels).inc_by(to_client);
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
