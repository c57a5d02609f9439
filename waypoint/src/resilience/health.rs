//! Active health checks: for every backend Service whose policy has a `healthCheck`, each
//! endpoint gets `GET <path>` (HTTP/1.1, through its agent under the waypoint's identity like
//! any request) every `interval`; a 2xx within `timeout` passes. An endpoint failing
//! `unhealthyThreshold` probes in a row takes no requests until it passes
//! `healthyThreshold` in a row.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

use crate::app::Waypoint;

/// How often due probes are looked for.
const TICK: Duration = Duration::from_millis(100);
/// Probes in flight at once; due probes past it wait for the next tick.
pub const MAX_PROBES_IN_FLIGHT: usize = 256;
/// Endpoints whose last probe time is kept; past it the times start again.
pub const MAX_PROBED: usize = 65_536;

/// Probes every endpoint of every health-checked backend when due, for as long as the
/// waypoint runs.
pub async fn run(waypoint: Arc<Waypoint>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PROBES_IN_FLIGHT));
    let mut last: HashMap<(String, SocketAddr), Instant> = HashMap::new();
    let mut checked: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(TICK).await;
        let mut checked_now = HashSet::new();
        let registry = waypoint.registry.borrow().clone();
        if last.len() > MAX_PROBED {
            waypoint
                .limits
                .hit("waypoint", "health_probed_endpoints", &last.len());
            last.clear();
        }
        for policy in &registry.traffic_policies {
            let Some(health) = policy.resilience.health.clone() else {
                continue;
            };
            for name in &policy.services {
                let Some(service) = registry.service(&policy.namespace, name) else {
                    continue;
                };
                for port in &service.ports {
                    let key = format!("{}/{}:{}", policy.namespace, name, port.port);
                    checked_now.insert(key.clone());
                    for endpoint in registry.endpoints(service, port) {
                        let due = last
                            .get(&(key.clone(), endpoint))
                            .is_none_or(|t| t.elapsed() >= health.interval);
                        if !due {
                            continue;
                        }
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            waypoint
                                .limits
                                .hit("waypoint", "health_probes_in_flight", &key);
                            continue;
                        };
                        last.insert((key.clone(), endpoint), Instant::now());
                        let backend = waypoint.resilience.backend(&key, &waypoint.limits);
                        let epoch = backend.endpoints().health_epoch();
                        let identity = crate::forward::identity_of(&waypoint, &registry, endpoint);
                        let (waypoint, health) = (waypoint.clone(), health.clone());
                        tokio::spawn(async move {
                            let passed = tokio::time::timeout(
                                health.timeout,
                                probe(&waypoint, endpoint, identity, &health.path),
                            )
                            .await
                            .is_ok_and(|ok| ok);
                            drop(slot);
                            let changed = backend.endpoints().probed(
                                endpoint,
                                passed,
                                (health.healthy, health.unhealthy),
                                epoch,
                            );
                            match changed {
                                Some(true) => {
                                    tracing::info!(backend = %backend.name, %endpoint, "endpoint passes its health check again");
                                }
                                Some(false) => {
                                    tracing::warn!(backend = %backend.name, %endpoint, path = %health.path, "endpoint failed its health check; it takes no requests until it passes");
                                }
                                None => {}
                            }
                        });
                    }
                }
            }
        }
        // A backend whose policy lost its health check (or the policy itself) takes its
        // unhealthy endpoints back: nothing would probe them healthy again.
        for key in checked.difference(&checked_now) {
            let backend = waypoint.resilience.backend(key, &waypoint.limits);
            for endpoint in backend.endpoints().clear_health() {
                tracing::info!(backend = %key, %endpoint, "health check removed; endpoint takes requests again");
            }
            last.retain(|(probed, _), _| probed != key);
        }
        checked = checked_now;
    }
}

/// One `GET path` to `endpoint`: whether it answered 2xx.
async fn probe(
    waypoint: &Waypoint,
    endpoint: SocketAddr,
    identity: Option<weft_mesh::identity::SpiffeId>,
    path: &str,
) -> bool {
    let key = crate::upstream::Key {
        endpoint,
        client: IpAddr::from([127, 0, 0, 1]),
        http2: false,
        carried: None,
    };
    let Ok(io) =
        crate::upstream::connect(&waypoint.pool, &waypoint.identity, identity.as_ref(), &key).await
    else {
        return false;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await
    else {
        return false;
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(path)
        .header(http::header::HOST, endpoint.to_string())
        .header(http::header::USER_AGENT, "weft-waypoint-health-check")
        .body(Empty::new());
    let Ok(request) = request else {
        return false;
    };
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            let _ = response.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}
