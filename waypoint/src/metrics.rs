//! The waypoint's request metrics (`weft_requests_total`, `weft_request_duration_seconds`) in
//! a `weft`-prefixed registry, and the same counts for `/stats`. Labels are bounded: the
//! Service, the route rule, the status code and the reason; never a path, address or id.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

/// Label sets kept for `/stats` before new ones are only counted in the metrics.
pub const MAX_STATS_KEYS: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub route: String,
    pub code: String,
    pub reason: String,
}

/// The duration histogram's labels: fewer than the counter's, so its series stay few.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub service: String,
    pub route: String,
}

fn duration_histogram() -> Histogram {
    // 0.25 ms to about 16 s: a mesh hop to a slow backend.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// An L4 connection's labels: a TCP port, or bytes that were not HTTP.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct L4Labels {
    pub service: String,
    pub reason: String,
}

/// Requests by Service, route, status and reason.
pub struct Requests {
    registry: Registry,
    total: Family<RequestLabels, Counter>,
    l4: Family<L4Labels, Counter>,
    duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    stats: Mutex<BTreeMap<RequestLabels, u64>>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests").finish_non_exhaustive()
    }
}

impl Default for Requests {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let total = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests the waypoint answered, by Service, route rule, status code and reason",
            total.clone(),
        );
        let duration: Family<DurationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its response head, by Service and route rule",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let l4 = Family::<L4Labels, Counter>::default();
        registry.register(
            "waypoint_l4_connections",
            "Connections the waypoint carried at L4 (a TCP port, or bytes that were not HTTP), by Service and reason",
            l4.clone(),
        );
        Self {
            registry,
            total,
            l4,
            duration,
            stats: Mutex::default(),
        }
    }
}

impl Requests {
    pub fn record(
        &self,
        service: &str,
        route: &str,
        code: u16,
        reason: crate::forward::Reason,
        seconds: f64,
    ) {
        self.duration
            .get_or_create(&DurationLabels {
                service: service.to_owned(),
                route: route.to_owned(),
            })
            .observe(seconds);
        let labels = RequestLabels {
            service: service.to_owned(),
            route: route.to_owned(),
            code: code.to_string(),
            reason: reason.as_str().to_owned(),
        };
        self.total.get_or_create(&labels).inc();
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        if stats.len() < MAX_STATS_KEYS || stats.contains_key(&labels) {
            *stats.entry(labels).or_insert(0) += 1;
        }
    }

    /// Counts one connection carried (or refused) at L4.
    pub fn passed_through(&self, service: &str, reason: crate::forward::Reason) {
        self.l4
            .get_or_create(&L4Labels {
                service: service.to_owned(),
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// The counts as JSON rows.
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(l, n)| {
                serde_json::json!({
                    "service": l.service, "route": l.route, "code": l.code,
                    "reason": l.reason, "requests": n,
                })
            })
            .collect()
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        text
    }
}
