//! `GET /endpoints?service=NS/NAME`: the backends the waypoint has sent to (or, for a named
//! Service, every port of it), each with its breaker's occupancy and every endpoint's record.

use std::time::Instant;

use weft_api::resilience::{BackendReport, EndpointReport};
use weft_mesh::registry::Registry;

use crate::app::Waypoint;

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The report of one backend Service port (`namespace/name:port`).
fn backend(waypoint: &Waypoint, registry: &Registry, key: &str) -> Option<BackendReport> {
    let (service, port) = key.rsplit_once(':')?;
    let (namespace, name) = service.split_once('/')?;
    let service = registry.service(namespace, name)?;
    let port = service.ports.iter().find(|p| p.port.to_string() == port)?;
    let policy = registry.traffic_for(service);
    let state = waypoint.resilience.backend(key, &waypoint.limits);
    let records = state.endpoints().snapshot();
    let now = Instant::now();
    let endpoints = registry
        .endpoints(service, port)
        .into_iter()
        .map(|address| {
            let record = records
                .iter()
                .find(|(e, _)| *e == address)
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            let pod = match address.ip() {
                std::net::IpAddr::V4(ip) => registry
                    .pod_by_ip(ip)
                    .map(|p| format!("{}/{}", p.namespace, p.name)),
                std::net::IpAddr::V6(_) => None,
            };
            let ejected_for = record
                .ejected_until
                .filter(|until| *until > now)
                .map(|until| until - now);
            let health = if ejected_for.is_some() {
                "ejected"
            } else if record.unhealthy {
                "unhealthy"
            } else {
                "healthy"
            };
            EndpointReport {
                address: address.to_string(),
                pod,
                health: health.into(),
                ejected_for_ms: ejected_for.map(millis),
                ejections: record.ejections,
                active_requests: record.active,
                ewma_ms: (record.ewma_micros / 10.0).round() / 100.0,
                requests: record.requests,
                errors: record.errors,
                locality: registry
                    .node_of(address.ip())
                    .and_then(|n| match (&n.region, &n.zone) {
                        (Some(region), Some(zone)) => Some(format!("{region}/{zone}")),
                        (None, Some(zone)) => Some(zone.clone()),
                        (Some(region), None) => Some(region.clone()),
                        (None, None) => None,
                    }),
            }
        })
        .collect();
    let occupancy = state.breaker.occupancy();
    Some(BackendReport {
        backend: key.to_owned(),
        policy: policy.map(weft_mesh::policy::TrafficSettings::id),
        algorithm: format!("{:?}", policy.map(|p| p.algorithm).unwrap_or_default()),
        requests_in_flight: occupancy.requests,
        connections_in_flight: occupancy.connections,
        pending: occupancy.pending,
        retries_in_flight: occupancy.retries,
        endpoints,
    })
}

/// Every backend the waypoint keeps state for, or every port of `service` (`ns/name`).
pub fn endpoints(waypoint: &Waypoint, service: Option<&str>) -> Vec<BackendReport> {
    let registry = waypoint.registry.borrow().clone();
    let keys: Vec<String> = match service {
        Some(wanted) => {
            let (namespace, name) = wanted.split_once('/').unwrap_or(("default", wanted));
            registry
                .service(namespace, name)
                .map(|s| {
                    s.ports
                        .iter()
                        .map(|p| format!("{namespace}/{name}:{}", p.port))
                        .collect()
                })
                .unwrap_or_default()
        }
        None => waypoint
            .resilience
            .backends()
            .iter()
            .map(|b| b.name.clone())
            .collect(),
    };
    keys.iter()
        .filter_map(|key| backend(waypoint, &registry, key))
        .collect()
}
