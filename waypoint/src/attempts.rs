//! The attempts of one request to its rule's backends: a backend and endpoint chosen afresh
//! for each, `timeouts.backendRequest` per attempt and `timeouts.request` over all of them,
//! and the rule's `retry` (codes, attempts, backoff). A request is only sent again when its
//! body can be: empty, or declared by `Content-Length` within [`RETRY_BODY_CAP`] and read
//! whole first; any other body streams once.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;

use crate::{
    app::Waypoint,
    forward::{self, full, Reason, Tunnel},
    routing::{Backend, Rule},
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

/// The body the attempts send: read whole when the rule mirrors (copies start here) or
/// retries a body small enough to keep, else streamed.
pub async fn prepare(
    waypoint: &Arc<Waypoint>,
    tunnel: &Arc<Tunnel>,
    rule: Option<&Rule>,
    parts: &http::request::Parts,
    body: hyper::body::Incoming,
    request_bytes: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<RequestBody, BodyError> {
    let mirrors = rule.map_or_else(Vec::new, |r| crate::mirror::backends(&r.filters, &r.route));
    let cap = if !mirrors.is_empty() {
        crate::mirror::MIRROR_BODY_CAP
    } else if rule.is_some_and(|r| r.retry.is_some()) && replayable(parts, &body) {
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

/// How many attempts a request gets and how long each may wait.
struct Plan<'a> {
    retry: Option<&'a crate::routing::RetryPolicy>,
    allowed: u32,
    budget: Option<std::time::Duration>,
    per_attempt: Option<std::time::Duration>,
    started: Instant,
}

/// Where one attempt leaves the request.
enum Step {
    Done(Box<Result<Sent, Failed>>),
    /// Send again; a retryable answer is kept, the client's if no attempt is left in time.
    Again(Option<Box<Sent>>),
}

impl Plan<'_> {
    fn left(&self) -> Option<std::time::Duration> {
        self.budget
            .map(|b| b.saturating_sub(self.started.elapsed()))
    }

    fn retries(&self, code: u16) -> bool {
        self.retry.is_some_and(|p| p.codes.contains(&code))
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
        match sent {
            Some(Ok(response)) if !last && self.retries(response.status().as_u16()) => {
                tracing::debug!(status = %response.status(), attempt, %endpoint, "retrying after a retryable status");
                Step::Again(Some(Box::new(Sent {
                    response,
                    backend,
                    endpoint,
                    attempts: attempt,
                })))
            }
            Some(Ok(response)) => Step::Done(Box::new(Ok(Sent {
                response,
                backend,
                endpoint,
                attempts: attempt,
            }))),
            Some(Err(e)) if !last => {
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
            None if !last && self.left().is_none_or(|l| !l.is_zero()) && self.retries(504) => {
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

/// Sends the request to `backends` until an attempt's answer is final.
pub async fn run(
    waypoint: &Arc<Waypoint>,
    tunnel: &Arc<Tunnel>,
    rule: Option<&Rule>,
    backends: &[Backend],
    parts: http::request::Parts,
    mut body: RequestBody,
    started: Instant,
) -> Result<Sent, Failed> {
    let retry = rule.and_then(|r| r.retry.as_ref());
    let plan = Plan {
        retry,
        // Only a body read whole can be sent again.
        allowed: match (&body, retry) {
            (RequestBody::Whole(_), Some(policy)) => 1 + policy.attempts,
            _ => 1,
        },
        budget: rule.and_then(Rule::request_budget),
        per_attempt: rule.and_then(Rule::attempt_budget),
        started,
    };
    let mut parts = Some(parts);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (backend, endpoint, identity) = forward::pick(waypoint, backends, tunnel.service_port)
            .map_err(|(status, reason, detail)| Failed {
                status,
                reason,
                detail,
                backend: None,
                endpoint: None,
                attempts: attempt,
            })?;
        // The last attempt takes the head itself; only earlier ones pay for a copy.
        let head = if attempt >= plan.allowed {
            parts.take()
        } else {
            parts.as_ref().map(head_of)
        };
        let (Some(head), Some(attempt_body)) = (head, body.for_attempt()) else {
            // Unreachable: a head and a body are kept for every allowed attempt.
            return Err(Failed {
                status: StatusCode::BAD_GATEWAY,
                reason: Reason::UpstreamFailed,
                detail: "no attempt is left".into(),
                backend: Some(backend),
                endpoint: Some(endpoint),
                attempts: attempt,
            });
        };
        let wait = [plan.left(), plan.per_attempt].into_iter().flatten().min();
        let sending =
            forward::send_upstream(waypoint, tunnel, head, attempt_body, endpoint, identity);
        let sent = match wait {
            Some(wait) => tokio::time::timeout(wait, sending).await.ok(),
            None => Some(sending.await),
        };
        let at = (backend, endpoint);
        let kept = match plan.judge(attempt, at.clone(), sent, &tunnel.service) {
            Step::Done(done) => return *done,
            Step::Again(kept) => kept,
        };
        let backoff = retry.map(|p| p.backoff).unwrap_or_default();
        if plan.left().is_some_and(|l| l <= backoff) {
            // No time for another attempt: the backend's own answer beats a made-up 504.
            if let Some(kept) = kept {
                return Ok(*kept);
            }
            let budget = plan.budget.unwrap_or_default();
            return Err(Failed {
                status: StatusCode::GATEWAY_TIMEOUT,
                reason: Reason::Timeout,
                detail: format!("the route's request timeout of {budget:?} passed while retrying"),
                backend: Some(at.0),
                endpoint: Some(at.1),
                attempts: attempt,
            });
        }
        tokio::time::sleep(backoff).await;
    }
}
