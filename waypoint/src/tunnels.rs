//! The tunnels a waypoint accepts on 15008: each `CONNECT` names a Service VIP:port this
//! waypoint serves; the waypoint answers 200 and serves HTTP/1.1 or HTTP/2 (prior knowledge)
//! inside the tunnel, each request routed by [`crate::forward`].

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
};

use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_mesh::{
    hbone::{io::TunnelIo, server::Inbound, server::Tunnels},
    identity::SpiffeId,
};

use crate::{app::Waypoint, forward};

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
        let Some((service, service_port)) = service else {
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
        let io = TunnelIo::new(send, body);
        let context = Arc::new(forward::Tunnel {
            service,
            service_port,
            client_ip: peer.ip(),
            client,
        });
        let waypoint = self.clone();
        let service = hyper::service::service_fn(move |request| {
            forward::handle(waypoint.clone(), context.clone(), request)
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
}

impl Waypoint {
    /// The Service (`namespace/name`) and port at `vip`, if this waypoint serves it.
    pub(crate) fn served_service(&self, vip: SocketAddrV4) -> Option<(String, u16)> {
        let registry = self.registry.borrow();
        let (service, port) = registry.service_by_vip(vip)?;
        let waypoint = registry.waypoint_for(service)?;
        (waypoint.namespace == self.gateway.namespace && waypoint.name == self.gateway.name)
            .then(|| (format!("{}/{}", service.namespace, service.name), port.port))
    }
}
