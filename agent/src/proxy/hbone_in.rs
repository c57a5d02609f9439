//! What an enrolled pod's HBONE listener does with a tunnel: authorize it under the current
//! policy, deliver it into the pod from the client's own address, and carry its bytes. The
//! TLS, HTTP/2 and deadlines around it are the mesh core's HBONE server.

use std::{net::SocketAddr, sync::Arc};

use http::StatusCode;
use weft_mesh::{
    connections::{Connection, Direction, FailReason, Failure, Security},
    hbone::{
        self,
        server::{reply, Inbound, Tunnels},
    },
    identity::SpiffeId,
    limits,
    registry::Registry,
};

use super::{authorize, inbound::deliver, PodContext, ProxyContext};

/// One enrolled pod's HBONE listener.
#[derive(Debug)]
pub struct PodTunnels {
    pub pod: Arc<PodContext>,
    pub ctx: Arc<ProxyContext>,
}

/// The record of an inbound HBONE connection from `peer` to `target`, with the client's
/// identity and certificate serial once TLS has proven them.
fn record(
    registry: &Registry,
    pod: &PodContext,
    peer: SocketAddr,
    target: SocketAddr,
    client: Option<(&SpiffeId, Option<String>)>,
) -> Connection {
    Connection {
        id: 0,
        started_unix_ms: 0,
        trace: None,
        decision: None,
        direction: Direction::Inbound,
        pod: pod.name().to_owned(),
        workload_identity: Some(pod.identity.to_string()),
        source: peer,
        original_destination: target,
        destination: target,
        service: None,
        security: Security::Mtls,
        peer_identity: client.as_ref().map(|(id, _)| id.to_string()),
        peer_certificate_serial: client.and_then(|(_, serial)| serial),
        peer_workload: registry.workload_at(peer.ip()),
        waypoint: None,
        carried_identity: None,
        connect_attempts: 0,
        failure: None,
    }
}

impl Tunnels for PodTunnels {
    fn identity(&self) -> &SpiffeId {
        &self.pod.identity
    }

    fn name(&self) -> String {
        self.pod.name().to_owned()
    }

    fn target(&self, method: &http::Method, uri: &http::Uri) -> Result<SocketAddr, &'static str> {
        hbone::server::connect_target(method, uri, self.pod.placement.ip)
    }

    /// Recorded as a failed flow, so `weftctl flows` says why.
    fn refused(&self, peer: SocketAddr, local: SocketAddr, reason: String) {
        let registry = self.ctx.registry.borrow().clone();
        self.ctx.connections.failed(
            record(&registry, &self.pod, peer, local, None),
            Failure::new(FailReason::RefusedBeforeTunnel, reason),
        );
    }

    async fn carry(self: Arc<Self>, tunnel: Inbound) {
        let Inbound {
            peer,
            client,
            serial,
            target,
            carried,
            trace_parent,
            body,
            mut respond,
        } = tunnel;
        let (pod, ctx) = (&self.pod, &self.ctx);
        let registry = ctx.registry.borrow().clone();
        let mut connection = record(&registry, pod, peer, target, Some((&client, serial)));
        connection.trace = ctx.connections.tracer.get().map(|tracer| {
            tracer.begin(
                trace_parent.as_ref(),
                "accept",
                opentelemetry::trace::SpanKind::Server,
                false,
            )
        });
        // Only a waypoint tunnels for someone else: any other peer's claim is not recorded.
        let from_waypoint = match peer.ip() {
            std::net::IpAddr::V4(ip) => registry
                .pod_by_ip(ip)
                .is_some_and(weft_mesh::registry::waypoints::is_waypoint_pod),
            std::net::IpAddr::V6(_) => false,
        };
        connection.carried_identity = carried.filter(|_| from_waypoint).map(|c| c.to_string());
        let Some(guard) = authorize(ctx, &registry, pod, connection, Some(&client)) else {
            reply(&mut respond, StatusCode::UNAUTHORIZED);
            return;
        };
        // A long-lived tunnel must not keep the snapshot it began under alive.
        drop(registry);
        // The client agent connects from the client pod's own address: deliver from it.
        // Boxed: the delivery's state would otherwise stay in this future for the stream's life.
        let delivering = Box::pin(deliver(pod, ctx, SocketAddr::new(peer.ip(), 0), target));
        let server = match delivering.await {
            Ok(server) => server,
            Err(e) => {
                tracing::warn!(pod = %pod.name(), %client, %target, error = %e, "HBONE destination unreachable: 503");
                guard.fail(Failure::new(FailReason::Unreachable, e.to_string()));
                ctx.connections
                    .totals
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                reply(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
                return;
            }
        };
        let response = http::Response::builder()
            .status(StatusCode::OK)
            .body(())
            .unwrap_or_default();
        let send = match respond.send_response(response, false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(error = %e, "HBONE stream reset before it opened");
                return;
            }
        };
        // The TCP side here is the application: what it sends goes back to the client.
        let bytes = guard.bytes();
        let carried =
            hbone::stream::splice(server, send, body, &bytes.to_client, &bytes.from_client);
        // The guard reports the bytes counted as they moved, whichever way this ends.
        let error = tokio::select! {
            result = carried => result,
            () = guard.revoked() => return,
            () = limits::idle([&bytes.to_client, &bytes.from_client], limits::STREAM_IDLE_TIMEOUT) => {
                ctx.connections.metrics.limits.hit("hbone", "stream_idle_timeout", &peer);
                return;
            }
        };
        if let Some(e) = error {
            tracing::debug!(error = %e, "HBONE tunnel ended with an error");
        }
    }
}
