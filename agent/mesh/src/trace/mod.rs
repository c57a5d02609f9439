//! Distributed tracing, shared by the agent (a span per connection) and the waypoint (a span
//! per request, a child per attempt). A span's ids are fixed when it begins, so they can be
//! sent to the next hop at once; the span itself is built only when it ends and only when it
//! is sampled, so an unsampled request costs two random ids and no allocation of a span.
//! Spans leave through the SDK's batch processor and the OTLP exporter ([`export`]).

pub mod export;
pub mod propagate;
pub mod settings;

use std::{borrow::Cow, time::SystemTime};

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceState},
    Context, InstrumentationScope, KeyValue,
};
use opentelemetry_otlp::{
    tonic_types::metadata::MetadataMap, WithExportConfig as _, WithHttpConfig as _,
    WithTonicConfig as _,
};
use opentelemetry_sdk::{
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, IdGenerator as _, RandomIdGenerator, Sampler,
        SamplingDecision, ShouldSample as _, SpanData, SpanEvents, SpanExporter as _, SpanLinks,
        SpanProcessor as _,
    },
    Resource,
};

pub use export::Counters;
pub use settings::{Protocol, Sampling, Settings, SettingsError, SettingsFile};

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("building the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// How long the spans still queued at exit may take to leave: the agent's drain (25 s by
/// default) plus this stays below the pod's 30 s grace period.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The attribute a forced span carries, so a reader sees why it was kept.
pub const FORCED_ATTRIBUTE: &str = "weft.trace.forced";

/// A binary's tracer: its sampler, its ids, and the processor its spans end in.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    ids: RandomIdGenerator,
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    counters: Counters,
    max_queue: usize,
    /// Set by [`Tracer::shutdown`]: spans ending later are counted, not queued.
    shut: std::sync::atomic::AtomicBool,
}

/// A span that has begun: its context (sent to the next hop), its parent, and when it began.
#[derive(Debug, Clone)]
pub struct Begun {
    pub context: SpanContext,
    parent: Option<SpanContext>,
    kind: SpanKind,
    start: SystemTime,
    forced: bool,
}

impl Begun {
    pub fn sampled(&self) -> bool {
        self.context.is_sampled()
    }
}

fn sampler(sampling: Sampling) -> Sampler {
    match sampling {
        Sampling::AlwaysOn => Sampler::AlwaysOn,
        Sampling::AlwaysOff => Sampler::AlwaysOff,
        Sampling::Ratio(r) => Sampler::TraceIdRatioBased(r),
        Sampling::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        Sampling::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        Sampling::ParentBasedRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

impl Tracer {
    /// Builds the exporter and the batch processor; call inside the tokio runtime, whose
    /// handle the exports run on. `attributes` describe this process (node, pod...).
    pub fn start(
        settings: &Settings,
        counters: Counters,
        attributes: Vec<KeyValue>,
    ) -> Result<Self, TraceError> {
        let endpoint = settings.endpoint.to_string();
        let built = match settings.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(settings.export_timeout)
                .with_metadata(MetadataMap::from_headers(settings.headers.clone()))
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_timeout(settings.export_timeout)
                .with_headers(
                    settings
                        .headers
                        .iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_owned())))
                        .collect(),
                )
                .build(),
        };
        let exporter = built.map_err(|source| TraceError::Exporter { endpoint, source })?;
        let mut exporter = export::OnRuntime::new(
            exporter,
            tokio::runtime::Handle::current(),
            counters.clone(),
        );
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attributes(attributes)
            .build();
        exporter.set_resource(&resource);
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_size)
            .with_max_export_batch_size(settings.max_export_batch_size)
            .with_scheduled_delay(settings.scheduled_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build();
        Ok(Self {
            sampler: sampler(settings.sampling),
            ids: RandomIdGenerator::default(),
            processor,
            scope: InstrumentationScope::builder("weft")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            counters,
            max_queue: settings.max_queue_size,
            shut: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Begins a span under `parent` (a caller's, from its headers), or a new trace. The
    /// sampler decides, with the parent's sampled flag; `forced` keeps it whatever they say.
    pub fn begin(
        &self,
        parent: Option<&SpanContext>,
        name: &str,
        kind: SpanKind,
        forced: bool,
    ) -> Begun {
        self.begin_with(parent, name, kind, (forced, false, false))
    }

    /// Begins a request's span from what its headers said: as [`Tracer::begin`], and a B3
    /// caller that deferred the decision gets this hop's root sampler (its trace kept), one
    /// that said "do not sample" without ids gets an unsampled new trace.
    pub fn begin_from(&self, incoming: &propagate::Incoming, name: &str, kind: SpanKind) -> Begun {
        self.begin_with(
            incoming.parent.as_ref(),
            name,
            kind,
            (incoming.forced, incoming.deferred, incoming.refused),
        )
    }

    fn begin_with(
        &self,
        parent: Option<&SpanContext>,
        name: &str,
        kind: SpanKind,
        (forced, deferred, refused): (bool, bool, bool),
    ) -> Begun {
        let parent = parent.filter(|p| p.is_valid());
        let trace_id = parent.map_or_else(|| self.ids.new_trace_id(), SpanContext::trace_id);
        // A deferring caller's flag says nothing: decide as for a root, in its trace.
        let parent_cx = parent
            .filter(|_| !deferred)
            .map(|p| Context::new().with_remote_span_context(p.clone()));
        let sampled = forced
            || (!refused
                && self
                    .sampler
                    .should_sample(parent_cx.as_ref(), trace_id, name, &kind, &[], &[])
                    .decision
                    == SamplingDecision::RecordAndSample);
        let flags = parent.map_or(TraceFlags::default(), SpanContext::trace_flags);
        let state = parent.map_or_else(TraceState::default, |p| p.trace_state().clone());
        Begun {
            context: SpanContext::new(
                trace_id,
                self.ids.new_span_id(),
                flags.with_sampled(sampled),
                false,
                state,
            ),
            parent: parent.cloned(),
            kind,
            start: SystemTime::now(),
            forced,
        }
    }

    /// Begins a child of `parent` in this process (an attempt under its request): same trace,
    /// same sampling.
    pub fn child(&self, parent: &Begun, kind: SpanKind) -> Begun {
        Begun {
            context: SpanContext::new(
                parent.context.trace_id(),
                self.ids.new_span_id(),
                parent.context.trace_flags(),
                false,
                parent.context.trace_state().clone(),
            ),
            parent: Some(parent.context.clone()),
            kind,
            start: SystemTime::now(),
            forced: parent.forced,
        }
    }

    /// Ends `begun` now: a sampled span is built and queued for export (or counted dropped
    /// when the queue is full); an unsampled one costs nothing more.
    pub fn end(
        &self,
        begun: Begun,
        name: impl Into<Cow<'static, str>>,
        mut attributes: Vec<KeyValue>,
        status: Status,
    ) {
        if !begun.sampled() {
            return;
        }
        if self.shut.load(std::sync::atomic::Ordering::Acquire) {
            // The export thread is gone (a connection cut after the drain).
            self.counters.count("dropped_shutdown", 1);
            return;
        }
        if !self.counters.admit(self.max_queue) {
            return;
        }
        if begun.forced {
            attributes.push(KeyValue::new(FORCED_ATTRIBUTE, true));
        }
        let parent = begun.parent.as_ref();
        self.processor.on_end(SpanData {
            span_context: begun.context,
            parent_span_id: parent.map_or(SpanId::INVALID, SpanContext::span_id),
            parent_span_is_remote: parent.is_some_and(SpanContext::is_remote),
            span_kind: begun.kind,
            name: name.into(),
            start_time: begun.start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Exports what is queued and stops the export thread. It blocks (up to
    /// [`FLUSH_TIMEOUT`]): call it from a blocking thread when the process stops.
    pub fn shutdown(&self) {
        self.shut.store(true, std::sync::atomic::Ordering::Release);
        if let Err(error) = self.processor.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(%error, "flushing spans at shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests;
