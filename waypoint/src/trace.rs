//! The waypoint's spans, when tracing is on: one SERVER span per request, begun under the
//! caller's `traceparent` (or B3) or as a new trace, and one CLIENT child per attempt, whose
//! context the backend receives in place of the caller's. The request's span ends with its
//! record (route, backend, status, reason, policy verdict), in OpenTelemetry's HTTP semantic
//! convention names where one exists and `weft.*` where none does.

use opentelemetry::{
    trace::{SpanKind, Status},
    KeyValue,
};
use weft_api::requests::RequestRecord;
use weft_mesh::trace::{
    propagate::{self, B3},
    Begun, Tracer,
};

use crate::app::Waypoint;

/// A request's span, and how its caller's context came (B3 leaves as it came).
#[derive(Debug, Clone)]
pub struct RequestTrace {
    begun: Begun,
    b3: Option<B3>,
}

/// Begins the span of a request with these headers; `None` when tracing is off, and then
/// the headers pass on untouched.
pub fn begin(waypoint: &Waypoint, headers: &http::HeaderMap) -> Option<RequestTrace> {
    let tracer = waypoint.tracer.as_ref()?;
    let incoming = propagate::extract(headers);
    let begun = tracer.begin_from(&incoming, "request", SpanKind::Server);
    Some(RequestTrace {
        begun,
        b3: incoming.b3,
    })
}

impl RequestTrace {
    /// Begins an attempt's span and writes its context into the attempt's headers, so the
    /// backend's parent is this attempt.
    pub fn attempt(&self, tracer: &Tracer, headers: &mut http::HeaderMap) -> Begun {
        let attempt = tracer.child(&self.begun, SpanKind::Client);
        propagate::inject(&attempt.context, self.b3, headers);
        attempt
    }

    pub fn trace_id(&self) -> String {
        self.begun.context.trace_id().to_string()
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub struct AttemptEnd<'a> {
    pub method: &'a http::Method,
    pub backend: &'a str,
    pub endpoint: std::net::SocketAddr,
    /// 1 for the first attempt.
    pub number: u32,
    /// The backend's status, or why there was none.
    pub answer: Result<u16, &'static str>,
}

/// Ends an attempt's span.
pub fn attempt_ended(tracer: &Tracer, begun: Begun, end: &AttemptEnd<'_>) {
    if !begun.sampled() {
        return;
    }
    let mut attributes = vec![
        KeyValue::new("http.request.method", end.method.to_string()),
        KeyValue::new("server.address", end.endpoint.ip().to_string()),
        KeyValue::new("server.port", i64::from(end.endpoint.port())),
        KeyValue::new("network.peer.address", end.endpoint.ip().to_string()),
        KeyValue::new("weft.backend", end.backend.to_owned()),
        KeyValue::new("weft.attempt", i64::from(end.number)),
    ];
    if end.number > 1 {
        attributes.push(KeyValue::new(
            "http.request.resend_count",
            i64::from(end.number - 1),
        ));
    }
    let status = match end.answer {
        Ok(code) => {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
            if code >= 500 {
                attributes.push(KeyValue::new("error.type", code.to_string()));
                Status::error(format!("backend answered {code}"))
            } else {
                Status::Unset
            }
        }
        Err(why) => {
            attributes.push(KeyValue::new("error.type", why));
            Status::error(why)
        }
    };
    tracer.end(begun, end.method.to_string(), attributes, status);
}

/// Ends a request's span (when tracing is on) with its record.
pub fn request_ended(
    span: Option<(&Tracer, RequestTrace)>,
    record: &RequestRecord,
    (service_port, version): (u16, http::Version),
) {
    let Some((tracer, trace)) = span.filter(|(_, t)| t.begun.sampled()) else {
        return;
    };
    let (host, _) = record
        .authority
        .rsplit_once(':')
        .unwrap_or((record.authority.as_str(), ""));
    let mut attributes = vec![
        KeyValue::new("http.request.method", record.method.clone()),
        KeyValue::new("url.path", record.path.clone()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("server.address", host.to_owned()),
        KeyValue::new("server.port", i64::from(service_port)),
        KeyValue::new("client.address", record.client_ip.clone()),
        KeyValue::new("network.protocol.name", "http"),
        KeyValue::new(
            "network.protocol.version",
            if version == http::Version::HTTP_2 {
                "2"
            } else {
                "1.1"
            },
        ),
        KeyValue::new("http.response.status_code", i64::from(record.status)),
        KeyValue::new("http.request.body.size", saturating(record.request_bytes)),
        KeyValue::new("http.response.body.size", saturating(record.response_bytes)),
        KeyValue::new("weft.service", record.service.clone()),
        KeyValue::new("weft.route", record.route.clone()),
        KeyValue::new("weft.backend", record.backend.clone()),
        KeyValue::new("weft.reason", record.reason.clone()),
        KeyValue::new("weft.attempts", i64::from(record.attempts)),
        KeyValue::new("weft.source.principal", record.client.clone()),
    ];
    if let Some(upstream) = &record.upstream {
        attributes.push(KeyValue::new("weft.upstream", upstream.clone()));
    }
    if let Some(verdict) = &record.verdict {
        attributes.push(KeyValue::new("weft.policy.verdict", verdict.clone()));
    }
    if let Some(policy) = &record.policy {
        attributes.push(KeyValue::new("weft.policy.name", policy.clone()));
    }
    if let Some(principal) = &record.request_principal {
        attributes.push(KeyValue::new("weft.request.principal", principal.clone()));
    }
    let status = if record.status >= 500 {
        // The status code when a backend answered, as the HTTP conventions say; the
        // waypoint's own reason when it answered itself.
        let error = if record.attempts > 0 {
            record.status.to_string()
        } else {
            record.reason.clone()
        };
        attributes.push(KeyValue::new("error.type", error));
        Status::error(record.reason.clone())
    } else {
        Status::Unset
    };
    let name = format!("{} {}", record.method, record.service);
    tracer.end(trace.begun, name, attributes, status);
}

fn saturating(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
