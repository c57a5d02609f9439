//! The attempts of one request to its rule's backends: a backend and endpoint chosen afresh
//! for each, `timeouts.backendRequest` per attempt and `timeouts.request` over all of them,
//! and the rule's `retry` (codes, attempts, backoff). A request is only sent again when its
//! body can be: empty, or declared by `Content-Length` within [`RETRY_BODY_CAP`] and read
//! whole first; any other body streams once.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;

use weft_mesh::{
    identity::SpiffeId,
    policy::{resilience::RetryRule, TrafficSettings},
    registry::Registry,
};

use crate::{
    app::Waypoint,
    forward::{self, full, Reason, Tunnel},
    resilience::{balance, BackendState, Held},
    routing::{Backend, RetryPolicy, Rule},
    upstream::UpstreamBody,
};

/// The largest request body a retried rule reads whole so it can send it again.
pub const RETRY_BODY_CAP: u64 = 64 * 1024;

/// A request's body, as its attempts need it.
#[derive(Debug)]
pub enum RequestBody {
    /// Sent as it arrives (counted as it goes), so only once.
    Streaming(Option<UpstreamBody>),
    /// Read whole (for a mirror or a retry), so sent as often as needed.
    Whole(Bytes),
}

impl RequestBody {
    /// The body for the next attempt, if there can be one.
    fn for_attempt(&mut self) -> Option<UpstreamBody> {
        match self {
            Self::Streaming(body) => body.take(),
            Self::Whole(bytes) => Some(full(bytes.clone())),
        }
    }
}

/// Why a body that had to be read whole was not.
#[derive(Debug)]
pub enum BodyError {
    /// It was larger than the cap it had to be read within.
    TooLarge { cap: u64 },
    /// The client reset or broke it on the way.
    Failed(String),
}

impl BodyError {
    /// The waypoint's answer: status, reason and what to tell the client.
    pub fn answer(self) -> (StatusCode, Reason, String) {
        match self {
            Self::TooLarge { cap } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Reason::BodyTooLarge,
                format!(
                    "this route reads request bodies whole (to mirror or retry them), up to {cap} bytes"
                ),
            ),
            Self::Failed(detail) => (
                StatusCode::BAD_REQUEST,
                Reason::RequestBodyFailed,
                format!("reading the request body failed: {detail}"),
            ),
        }
    }
}

/// The body the attempts send: read whole when the rule mirrors (copies start here) or
/// retries a body small enough to keep, else streamed.
pub async fn prepare(
    waypoint: &Arc<Waypoint>,
    tunnel: &Arc<Tunnel>,
    (rule, retried): (Option<&Rule>, bool),
    parts: &http::request::Parts,
    body: hyper::body::Incoming,
    request_bytes: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<RequestBody, BodyError> {
    let mirrors = rule.map_or_else(Vec::new, |r| crate::mirror::backends(&r.filters, &r.route));
    let cap = if !mirrors.is_empty() {
        crate::mirror::MIRROR_BODY_CAP
    } else if retried && replayable(parts, &body) {
        RETRY_BODY_CAP
    } else {
        let counted = crate::telemetry::Counted::new(body, request_bytes.clone());
        return Ok(RequestBody::Streaming(Some(counted.boxed())));
    };
    let bytes = read_whole(body, cap).await?;
    request_bytes.store(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if !mirrors.is_empty() {
        crate::mirror::copy(waypoint, tunnel, parts, &bytes, &mirrors);
    }
    Ok(RequestBody::Whole(bytes))
}

/// Whether a body can be kept to be sent again: it is empty, or its `Content-Length` is
/// within [`RETRY_BODY_CAP`].
fn replayable(parts: &http::request::Parts, body: &hyper::body::Incoming) -> bool {
    body.is_end_stream()
        || parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n <= RETRY_BODY_CAP)
}

async fn read_whole(body: hyper::body::Incoming, cap: u64) -> Result<Bytes, BodyError> {
    let limit = usize::try_from(cap).unwrap_or(usize::MAX);
    Ok(Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                BodyError::TooLarge { cap }
            } else {
                BodyError::Failed(e.to_string())
            }
        })?
        .to_bytes())
}

/// What the last attempt came to.
#[derive(Debug)]
pub struct Sent {
    pub response: Response<hyper::body::Incoming>,
    pub backend: String,
    pub endpoint: SocketAddr,
    pub attempts: u32,
    /// A reason beyond `routed`: retried, an ejection this answer caused, a refused retry.
    pub note: Option<Reason>,
    pub held: Option<Held>,
}

/// Why no attempt gave a response the client should see, and the answer the waypoint gives.
#[derive(Debug)]
pub struct Failed {
    pub status: StatusCode,
    pub reason: Reason,
    pub detail: String,
    pub backend: Option<String>,
    pub endpoint: Option<SocketAddr>,
    pub attempts: u32,
}

/// A head of the request, for one attempt: method, target, version and headers.
pub fn head_of(parts: &http::request::Parts) -> http::request::Parts {
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// What a request's attempts need to know.
#[derive(Debug)]
pub struct Request<'a> {
    pub rule: Option<&'a Rule>,
    pub backends: &'a [Backend],
    /// The request's TrafficPolicy ([`crate::resilience::request_policy`]).
    pub policy: Option<&'a TrafficSettings>,
    pub registry: &'a Registry,
    pub started: Instant,
    /// The request's span: each attempt is a child of it.
    pub trace: Option<&'a crate::trace::RequestTrace>,
}

/// When a request is sent again: its rule's `retry` wins; else its TrafficPolicy's.
#[derive(Debug, Clone, Copy)]
pub enum Retrying<'a> {
    Never,
    Route(&'a RetryPolicy),
    Policy(&'a RetryRule),
}

impl<'a> Retrying<'a> {
    pub fn of(rule: Option<&'a Rule>, policy: Option<&'a TrafficSettings>) -> Self {
        if let Some(route) = rule.and_then(|r| r.retry.as_ref()) {
            return Self::Route(route);
        }
        policy
            .and_then(|p| p.resilience.retry.as_ref())
            .map_or(Self::Never, Self::Policy)
    }

    /// Whether a request may be sent more than once.
    pub fn retries(self) -> bool {
        self.attempts() > 0
    }

    fn attempts(self) -> u32 {
        match self {
            Self::Never => 0,
            Self::Route(r) => r.attempts,
            Self::Policy(p) => p.attempts,
        }
    }

    fn on_response(self, response: &Response<hyper::body::Incoming>) -> bool {
        let code = response.status().as_u16();
        match self {
            Self::Never => false,
            Self::Route(r) => r.codes.contains(&code),
            Self::Policy(p) => {
                p.retries_status(code)
                    || response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .is_some_and(|status| p.retries_grpc(status))
            }
        }
    }

    fn on_failure(self) -> bool {
        match self {
            Self::Never => false,
            Self::Route(_) => true,
            Self::Policy(p) => p.retries_connect_failure(),
        }
    }

    fn on_timeout(self) -> bool {
        match self {
            Self::Never => false,
            Self::Route(r) => r.codes.contains(&504),
            Self::Policy(p) => p.retries_status(504),
        }
    }

    /// The wait before retry `retry` (1-based).
    fn backoff(self, retry: u32) -> Duration {
        match self {
            Self::Never => Duration::ZERO,
            Self::Route(r) => r.backoff,
            Self::Policy(p) => {
                let cap = p.backoff_cap(retry);
                cap.mul_f64(rand::random::<f64>())
            }
        }
    }

    fn per_try(self) -> Option<Duration> {
        match self {
            Self::Policy(p) => p.per_try,
            _ => None,
        }
    }
}

/// How many attempts a request gets and how long each may wait.
struct Plan<'a> {
    retrying: Retrying<'a>,
    allowed: u32,
    budget: Option<Duration>,
    per_attempt: Option<Duration>,
    started: Instant,
}

/// Where one attempt leaves the request.
enum Step {
    Done(Box<Result<Sent, Failed>>),
    /// Send again; a retryable answer is kept, the client's if no attempt is left in time.
    Again(Option<Box<Sent>>),
}

impl<'a> Plan<'a> {
    fn new(request: &Request<'a>, body: &RequestBody) -> Self {
        let retrying = Retrying::of(request.rule, request.policy);
        Plan {
            retrying,
            // Only a body read whole can be sent again.
            allowed: match body {
                RequestBody::Whole(_) => 1 + retrying.attempts(),
                RequestBody::Streaming(_) => 1,
            },
            budget: request.rule.and_then(Rule::request_budget),
            per_attempt: request
                .rule
                .and_then(Rule::attempt_budget)
                .or(retrying.per_try()),
            started: request.started,
        }
    }

    fn out_of_time(&self, at: (String, SocketAddr), attempts: u32) -> Failed {
        let budget = self.budget.unwrap_or_default();
        Failed {
            status: StatusCode::GATEWAY_TIMEOUT,
            reason: Reason::Timeout,
            detail: format!("the route's request timeout of {budget:?} passed while retrying"),
            backend: Some(at.0),
            endpoint: Some(at.1),
            attempts,
        }
    }

    fn left(&self) -> Option<Duration> {
        self.budget
            .map(|b| b.saturating_sub(self.started.elapsed()))
    }

    /// Judges what attempt `attempt` (to `at`) came to: `None` is its timeout.
    fn judge(
        &self,
        attempt: u32,
        at: (String, SocketAddr),
        sent: Option<Result<Response<hyper::body::Incoming>, crate::upstream::UpstreamError>>,
        service: &str,
    ) -> Step {
        let last = attempt >= self.allowed;
        let (backend, endpoint) = at;
        let fail = |status, reason, detail: String| {
            Step::Done(Box::new(Err(Failed {
                status,
                reason,
                detail,
                backend: Some(backend.clone()),
                endpoint: Some(endpoint),
                attempts: attempt,
            })))
        };
        let sent_ok = |response| Sent {
            response,
            backend: backend.clone(),
            endpoint,
            attempts: attempt,
            note: None,
            held: None,
        };
        match sent {
            Some(Ok(response)) if !last && self.retrying.on_response(&response) => {
                tracing::debug!(status = %response.status(), attempt, %endpoint, "retrying after a retryable answer");
                Step::Again(Some(Box::new(sent_ok(response))))
            }
            Some(Ok(response)) => Step::Done(Box::new(Ok(sent_ok(response)))),
            Some(Err(e)) if !last && self.retrying.on_failure() => {
                tracing::debug!(error = %e, attempt, %endpoint, "retrying after an upstream failure");
                Step::Again(None)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, %service, "upstream request failed");
                fail(
                    StatusCode::BAD_GATEWAY,
                    Reason::UpstreamFailed,
                    e.to_string(),
                )
            }
            None if !last
                && self.left().is_none_or(|l| !l.is_zero())
                && self.retrying.on_timeout() =>
            {
                tracing::debug!(attempt, %endpoint, "retrying after the attempt's timeout");
                Step::Again(None)
            }
            None => {
                let limit = [self.budget, self.per_attempt].into_iter().flatten().min();
                let detail = format!(
                    "no response from {endpoint} within the route's timeout of {:?}",
                    limit.unwrap_or_default()
                );
                fail(StatusCode::GATEWAY_TIMEOUT, Reason::Timeout, detail)
            }
        }
    }
}

/// Where one attempt goes.
struct Target<'r> {
    backend: String,
    endpoint: SocketAddr,
    identity: Option<SpiffeId>,
    state: Arc<BackendState>,
    policy: Option<&'r TrafficSettings>,
}

/// A backend by weight and one of its endpoints by the backend's algorithm, avoiding `tried`
/// and ejected or unhealthy endpoints.
fn choose<'r>(
    waypoint: &Waypoint,
    tunnel: &Tunnel,
    request: &Request<'r>,
    parts: Option<&http::request::Parts>,
    tried: &[SocketAddr],
) -> Result<Target<'r>, (StatusCode, Reason, String)> {
    let backend = crate::routing::pick_backend(request.backends).ok_or_else(|| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Reason::BackendNotFound,
            "the rule has no backend with a weight above 0".to_owned(),
        )
    })?;
    let resolved = forward::resolve(request.registry, backend, tunnel.service_port)
        .map_err(|(reason, detail)| (StatusCode::INTERNAL_SERVER_ERROR, reason, detail))?;
    let policy = crate::resilience::backend_policy(request.registry, backend);
    let algorithm = policy.map(|p| p.algorithm).unwrap_or_default();
    let key = parts.and_then(|p| crate::resilience::hash_key(policy, p, tunnel.client_ip));
    let state = waypoint.resilience.backend(&resolved.key, &waypoint.limits);
    let locality = policy.and_then(|p| p.resilience.locality);
    let nearness = locality.map(|_| {
        let client = request.registry.node_of(tunnel.client_ip);
        request.registry.nearness(client, &resolved.endpoints)
    });
    let near = nearness.as_deref().zip(locality);
    let picked = state
        .endpoints()
        .pick_near(algorithm, &resolved.endpoints, key, tried, near);
    let endpoint = picked.map_err(|none| match none {
        balance::NoPick::NoEndpoints => {
            let (reason, detail) = resolved.none_ready();
            (StatusCode::SERVICE_UNAVAILABLE, reason, detail)
        }
        balance::NoPick::NoHealthy => (
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::NoHealthyEndpoint,
            format!(
                "every endpoint of {} is ejected or failing its health check",
                resolved.key
            ),
        ),
    })?;
    Ok(Target {
        backend: format!("{}/{}", backend.namespace, backend.name),
        endpoint,
        identity: forward::identity_of(waypoint, request.registry, endpoint),
        state,
        policy,
    })
}

/// Whether another attempt may go: the policy's retry budget and the backend's `maxRetries`.
/// Returns the slot the retry holds, or why it may not go.
fn may_retry(
    waypoint: &Waypoint,
    request: &Request<'_>,
    state: &Arc<BackendState>,
    backend_policy: Option<&TrafficSettings>,
) -> Result<crate::resilience::breaker::RetrySlot, (Reason, String)> {
    if let Some(policy) = request.policy {
        if let Some(budget) = &policy.resilience.budget {
            let policy_state = waypoint.resilience.policy(&policy.id(), &waypoint.limits);
            if !policy_state.budget.retry(budget) {
                waypoint.requests.retry(&state.name, "budget_exhausted");
                return Err((
                    Reason::RetryBudgetExhausted,
                    format!(
                        "the retry budget of TrafficPolicy {} ({}% of requests plus {} per second) is spent",
                        policy.id(),
                        budget.percent,
                        budget.min_per_second
                    ),
                ));
            }
        }
    }
    let limits = backend_policy.and_then(|p| p.resilience.breaker.as_ref());
    let slot = state.breaker.retry(limits).map_err(|open| {
        waypoint.requests.retry(&state.name, "overflow");
        (Reason::CircuitOpen, format!("{}: {open}", state.name))
    })?;
    waypoint.requests.retry(&state.name, "sent");
    Ok(slot)
}

/// The backend's circuit breaker admits the attempt, or says why not.
async fn admit(
    target: &Target<'_>,
    http1: bool,
    left: Option<Duration>,
) -> Result<Option<crate::resilience::breaker::Admission>, String> {
    let Some(limits) = target.policy.and_then(|p| p.resilience.breaker.as_ref()) else {
        return Ok(None);
    };
    target
        .state
        .breaker
        .admit(limits, http1, left)
        .await
        .map(Some)
        .map_err(|open| format!("circuit breaker of {}: {open}", target.state.name))
}

/// Tells outlier detection what an attempt came to; whether that ejected the endpoint.
fn report(
    waypoint: &Waypoint,
    target: &Target<'_>,
    result: balance::Result,
    latency: Duration,
) -> bool {
    let outlier = target.policy.and_then(|p| p.resilience.outlier.as_ref());
    let ejected = target
        .state
        .endpoints()
        .report(target.endpoint, result, latency, outlier);
    let Some(ejected) = ejected else {
        return false;
    };
    tracing::warn!(backend = %target.state.name, endpoint = %ejected.endpoint, duration = ?ejected.duration, after = ejected.after, errors = ejected.errors, "endpoint ejected (outlier detection)");
    waypoint.requests.ejected(&target.state.name);
    true
}

/// An attempt's span, its context written into the attempt's head; `None` when tracing is off.
type AttemptSpan<'w> = (
    weft_mesh::trace::Begun,
    &'w weft_mesh::trace::Tracer,
    http::Method,
);

fn begin_attempt_span<'w>(
    waypoint: &'w Waypoint,
    request: &Request<'_>,
    head: &mut http::request::Parts,
) -> Option<AttemptSpan<'w>> {
    let (trace, tracer) = request.trace.zip(waypoint.tracer.as_ref())?;
    Some((
        trace.attempt(tracer, &mut head.headers),
        tracer,
        head.method.clone(),
    ))
}

/// Ends an attempt's span with what the attempt came to (`None`: its timeout passed).
fn end_attempt_span(
    span: Option<AttemptSpan<'_>>,
    target: &Target<'_>,
    attempt: u32,
    sent: Option<&Result<Response<hyper::body::Incoming>, crate::upstream::UpstreamError>>,
) {
    let Some((begun, tracer, method)) = span else {
        return;
    };
    let answer = match sent {
        Some(Ok(response)) => Ok(response.status().as_u16()),
        Some(Err(_)) => Err("upstream_failed"),
        None => Err("timeout"),
    };
    let end = crate::trace::AttemptEnd {
        method: &method,
        backend: &target.backend,
        endpoint: target.endpoint,
        number: attempt,
        answer,
    };
    crate::trace::attempt_ended(tracer, begun, &end);
}

/// Sends the request to its backends until an attempt's answer is final.
pub async fn run(
    waypoint: &Arc<Waypoint>,
    tunnel: &Arc<Tunnel>,
    request: &Request<'_>,
    parts: http::request::Parts,
    mut body: RequestBody,
) -> Result<Sent, Failed> {
    let plan = Plan::new(request, &body);
    let retrying = plan.retrying;
    let http1 = parts.version != http::Version::HTTP_2;
    let mut parts = Some(parts);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut note = None;
    let mut _retry_slot = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failed = |status, reason, detail, at: Option<(String, SocketAddr)>| Failed {
            status,
            reason,
            detail,
            backend: at.as_ref().map(|a| a.0.clone()),
            endpoint: at.map(|a| a.1),
            attempts: attempt,
        };
        let target = choose(waypoint, tunnel, request, parts.as_ref(), &tried)
            .map_err(|(status, reason, detail)| failed(status, reason, detail, None))?;
        let at = (target.backend.clone(), target.endpoint);
        let admission = admit(&target, http1, plan.left()).await.map_err(|detail| {
            failed(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::CircuitOpen,
                detail,
                Some(at.clone()),
            )
        })?;
        let in_flight = Held::new(target.state.clone(), target.endpoint, admission);
        // The last attempt takes the head itself; only earlier ones pay for a copy.
        let head = if attempt >= plan.allowed {
            parts.take()
        } else {
            parts.as_ref().map(head_of)
        };
        let (Some(mut head), Some(attempt_body)) = (head, body.for_attempt()) else {
            // Unreachable: a head and a body are kept for every allowed attempt.
            let detail = "no attempt is left".into();
            return Err(failed(
                StatusCode::BAD_GATEWAY,
                Reason::UpstreamFailed,
                detail,
                Some(at),
            ));
        };
        let wait = [plan.left(), plan.per_attempt].into_iter().flatten().min();
        let traced = begin_attempt_span(waypoint, request, &mut head);
        let sending = forward::send_upstream(
            waypoint,
            tunnel,
            head,
            attempt_body,
            target.endpoint,
            target.identity.clone(),
        );
        let sent_at = Instant::now();
        let sent = match wait {
            Some(wait) => tokio::time::timeout(wait, sending).await.ok(),
            None => Some(sending.await),
        };
        let result = match &sent {
            Some(Ok(response)) => balance::Result::Status(response.status().as_u16()),
            _ => balance::Result::Failed,
        };
        end_attempt_span(traced, &target, attempt, sent.as_ref());
        if report(waypoint, &target, result, sent_at.elapsed()) {
            note = Some(Reason::EndpointEjected);
        }
        tried.push(target.endpoint);
        let with_note = |mut sent: Sent, note: Option<Reason>| {
            sent.note = note.or((sent.attempts > 1).then_some(Reason::Retried));
            sent.held = Some(in_flight);
            sent
        };
        let kept = match plan.judge(attempt, at.clone(), sent, &tunnel.service) {
            Step::Done(done) => return done.map(|sent| with_note(sent, note)),
            Step::Again(kept) => kept.map(|k| with_note(*k, note)),
        };
        match may_retry(waypoint, request, &target.state, target.policy) {
            Ok(slot) => _retry_slot = Some(slot),
            Err((reason, detail)) => {
                tracing::debug!(%detail, "retry refused");
                return match kept {
                    Some(mut kept) => {
                        kept.note = Some(note.unwrap_or(reason));
                        Ok(kept)
                    }
                    None => Err(failed(StatusCode::BAD_GATEWAY, reason, detail, Some(at))),
                };
            }
        }
        let backoff = retrying.backoff(attempt);
        if plan.left().is_some_and(|l| l <= backoff) {
            // No time for another attempt: the backend's own answer beats a made-up 504.
            return kept.ok_or_else(|| plan.out_of_time(at, attempt));
        }
        drop(kept);
        tokio::time::sleep(backoff).await;
    }
}
