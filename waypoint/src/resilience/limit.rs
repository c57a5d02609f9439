//! The local rate limit (a token bucket per policy, answering 429 with `retry-after` and the
//! IETF draft's `RateLimit-Policy` and `RateLimit` headers) and fault injection (a delay or an
//! abort for a share of the requests, optionally only those with given headers).

use std::time::{Duration, Instant};

use rand::Rng as _;
use weft_mesh::policy::resilience::{Abort, Fault, RateLimit};

/// A token bucket: `burst` tokens at most, refilled at `requests` per `per`.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            tokens: 0.0,
            last: None,
        }
    }
}

/// A request over the limit: when the next token comes, and the policy's headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub retry_after: Duration,
    pub policy: String,
    pub state: String,
}

impl Bucket {
    /// Takes a token for one request, or says when the next one comes.
    pub fn take(&mut self, limit: &RateLimit) -> Result<(), Limited> {
        let now = Instant::now();
        let rate = f64::from(limit.requests) / limit.per.as_secs_f64();
        let burst = f64::from(limit.burst);
        self.tokens = match self.last {
            None => burst,
            Some(last) => (self.tokens + now.duration_since(last).as_secs_f64() * rate).min(burst),
        };
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let retry_after = Duration::from_secs_f64((1.0 - self.tokens) / rate);
        let window = limit.per.as_secs().max(1);
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Err(Limited {
            retry_after,
            policy: format!("\"local\";q={};w={window}", limit.requests),
            state: format!("\"local\";r=0;t={seconds}"),
        })
    }
}

/// What fault injection does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faulted {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

fn chosen(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && rand::rng().random_range(0..100) < percent)
}

/// Draws the faults for a request with `headers`.
pub fn faults(fault: &Fault, headers: &http::HeaderMap) -> Faulted {
    let matches = fault.headers.iter().all(|(name, value)| {
        headers
            .get(name)
            .is_some_and(|v| v.as_bytes() == value.as_bytes())
    });
    if !matches {
        return Faulted::default();
    }
    Faulted {
        delay: fault
            .delay
            .and_then(|(delay, percent)| chosen(percent).then_some(delay)),
        abort: fault
            .abort
            .and_then(|(abort, percent)| chosen(percent).then_some(abort)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_mesh::policy::resilience::RateLimit;

    use super::Bucket;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let limit = RateLimit {
            requests: 10,
            per: Duration::from_secs(1),
            burst: 5,
        };
        let mut bucket = Bucket::default();
        let admitted = (0..20).filter(|_| bucket.take(&limit).is_ok()).count();
        assert_eq!(admitted, 5);
        let refused = bucket.take(&limit).expect_err("over the limit");
        assert!(refused.retry_after <= Duration::from_millis(100));
        assert_eq!(refused.policy, "\"local\";q=10;w=1");
        assert_eq!(refused.state, "\"local\";r=0;t=1");
    }
}
