//! The node agent's view of Service endpoints at L4: connections open to each (for
//! `LeastRequest`), consecutive connect failures and the skip they earn (passive health), and
//! the order a connection tries endpoints in: its first choice by the Service's algorithm,
//! then others for the connect retry.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use rand::Rng as _;

use crate::{limits::Limits, policy::traffic::Algorithm};

/// Connect failures in a row that make an endpoint skipped, when no TrafficPolicy's
/// `outlierDetection` says otherwise.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 3;
/// The first skip's length without a policy; each further skip in a row is longer.
pub const DEFAULT_SKIP: Duration = Duration::from_secs(5);
/// A skip lasts at most this many times its base.
pub const MAX_SKIP_MULTIPLIER: u32 = 10;
/// Endpoints a connection tries before it fails (its first choice and two more).
pub const MAX_CONNECT_ATTEMPTS: usize = 3;
/// Endpoints with a record; past it the records start again (counted).
pub const MAX_TRACKED_ENDPOINTS: usize = 65_536;

/// When connect failures make an endpoint skipped, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkipRule {
    pub consecutive: u32,
    pub base: Duration,
    /// At most this share (percent) of a Service's endpoints skipped at once.
    pub max_percent: u32,
}

impl Default for SkipRule {
    fn default() -> Self {
        Self {
            consecutive: DEFAULT_CONSECUTIVE_FAILURES,
            base: DEFAULT_SKIP,
            max_percent: 100,
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    active: u32,
    failures: u32,
    skipped_until: Option<Instant>,
    skips: u32,
}

/// Every endpoint's record.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    records: Mutex<HashMap<SocketAddr, Record>>,
    limits: Arc<Limits>,
}

/// A connection open to an endpoint; dropping it ends its count.
#[derive(Debug)]
pub struct Active<'a> {
    health: &'a EndpointHealth,
    endpoint: SocketAddr,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.health.lock().get_mut(&self.endpoint) {
            r.active = r.active.saturating_sub(1);
        }
    }
}

/// A skip that just began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub duration: Duration,
    pub failures: u32,
}

impl EndpointHealth {
    pub fn counted_by(limits: Arc<Limits>) -> Self {
        Self {
            records: Mutex::default(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn skipped(record: Option<&Record>, now: Instant) -> bool {
        record
            .and_then(|r| r.skipped_until)
            .is_some_and(|until| until > now)
    }

    /// The endpoints a connection tries, in order: `first` when it is not skipped (else the
    /// algorithm's choice among those that are not), then others not skipped. When every
    /// endpoint is skipped they are all tried anyway: a guess beats a certain failure.
    pub fn order(
        &self,
        algorithm: Algorithm,
        first: SocketAddr,
        endpoints: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        self.order_near(algorithm, first, endpoints, None)
    }

    /// [`EndpointHealth::order`], keeping to the nearest locality with enough healthy
    /// endpoints when `near` is given.
    pub fn order_near(
        &self,
        algorithm: Algorithm,
        first: SocketAddr,
        endpoints: &[SocketAddr],
        near: Option<Nearness<'_>>,
    ) -> Vec<SocketAddr> {
        let now = Instant::now();
        let records = self.lock();
        let mut usable: Vec<SocketAddr> = endpoints
            .iter()
            .copied()
            .filter(|e| !Self::skipped(records.get(e), now))
            .collect();
        if let Some(near) = near {
            usable = nearest(endpoints, near, &usable);
        }
        if usable.is_empty() {
            usable = endpoints.to_vec();
        }
        let chosen = if usable.contains(&first) && algorithm != Algorithm::LeastRequest {
            first
        } else if algorithm == Algorithm::LeastRequest && usable.len() > 1 {
            let mut rng = rand::rng();
            let a = usable[rng.random_range(0..usable.len())];
            let b = loop {
                let b = usable[rng.random_range(0..usable.len())];
                if b != a {
                    break b;
                }
            };
            let load = |e: &SocketAddr| records.get(e).map_or(0, |r| r.active);
            if load(&b) < load(&a) {
                b
            } else {
                a
            }
        } else {
            usable[rand::rng().random_range(0..usable.len())]
        };
        let start = usable.iter().position(|e| *e == chosen).unwrap_or(0);
        (0..usable.len())
            .map(|i| usable[(start + i) % usable.len()])
            .take(MAX_CONNECT_ATTEMPTS)
            .collect()
    }

    /// A connection to `endpoint` opened: its failures are forgotten and it counts as active.
    pub fn connected(&self, endpoint: SocketAddr) -> Active<'_> {
        let mut records = self.lock();
        if records.len() >= MAX_TRACKED_ENDPOINTS && !records.contains_key(&endpoint) {
            self.limits.hit(
                "proxy",
                "tracked_endpoints",
                &format_args!(
                    "{MAX_TRACKED_ENDPOINTS} endpoints tracked; their records start again"
                ),
            );
            records.clear();
        }
        let record = records.entry(endpoint).or_default();
        record.active += 1;
        record.failures = 0;
        record.skips = 0;
        drop(records);
        Active {
            health: self,
            endpoint,
        }
    }

    /// A connect to `endpoint` (one of `service_endpoints`) failed; returns the skip it began.
    pub fn failed(
        &self,
        endpoint: SocketAddr,
        service_endpoints: &[SocketAddr],
        rule: SkipRule,
    ) -> Option<Skipped> {
        let now = Instant::now();
        let mut records = self.lock();
        let skipped_now = service_endpoints
            .iter()
            .filter(|e| Self::skipped(records.get(e), now))
            .count();
        if records.len() >= MAX_TRACKED_ENDPOINTS && !records.contains_key(&endpoint) {
            records.clear();
        }
        let record = records.entry(endpoint).or_default();
        record.failures += 1;
        if record.failures < rule.consecutive || Self::skipped(Some(record), now) {
            return None;
        }
        if skipped_now * 100 >= rule.max_percent as usize * service_endpoints.len() {
            return None;
        }
        record.skips = (record.skips + 1).min(MAX_SKIP_MULTIPLIER);
        let duration = rule.base * record.skips;
        record.skipped_until = Some(now + duration);
        let failures = record.failures;
        record.failures = 0;
        Some(Skipped { duration, failures })
    }

    /// Whether `endpoint` is skipped now.
    pub fn is_skipped(&self, endpoint: SocketAddr) -> bool {
        Self::skipped(self.lock().get(&endpoint), Instant::now())
    }
}

/// Locality preference: how near each endpoint of a Service is to the client (0 its zone, 1
/// its region, 2 further; parallel to the endpoint list) and the healthy share (percent) a
/// locality needs to be used.
pub type Nearness<'a> = (&'a [u8], u32);

/// The healthy endpoints (`usable`) of the nearest locality that has enough of them: the
/// client's zone, else its region, else all of `usable`.
pub fn nearest(
    all: &[SocketAddr],
    (nearness, min_healthy): Nearness<'_>,
    usable: &[SocketAddr],
) -> Vec<SocketAddr> {
    for tier in 0..=1u8 {
        let in_tier: Vec<SocketAddr> = all
            .iter()
            .zip(nearness)
            .filter(|(_, n)| **n <= tier)
            .map(|(e, _)| *e)
            .collect();
        let healthy: Vec<SocketAddr> = usable
            .iter()
            .copied()
            .filter(|e| in_tier.contains(e))
            .collect();
        if !healthy.is_empty() && healthy.len() * 100 >= min_healthy as usize * in_tier.len() {
            return healthy;
        }
    }
    usable.to_vec()
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use super::{EndpointHealth, SkipRule};
    use crate::policy::traffic::Algorithm;

    fn endpoints() -> Vec<SocketAddr> {
        (1..=3)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    #[test]
    fn failures_in_a_row_skip_an_endpoint_and_others_are_tried_after_the_first() {
        let all = endpoints();
        let health = EndpointHealth::default();
        assert_eq!(health.order(Algorithm::RoundRobin, all[0], &all), all);
        let rule = SkipRule {
            consecutive: 2,
            base: Duration::from_mins(1),
            max_percent: 100,
        };
        assert_eq!(health.failed(all[0], &all, rule), None);
        let skipped = health.failed(all[0], &all, rule).expect("skipped");
        assert_eq!(skipped.duration, Duration::from_mins(1));
        assert!(health.is_skipped(all[0]));
        for _ in 0..20 {
            let order = health.order(Algorithm::RoundRobin, all[0], &all);
            assert!(!order.contains(&all[0]), "{order:?}");
        }
        // Every endpoint skipped: all are tried anyway.
        for e in &all[1..] {
            health.failed(*e, &all, rule);
            health.failed(*e, &all, rule);
        }
        assert_eq!(health.order(Algorithm::RoundRobin, all[1], &all).len(), 3);
    }

    #[test]
    fn the_nearest_locality_with_enough_healthy_endpoints_is_used() {
        let all = endpoints();
        // 10.0.0.1 and .2 in the client's zone, .3 elsewhere in its region.
        let nearness = [0, 0, 1];
        assert_eq!(super::nearest(&all, (&nearness, 70), &all), all[..2]);
        // One of the zone's two is out: 50% < 70%, so the region (2 of 3 healthy) is used.
        let usable = [all[1], all[2]];
        assert_eq!(super::nearest(&all, (&nearness, 70), &usable), usable);
        // At 50% the zone's one healthy endpoint is enough.
        assert_eq!(super::nearest(&all, (&nearness, 50), &usable), [all[1]]);
        // Nothing near is healthy: every usable endpoint.
        assert_eq!(super::nearest(&all, (&[2, 2, 2], 70), &usable), usable);
    }

    #[test]
    fn least_request_prefers_the_endpoint_with_fewer_connections() {
        let all = &endpoints()[..2];
        let health = EndpointHealth::default();
        let busy: Vec<_> = (0..3).map(|_| health.connected(all[0])).collect();
        for _ in 0..20 {
            assert_eq!(
                health.order(Algorithm::LeastRequest, all[0], all)[0],
                all[1]
            );
        }
        drop(busy);
    }
}
