//! Where finished spans go: the SDK's batch processor (a bounded queue and its own thread)
//! hands batches to the OTLP exporter, which this wraps so that each export runs on the tokio
//! runtime (tonic and hyper need one), and every span is counted as exported, failed, or
//! dropped because the queue was full. Nothing here can block or slow the caller.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
    Resource,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanOutcome {
    /// `exported`, `export_failed`, `dropped_queue_full`, or `dropped_shutdown` (ended after
    /// the export thread stopped).
    pub outcome: &'static str,
}

/// The span counters a binary registers beside its other metrics.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub spans: Family<SpanOutcome, Counter>,
    /// Spans handed to the exporter and not yet exported or failed.
    pub queued: Gauge,
    /// Spans in the queue or in an export: what the queue limit is checked against.
    pub(crate) in_flight: Arc<AtomicUsize>,
}

impl Counters {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "trace_spans",
            "Finished spans by outcome: exported, export_failed (the collector refused or was unreachable), dropped_queue_full (the bounded export queue was full), dropped_shutdown (ended after the exporter stopped at exit)",
            self.spans.clone(),
        );
        registry.register(
            "trace_spans_queued",
            "Spans waiting for export or being exported",
            self.queued.clone(),
        );
    }

    pub(crate) fn count(&self, outcome: &'static str, spans: usize) {
        self.spans
            .get_or_create(&SpanOutcome { outcome })
            .inc_by(spans as u64);
    }

    /// Takes a place in the queue, or counts the span dropped when none is left.
    pub(crate) fn admit(&self, limit: usize) -> bool {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.count("dropped_queue_full", 1);
            return false;
        }
        self.queued.inc();
        true
    }

    fn done(&self, spans: usize) {
        self.in_flight.fetch_sub(spans, Ordering::AcqRel);
        self.queued.dec_by(i64::try_from(spans).unwrap_or(i64::MAX));
    }
}

/// Seconds between two warnings of failed exports: a collector that is down is said once,
/// not once per batch.
const WARN_EVERY_SECS: u64 = 30;

/// The OTLP exporter, run on the tokio runtime and counted.
#[derive(Debug)]
pub struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
    counters: Counters,
    last_warned: Arc<AtomicU64>,
}

impl<E> OnRuntime<E> {
    pub fn new(inner: E, runtime: tokio::runtime::Handle, counters: Counters) -> Self {
        Self {
            inner: Arc::new(inner),
            runtime,
            counters,
            last_warned: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        let inner = self.inner.clone();
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        let counters = self.counters.clone();
        let last_warned = self.last_warned.clone();
        async move {
            let result = match task.await {
                Ok(result) => result,
                Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
            };
            counters.done(spans);
            match &result {
                Ok(()) => counters.count("exported", spans),
                Err(error) => {
                    counters.count("export_failed", spans);
                    let now = crate::connections::now_unix_ms() / 1000;
                    let last = last_warned.load(Ordering::Relaxed);
                    if now.saturating_sub(last) >= WARN_EVERY_SECS
                        && last_warned
                            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        tracing::warn!(%error, spans, "exporting spans failed; they are dropped and counted in weft_trace_spans_total{{outcome=\"export_failed\"}}");
                    }
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
