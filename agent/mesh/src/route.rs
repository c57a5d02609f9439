//! Where a connection to an original destination goes: a Service VIP:port picks one of its
//! ready endpoints (in turn, or at random under a TrafficPolicy), with the port mapped to its
//! targetPort and the connect timeout the policy sets; any other address is used as is.
//! Shared by the agent's L4 proxy and the waypoint.

use std::{
    collections::HashMap,
    net::{SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use crate::{
    limits::Limits,
    policy::{traffic::Algorithm, TrafficSettings},
    registry::{waypoints::WaypointRef, Registry},
};

/// Connect timeout when no TrafficPolicy sets one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Round-robin state per Service port: at most this many are tracked; past it the counters
/// start again (a fresh rotation, not a failure).
pub const MAX_ROTATIONS: usize = 65_536;

/// Where a connection goes: the endpoint picked (or the waypoint pod, see `via`), the Service
/// it came through, and how long reaching it may take.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: SocketAddr,
    /// The Service goes through this waypoint: `destination` is one of its pods' HBONE
    /// address, and the tunnel's `:authority` is the Service VIP:port the client dialed.
    pub via: Option<WaypointRef>,
    pub service: Option<String>,
    pub connect_timeout: Duration,
    /// The `TrafficPolicy` whose `connectTimeout` set `connect_timeout`, when one did.
    pub timeout_from: Option<String>,
    /// Other endpoints of the Service to try, in order, when connecting to `destination`
    /// fails ([`crate::balance`]).
    pub alternatives: Vec<SocketAddr>,
    /// Every ready endpoint of the Service port (empty for a direct destination).
    pub endpoints: Vec<SocketAddr>,
    /// When connect failures skip an endpoint.
    pub skip_rule: crate::balance::SkipRule,
}

impl Route {
    /// Why the connection failed when it could not be opened in time.
    pub fn timed_out(&self) -> String {
        let limit = humantime(self.connect_timeout);
        match &self.timeout_from {
            Some(policy) => {
                format!("connect timed out after {limit} (connectTimeout of TrafficPolicy {policy})")
            }
            None => format!(
                "connect timed out after {limit} (the default; a TrafficPolicy's connectTimeout changes it)"
            ),
        }
    }
}

fn humantime(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Why a destination has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("service {service} port {port} has no ready endpoints")]
    NoReadyEndpoints { service: String, port: u16 },
    #[error("service {service} goes through waypoint {waypoint}, which has no pod with an address (is it deployed?)")]
    NoReadyWaypoint { service: String, waypoint: String },
}

impl From<RouteError> for crate::connections::Failure {
    fn from(error: RouteError) -> Self {
        Self::new(error.fail_reason(), error.to_string())
    }
}

impl RouteError {
    fn fail_reason(&self) -> crate::connections::FailReason {
        match self {
            Self::NoReadyEndpoints { .. } => crate::connections::FailReason::NoReadyEndpoints,
            Self::NoReadyWaypoint { .. } => crate::connections::FailReason::NoReadyWaypoint,
        }
    }

    /// The bounded `reason` label of this failure, the one its flow carries.
    pub fn reason(&self) -> &'static str {
        self.fail_reason().as_str()
    }
}

/// Which endpoint of each Service port is next.
#[derive(Debug, Default)]
pub struct RoundRobin {
    counters: Mutex<HashMap<String, usize>>,
    /// Where a reset at [`MAX_ROTATIONS`] is counted (`proxy`/`round_robin_rotations`).
    limits: Arc<Limits>,
}

impl RoundRobin {
    /// Rotation state whose resets count on `limits`.
    pub fn counted_by(limits: Arc<Limits>) -> Self {
        Self {
            counters: Mutex::default(),
            limits,
        }
    }

    /// Picks the next of `choices` for `key`, in turn.
    pub fn next_of(&self, key: &str, choices: &[SocketAddr]) -> Option<SocketAddr> {
        if choices.is_empty() {
            return None;
        }
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        if counters.len() >= MAX_ROTATIONS && !counters.contains_key(key) {
            self.limits.hit(
                "proxy",
                "round_robin_rotations",
                &format_args!("{MAX_ROTATIONS} Service ports tracked; every rotation starts again"),
            );
            counters.clear();
        }
        let counter = counters.entry(key.to_owned()).or_insert(0);
        let pick = choices[*counter % choices.len()];
        *counter = counter.wrapping_add(1);
        Some(pick)
    }
}

/// Resolves an original destination under one registry snapshot.
pub fn resolve(
    (rotation, health): (&RoundRobin, &crate::balance::EndpointHealth),
    registry: &Registry,
    (client, original): (std::net::IpAddr, SocketAddrV4),
) -> Result<Route, RouteError> {
    if let Some((service, port)) = registry.service_by_vip(original) {
        let name = format!("{}/{}", service.namespace, service.name);
        if let Some(waypoint) = registry.waypoint_for(service) {
            let pods: Vec<SocketAddr> = registry
                .waypoint_pods(&waypoint)
                .into_iter()
                .map(|ip| SocketAddr::from((ip, crate::ports::HBONE_PORT)))
                .collect();
            let destination = rotation
                .next_of(&format!("waypoint {waypoint}"), &pods)
                .ok_or_else(|| RouteError::NoReadyWaypoint {
                    service: name.clone(),
                    waypoint: waypoint.to_string(),
                })?;
            return Ok(Route {
                destination,
                via: Some(waypoint),
                service: Some(name),
                connect_timeout: CONNECT_TIMEOUT,
                timeout_from: None,
                alternatives: Vec::new(),
                endpoints: Vec::new(),
                skip_rule: crate::balance::SkipRule::default(),
            });
        }
        let endpoints = registry.endpoints(service, port);
        let traffic = registry.traffic_for(service);
        let algorithm = traffic.map(|t| t.algorithm).unwrap_or_default();
        let random = algorithm == Algorithm::Random;
        let policy_timeout = traffic.and_then(|t| t.connect_timeout);
        let first = if random {
            endpoints
                .get(rand::random_range(0..endpoints.len().max(1)))
                .copied()
        } else {
            rotation.next_of(&format!("{name}:{}", port.port), &endpoints)
        }
        .ok_or_else(|| RouteError::NoReadyEndpoints {
            service: name.clone(),
            port: port.port,
        })?;
        let locality = traffic.and_then(|t| t.resilience.locality);
        let nearness = locality.map(|_| registry.nearness(registry.node_of(client), &endpoints));
        let near = nearness.as_deref().zip(locality);
        let mut order = health
            .order_near(algorithm, first, &endpoints, near)
            .into_iter();
        let destination = order.next().unwrap_or(first);
        return Ok(Route {
            destination,
            via: None,
            service: Some(name),
            connect_timeout: policy_timeout.unwrap_or(CONNECT_TIMEOUT),
            timeout_from: policy_timeout.and(traffic.map(TrafficSettings::id)),
            alternatives: order.collect(),
            endpoints,
            skip_rule: traffic.map_or_else(crate::balance::SkipRule::default, skip_rule),
        });
    }
    Ok(Route {
        destination: SocketAddr::V4(original),
        via: None,
        service: None,
        connect_timeout: CONNECT_TIMEOUT,
        timeout_from: None,
        alternatives: Vec::new(),
        endpoints: Vec::new(),
        skip_rule: crate::balance::SkipRule::default(),
    })
}

/// A policy's `outlierDetection` as it applies at L4: its consecutive errors are connect
/// failures.
fn skip_rule(traffic: &TrafficSettings) -> crate::balance::SkipRule {
    traffic
        .resilience
        .outlier
        .as_ref()
        .map_or_else(crate::balance::SkipRule::default, |o| {
            crate::balance::SkipRule {
                consecutive: o
                    .consecutive_5xx
                    .into_iter()
                    .chain(o.consecutive_gateway)
                    .min()
                    .unwrap_or(crate::balance::DEFAULT_CONSECUTIVE_FAILURES),
                base: o.base_ejection,
                max_percent: o.max_percent,
            }
        })
}
