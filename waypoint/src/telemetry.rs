//! One request's telemetry, finished when its response body has been sent (or the client went
//! away): the access-log line (`weft_waypoint::access`, JSON with `--log-json`), the request
//! record in the ring `/requests` and `weftctl requests` read, and the metrics. Bodies are
//! counted as they stream, so nothing is buffered to measure them.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use weft_api::requests::RequestRecord;

use crate::{
    app::Waypoint,
    forward::{Body, Outcome, Tunnel},
    metrics::{method_label, RequestLabels},
};

fn pod_at(
    registry: &weft_mesh::registry::Registry,
    ip: std::net::IpAddr,
) -> Option<&weft_mesh::registry::Pod> {
    match ip {
        std::net::IpAddr::V4(ip) => registry.pod_by_ip(ip),
        std::net::IpAddr::V6(_) => None,
    }
}

/// What is known of a request when its response head is ready.
#[derive(Debug)]
pub struct Pending {
    waypoint: Arc<Waypoint>,
    tunnel: Arc<Tunnel>,
    method: http::Method,
    authority: String,
    path: String,
    status: u16,
    outcome: Outcome,
    request_bytes: Arc<AtomicU64>,
    started: Instant,
    version: http::Version,
    trace: Option<crate::trace::RequestTrace>,
}

/// The request's method, authority and path, taken before it is routed, and its span.
#[derive(Debug)]
pub struct Head {
    pub method: http::Method,
    pub authority: String,
    pub path: String,
    pub version: http::Version,
    pub trace: Option<crate::trace::RequestTrace>,
}

impl Head {
    pub fn of<B>(request: &http::Request<B>) -> Self {
        let authority = request
            .uri()
            .authority()
            .map(ToString::to_string)
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Self {
            method: request.method().clone(),
            authority,
            path: request.uri().path().to_owned(),
            version: request.version(),
            trace: None,
        }
    }
}

impl Pending {
    pub fn new(
        waypoint: Arc<Waypoint>,
        tunnel: Arc<Tunnel>,
        head: Head,
        status: u16,
        outcome: Outcome,
        request_bytes: Arc<AtomicU64>,
        started: Instant,
    ) -> Self {
        Self {
            waypoint,
            tunnel,
            method: head.method,
            authority: head.authority,
            path: head.path,
            status,
            outcome,
            request_bytes,
            started,
            version: head.version,
            trace: head.trace,
        }
    }

    fn finish(mut self, response_bytes: u64) {
        let trace = self.trace.take();
        let elapsed = self.started.elapsed();
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let registry = self.waypoint.registry.borrow().clone();
        let unknown = || "unknown".to_owned();
        let source = pod_at(&registry, self.tunnel.client_ip);
        let upstream_pod = self
            .outcome
            .upstream
            .and_then(|e| pod_at(&registry, e.ip()));
        let principal_of = |pod: Option<&weft_mesh::registry::Pod>| {
            pod.filter(|p| registry.is_enrolled(p))
                .map_or_else(unknown, |p| {
                    weft_mesh::identity::SpiffeId::new(
                        &self.waypoint.identity_domain,
                        &p.namespace,
                        &p.service_account,
                    )
                    .to_string()
                })
        };
        let labels = RequestLabels {
            source_workload: source.map_or_else(unknown, |p| p.name.clone()),
            source_namespace: source.map_or_else(unknown, |p| p.namespace.clone()),
            source_principal: self.tunnel.client.to_string(),
            destination_workload: upstream_pod.map_or_else(unknown, |p| p.name.clone()),
            destination_namespace: upstream_pod.map_or_else(unknown, |p| p.namespace.clone()),
            destination_principal: principal_of(upstream_pod),
            destination_service: self.tunnel.service.clone(),
            route: self.outcome.route.clone(),
            method: method_label(&self.method),
            code: self.status.to_string(),
            reason: self.outcome.reason.as_str(),
            verdict: if self.outcome.judged.verdict.is_empty() {
                "unknown"
            } else {
                self.outcome.judged.verdict
            },
        };
        self.waypoint.requests.record(
            labels,
            elapsed.as_secs_f64(),
            (request_bytes, response_bytes),
        );
        let record = RequestRecord {
            at_unix_ms: weft_mesh::connections::now_unix_ms(),
            service: self.tunnel.service.clone(),
            method: self.method.to_string(),
            authority: self.authority,
            path: self.path,
            status: self.status,
            route: self.outcome.route,
            backend: self.outcome.backend,
            upstream: self.outcome.upstream.map(|e| e.to_string()),
            upstream_pod: upstream_pod.map(|p| format!("{}/{}", p.namespace, p.name)),
            client: self.tunnel.client.to_string(),
            client_ip: self.tunnel.client_ip.to_string(),
            client_pod: source.map(|p| format!("{}/{}", p.namespace, p.name)),
            request_bytes,
            response_bytes,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            reason: self.outcome.reason.as_str().to_owned(),
            attempts: self.outcome.attempts,
            verdict: Some(self.outcome.judged.verdict)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            policy: self.outcome.judged.policy.clone(),
            rule: self.outcome.judged.rule,
            request_principal: self.outcome.judged.request_principal.clone(),
        };
        tracing::info!(
            target: "weft_waypoint::access",
            service = %record.service,
            method = %record.method,
            authority = %record.authority,
            path = %record.path,
            status = record.status,
            route = %record.route,
            backend = %record.backend,
            upstream = record.upstream.as_deref().unwrap_or("-"),
            upstream_pod = record.upstream_pod.as_deref().unwrap_or("-"),
            client = %record.client,
            client_ip = %record.client_ip,
            request_bytes,
            response_bytes,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            reason = %record.reason,
            attempts = record.attempts,
            verdict = record.verdict.as_deref().unwrap_or("-"),
            policy = record.policy.as_deref().unwrap_or("-"),
            rule = record.rule.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            request_principal = record.request_principal.as_deref().unwrap_or("-"),
            "request"
        );
        let span = self.waypoint.tracer.as_ref().zip(trace);
        crate::trace::request_ended(span, &record, (self.tunnel.service_port, self.version));
        self.waypoint.recent.record(record);
    }
}

/// A request being routed: if the client goes away before its response head (hyper drops
/// the request's future), dropping this records it as `499 client_closed`, so an abandoned
/// request is still logged, counted and kept.
#[derive(Debug)]
pub struct Routing {
    started: Option<Started>,
}

/// What a request's record needs from before it was routed.
type Started = (Arc<Waypoint>, Arc<Tunnel>, Head, Arc<AtomicU64>, Instant);

/// The status recorded for a request its client abandoned (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

impl Routing {
    pub fn new(
        waypoint: Arc<Waypoint>,
        tunnel: Arc<Tunnel>,
        head: Head,
        request_bytes: Arc<AtomicU64>,
        started: Instant,
    ) -> Self {
        Self {
            started: Some((waypoint, tunnel, head, request_bytes, started)),
        }
    }

    /// The response head is ready: what is left to record waits for its body.
    pub fn answered(mut self, status: u16, outcome: Outcome) -> Option<Pending> {
        let (waypoint, tunnel, head, request_bytes, started) = self.started.take()?;
        Some(Pending::new(
            waypoint,
            tunnel,
            head,
            status,
            outcome,
            request_bytes,
            started,
        ))
    }
}

impl Drop for Routing {
    fn drop(&mut self) {
        if let Some((waypoint, tunnel, head, request_bytes, started)) = self.started.take() {
            let outcome = Outcome::new(crate::forward::Reason::ClientClosed);
            Pending::new(
                waypoint,
                tunnel,
                head,
                CLIENT_CLOSED,
                outcome,
                request_bytes,
                started,
            )
            .finish(0);
        }
    }
}

/// The response body the client gets: the backend's (or the waypoint's own), counted as it
/// streams; the request's telemetry is finished when it is dropped.
pub struct Recorded {
    inner: Body,
    bytes: u64,
    pending: Option<Pending>,
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Recorded {
    pub fn new(inner: Body, pending: Option<Pending>) -> Self {
        Self {
            inner,
            bytes: 0,
            pending,
        }
    }
}

impl hyper::body::Body for Recorded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.finish(self.bytes);
        }
    }
}

/// A request body counted as it streams upstream.
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> std::fmt::Debug for Counted<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").finish_non_exhaustive()
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Self { inner, bytes }
    }
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
