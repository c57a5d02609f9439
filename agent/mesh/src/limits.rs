//! The limits every listener of the agent (and of its CA) runs under, and the counter and the
//! rate-limited log line each one gets when it is hit. [`crate::serve`] applies them. ARCHITECTURE.md's limits table lists the same numbers with their reasons.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

/// TLS handshake, HBONE (15008) and CA (15012): a peer that does not finish it in time is cut.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HBONE: the largest HTTP/2 header list (decoded) a peer may send; a CONNECT needs well under
/// 1 KiB, Istio's ztunnel sends about 300 bytes.
pub const HBONE_MAX_HEADER_LIST: u32 = 16 * 1024;
/// HBONE: a connection must have opened its first stream (a whole header block) this long
/// after its handshake; until then it is cut. h2 yields a stream only once its header block is
/// complete, so a peer that never ends one is cut by this deadline.
pub const HBONE_FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// HBONE: a connection with no open stream for this long is closed with GOAWAY. Above the
/// client pool's own idle release, so pooled connections are not cut under a client.
pub const HBONE_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_mins(15);
/// After GOAWAY, what is still open may finish for this long before the connection is dropped.
pub const HBONE_GOAWAY_GRACE: Duration = Duration::from_secs(5);
/// A proxied connection (captured TCP or HBONE stream) with no byte either way for this long
/// is closed, as Istio closes idle TCP after an hour.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_hours(1);
/// HTTP/1 ports (admin, metrics, readiness, CA): the request head must arrive in this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/1 ports: the largest request head hyper buffers.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How one HTTP/1 listener is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Http1Limits {
    pub listener: &'static str,
    /// Connections served at once; one more is accepted and closed at once, and counted.
    pub max_connections: usize,
    /// The whole connection (one request: keep-alive is off); `None` for streaming answers.
    pub connection_deadline: Option<Duration>,
}

/// Admin API (127.0.0.1:15000): weftctl and tests; `/flows?follow` streams without end.
pub const ADMIN: Http1Limits = Http1Limits {
    listener: "admin",
    max_connections: 64,
    connection_deadline: None,
};
/// Metrics (15020): a scrape of a large node encodes in well under a second.
pub const METRICS: Http1Limits = Http1Limits {
    listener: "metrics",
    max_connections: 16,
    connection_deadline: Some(Duration::from_secs(30)),
};
/// Readiness (15021): the kubelet probes once every few seconds.
pub const READINESS: Http1Limits = Http1Limits {
    listener: "readiness",
    max_connections: 64,
    connection_deadline: Some(Duration::from_secs(10)),
};
/// CA (15012): one CSR per identity and renewal; agents of a large cluster renewing together.
pub const CA: Http1Limits = Http1Limits {
    listener: "ca",
    max_connections: 256,
    connection_deadline: Some(Duration::from_secs(30)),
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub listener: &'static str,
    pub limit: &'static str,
}

/// Counts each limit hit and logs it at most once a second per listener and limit.
#[derive(Debug, Default)]
pub struct Limits {
    pub hits: Family<LimitLabels, Counter>,
    totals: Mutex<HashMap<(&'static str, &'static str), u64>>,
    last_logged: Mutex<HashMap<(&'static str, &'static str), Instant>>,
}

/// One limit's count, for `/stats`.
pub type LimitHit = weft_api::LimitHit;

impl Limits {
    pub fn hit(&self, listener: &'static str, limit: &'static str, detail: &dyn std::fmt::Display) {
        self.hits
            .get_or_create(&LimitLabels { listener, limit })
            .inc();
        let count = {
            let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
            let count = totals.entry((listener, limit)).or_default();
            *count += 1;
            *count
        };
        let now = Instant::now();
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = last
            .get(&(listener, limit))
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(1));
        if due {
            last.insert((listener, limit), now);
            tracing::warn!(listener, limit, hits = count, %detail, "limit hit (logged at most once a second per limit)");
        }
    }

    pub fn snapshot(&self) -> Vec<LimitHit> {
        let totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let mut hits: Vec<LimitHit> = totals
            .iter()
            .map(|(&(listener, limit), &hits)| LimitHit {
                listener: listener.to_owned(),
                limit: limit.to_owned(),
                hits,
            })
            .collect();
        hits.sort_by(|a, b| (&a.listener, &a.limit).cmp(&(&b.listener, &b.limit)));
        hits
    }
}

/// Completes once neither counter has moved for `idle`: a proxied connection that carries
/// nothing for that long is closed. Checked at a quarter of `idle`, so it ends between 1 and
/// 1.25 times `idle` after the last byte.
pub async fn idle(counters: [&AtomicU64; 2], idle: Duration) {
    let tick = idle / 4;
    let moved = || {
        counters[0]
            .load(Ordering::Relaxed)
            .wrapping_add(counters[1].load(Ordering::Relaxed))
    };
    let mut seen = moved();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = moved();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= idle {
            return;
        }
    }
}
