//! Trace context in HTTP headers: W3C `traceparent`/`tracestate` read and written by the
//! OpenTelemetry SDK's propagator, B3 (single `b3` and multi `x-b3-*`) by the B3 propagator crate.
//! `baggage` is never touched: it passes on as it came.

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{SpanContext, TraceContextExt as _, TraceFlags},
    Context,
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_propagator_b3::{B3Encoding, Propagator as B3Propagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// How a B3 context arrived, so it leaves the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3 {
    Single,
    Multi,
}

/// The header asking for this request's trace to be kept whatever the sampler says.
pub const FORCE_HEADER: &str = "x-weft-trace";

const B3_HEADERS: [&str; 6] = [
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// What a request's headers say of its trace.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    /// The caller's span, when a valid W3C or B3 context arrived (W3C wins over B3).
    pub parent: Option<SpanContext>,
    /// B3 arrived: it is written again, in the same encoding, beside `traceparent`.
    pub b3: Option<B3>,
    /// `x-weft-trace: 1` asked for the trace to be kept, or a B3 caller set its debug flag.
    pub forced: bool,
    /// A B3 caller sent ids but left the sampling decision to this hop (no sampled flag).
    pub deferred: bool,
    /// A B3 caller said "do not sample" without ids (`b3: 0`, a lone `x-b3-sampled: 0`).
    pub refused: bool,
}

/// B3's private bits in the SDK's flags (the B3 crate's own): "deferred" and "debug".
const B3_DEFERRED: u8 = 0x02;
const B3_DEBUG: u8 = 0x04;

/// Reads the trace context a request carries.
pub fn extract(headers: &http::HeaderMap) -> Incoming {
    let extractor = HeaderExtractor(headers);
    let w3c = TraceContextPropagator::new().extract(&extractor);
    let w3c = Some(w3c.span().span_context().clone()).filter(SpanContext::is_valid);
    let b3 = if headers.contains_key("b3") {
        Some(B3::Single)
    } else if headers.contains_key("x-b3-traceid") {
        Some(B3::Multi)
    } else {
        None
    };
    let mut forced = headers
        .get(FORCE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true"));
    let (mut deferred, mut refused) = (false, false);
    let parent = match (w3c, b3) {
        (Some(w3c), _) => Some(w3c),
        (None, Some(encoding)) => {
            // Each encoding read as such: the combined mode refuses `x-b3-sampled: true`.
            let reader = match encoding {
                B3::Single => B3Encoding::SingleHeader,
                B3::Multi => B3Encoding::MultipleHeader,
            };
            let cx = B3Propagator::with_encoding(reader).extract(&extractor);
            let found = Some(cx.span().span_context().clone()).filter(SpanContext::is_valid);
            found.map(|sc| {
                let bits = sc.trace_flags().to_u8();
                forced |= bits & B3_DEBUG != 0;
                deferred = bits & (B3_DEFERRED | B3_DEBUG) == B3_DEFERRED;
                // Only the sampled bit goes on: B3's private bits mean other things in W3C.
                let sampled = sc.is_sampled() || bits & B3_DEBUG != 0;
                SpanContext::new(
                    sc.trace_id(),
                    sc.span_id(),
                    TraceFlags::default().with_sampled(sampled),
                    true,
                    sc.trace_state().clone(),
                )
            })
        }
        (None, None) => None,
    };
    if parent.is_none() {
        let said_no = |name: &str| headers.get(name).is_some_and(|v| v.as_bytes() == b"0");
        refused = said_no("b3") || said_no("x-b3-sampled");
    }
    Incoming {
        parent,
        b3,
        forced,
        deferred,
        refused,
    }
}

/// Writes `span` as the caller of the next hop: `traceparent` (and the `tracestate` it
/// carries) always, and B3 again in `b3`'s encoding when it came as B3. Stale B3 headers
/// (a parent span id, old flags) go first, so the next hop reads one consistent context.
pub fn inject(span: &SpanContext, b3: Option<B3>, headers: &mut http::HeaderMap) {
    let cx = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    // The propagator writes `tracestate` even when there is none: an empty header is noise
    // to the next hop, and some parsers refuse it.
    if headers
        .get("tracestate")
        .is_some_and(|v| v.as_bytes().is_empty())
    {
        headers.remove("tracestate");
    }
    if let Some(b3) = b3 {
        for name in B3_HEADERS {
            headers.remove(name);
        }
        let encoding = match b3 {
            B3::Single => B3Encoding::SingleHeader,
            B3::Multi => B3Encoding::MultipleHeader,
        };
        B3Propagator::with_encoding(encoding).inject_context(&cx, &mut HeaderInjector(headers));
        if b3 == B3::Single {
            // The propagator writes the multi headers for every encoding (its "unspecified"
            // check matches any): a single-header caller gets only `b3` back.
            for name in &B3_HEADERS[1..] {
                headers.remove(*name);
            }
        }
    }
}

/// `span` as a `traceparent` value, for a header the agent writes itself (the CONNECT).
pub fn traceparent(span: &SpanContext) -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject(span, None, &mut headers);
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    v.parse().expect("header value"),
                )
            })
            .collect()
    }

    fn child_of(parent: &SpanContext) -> SpanContext {
        SpanContext::new(
            parent.trace_id(),
            SpanId::from_hex("1111111111111111").expect("span id"),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        )
    }

    #[test]
    fn w3c_in_keeps_its_trace_and_flags_and_gets_a_new_parent() {
        let mut h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "vendor=x"),
            ("baggage", "user=alice"),
        ]);
        let incoming = extract(&h);
        let parent = incoming.parent.expect("parent");
        assert_eq!(parent.trace_id().to_string(), TRACE);
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(incoming.b3, None);
        inject(&child_of(&parent), incoming.b3, &mut h);
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE}-1111111111111111-01").as_str()
        );
        assert_eq!(h["tracestate"], "vendor=x");
        assert_eq!(h["baggage"], "user=alice");
        assert!(!h.contains_key("b3") && !h.contains_key("x-b3-traceid"));
    }

    #[test]
    fn b3_in_means_w3c_out_and_b3_again_in_its_encoding() {
        let mut single = headers(&[("b3", &format!("{TRACE}-{SPAN}-0"))]);
        let incoming = extract(&single);
        let parent = incoming.parent.expect("parent");
        assert!(!parent.is_sampled());
        assert_eq!(incoming.b3, Some(B3::Single));
        inject(&child_of(&parent), incoming.b3, &mut single);
        assert_eq!(
            single["traceparent"],
            format!("00-{TRACE}-1111111111111111-00").as_str()
        );
        assert_eq!(single["b3"], format!("{TRACE}-1111111111111111-0").as_str());
        assert!(
            !single.contains_key("tracestate"),
            "no tracestate came, so none goes on (not an empty one)"
        );
        assert!(!single.contains_key("x-b3-traceid"));

        let mut multi = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "2222222222222222"),
            ("x-b3-sampled", "1"),
        ]);
        let incoming = extract(&multi);
        assert_eq!(incoming.b3, Some(B3::Multi));
        let parent = incoming.parent.expect("parent");
        inject(&child_of(&parent), incoming.b3, &mut multi);
        assert_eq!(multi["x-b3-traceid"], TRACE);
        assert_eq!(multi["x-b3-spanid"], "1111111111111111");
        assert_eq!(multi["x-b3-sampled"], "1");
        assert!(
            !multi.contains_key("x-b3-parentspanid"),
            "a stale parent goes"
        );
        assert!(multi.contains_key("traceparent") && !multi.contains_key("b3"));
    }

    #[test]
    fn w3c_wins_over_b3_and_garbage_is_no_parent() {
        let other = "0af7651916cd43dd8448eb211c80319c";
        let both = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("b3", &format!("{other}-{SPAN}-1")),
        ]);
        let incoming = extract(&both);
        assert_eq!(
            incoming.parent.expect("parent").trace_id().to_string(),
            TRACE
        );
        assert_eq!(incoming.b3, Some(B3::Single));
        for bad in [
            "00-zz-yy-01",
            "garbage",
            &format!("00-{TRACE}-0000000000000000-01"),
        ] {
            assert!(
                extract(&headers(&[("traceparent", bad)])).parent.is_none(),
                "{bad}"
            );
        }
        assert!(extract(&headers(&[("x-weft-trace", "1")])).forced);
        assert!(!extract(&headers(&[("x-weft-trace", "0")])).forced);
    }

    #[test]
    fn b3_deferred_debug_true_and_zero_mean_what_b3_says() {
        let deferred = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}"))]));
        assert!(deferred.deferred && !deferred.forced && !deferred.refused);
        let parent = deferred.parent.expect("ids kept");
        assert_eq!(
            parent.trace_flags().to_u8(),
            0,
            "no B3 bit leaks into W3C flags"
        );
        let debug = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-d"))]));
        assert!(debug.forced && !debug.deferred);
        assert!(debug.parent.expect("ids").is_sampled());
        let legacy = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "true"),
        ]));
        assert!(legacy
            .parent
            .expect("a legacy sampled flag parses")
            .is_sampled());
        for zero in [("b3", "0"), ("x-b3-sampled", "0")] {
            let said_no = extract(&headers(&[zero]));
            assert!(said_no.refused && said_no.parent.is_none(), "{zero:?}");
        }
    }

    #[test]
    fn traceparent_text_is_what_w3c_says() {
        let span = SpanContext::new(
            TraceId::from_hex(TRACE).expect("trace"),
            SpanId::from_hex(SPAN).expect("span"),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(
            traceparent(&span).as_deref(),
            Some(format!("00-{TRACE}-{SPAN}-01").as_str())
        );
    }
}
