//! Live proxied connections, the recently closed ones, and running totals: the agent's own
//! record of what it carried and why it allowed or refused it. The admin API shows it; each
//! closed or refused connection also leaves one access-log line (target `weft_access`).

use opentelemetry::{trace::Status, KeyValue};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::SystemTime,
};

use tokio::sync::Notify;

use crate::{
    flows::{Flow, FlowEvent, Flows, Verdict as FlowVerdict},
    identity::SpiffeId,
    metrics::Metrics,
    policy::{Decision, Verdict},
    registry::{PodPlacement, Registry},
};

pub use weft_api::{Direction, Security};

/// One connection the agent is carrying.
#[derive(Clone, Debug)]
pub struct Connection {
    pub id: u64,
    pub direction: Direction,
    /// The enrolled pod on this node (`namespace/name`).
    pub pod: String,
    pub source: SocketAddr,
    /// What the client dialed.
    pub original_destination: SocketAddr,
    /// Where the agent connected.
    pub destination: SocketAddr,
    pub service: Option<String>,
    pub security: Security,
    /// The SPIFFE ID of the peer workload, when mutual TLS proved it.
    pub peer_identity: Option<String>,
    /// Serial of the certificate the peer proved its identity with.
    pub peer_certificate_serial: Option<String>,
    /// This pod's own SPIFFE ID.
    pub workload_identity: Option<String>,
    /// The other side's workload, when the registry knows the peer address (`namespace/name`).
    pub peer_workload: Option<String>,
    /// The waypoint the connection went through (`namespace/name`), when its Service uses one.
    pub waypoint: Option<String>,
    /// Inbound from a waypoint: the original client's identity it carried.
    pub carried_identity: Option<String>,
    /// Outbound to a Service: the endpoints tried before one connected (or the last failed);
    /// above 1 the connect was retried on another endpoint.
    pub connect_attempts: u32,
    /// Why the agent could not carry it, for failed connections.
    pub failure: Option<Failure>,
    /// The authorization decision (inbound connections).
    pub decision: Option<Decision>,
    pub started_unix_ms: u64,
    /// The connection's span, when tracing is on: begun when it was accepted, ended with its
    /// record.
    pub trace: Option<crate::trace::Begun>,
}

/// What is needed to decide an inbound connection again when policies change.
#[derive(Clone, Debug)]
pub struct Authorized {
    pub pod: PodPlacement,
    pub port: u16,
    pub identity: Option<SpiffeId>,
    pub source_ip: std::net::IpAddr,
}

/// Monotonic totals since the agent started.
#[derive(Debug, Default)]
pub struct Totals {
    pub outbound_opened: AtomicU64,
    pub inbound_opened: AtomicU64,
    pub closed: AtomicU64,
    pub failed: AtomicU64,
    pub denied: AtomicU64,
    /// Established connections closed because a policy change denied them.
    pub closed_by_policy: AtomicU64,
    /// Connections to a capture listener that the kernel did not redirect (no open relay).
    pub refused_not_captured: AtomicU64,
    /// Captured connections to loopback or to an agent port at the pod's address (they would
    /// loop into the agent), refused before anything was dialed.
    pub refused_agent_port: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
}

/// A connection that ended, with what it moved: its access-log line and its flow.
#[derive(Clone, Debug)]
pub struct Closed {
    pub connection: Connection,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub ended_unix_ms: u64,
}

/// Bytes moved so far, updated by the copy loops.
#[derive(Debug, Default)]
pub struct ByteCounters {
    pub from_client: AtomicU64,
    pub to_client: AtomicU64,
}

/// A live connection with its progress, as the admin API shows it.
#[derive(Clone, Debug)]
pub struct LiveView {
    pub connection: Connection,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

#[derive(Debug)]
struct Live {
    connection: Connection,
    bytes: Arc<ByteCounters>,
    authorized: Option<Authorized>,
    cancel: Arc<Notify>,
}

#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Live>>,
    pub totals: Totals,
    pub metrics: Metrics,
    pub flows: Flows,
    /// Set once at start when tracing is on: each connection's span ends with its record.
    pub tracer: std::sync::OnceLock<crate::trace::Tracer>,
}

/// Moves the connection from the live set to the recent ones when dropped, however the proxy
/// task ends, and writes its access-log line.
#[derive(Debug)]
pub struct Guard<'a> {
    connections: &'a Connections,
    id: u64,
    /// Advanced by the copy loops as bytes move; what the connection reports when it ends,
    /// however it ends (an error or a cut direction keeps what it had moved).
    progress: Arc<ByteCounters>,
    cancel: Arc<Notify>,
}

/// Wall-clock milliseconds since the Unix epoch, as flows and connections record time.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Connection {
    /// The bounded `reason` label flows and metrics both carry: the decision's, else the
    /// failure's, else `none`.
    pub fn reason(&self) -> &'static str {
        match (&self.decision, &self.failure) {
            (Some(d), _) => d.reason.as_str(),
            (None, Some(failure)) => failure.reason.as_str(),
            (None, None) if self.connect_attempts > 1 => "retried",
            (None, None) => "none",
        }
    }
}

/// Why a connection could not be carried, as the bounded `reason` of its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// A Service port with no ready endpoint.
    NoReadyEndpoints,
    /// TCP, TLS or the tunnel was not set up within the connect timeout.
    ConnectTimeout,
    /// The destination refused or could not be reached.
    Unreachable,
    /// The destination's HBONE listener answered the CONNECT with an error status.
    TunnelRefused,
    /// The tunnel failed otherwise (TLS, identity, HTTP/2).
    TunnelFailed,
    /// An inbound HBONE connection refused before it carried a tunnel (no TLS, no identity).
    RefusedBeforeTunnel,
    /// A captured connection that would have looped back into the agent.
    LoopIntoAgent,
    /// A Service that goes through a waypoint whose pods have no address yet.
    NoReadyWaypoint,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoReadyEndpoints => "no_ready_endpoints",
            Self::ConnectTimeout => "connect_timeout",
            Self::Unreachable => "unreachable",
            Self::TunnelRefused => "tunnel_refused",
            Self::TunnelFailed => "tunnel_failed",
            Self::RefusedBeforeTunnel => "refused_before_tunnel",
            Self::LoopIntoAgent => "loop_into_agent",
            Self::NoReadyWaypoint => "no_ready_waypoint",
        }
    }
}

/// A failure: its bounded reason, and what a user needs to act on it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    pub reason: FailReason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: FailReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

fn flow(connection: &Connection, event: FlowEvent, bytes: (u64, u64), ended_unix_ms: u64) -> Flow {
    let decision = connection.decision.as_ref();
    Flow {
        time_unix_ms: if event == FlowEvent::Opened {
            connection.started_unix_ms
        } else {
            ended_unix_ms
        },
        event,
        direction: connection.direction,
        workload: connection.pod.clone(),
        source: connection.source,
        destination: connection.original_destination,
        service: connection.service.clone(),
        peer_workload: connection.peer_workload.clone(),
        waypoint: connection.waypoint.clone(),
        carried_identity: connection.carried_identity.clone(),
        connect_attempts: connection.connect_attempts,
        peer_identity: connection.peer_identity.clone(),
        peer_certificate_serial: connection.peer_certificate_serial.clone(),
        workload_identity: connection.workload_identity.clone(),
        security: connection.security,
        verdict: match decision {
            Some(d) if d.verdict == Verdict::Deny => FlowVerdict::Deny,
            _ if event == FlowEvent::Failed => FlowVerdict::Failed,
            _ => FlowVerdict::Allow,
        },
        reason: connection.reason().into(),
        detail: decision.map_or_else(
            || {
                connection
                    .failure
                    .as_ref()
                    .map(|f| f.detail.clone())
                    .unwrap_or_default()
            },
            |d| d.detail.clone(),
        ),
        policy: decision.and_then(|d| d.policy.clone()),
        notes: decision.map(|d| d.notes.clone()).unwrap_or_default(),
        bytes_from_client: bytes.0,
        bytes_to_client: bytes.1,
        duration_ms: ended_unix_ms.saturating_sub(connection.started_unix_ms),
    }
}

fn access_log(closed: &Closed) {
    let c = &closed.connection;
    let decision = c.decision.as_ref();
    tracing::info!(
        target: "weft_access",
        direction = c.direction.as_str(),
        pod = %c.pod,
        workload_identity = c.workload_identity.as_deref().unwrap_or("-"),
        source = %c.source,
        original_destination = %c.original_destination,
        destination = %c.destination,
        service = c.service.as_deref().unwrap_or("-"),
        security = c.security.as_str(),
        peer_identity = c.peer_identity.as_deref().unwrap_or("-"),
        verdict = decision.map_or("allow", |d| if d.verdict == Verdict::Allow { "allow" } else { "deny" }),
        // The flow's and the metrics' reason, so one word finds all three.
        reason = c.reason(),
        detail = decision.map_or_else(
            || c.failure.as_ref().map_or("", |f| f.detail.as_str()),
            |d| d.detail.as_str()
        ),
        bytes_from_client = closed.bytes_from_client,
        bytes_to_client = closed.bytes_to_client,
        duration_ms = closed.ended_unix_ms.saturating_sub(c.started_unix_ms),
        "connection closed"
    );
}

impl Connections {
    pub fn open(&self, connection: Connection) -> Guard<'_> {
        self.open_authorized(connection, None)
    }

    /// Opens an inbound connection that policy changes may close again.
    pub fn open_authorized(
        &self,
        mut connection: Connection,
        authorized: Option<Authorized>,
    ) -> Guard<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        connection.id = id;
        connection.started_unix_ms = now_unix_ms();
        let counter = match connection.direction {
            Direction::Outbound => &self.totals.outbound_opened,
            Direction::Inbound => &self.totals.inbound_opened,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.opened(&connection);
        self.flows.record(flow(
            &connection,
            FlowEvent::Opened,
            (0, 0),
            connection.started_unix_ms,
        ));
        let cancel = Arc::new(Notify::new());
        let progress = Arc::new(ByteCounters::default());
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                id,
                Live {
                    connection,
                    bytes: progress.clone(),
                    authorized,
                    cancel: cancel.clone(),
                },
            );
        Guard {
            connections: self,
            id,
            progress,
            cancel,
        }
    }

    /// Records a connection refused before it opened (a policy denial), with its reason.
    pub fn refused(&self, mut connection: Connection) {
        connection.started_unix_ms = now_unix_ms();
        connection.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.totals.denied.fetch_add(1, Ordering::Relaxed);
        self.metrics.opened(&connection);
        let closed = Closed {
            connection,
            bytes_from_client: 0,
            bytes_to_client: 0,
            ended_unix_ms: now_unix_ms(),
        };
        access_log(&closed);
        self.end_span(&closed.connection, (0, 0));
        self.flows.record(flow(
            &closed.connection,
            FlowEvent::Denied,
            (0, 0),
            closed.ended_unix_ms,
        ));
    }

    /// Records a connection the agent could not carry (no endpoint, unreachable, tunnel
    /// refused), with what went wrong.
    /// A captured connection refused because it would loop into the agent: counted apart and
    /// recorded as a failed flow with its reason.
    pub fn refused_loop(&self, connection: Connection, detail: String) {
        self.totals
            .refused_agent_port
            .fetch_add(1, Ordering::Relaxed);
        self.failed(connection, Failure::new(FailReason::LoopIntoAgent, detail));
    }

    pub fn failed(&self, mut connection: Connection, failure: Failure) {
        connection.started_unix_ms = now_unix_ms();
        connection.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        connection.failure = Some(failure);
        self.totals.failed.fetch_add(1, Ordering::Relaxed);
        self.metrics.failed(&connection);
        self.end_span(&connection, (0, 0));
        self.flows
            .record(flow(&connection, FlowEvent::Failed, (0, 0), now_unix_ms()));
    }

    /// Ends the connection's span, when it has one, with what its record says.
    fn end_span(&self, connection: &Connection, (from_client, to_client): (u64, u64)) {
        let (Some(tracer), Some(begun)) = (self.tracer.get(), connection.trace.clone()) else {
            return;
        };
        if !begun.sampled() {
            return;
        }
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut attributes = vec![
            KeyValue::new("network.transport", "tcp"),
            KeyValue::new("weft.direction", connection.direction.as_str()),
            KeyValue::new("weft.pod", connection.pod.clone()),
            KeyValue::new("client.address", connection.source.ip().to_string()),
            KeyValue::new("client.port", i64::from(connection.source.port())),
            KeyValue::new(
                "server.address",
                connection.original_destination.ip().to_string(),
            ),
            KeyValue::new(
                "server.port",
                i64::from(connection.original_destination.port()),
            ),
            KeyValue::new(
                "network.peer.address",
                connection.destination.ip().to_string(),
            ),
            KeyValue::new("weft.security", connection.security.as_str()),
            KeyValue::new("weft.reason", connection.reason()),
            KeyValue::new("weft.bytes.from_client", bytes(from_client)),
            KeyValue::new("weft.bytes.to_client", bytes(to_client)),
            KeyValue::new(
                "weft.connect_attempts",
                i64::from(connection.connect_attempts),
            ),
        ];
        let optional = [
            ("weft.service", &connection.service),
            ("weft.peer.principal", &connection.peer_identity),
            ("weft.peer.workload", &connection.peer_workload),
            ("weft.waypoint", &connection.waypoint),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value.clone()));
            }
        }
        let verdict = match &connection.decision {
            Some(d) if d.verdict != Verdict::Allow => "deny",
            _ => "allow",
        };
        attributes.push(KeyValue::new("weft.policy.verdict", verdict));
        if let Some(policy) = connection.decision.as_ref().and_then(|d| d.policy.clone()) {
            attributes.push(KeyValue::new("weft.policy.name", policy));
        }
        let status = if let Some(failure) = &connection.failure {
            attributes.push(KeyValue::new("error.type", failure.reason.as_str()));
            Status::error(failure.detail.clone())
        } else if verdict == "deny" {
            attributes.push(KeyValue::new("error.type", connection.reason()));
            Status::error("denied by policy")
        } else {
            Status::Unset
        };
        let name = match (connection.direction, &connection.service) {
            (Direction::Outbound, Some(service)) => format!("connect {service}"),
            (Direction::Outbound, None) => format!("connect {}", connection.original_destination),
            (Direction::Inbound, _) => format!("accept {}", connection.pod),
        };
        tracer.end(begun, name, attributes, status);
    }

    pub fn live(&self) -> Vec<LiveView> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|l| LiveView {
                connection: l.connection.clone(),
                bytes_from_client: l.bytes.from_client.load(Ordering::Relaxed),
                bytes_to_client: l.bytes.to_client.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Decides every live inbound connection again under the new registry and closes the ones
    /// it now denies. Returns how many were closed.
    pub fn revalidate(&self, registry: &Registry) -> usize {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closed = 0;
        for entry in live.values_mut() {
            let Some(authorized) = &entry.authorized else {
                continue;
            };
            let decision = registry.authorize(
                &authorized.pod,
                authorized.port,
                authorized.identity.as_ref(),
                authorized.source_ip,
            );
            if decision.verdict == Verdict::Deny {
                tracing::info!(pod = %entry.connection.pod, source = %entry.connection.source, reason = decision.reason.as_str(), detail = %decision.detail, "closing an established connection a policy change denies");
                entry.connection.decision = Some(decision);
                entry.cancel.notify_one();
                self.totals.closed_by_policy.fetch_add(1, Ordering::Relaxed);
                closed += 1;
            }
        }
        closed
    }
}

impl Guard<'_> {
    /// Where the proxy counts the limits it hits.
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.connections.metrics.limits
    }

    /// The counters the copy loops advance.
    pub fn bytes(&self) -> Arc<ByteCounters> {
        self.progress.clone()
    }

    /// Records why the connection could not be carried after it was accepted (the
    /// destination refused the delivery): its record, flow and span say so when it ends.
    pub fn fail(&self, failure: Failure) {
        if let Some(live) = self
            .connections
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&self.id)
        {
            live.connection.failure = Some(failure);
        }
    }

    /// Resolves when a policy change has denied this connection.
    pub async fn revoked(&self) {
        self.cancel.notified().await;
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let live = self
            .connections
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        self.connections
            .totals
            .closed
            .fetch_add(1, Ordering::Relaxed);
        let (bytes_from_client, bytes_to_client) = (
            self.progress.from_client.load(Ordering::Relaxed),
            self.progress.to_client.load(Ordering::Relaxed),
        );
        let totals = &self.connections.totals;
        totals
            .bytes_from_clients
            .fetch_add(bytes_from_client, Ordering::Relaxed);
        totals
            .bytes_to_clients
            .fetch_add(bytes_to_client, Ordering::Relaxed);
        if let Some(live) = live {
            let ended_unix_ms = now_unix_ms();
            let duration = std::time::Duration::from_millis(
                ended_unix_ms.saturating_sub(live.connection.started_unix_ms),
            );
            self.connections.metrics.closed(
                &live.connection,
                bytes_from_client,
                bytes_to_client,
                duration,
            );
            let closed = Closed {
                connection: live.connection,
                bytes_from_client,
                bytes_to_client,
                ended_unix_ms,
            };
            access_log(&closed);
            self.connections
                .end_span(&closed.connection, (bytes_from_client, bytes_to_client));
            let event = flow(
                &closed.connection,
                FlowEvent::Closed,
                (bytes_from_client, bytes_to_client),
                ended_unix_ms,
            );
            self.connections.flows.record(event);
        }
    }
}

impl Totals {
    /// The totals now, as `/stats` shows them.
    pub fn snapshot(&self) -> weft_api::ProxyTotals {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        weft_api::ProxyTotals {
            outbound_opened: load(&self.outbound_opened),
            inbound_opened: load(&self.inbound_opened),
            closed: load(&self.closed),
            failed: load(&self.failed),
            denied: load(&self.denied),
            closed_by_policy: load(&self.closed_by_policy),
            refused_not_captured: load(&self.refused_not_captured),
            refused_agent_port: load(&self.refused_agent_port),
            bytes_from_clients: load(&self.bytes_from_clients),
            bytes_to_clients: load(&self.bytes_to_clients),
        }
    }
}

impl From<&crate::policy::Decision> for weft_api::Decision {
    fn from(d: &crate::policy::Decision) -> Self {
        Self {
            verdict: if d.verdict == Verdict::Allow {
                FlowVerdict::Allow
            } else {
                FlowVerdict::Deny
            },
            reason: d.reason.as_str().to_owned(),
            detail: d.detail.clone(),
            policy: d.policy.clone(),
            notes: d.notes.clone(),
        }
    }
}

impl From<LiveView> for weft_api::Connection {
    fn from(view: LiveView) -> Self {
        let c = view.connection;
        Self {
            id: c.id,
            direction: c.direction,
            pod: c.pod,
            source: c.source,
            original_destination: c.original_destination,
            destination: c.destination,
            service: c.service,
            security: c.security,
            peer_identity: c.peer_identity,
            peer_certificate_serial: c.peer_certificate_serial,
            workload_identity: c.workload_identity,
            peer_workload: c.peer_workload,
            waypoint: c.waypoint,
            carried_identity: c.carried_identity,
            decision: c.decision.as_ref().map(Into::into),
            started_unix_ms: c.started_unix_ms,
            bytes_from_client: view.bytes_from_client,
            bytes_to_client: view.bytes_to_client,
        }
    }
}
