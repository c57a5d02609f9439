//! `RequestMirror`: a copy of each request a rule mirrors goes to the mirror backend, and its
//! answer is dropped; the client sees only the primary's. The body is read whole first, up to
//! [`MIRROR_BODY_CAP`], so both can be sent; a larger one is refused with 413 rather than
//! mirrored in part. At most [`MAX_MIRRORS_IN_FLIGHT`] copies are in flight; past that a copy
//! is skipped and counted (`waypoint`/`mirrors_in_flight`).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use weft_mesh::registry::routes::{BackendRef, Filter};

use crate::{
    app::Waypoint,
    forward::{self, full, Tunnel},
    routing::Backend,
};

/// The largest request body a mirrored rule reads before sending.
pub const MIRROR_BODY_CAP: u64 = 1024 * 1024;
/// Mirror copies in flight at once, over all requests.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 256;

/// The mirror backends of a rule's filters; a backend without a namespace is in the route's.
pub fn backends(filters: &[Filter], route: &str) -> Vec<Backend> {
    let route_namespace = route.split_once('/').map_or("", |(ns, _)| ns);
    filters
        .iter()
        .filter(|f| f.kind == "RequestMirror")
        .filter_map(|f| f.request_mirror.as_ref())
        .map(|m| {
            let b: &BackendRef = &m.backend_ref;
            Backend {
                namespace: b
                    .namespace
                    .clone()
                    .unwrap_or_else(|| route_namespace.to_owned()),
                name: b.name.clone(),
                port: b.port,
                weight: 1,
            }
        })
        .collect()
}

/// Starts a copy of the request (its `bytes` read whole within [`MIRROR_BODY_CAP`] by
/// [`crate::attempts::prepare`]) to each of `mirrors`.
pub fn copy(
    waypoint: &Arc<Waypoint>,
    tunnel: &Arc<Tunnel>,
    parts: &http::request::Parts,
    bytes: &Bytes,
    mirrors: &[Backend],
) {
    for mirror in mirrors {
        let Ok(permit) = waypoint.mirrors.clone().try_acquire_owned() else {
            waypoint.limits.hit(
                "waypoint",
                "mirrors_in_flight",
                &format_args!("{MAX_MIRRORS_IN_FLIGHT} mirror copies in flight; one skipped"),
            );
            continue;
        };
        let Ok((_, endpoint, identity)) =
            forward::pick(waypoint, std::slice::from_ref(mirror), tunnel.service_port)
        else {
            tracing::debug!(mirror = %mirror.name, "mirror backend has no ready endpoint; copy skipped");
            continue;
        };
        let copy = crate::attempts::head_of(parts);
        let (waypoint, tunnel) = (waypoint.clone(), tunnel.clone());
        let body = full(bytes.clone());
        tokio::spawn(async move {
            let sent =
                forward::send_upstream(&waypoint, &tunnel, copy, body, endpoint, identity).await;
            if let Ok(response) = sent {
                // Read to the end, so the pooled connection can serve again.
                let _ = response.into_body().collect().await;
            }
            drop(permit);
        });
    }
}
