//! Circuit breaking per backend Service (requests, HTTP/1.1 connections, requests waiting for
//! either, and retries in flight) and the retry budget of a policy (retries per second as a
//! share of requests, plus a floor). A request over a limit fails at once; none queues
//! without bound or for ever.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use weft_mesh::policy::{resilience::Budget, traffic::CircuitBreaker};

/// Limits of a circuit breaker that leaves them out (Envoy's defaults).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1_024;
pub const DEFAULT_MAX_PENDING: u32 = 1_024;
pub const DEFAULT_MAX_REQUESTS: u32 = 1_024;
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// The longest a request waits for a connection or request slot before it is answered 503.
pub const MAX_PENDING_WAIT: Duration = Duration::from_secs(10);

/// What a backend Service has in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Occupancy {
    pub requests: u32,
    pub connections: u32,
    pub pending: u32,
    pub retries: u32,
}

#[derive(Debug, Default)]
pub struct Breaker {
    counts: Mutex<Occupancy>,
    freed: Notify,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    Pending(u32),
    Waited(Duration),
    Retries(u32),
}

impl std::fmt::Display for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pending(n) => write!(
                f,
                "{n} requests already wait for a slot (maxPendingRequests)"
            ),
            Self::Waited(d) => write!(f, "no request or connection slot came free within {d:?}"),
            Self::Retries(n) => write!(f, "{n} retries are in flight (maxRetries)"),
        }
    }
}

/// A request admitted by the breaker; dropping it frees its slots.
#[derive(Debug)]
pub struct Admission {
    breaker: Arc<Breaker>,
    http1: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        {
            let mut c = self.breaker.lock();
            c.requests = c.requests.saturating_sub(1);
            if self.http1 {
                c.connections = c.connections.saturating_sub(1);
            }
        }
        self.breaker.freed.notify_one();
    }
}

/// A retry admitted by `maxRetries`.
#[derive(Debug)]
pub struct RetrySlot(Arc<Breaker>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        let mut c = self.0.lock();
        c.retries = c.retries.saturating_sub(1);
    }
}

/// Counts a request waiting, and stops counting it however the wait ends.
struct Waiting<'a>(&'a Breaker);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut c = self.0.lock();
        c.pending = c.pending.saturating_sub(1);
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Occupancy> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn occupancy(&self) -> Occupancy {
        *self.lock()
    }

    /// Admits a request (an HTTP/1.1 one also takes a connection slot), waiting while
    /// `maxPendingRequests` allows and at most [`MAX_PENDING_WAIT`] or `wait`.
    pub async fn admit(
        self: &Arc<Self>,
        limits: &CircuitBreaker,
        http1: bool,
        wait: Option<Duration>,
    ) -> Result<Admission, Open> {
        let max_requests = limits.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS);
        let max_connections = limits.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let max_pending = limits.max_pending_requests.unwrap_or(DEFAULT_MAX_PENDING);
        let wait = wait.map_or(MAX_PENDING_WAIT, |w| w.min(MAX_PENDING_WAIT));
        let deadline = Instant::now() + wait;
        let mut waiting = None;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut c = self.lock();
                if c.requests < max_requests && (!http1 || c.connections < max_connections) {
                    c.requests += 1;
                    if http1 {
                        c.connections += 1;
                    }
                    drop(c);
                    drop(waiting);
                    return Ok(Admission {
                        breaker: self.clone(),
                        http1,
                    });
                }
                if waiting.is_none() {
                    if c.pending >= max_pending {
                        return Err(Open::Pending(c.pending));
                    }
                    c.pending += 1;
                    waiting = Some(Waiting(self));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, freed).await.is_err() {
                return Err(Open::Waited(wait));
            }
        }
    }

    /// A slot for one retry, if `maxRetries` has one.
    pub fn retry(self: &Arc<Self>, limits: Option<&CircuitBreaker>) -> Result<RetrySlot, Open> {
        let max = limits
            .and_then(|l| l.max_retries)
            .unwrap_or(DEFAULT_MAX_RETRIES);
        let mut c = self.lock();
        if limits.is_some() && c.retries >= max {
            return Err(Open::Retries(c.retries));
        }
        c.retries += 1;
        drop(c);
        Ok(RetrySlot(self.clone()))
    }
}

/// Requests and retries of the current and the previous second.
#[derive(Debug)]
struct Window {
    start: Instant,
    requests: u64,
    retries: u64,
    previous_requests: u64,
    previous_retries: u64,
}

/// The retry budget of one policy: retries of the last second stay under `minPerSecond` plus
/// `percent` of its requests.
#[derive(Debug)]
pub struct RetryBudget {
    window: Mutex<Window>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                start: Instant::now(),
                requests: 0,
                retries: 0,
                previous_requests: 0,
                previous_retries: 0,
            }),
        }
    }
}

impl RetryBudget {
    fn roll(window: &mut Window, now: Instant) {
        let elapsed = now.saturating_duration_since(window.start);
        if elapsed >= Duration::from_secs(2) {
            *window = Window {
                start: now,
                requests: 0,
                retries: 0,
                previous_requests: 0,
                previous_retries: 0,
            };
        } else if elapsed >= Duration::from_secs(1) {
            window.previous_requests = window.requests;
            window.previous_retries = window.retries;
            window.requests = 0;
            window.retries = 0;
            window.start += Duration::from_secs(1);
        }
    }

    pub fn request(&self) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        Self::roll(&mut window, Instant::now());
        window.requests += 1;
    }

    /// Takes a retry from the budget if it has one.
    pub fn retry(&self, budget: &Budget) -> bool {
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        Self::roll(&mut window, now);
        // The previous second counts for the part of it still inside the last second.
        let into = now
            .saturating_duration_since(window.start)
            .as_secs_f64()
            .min(1.0);
        #[expect(
            clippy::cast_precision_loss,
            reason = "request counts per second are far below 2^52"
        )]
        let (requests, retries) = (
            window.requests as f64 + window.previous_requests as f64 * (1.0 - into),
            window.retries as f64 + window.previous_retries as f64 * (1.0 - into),
        );
        let allowed =
            f64::from(budget.min_per_second) + requests * f64::from(budget.percent) / 100.0;
        if retries + 1.0 > allowed {
            return false;
        }
        window.retries += 1;
        true
    }
}
