//! The tunnels a waypoint accepts on 15008: each `CONNECT` names a Service VIP:port this
//! waypoint serves; the waypoint answers 200 and, as the port's protocol says
//! ([`crate::protocol`]), serves HTTP/1.1 or HTTP/2 (prior knowledge) inside the tunnel, each
//! request routed by [`crate::forward`], or carries the bytes to an endpoint at L4.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_mesh::{
    hbone::{io::TunnelIo, server::Inbound, server::Tunnels},
    identity::SpiffeId,
};

use weft_mesh::registry::AppProtocol;

use crate::{
    app::Waypoint,
    forward,
    protocol::{self, Carry},
};

impl Tunnels for Waypoint {
    fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    fn name(&self) -> String {
        format!("waypoint {}", self.gateway)
    }

    fn target(&self, method: &http::Method, uri: &http::Uri) -> Result<SocketAddr, &'static str> {
        weft_mesh::hbone::server::connect_authority(method, uri)
    }

    fn refused(&self, peer: SocketAddr, _local: SocketAddr, reason: String) {
        tracing::info!(%peer, %reason, "HBONE connection refused");
    }

    async fn carry(self: Arc<Self>, tunnel: Inbound) {
        let Inbound {
            peer,
            client,
            target,
            body,
            mut respond,
            ..
        } = tunnel;
        let service = match target {
            SocketAddr::V4(vip) => self.served_service(vip),
            SocketAddr::V6(_) => None,
        };
        let Some((service, service_port, declared)) = service else {
            tracing::info!(%peer, %client, %target, "CONNECT to an address this waypoint does not serve");
            weft_mesh::hbone::server::reply(&mut respond, http::StatusCode::BAD_REQUEST);
            return;
        };
        let ok = http::Response::builder()
            .status(http::StatusCode::OK)
            .body(())
            .unwrap_or_default();
        let send = match respond.send_response(ok, false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "tunnel closed before its answer");
                return;
            }
        };
        let mut io = TunnelIo::new(send, body);
        let context = Arc::new(forward::Tunnel {
            service,
            service_port,
            client_ip: peer.ip(),
            client,
        });
        let (carry, first) = match Carry::declared(declared) {
            Some(carry) => (carry, bytes::Bytes::new()),
            None => match protocol::sniff(&mut io).await {
                (protocol::Sniffed::Http, first) => (Carry::Auto, first),
                (_, first) => (Carry::Opaque, first),
            },
        };
        let io = protocol::Replayed::new(first, io);
        if carry == Carry::Opaque {
            protocol::pass_through(self, context, io).await;
            return;
        }
        serve_http(self, context, io, carry, peer).await;
    }
}

/// Serves HTTP inside one tunnel, each request through [`forward::handle`].
async fn serve_http(
    waypoint: Arc<Waypoint>,
    context: Arc<forward::Tunnel>,
    io: protocol::Replayed<TunnelIo>,
    carry: Carry,
    peer: SocketAddr,
) {
    let service = hyper::service::service_fn(move |request| {
        forward::handle(waypoint.clone(), context.clone(), request)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder = match carry {
        Carry::Http1 => builder.http1_only(),
        Carry::Http2 => builder.http2_only(),
        Carry::Auto | Carry::Opaque => builder,
    };
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(weft_mesh::limits::HEADER_READ_TIMEOUT)
        .max_buf_size(weft_mesh::limits::MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(
            u32::try_from(weft_mesh::limits::MAX_REQUEST_HEAD).unwrap_or(u32::MAX),
        );
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        tracing::debug!(%peer, error = %e, "HTTP inside a tunnel ended with an error");
    }
}

impl Waypoint {
    /// The Service (`namespace/name`) and port at `vip`, if this waypoint serves it.
    /// The Service (`namespace/name`), port and declared protocol at `vip`, if this waypoint
    /// serves it.
    pub(crate) fn served_service(&self, vip: SocketAddrV4) -> Option<(String, u16, AppProtocol)> {
        let registry = self.registry.borrow();
        let (service, port) = registry.service_by_vip(vip)?;
        let waypoint = registry.waypoint_for(service)?;
        (waypoint.namespace == self.gateway.namespace && waypoint.name == self.gateway.name).then(
            || {
                (
                    format!("{}/{}", service.namespace, service.name),
                    port.port,
                    port.protocol(),
                )
            },
        )
    }
}
