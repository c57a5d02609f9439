//! One request through the waypoint: choose its rule, apply the rule's filters, pick a
//! backend Service by weight and one of its ready endpoints, and send the request there; the
//! answers the waypoint makes itself say why (404 no route, 500 backend not found, 502
//! upstream failure, 503 no ready endpoint), and every request is counted and logged with its
//! route, backend and reason.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{atomic::AtomicU64, Arc},
    time::Instant,
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use weft_mesh::{
    identity::SpiffeId,
    registry::{routes::HeaderModifier, Registry},
};

use crate::{
    app::Waypoint,
    routing::{self, Backend},
    upstream,
};

/// The body the waypoint answers with: the backend's, or its own.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// What the tunnel a request arrived on says about it.
#[derive(Debug)]
pub struct Tunnel {
    /// The Service (`namespace/name`) and port the client dialed.
    pub service: String,
    pub service_port: u16,
    pub client_ip: IpAddr,
    pub client: SpiffeId,
}

impl Tunnel {
    /// The Service the client dialed, as the backend of a Service with no route.
    pub(crate) fn service_itself(&self) -> Backend {
        let (namespace, name) = self
            .service
            .split_once('/')
            .unwrap_or(("", self.service.as_str()));
        Backend {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port: Some(self.service_port),
            weight: 1,
        }
    }
}

/// The bounded reason of a request's outcome, as metrics and the access log carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Routed,
    Redirected,
    NoRoute,
    BackendNotFound,
    NoReadyEndpoints,
    UpstreamFailed,
    /// A body the rule must read whole (to mirror or retry it) was over its cap.
    BodyTooLarge,
    /// A waypoint limit was reached (see the limits table).
    Overloaded,
    /// The client went away before the response head.
    ClientClosed,
    /// Reading the request body failed (the client reset it).
    RequestBodyFailed,
    /// The rule's `timeouts.request` or `timeouts.backendRequest` passed first.
    Timeout,
    /// Answered after more than one attempt.
    Retried,
    /// A retry was due but the retry budget had none left: the last answer stands.
    RetryBudgetExhausted,
    /// A circuit-breaker limit of the backend Service was reached: 503 at once.
    CircuitOpen,
    /// This request's answer ejected its endpoint (outlier detection).
    EndpointEjected,
    /// Over the local rate limit: 429.
    RateLimited,
    /// Fault injection delayed or aborted the request.
    FaultInjected,
    /// Every endpoint of the backend is ejected or failing its health check.
    NoHealthyEndpoint,
    /// A token came and failed its `RequestAuthentication` (401): the JWT reason.
    Unauthenticated(&'static str),
    /// An `AuthorizationPolicy` refused the request (403): the policy reason.
    Denied(weft_mesh::policy::Reason),
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Redirected => "redirected",
            Self::NoRoute => "no_route",
            Self::BackendNotFound => "backend_not_found",
            Self::NoReadyEndpoints => "no_ready_endpoints",
            Self::UpstreamFailed => "upstream_failed",
            Self::BodyTooLarge => "body_too_large",
            Self::Overloaded => "overloaded",
            Self::ClientClosed => "client_closed",
            Self::RequestBodyFailed => "request_body_failed",
            Self::Timeout => "timeout",
            Self::Retried => "retried",
            Self::RetryBudgetExhausted => "retry_budget_exhausted",
            Self::CircuitOpen => "circuit_open",
            Self::EndpointEjected => "endpoint_ejected",
            Self::RateLimited => "rate_limited",
            Self::FaultInjected => "fault_injected",
            Self::NoHealthyEndpoint => "no_healthy_endpoint",
            Self::Unauthenticated(reason) => reason,
            Self::Denied(reason) => reason.as_str(),
        }
    }
}

/// A whole body in the type both the waypoint's answers and upstream requests use.
pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub(crate) fn own(status: StatusCode, reason: Reason, detail: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(format!("{detail}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-weft-reason", HeaderValue::from_static(reason.as_str()));
    response
}

/// The waypoint's own answer to a gRPC call: trailers-only, `grpc-status` `code` and
/// `message` percent-encoded as gRPC wants it.
pub(crate) fn grpc_answer(code: u32, message: &str, reason: Reason) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    let encoded: String = message
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b" -_./:".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    headers.insert("x-weft-reason", HeaderValue::from_static(reason.as_str()));
    response
}

fn modify(headers: &mut http::HeaderMap, modifier: &HeaderModifier) {
    for h in &modifier.set {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            headers.insert(name, value);
        }
    }
    for h in &modifier.add {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            headers.append(name, value);
        }
    }
    for name in &modifier.remove {
        headers.remove(name.as_str());
    }
}

/// What one request came to, for the log and the counters.
#[derive(Debug)]
pub struct Outcome {
    pub route: String,
    pub backend: String,
    pub upstream: Option<SocketAddr>,
    pub reason: Reason,
    /// Attempts made to backends (0: the waypoint answered itself).
    pub attempts: u32,
    /// The endpoint's active request and breaker slot, freed when the response body ends.
    pub held: Option<crate::resilience::Held>,
    /// What authentication and authorization said.
    pub judged: crate::authz::Judged,
}

impl Outcome {
    /// Nothing done yet: no route, backend or attempt.
    pub fn new(reason: Reason) -> Self {
        Self {
            route: "-".into(),
            backend: "-".into(),
            upstream: None,
            reason,
            attempts: 0,
            held: None,
            judged: crate::authz::Judged::default(),
        }
    }

    /// Records where the request went and what the waypoint did on the way.
    fn took(&mut self, sent: &mut crate::attempts::Sent, faulted: bool) {
        self.attempts = sent.attempts;
        self.backend = std::mem::take(&mut sent.backend);
        self.upstream = Some(sent.endpoint);
        self.held = sent.held.take();
        if let Some(note) = sent.note {
            self.reason = note;
        } else if faulted {
            self.reason = Reason::FaultInjected;
        }
    }

    /// The waypoint's own answer, with its reason recorded.
    fn answer(
        mut self,
        status: StatusCode,
        reason: Reason,
        detail: &str,
    ) -> (Response<Body>, Self) {
        self.reason = reason;
        (own(status, reason, detail), self)
    }
}

/// Serves one request that arrived on `tunnel`; its telemetry is finished when the response
/// body has been sent ([`crate::telemetry`]).
pub async fn handle(
    waypoint: Arc<Waypoint>,
    tunnel: Arc<Tunnel>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<crate::telemetry::Recorded>, Infallible> {
    let started = Instant::now();
    let mut head = crate::telemetry::Head::of(&request);
    let trace = crate::trace::begin(&waypoint, request.headers());
    head.trace.clone_from(&trace);
    let request_bytes = Arc::new(AtomicU64::new(0));
    let routing = crate::telemetry::Routing::new(
        waypoint.clone(),
        tunnel.clone(),
        head,
        request_bytes.clone(),
        started,
    );
    let (response, outcome) =
        route(&waypoint, &tunnel, request, &request_bytes, trace.as_ref()).await;
    let (parts, body) = response.into_parts();
    let pending = routing.answered(parts.status.as_u16(), outcome);
    Ok(Response::from_parts(
        parts,
        crate::telemetry::Recorded::new(body, pending),
    ))
}

async fn route(
    waypoint: &Arc<Waypoint>,
    tunnel: &Arc<Tunnel>,
    request: Request<hyper::body::Incoming>,
    request_bytes: &Arc<AtomicU64>,
    trace: Option<&crate::trace::RequestTrace>,
) -> (Response<Body>, Outcome) {
    let started = Instant::now();
    let table = waypoint.table.load_full();
    let (mut parts, body) = request.into_parts();
    let client_upgrade = crate::upgrade::take(&mut parts);
    let mut outcome = Outcome::new(Reason::Routed);
    let registry = waypoint.registry.borrow().clone();
    match crate::authz::check(waypoint, tunnel, &registry, &mut parts).await {
        Ok(judged) => outcome.judged = judged,
        Err(refused) => {
            let refused = *refused;
            outcome.reason = refused.reason;
            outcome.judged = refused.judged;
            return (refused.response, outcome);
        }
    }
    let default_backend = [tunnel.service_itself()];
    let chosen = table.choose(
        (&tunnel.service, tunnel.service_port),
        Some(tunnel.client.namespace.as_str()),
        &parts,
    );
    let rule = chosen.map(|c| c.rule);
    let (backends, filters): (&[Backend], &[weft_mesh::registry::routes::Filter]) = match rule {
        Some(rule) => {
            outcome.route = format!("{} rule {}", rule.route, rule.index);
            (rule.backends.as_slice(), rule.filters.as_slice())
        }
        None if table.has_routes(&tunnel.service, tunnel.service_port) => {
            let detail = format!(
                "no route of {} matches {} {}",
                tunnel.service,
                parts.method,
                parts.uri.path()
            );
            return outcome.answer(StatusCode::NOT_FOUND, Reason::NoRoute, &detail);
        }
        None => (default_backend.as_slice(), &[]),
    };
    let response_modifier = match apply_filters(filters, &mut parts, rule) {
        Ok(modifier) => modifier,
        Err(redirect) => {
            outcome.reason = Reason::Redirected;
            return (*redirect, outcome);
        }
    };
    let policy = crate::resilience::request_policy(&registry, rule, &tunnel.service);
    let faulted = match gate(waypoint, policy, &parts).await {
        Ok(faulted) => faulted,
        Err(refused) => {
            outcome.reason = refused.1;
            return (*refused.0, outcome);
        }
    };
    let body = match crate::attempts::prepare(
        waypoint,
        tunnel,
        (rule, crate::attempts::Retrying::of(rule, policy).retries()),
        &parts,
        body,
        request_bytes,
    )
    .await
    {
        Ok(body) => body,
        Err(error) => {
            let (status, reason, detail) = error.answer();
            return outcome.answer(status, reason, &detail);
        }
    };
    let request = crate::attempts::Request {
        rule,
        backends,
        policy,
        registry: &registry,
        started,
        trace,
    };
    let sent = crate::attempts::run(waypoint, tunnel, &request, parts, body).await;
    let mut sent = match sent {
        Ok(sent) => sent,
        Err(failed) => {
            outcome.attempts = failed.attempts;
            outcome.backend = failed.backend.unwrap_or_else(|| "-".into());
            outcome.upstream = failed.endpoint;
            return outcome.answer(failed.status, failed.reason, &failed.detail);
        }
    };
    outcome.took(&mut sent, faulted);
    if !join_upgrade(waypoint, tunnel, client_upgrade, &mut sent.response) {
        let detail = format!(
            "{} upgraded connections are open",
            crate::upgrade::MAX_UPGRADED
        );
        return outcome.answer(StatusCode::SERVICE_UNAVAILABLE, Reason::Overloaded, &detail);
    }
    let (mut parts, body) = sent.response.into_parts();
    finish_head(&mut parts.headers, response_modifier, outcome.reason);
    (Response::from_parts(parts, body.boxed()), outcome)
}

/// Joins the client's upgraded connection to the backend's when the backend switched
/// protocols; false when no more upgraded connections may open.
fn join_upgrade(
    waypoint: &Waypoint,
    tunnel: &Tunnel,
    client: Option<hyper::upgrade::OnUpgrade>,
    response: &mut Response<hyper::body::Incoming>,
) -> bool {
    match client {
        Some(client) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            crate::upgrade::join(
                client,
                response,
                &waypoint.upgrades,
                &waypoint.limits,
                &tunnel.service,
            )
        }
        _ => true,
    }
}

/// The response head's last touches: the rule's response header filter, and the reason when
/// the waypoint did more than route (retried, ejected...), so the client sees it.
fn finish_head(headers: &mut http::HeaderMap, modifier: Option<&HeaderModifier>, reason: Reason) {
    if let Some(m) = modifier {
        modify(headers, m);
    }
    if reason != Reason::Routed {
        headers.insert("x-weft-reason", HeaderValue::from_static(reason.as_str()));
    }
}

/// The request policy's rate limit and faults: whether the request was delayed, or the
/// answer it gets instead of being sent.
async fn gate(
    waypoint: &Waypoint,
    policy: Option<&weft_mesh::policy::TrafficSettings>,
    parts: &http::request::Parts,
) -> Result<bool, (Box<Response<Body>>, Reason)> {
    let Some(policy) = policy else {
        return Ok(false);
    };
    let settings = &policy.resilience;
    if settings.rate_limit.is_none() && settings.fault.is_none() && settings.budget.is_none() {
        return Ok(false);
    }
    let state = waypoint.resilience.policy(&policy.id(), &waypoint.limits);
    if let Some(limit) = &settings.rate_limit {
        let taken = state
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(limit);
        if let Err(limited) = taken {
            let detail = format!(
                "over the local rate limit of TrafficPolicy {}: {} requests per {:?}, burst {}",
                policy.id(),
                limit.requests,
                limit.per,
                limit.burst
            );
            let mut response = own(StatusCode::TOO_MANY_REQUESTS, Reason::RateLimited, &detail);
            let headers = response.headers_mut();
            let seconds =
                limited.retry_after.as_secs() + u64::from(limited.retry_after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            for (name, value) in [
                ("ratelimit-policy", limited.policy),
                ("ratelimit", limited.state),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            return Err((Box::new(response), Reason::RateLimited));
        }
    }
    if settings.budget.is_some() {
        state.budget.request();
    }
    let Some(fault) = &settings.fault else {
        return Ok(false);
    };
    let drawn = crate::resilience::limit::faults(fault, &parts.headers);
    if let Some(delay) = drawn.delay {
        tokio::time::sleep(delay).await;
    }
    match drawn.abort {
        Some(weft_mesh::policy::resilience::Abort::Http(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let detail = format!(
                "aborted by the fault injection of TrafficPolicy {}",
                policy.id()
            );
            Err((
                Box::new(own(status, Reason::FaultInjected, &detail)),
                Reason::FaultInjected,
            ))
        }
        Some(weft_mesh::policy::resilience::Abort::Grpc(code)) => Err((
            Box::new(grpc_answer(code, "fault injected", Reason::FaultInjected)),
            Reason::FaultInjected,
        )),
        None => Ok(drawn.delay.is_some()),
    }
}

/// The backend (`namespace/name`), endpoint and identity a request goes to.
type Picked = (String, SocketAddr, Option<SpiffeId>);
/// The answer the waypoint makes itself: status, reason, detail.
type Refusal = (StatusCode, Reason, String);

/// A backend of `backends` by weight, and one of its ready endpoints with the identity it must
/// prove; or the answer the waypoint makes when there is none.
pub(crate) fn pick(
    waypoint: &Waypoint,
    backends: &[Backend],
    default_port: u16,
) -> Result<Picked, Refusal> {
    let backend = routing::pick_backend(backends).ok_or_else(|| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Reason::BackendNotFound,
            "the rule has no backend with a weight above 0".to_owned(),
        )
    })?;
    let registry = waypoint.registry.borrow().clone();
    let (endpoint, identity) =
        endpoint_of(waypoint, &registry, backend, default_port).map_err(|(reason, detail)| {
            let status = if reason == Reason::BackendNotFound {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, reason, detail)
        })?;
    Ok((
        format!("{}/{}", backend.namespace, backend.name),
        endpoint,
        identity,
    ))
}

/// Sends the request to `endpoint` (as HTTP/1.1 or HTTP/2, as it came), with the client in
/// `X-Forwarded-For`.
pub(crate) async fn send_upstream(
    waypoint: &Waypoint,
    tunnel: &Tunnel,
    mut parts: http::request::Parts,
    body: upstream::UpstreamBody,
    endpoint: SocketAddr,
    identity: Option<SpiffeId>,
) -> Result<Response<hyper::body::Incoming>, upstream::UpstreamError> {
    forwarded_for(&mut parts.headers, tunnel.client_ip);
    let http2 = parts.version == http::Version::HTTP_2;
    if !http2 {
        // HTTP/1.1 upstream: origin-form target, the Host header carries the authority.
        if let Some(pq) = parts.uri.path_and_query().cloned() {
            parts.uri = pq.as_str().parse().unwrap_or_default();
        }
        parts.version = http::Version::HTTP_11;
    }
    let key = upstream::key(endpoint, (tunnel.client_ip, &tunnel.client), http2);
    let checked = waypoint
        .upstreams
        .checkout(&waypoint.pool, &waypoint.identity, identity.as_ref(), key)
        .await?;
    waypoint
        .upstreams
        .send(checked, Request::from_parts(parts, body))
        .await
}

/// Applies a rule's request filters to `parts`; returns the response header modifier to
/// apply later, or the redirect to answer with instead.
fn apply_filters<'a>(
    filters: &'a [weft_mesh::registry::routes::Filter],
    parts: &mut http::request::Parts,
    rule: Option<&routing::Rule>,
) -> Result<Option<&'a HeaderModifier>, Box<Response<Body>>> {
    let mut response_modifier = None;
    for filter in filters {
        match filter.kind.as_str() {
            "RequestHeaderModifier" => {
                if let Some(m) = &filter.request_header_modifier {
                    modify(&mut parts.headers, m);
                }
            }
            "ResponseHeaderModifier" => {
                response_modifier = filter.response_header_modifier.as_ref();
            }
            "RequestRedirect" => {
                if let Some(redirect) = &filter.request_redirect {
                    return Err(Box::new(crate::rewrite::redirect(parts, redirect, rule)));
                }
            }
            "URLRewrite" => {
                if let Some(rewrite) = &filter.url_rewrite {
                    crate::rewrite::rewrite(parts, rewrite, rule);
                }
            }
            _ => {}
        }
    }
    Ok(response_modifier)
}

/// Appends the original client to `X-Forwarded-For`.
fn forwarded_for(headers: &mut http::HeaderMap, client: IpAddr) {
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {client}"),
        None => client.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}

/// One ready endpoint of `backend` (in turn) and the identity it must prove (none outside
/// the mesh).
fn endpoint_of(
    waypoint: &Waypoint,
    registry: &Registry,
    backend: &Backend,
    default_port: u16,
) -> Result<(SocketAddr, Option<SpiffeId>), (Reason, String)> {
    let resolved = resolve(registry, backend, default_port)?;
    let endpoint = waypoint
        .rotation
        .next_of(&resolved.key, &resolved.endpoints)
        .ok_or_else(|| resolved.none_ready())?;
    Ok((endpoint, identity_of(waypoint, registry, endpoint)))
}

/// A backend Service port and its ready endpoints.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// `namespace/name:port`.
    pub key: String,
    pub endpoints: Vec<SocketAddr>,
}

impl Resolved {
    pub(crate) fn none_ready(&self) -> (Reason, String) {
        (
            Reason::NoReadyEndpoints,
            format!("backend Service {} has no ready endpoints", self.key),
        )
    }
}

/// The ready endpoints of `backend`'s port (`default_port` when the backend names none).
pub(crate) fn resolve(
    registry: &Registry,
    backend: &Backend,
    default_port: u16,
) -> Result<Resolved, (Reason, String)> {
    let name = format!("{}/{}", backend.namespace, backend.name);
    let service = registry
        .service(&backend.namespace, &backend.name)
        .ok_or_else(|| {
            (
                Reason::BackendNotFound,
                format!("backend Service {name} does not exist"),
            )
        })?;
    let port_number = backend.port.unwrap_or(default_port);
    let port = service
        .ports
        .iter()
        .find(|p| p.port == port_number)
        .ok_or_else(|| {
            (
                Reason::BackendNotFound,
                format!("backend Service {name} has no port {port_number}"),
            )
        })?;
    Ok(Resolved {
        key: format!("{name}:{port_number}"),
        endpoints: registry.endpoints(service, port),
    })
}

/// The identity `endpoint` must prove: its pod's, when the pod is in the mesh.
pub(crate) fn identity_of(
    waypoint: &Waypoint,
    registry: &Registry,
    endpoint: SocketAddr,
) -> Option<SpiffeId> {
    match endpoint.ip() {
        IpAddr::V4(ip) => registry
            .pod_by_ip(ip)
            .filter(|p| registry.is_enrolled(p))
            .map(|p| SpiffeId::new(&waypoint.identity_domain, &p.namespace, &p.service_account)),
        IpAddr::V6(_) => None,
    }
}
