//! The waypoint's request metrics (`weft_requests_total`, `weft_request_duration_seconds`,
//! `weft_request_size_bytes`, `weft_response_size_bytes`) in a `weft`-prefixed registry, and
//! the same counts for `/stats`. Labels are bounded: workloads, namespaces and identities of
//! the registry's pods, the Service, the route rule, a known method, the status code and the
//! reason; never a path, address or id.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

/// Label sets kept for `/stats` before new ones are only counted in the metrics.
pub const MAX_STATS_KEYS: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RequestLabels {
    pub source_workload: String,
    pub source_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub route: String,
    pub method: &'static str,
    pub code: String,
    pub reason: &'static str,
    /// `allow` or `deny`: what authorization said (`unknown` when the client left first).
    pub verdict: &'static str,
}

/// The histograms' labels: fewer than the counter's, so their series stay few.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub destination_service: String,
    pub route: String,
}

/// A method as a label: the standard ones by name, anything else `other`.
pub fn method_label(method: &http::Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

fn duration_histogram() -> Histogram {
    // 0.25 ms to about 16 s: a mesh hop to a slow backend.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

fn size_histogram() -> Histogram {
    // 64 B to 1 GiB, by factors of 4.
    Histogram::new(exponential_buckets(64.0, 4.0, 13))
}

/// An L4 connection's labels: a TCP port, or bytes that were not HTTP.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct L4Labels {
    pub service: String,
    pub reason: String,
}

/// A backend Service port (`namespace/name:port`) and what happened there.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
    pub outcome: &'static str,
}

/// A backend Service port's gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GaugeLabels {
    pub backend: String,
}

/// A backend's breaker occupancy by kind (`requests`, `connections`, `pending`, `retries`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OccupancyLabels {
    pub backend: String,
    pub kind: &'static str,
}

/// Requests by Service, route, status and reason.
pub struct Requests {
    registry: Registry,
    retries: Family<BackendLabels, Counter>,
    ejections: Family<GaugeLabels, Counter>,
    ejected: Family<GaugeLabels, Gauge>,
    occupancy: Family<OccupancyLabels, Gauge>,
    total: Family<RequestLabels, Counter>,
    l4: Family<L4Labels, Counter>,
    duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    request_size: Family<DurationLabels, Histogram, fn() -> Histogram>,
    response_size: Family<DurationLabels, Histogram, fn() -> Histogram>,
    stats: Mutex<BTreeMap<RequestLabels, u64>>,
    /// Spans exported, failed and dropped (see [`weft_mesh::trace::export`]).
    pub trace: weft_mesh::trace::Counters,
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
            "Time from a request's arrival to the end of its response, by Service and route rule",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let request_size: Family<DurationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(size_histogram);
        registry.register_with_unit(
            "request_size",
            "Request body bytes, by Service and route rule",
            prometheus_client::registry::Unit::Bytes,
            request_size.clone(),
        );
        let response_size: Family<DurationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(size_histogram);
        registry.register_with_unit(
            "response_size",
            "Response body bytes sent to the client, by Service and route rule",
            prometheus_client::registry::Unit::Bytes,
            response_size.clone(),
        );
        let l4 = Family::<L4Labels, Counter>::default();
        registry.register(
            "waypoint_l4_connections",
            "Connections the waypoint carried at L4 (a TCP port, or bytes that were not HTTP), by Service and reason",
            l4.clone(),
        );
        let retries = Family::<BackendLabels, Counter>::default();
        registry.register(
            "waypoint_retries",
            "Retries by backend Service port and outcome (sent, budget_exhausted, overflow: maxRetries reached)",
            retries.clone(),
        );
        let ejections = Family::<GaugeLabels, Counter>::default();
        registry.register(
            "waypoint_outlier_ejections",
            "Endpoints ejected by outlier detection, by backend Service port",
            ejections.clone(),
        );
        let ejected = Family::<GaugeLabels, Gauge>::default();
        registry.register(
            "waypoint_ejected_endpoints",
            "Endpoints ejected now, by backend Service port",
            ejected.clone(),
        );
        let occupancy = Family::<OccupancyLabels, Gauge>::default();
        registry.register(
            "waypoint_circuit_breaker_occupancy",
            "What a backend Service port's circuit breaker counts now: requests, HTTP/1.1 connections, pending requests, retries",
            occupancy.clone(),
        );
        let trace = weft_mesh::trace::Counters::default();
        trace.register(&mut registry);
        Self {
            registry,
            trace,
            retries,
            ejections,
            ejected,
            occupancy,
            total,
            l4,
            duration,
            request_size,
            response_size,
            stats: Mutex::default(),
        }
    }
}

impl Requests {
    /// Counts one finished request.
    pub fn record(&self, labels: RequestLabels, seconds: f64, sizes: (u64, u64)) {
        let series = DurationLabels {
            destination_service: labels.destination_service.clone(),
            route: labels.route.clone(),
        };
        self.duration.get_or_create(&series).observe(seconds);
        #[expect(
            clippy::cast_precision_loss,
            reason = "a histogram bucket needs no byte-exact count"
        )]
        let (request, response) = (sizes.0 as f64, sizes.1 as f64);
        self.request_size.get_or_create(&series).observe(request);
        self.response_size.get_or_create(&series).observe(response);
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

    /// Counts a retry of a request to `backend`: sent, or refused and why.
    pub fn retry(&self, backend: &str, outcome: &'static str) {
        self.retries
            .get_or_create(&BackendLabels {
                backend: backend.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn ejected(&self, backend: &str) {
        self.ejections
            .get_or_create(&GaugeLabels {
                backend: backend.to_owned(),
            })
            .inc();
    }

    /// Sets the gauges from the backends' state (before a scrape).
    pub fn refresh(&self, state: &crate::resilience::State) {
        self.ejected.clear();
        self.occupancy.clear();
        for backend in state.backends() {
            let labels = GaugeLabels {
                backend: backend.name.clone(),
            };
            let ejected = i64::try_from(backend.endpoints().ejected_count()).unwrap_or(i64::MAX);
            self.ejected.get_or_create(&labels).set(ejected);
            let occupancy = backend.breaker.occupancy();
            for (kind, value) in [
                ("requests", occupancy.requests),
                ("connections", occupancy.connections),
                ("pending", occupancy.pending),
                ("retries", occupancy.retries),
            ] {
                self.occupancy
                    .get_or_create(&OccupancyLabels {
                        backend: backend.name.clone(),
                        kind,
                    })
                    .set(i64::from(value));
            }
        }
    }

    /// The counts as JSON rows.
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(l, n)| {
                serde_json::json!({
                    "service": l.destination_service, "route": l.route, "method": l.method,
                    "code": l.code, "reason": l.reason, "source": format!("{}/{}", l.source_namespace, l.source_workload),
                    "requests": n,
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
