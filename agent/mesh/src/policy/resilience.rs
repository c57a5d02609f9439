//! The resilience settings of a `TrafficPolicy` compiled once per registry snapshot into the
//! shape the data path reads (durations parsed, defaults filled in, conflicts refused): retries
//! and their budget, circuit-breaker limits, outlier detection, health checks, the local rate
//! limit, fault injection and the hash key of a consistent-hash balancer.

use std::time::Duration;

use super::{
    traffic::{parse_duration, Algorithm, CircuitBreaker, TrafficPolicySpec},
    PolicyError,
};

/// The most retries a policy may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Backoff base when a retry gives none.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Health-check thresholds when a policy gives none.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// The shortest health-check interval, so probes cannot become load.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// Everything of a `TrafficPolicy` a waypoint applies per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resilience {
    pub retry: Option<RetryRule>,
    pub budget: Option<Budget>,
    pub breaker: Option<CircuitBreaker>,
    pub outlier: Option<Outlier>,
    pub health: Option<Health>,
    pub rate_limit: Option<RateLimit>,
    pub fault: Option<Fault>,
    pub hash: Option<HashOn>,
    /// Locality preference: the healthy share (percent) below which a locality is passed over.
    pub locality: Option<u32>,
}

/// A locality is passed over below this healthy share when a policy gives none (Envoy's
/// overprovisioning factor of 1.4 makes it about 71%).
pub const DEFAULT_LOCALITY_MIN_HEALTHY: u32 = 70;

/// Which failures a retry answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per retry-on condition, as the policy names them"
)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub five_xx: bool,
    pub gateway_error: bool,
    pub status_codes: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetryRule {
    pub attempts: u32,
    pub per_try: Option<Duration>,
    pub on: RetryOn,
    pub codes: Vec<u16>,
    pub grpc: Vec<u32>,
    pub base: Duration,
    pub max: Duration,
}

impl RetryRule {
    /// Whether an answer with `status` is sent again.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on.five_xx && (500..600).contains(&status))
            || (self.on.gateway_error && matches!(status, 502..=504))
            || (self.on.status_codes && self.codes.contains(&status))
    }

    /// Whether a connect failure (or a stream the backend refused) is sent again.
    pub fn retries_connect_failure(&self) -> bool {
        self.on.connect_failure || self.on.refused_stream || self.on.gateway_error
    }

    pub fn retries_grpc(&self, status: u32) -> bool {
        self.grpc.contains(&status)
    }

    /// The longest wait before retry `retry` (1-based): `base * 2^(retry-1)` capped at `max`;
    /// the wait itself is drawn from `[0, that]` (full jitter).
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Retries admitted per second: `minPerSecond` plus `percent` of the requests of the last
/// second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub percent: u32,
    pub min_per_second: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_percent: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    Http(u16),
    Grpc(u32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(Abort, u32)>,
    /// Header names (lower case) and the exact values a request needs to be faulted.
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

fn duration(text: &str, field: &'static str) -> Result<Duration, PolicyError> {
    let value = parse_duration(text).map_err(|e| e.within(field))?;
    if value.is_zero() {
        return Err(PolicyError::ZeroDuration { field });
    }
    Ok(value)
}

fn percent(field: &'static str, value: u32) -> Result<u32, PolicyError> {
    if value > 100 {
        return Err(PolicyError::NotPercent { field, value });
    }
    Ok(value)
}

fn bad(field: &'static str, problem: impl Into<String>) -> PolicyError {
    PolicyError::BadValue {
        field,
        problem: problem.into(),
    }
}

/// The gRPC status codes by the names a policy uses.
const GRPC_STATUSES: [(&str, u32); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

fn retry(spec: &super::traffic::Retry) -> Result<RetryRule, PolicyError> {
    if spec.attempts == 0 || spec.attempts > MAX_RETRY_ATTEMPTS {
        return Err(bad(
            "retry.attempts",
            format!("{} is outside 1-{MAX_RETRY_ATTEMPTS}", spec.attempts),
        ));
    }
    let mut on = RetryOn::default();
    if spec.retry_on.is_empty() {
        on.connect_failure = true;
        on.refused_stream = true;
        on.gateway_error = true;
    }
    for condition in &spec.retry_on {
        match condition.as_str() {
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "retriable-status-codes" => on.status_codes = true,
            other => {
                return Err(bad(
                    "retry.retryOn",
                    format!("{other:?} is not one of connect-failure, refused-stream, 5xx, gateway-error, retriable-status-codes"),
                ))
            }
        }
    }
    if let Some(code) = spec
        .retriable_status_codes
        .iter()
        .find(|c| !(400..600).contains(*c))
    {
        return Err(bad(
            "retry.retriableStatusCodes",
            format!("{code} is not a 4xx or 5xx status"),
        ));
    }
    if on.status_codes && spec.retriable_status_codes.is_empty() {
        return Err(bad(
            "retry.retriableStatusCodes",
            "retriable-status-codes is in retryOn but no code is listed",
        ));
    }
    let grpc = spec
        .retriable_grpc_statuses
        .iter()
        .map(|name| {
            GRPC_STATUSES
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, code)| *code)
                .ok_or_else(|| {
                    bad(
                        "retry.retriableGrpcStatuses",
                        format!("{name:?} is not one of cancelled, deadline-exceeded, resource-exhausted, internal, unavailable"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let per_try = spec
        .per_try_timeout
        .as_deref()
        .map(|t| duration(t, "retry.perTryTimeout"))
        .transpose()?;
    let (base, max) = match &spec.backoff {
        Some(b) => {
            let base = duration(&b.base_interval, "retry.backoff.baseInterval")?;
            let max = b
                .max_interval
                .as_deref()
                .map(|t| duration(t, "retry.backoff.maxInterval"))
                .transpose()?
                .unwrap_or(base * 10);
            if max < base {
                return Err(bad(
                    "retry.backoff.maxInterval",
                    "is shorter than baseInterval",
                ));
            }
            (base, max)
        }
        None => (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_BASE * 10),
    };
    Ok(RetryRule {
        attempts: spec.attempts,
        per_try,
        on,
        codes: spec.retriable_status_codes.clone(),
        grpc,
        base,
        max,
    })
}

fn outlier(spec: &super::traffic::OutlierDetection) -> Result<Outlier, PolicyError> {
    if spec.consecutive_errors.is_none() && spec.consecutive_gateway_errors.is_none() {
        return Err(bad(
            "outlierDetection",
            "give consecutiveErrors or consecutiveGatewayErrors",
        ));
    }
    if spec.consecutive_errors == Some(0) {
        return Err(PolicyError::ZeroCount {
            field: "outlierDetection.consecutiveErrors",
        });
    }
    if spec.consecutive_gateway_errors == Some(0) {
        return Err(PolicyError::ZeroCount {
            field: "outlierDetection.consecutiveGatewayErrors",
        });
    }
    Ok(Outlier {
        consecutive_5xx: spec.consecutive_errors,
        consecutive_gateway: spec.consecutive_gateway_errors,
        interval: duration(&spec.interval, "outlierDetection.interval")?,
        base_ejection: duration(
            &spec.base_ejection_time,
            "outlierDetection.baseEjectionTime",
        )?,
        max_percent: percent(
            "outlierDetection.maxEjectionPercent",
            spec.max_ejection_percent.unwrap_or(10),
        )?,
    })
}

fn health(spec: &super::traffic::HealthCheck) -> Result<Health, PolicyError> {
    if !spec.path.starts_with('/') {
        return Err(bad("healthCheck.path", "must start with /"));
    }
    let interval = duration(&spec.interval, "healthCheck.interval")?;
    if interval < MIN_HEALTH_INTERVAL {
        return Err(bad(
            "healthCheck.interval",
            format!("is under the minimum of {MIN_HEALTH_INTERVAL:?}"),
        ));
    }
    let timeout = duration(&spec.timeout, "healthCheck.timeout")?;
    let threshold = |value: Option<u32>, default, field| match value {
        Some(0) => Err(PolicyError::ZeroCount { field }),
        other => Ok(other.unwrap_or(default)),
    };
    Ok(Health {
        path: spec.path.clone(),
        interval,
        timeout: timeout.min(interval),
        healthy: threshold(
            spec.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
            "healthCheck.healthyThreshold",
        )?,
        unhealthy: threshold(
            spec.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
            "healthCheck.unhealthyThreshold",
        )?,
    })
}

fn fault(spec: &super::traffic::FaultInjection) -> Result<Fault, PolicyError> {
    let delay = spec
        .delay
        .as_ref()
        .map(|d| {
            Ok::<_, PolicyError>((
                duration(&d.fixed_delay, "faultInjection.delay.fixedDelay")?,
                percent("faultInjection.delay.percent", d.percent)?,
            ))
        })
        .transpose()?;
    let abort = spec
        .abort
        .as_ref()
        .map(|a| {
            let abort = match (a.http_status, a.grpc_status) {
                (Some(status), None) if (200..=599).contains(&status) => Abort::Http(status),
                (Some(status), None) => return Err(PolicyError::NotStatus(status)),
                (None, Some(code)) if (1..=16).contains(&code) => Abort::Grpc(code),
                (None, Some(code)) => {
                    return Err(bad(
                        "faultInjection.abort.grpcStatus",
                        format!("{code} is not a gRPC error code (1-16)"),
                    ))
                }
                _ => {
                    return Err(bad(
                        "faultInjection.abort",
                        "give exactly one of httpStatus and grpcStatus",
                    ))
                }
            };
            Ok((abort, percent("faultInjection.abort.percent", a.percent)?))
        })
        .transpose()?;
    let headers = spec
        .headers
        .iter()
        .map(|h| {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(bad(
                    "faultInjection.headers",
                    format!("{:?} is not a header name", h.name),
                ));
            }
            Ok((h.name.to_ascii_lowercase(), h.value.clone()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Fault {
        delay,
        abort,
        headers,
    })
}

fn hash(spec: &TrafficPolicySpec) -> Result<Option<HashOn>, PolicyError> {
    let Some(lb) = &spec.load_balancer else {
        return Ok(None);
    };
    let key = lb.consistent_hash.as_ref();
    match (lb.algorithm, key) {
        (Algorithm::ConsistentHash, Some(key)) => match (&key.header, &key.cookie, key.source_ip) {
            (Some(header), None, false) => {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(bad(
                        "loadBalancer.consistentHash.header",
                        format!("{header:?} is not a header name"),
                    ));
                }
                Ok(Some(HashOn::Header(header.to_ascii_lowercase())))
            }
            (None, Some(cookie), false) => Ok(Some(HashOn::Cookie(cookie.clone()))),
            (None, None, true) => Ok(Some(HashOn::SourceIp)),
            _ => Err(bad(
                "loadBalancer.consistentHash",
                "give exactly one of header, cookie and sourceIP",
            )),
        },
        (Algorithm::ConsistentHash, None) => Err(bad(
            "loadBalancer.consistentHash",
            "algorithm ConsistentHash needs consistentHash (header, cookie or sourceIP)",
        )),
        (_, Some(_)) => Err(bad(
            "loadBalancer.consistentHash",
            "is only read with algorithm ConsistentHash",
        )),
        (_, None) => Ok(None),
    }
}

/// Validates and compiles the resilience settings of `spec`.
pub fn compile(spec: &TrafficPolicySpec) -> Result<Resilience, PolicyError> {
    if let Some(breaker) = &spec.circuit_breaker {
        let limits = [
            breaker.max_connections,
            breaker.max_pending_requests,
            breaker.max_requests,
            breaker.max_retries,
        ];
        if limits.contains(&Some(0)) {
            return Err(PolicyError::ZeroLimit);
        }
    }
    let budget = spec
        .retry_budget
        .as_ref()
        .map(|b| {
            Ok::<_, PolicyError>(Budget {
                percent: percent("retryBudget.percent", b.percent)?,
                min_per_second: b.min_retries_per_second,
            })
        })
        .transpose()?;
    let rate_limit = spec
        .local_rate_limit
        .as_ref()
        .map(|l| {
            if l.requests == 0 {
                return Err(PolicyError::ZeroCount {
                    field: "localRateLimit.requests",
                });
            }
            if l.burst == Some(0) {
                return Err(PolicyError::ZeroCount {
                    field: "localRateLimit.burst",
                });
            }
            Ok(RateLimit {
                requests: l.requests,
                per: duration(&l.per, "localRateLimit.per")?,
                burst: l.burst.unwrap_or(l.requests),
            })
        })
        .transpose()?;
    Ok(Resilience {
        retry: spec.retry.as_ref().map(retry).transpose()?,
        budget,
        breaker: spec.circuit_breaker.clone(),
        outlier: spec.outlier_detection.as_ref().map(outlier).transpose()?,
        health: spec.health_check.as_ref().map(health).transpose()?,
        rate_limit,
        fault: spec.fault_injection.as_ref().map(fault).transpose()?,
        hash: hash(spec)?,
        locality: spec
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.locality.as_ref())
            .map(|l| {
                percent(
                    "loadBalancer.locality.minHealthyPercent",
                    l.min_healthy_percent
                        .unwrap_or(DEFAULT_LOCALITY_MIN_HEALTHY),
                )
            })
            .transpose()?,
    })
}
