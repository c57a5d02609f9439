use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};

use super::{Counters, Sampling, Settings, Tracer};
use crate::trace::settings::Protocol;

/// A collector address nothing listens on: every export fails at once.
fn settings(sampling: Sampling, queue: usize) -> Settings {
    Settings {
        endpoint: "http://127.0.0.1:9".parse().expect("uri"),
        protocol: Protocol::HttpProtobuf,
        sampling,
        service_name: "test".into(),
        max_queue_size: queue,
        max_export_batch_size: queue,
        scheduled_delay: Duration::from_millis(50),
        export_timeout: Duration::from_millis(500),
        headers: http::HeaderMap::new(),
    }
}

fn parent(sampled: bool) -> SpanContext {
    SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace"),
        SpanId::from_hex("00f067aa0ba902b7").expect("span"),
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    )
}

fn count(counters: &Counters, outcome: &'static str) -> u64 {
    counters
        .spans
        .get_or_create(&super::export::SpanOutcome { outcome })
        .get()
}

#[tokio::test]
async fn a_parent_decides_unless_forced_and_children_follow() {
    let tracer = Tracer::start(
        &settings(Sampling::ParentBasedAlwaysOn, 8),
        Counters::default(),
        Vec::new(),
    )
    .expect("tracer");
    let kept = tracer.begin(Some(&parent(true)), "r", SpanKind::Server, false);
    assert!(kept.sampled());
    assert_eq!(kept.context.trace_id(), parent(true).trace_id());
    assert_ne!(kept.context.span_id(), parent(true).span_id());
    assert!(!tracer
        .begin(Some(&parent(false)), "r", SpanKind::Server, false)
        .sampled());
    let forced = tracer.begin(Some(&parent(false)), "r", SpanKind::Server, true);
    assert!(
        forced.sampled(),
        "x-weft-trace keeps an unsampled parent's trace"
    );
    assert_eq!(forced.context.trace_id(), parent(false).trace_id());
    let root = tracer.begin(None, "r", SpanKind::Server, false);
    assert!(root.sampled() && root.context.is_valid());
    let child = tracer.child(&root, SpanKind::Client);
    assert_eq!(child.context.trace_id(), root.context.trace_id());
    assert!(child.sampled());

    // B3 that deferred the decision keeps its trace and gets the root sampler; "do not
    // sample" without ids is a new, unsampled trace.
    let mut deferred = super::propagate::Incoming {
        parent: Some(parent(false)),
        deferred: true,
        ..Default::default()
    };
    let kept = tracer.begin_from(&deferred, "r", SpanKind::Server);
    assert!(
        kept.sampled(),
        "parentbased_always_on's root sampler keeps it"
    );
    assert_eq!(kept.context.trace_id(), parent(false).trace_id());
    deferred.deferred = false;
    assert!(!tracer
        .begin_from(&deferred, "r", SpanKind::Server)
        .sampled());
    let refused = super::propagate::Incoming {
        refused: true,
        ..Default::default()
    };
    assert!(!tracer.begin_from(&refused, "r", SpanKind::Server).sampled());

    let off = Tracer::start(
        &settings(Sampling::ParentBasedAlwaysOff, 8),
        Counters::default(),
        Vec::new(),
    )
    .expect("tracer");
    assert!(!off.begin(None, "r", SpanKind::Server, false).sampled());
    assert!(off
        .begin(Some(&parent(true)), "r", SpanKind::Server, false)
        .sampled());
    tokio::task::spawn_blocking(move || {
        tracer.shutdown();
        off.shutdown();
    })
    .await
    .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_spans_are_dropped_and_counted_never_waited_for() {
    let counters = Counters::default();
    let tracer = Tracer::start(
        &settings(Sampling::AlwaysOn, 4),
        counters.clone(),
        Vec::new(),
    )
    .expect("tracer");
    let started = std::time::Instant::now();
    for _ in 0..100 {
        let begun = tracer.begin(None, "r", SpanKind::Server, false);
        tracer.end(begun, "r", Vec::new(), Status::Unset);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ending spans never waits for the exporter"
    );
    let dropped = count(&counters, "dropped_queue_full");
    assert!(
        dropped >= 96,
        "at most the queue's 4 are taken: {dropped} dropped"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&counters, "export_failed") + dropped < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "exports end, in failure"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&counters, "exported"), 0);
    assert_eq!(counters.queued.get(), 0, "nothing stays queued");
    let unsampled = tracer.begin(Some(&parent(false)), "r", SpanKind::Server, false);
    tracer.end(unsampled, "r", Vec::new(), Status::Unset);
    assert_eq!(
        count(&counters, "export_failed") + count(&counters, "dropped_queue_full"),
        100,
        "an unsampled span is never queued"
    );
    tokio::task::spawn_blocking(move || tracer.shutdown())
        .await
        .expect("shutdown");
}
