//! The endpoints of one backend Service port as the waypoint sees them: requests active on
//! each, an EWMA of their latency, consecutive errors, ejections (outlier detection) and
//! health-check results; and the choice of an endpoint for an attempt by the Service's
//! algorithm (round robin, random, least request by power of two choices, or a Maglev table
//! for consistent hashing), skipping ejected and unhealthy endpoints and those already tried.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    time::{Duration, Instant},
};

use rand::Rng as _;
use weft_mesh::policy::{resilience::Outlier, traffic::Algorithm};

/// Maglev lookup table size (a prime well above any endpoint count, as Envoy's default): keys
/// move only with the share of the endpoints that changed.
pub const MAGLEV_TABLE_SIZE: usize = 65_537;
/// An ejection lasts `baseEjectionTime` times the endpoint's ejections, up to this many.
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;
/// The weight of the newest sample in an endpoint's latency average.
const EWMA_WEIGHT: f64 = 0.3;

/// What one attempt to an endpoint came to, for outlier detection and the latency average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Result {
    Status(u16),
    /// No connection, or no answer in time.
    Failed,
}

/// One endpoint's record.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    pub active: u32,
    /// Microseconds to the response head, averaged; 0 before the first answer.
    pub ewma_micros: f64,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    pub ejected_until: Option<Instant>,
    pub ejections: u32,
    /// When the endpoint last came back from an ejection (its multiplier decays from there).
    returned_at: Option<Instant>,
    /// Failing its health check (only with a `healthCheck`).
    pub unhealthy: bool,
    health_streak: u32,
    pub requests: u64,
    pub errors: u64,
}

impl Endpoint {
    pub fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until > now)
    }
}

/// Why no endpoint was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPick {
    /// The Service port has no ready endpoint.
    NoEndpoints,
    /// Every endpoint is ejected or failing its health check.
    NoHealthy,
}

/// An ejection that just happened, for the log and the request's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ejected {
    pub endpoint: SocketAddr,
    pub duration: Duration,
    pub after: &'static str,
    pub errors: u32,
}

/// The endpoints of one backend Service port.
#[derive(Debug, Default)]
pub struct Endpoints {
    known: HashMap<SocketAddr, Endpoint>,
    /// The endpoint list the Maglev table was built for, and the table (indexes into it).
    maglev: Option<(Vec<SocketAddr>, Vec<u16>)>,
    turn: usize,
    /// Bumped when health checking stops: a probe begun before then reports into an older
    /// epoch and is ignored, so it cannot mark an endpoint unhealthy that nothing will probe.
    health_epoch: u64,
}

impl Endpoints {
    /// Keeps records for `current` only: an endpoint that left the Service is forgotten.
    fn sync(&mut self, current: &[SocketAddr]) {
        if self.known.len() != current.len() || current.iter().any(|e| !self.known.contains_key(e))
        {
            self.known.retain(|e, _| current.contains(e));
            for endpoint in current {
                self.known.entry(*endpoint).or_default();
            }
        }
    }

    /// An endpoint of `current` for an attempt. `tried` are avoided while another usable one
    /// exists; `key` is the consistent-hash key, when the algorithm has one.
    pub fn pick(
        &mut self,
        algorithm: Algorithm,
        current: &[SocketAddr],
        key: Option<u64>,
        tried: &[SocketAddr],
    ) -> std::result::Result<SocketAddr, NoPick> {
        self.pick_near(algorithm, current, key, tried, None)
    }

    /// [`Endpoints::pick`], keeping to the nearest locality with enough healthy endpoints
    /// when `near` is given.
    pub fn pick_near(
        &mut self,
        algorithm: Algorithm,
        current: &[SocketAddr],
        key: Option<u64>,
        tried: &[SocketAddr],
        near: Option<weft_mesh::balance::Nearness<'_>>,
    ) -> std::result::Result<SocketAddr, NoPick> {
        if current.is_empty() {
            return Err(NoPick::NoEndpoints);
        }
        self.sync(current);
        let now = Instant::now();
        let usable: Vec<SocketAddr> = current
            .iter()
            .copied()
            .filter(|e| {
                self.known
                    .get(e)
                    .is_none_or(|s| !s.ejected(now) && !s.unhealthy)
            })
            .collect();
        if usable.is_empty() {
            return Err(NoPick::NoHealthy);
        }
        let usable = match near {
            Some(near) => weft_mesh::balance::nearest(current, near, &usable),
            None => usable,
        };
        let fresh: Vec<SocketAddr> = usable
            .iter()
            .copied()
            .filter(|e| !tried.contains(e))
            .collect();
        let candidates = if fresh.is_empty() { usable } else { fresh };
        let chosen = match (algorithm, key) {
            (Algorithm::ConsistentHash, Some(key)) => self.by_hash(current, key, &candidates),
            (Algorithm::LeastRequest, _) => self.least_request(&candidates),
            (Algorithm::Random, _) | (Algorithm::ConsistentHash, None) => {
                candidates[rand::rng().random_range(0..candidates.len())]
            }
            (Algorithm::RoundRobin, _) => {
                // Only first attempts take turns: a retry taking one would hand every first
                // attempt to the same endpoint.
                if tried.is_empty() {
                    self.turn = self.turn.wrapping_add(1);
                }
                candidates[self.turn % candidates.len()]
            }
        };
        Ok(chosen)
    }

    /// Power of two choices over active requests; the lower latency average breaks a tie.
    fn least_request(&self, candidates: &[SocketAddr]) -> SocketAddr {
        if candidates.len() == 1 {
            return candidates[0];
        }
        let mut rng = rand::rng();
        let first = rng.random_range(0..candidates.len());
        let mut second = rng.random_range(0..candidates.len() - 1);
        if second >= first {
            second += 1;
        }
        let (a, b) = (candidates[first], candidates[second]);
        let load = |e: &SocketAddr| {
            self.known
                .get(e)
                .map_or((0, 0.0), |s| (s.active, s.ewma_micros))
        };
        let ((active_a, ewma_a), (active_b, ewma_b)) = (load(&a), load(&b));
        if active_a < active_b || (active_a == active_b && ewma_a <= ewma_b) {
            a
        } else {
            b
        }
    }

    /// The endpoint the Maglev table gives `key`; when that one cannot be used, the next
    /// table entries in turn (so a key moves only while its endpoint is out).
    fn by_hash(
        &mut self,
        current: &[SocketAddr],
        key: u64,
        candidates: &[SocketAddr],
    ) -> SocketAddr {
        let stale = self
            .maglev
            .as_ref()
            .is_none_or(|(built, _)| built != current);
        if stale {
            self.maglev = Some((current.to_vec(), maglev_table(current)));
        }
        let Some((built, table)) = &self.maglev else {
            return candidates[0];
        };
        let start = usize::try_from(key % MAGLEV_TABLE_SIZE as u64).unwrap_or(0);
        (0..table.len())
            .map(|i| built[usize::from(table[(start + i) % table.len()])])
            .find(|e| candidates.contains(e))
            .unwrap_or(candidates[0])
    }

    pub fn started(&mut self, endpoint: SocketAddr) {
        let state = self.known.entry(endpoint).or_default();
        state.active += 1;
        state.requests += 1;
    }

    pub fn finished(&mut self, endpoint: SocketAddr) {
        if let Some(state) = self.known.get_mut(&endpoint) {
            state.active = state.active.saturating_sub(1);
        }
    }

    /// Records an attempt's result; returns the ejection it caused, if any.
    pub fn report(
        &mut self,
        endpoint: SocketAddr,
        result: Result,
        latency: Duration,
        outlier: Option<&Outlier>,
    ) -> Option<Ejected> {
        let now = Instant::now();
        let total = self.known.len();
        let ejected_now = self.known.values().filter(|s| s.ejected(now)).count();
        let state = self.known.get_mut(&endpoint)?;
        let (five_xx, gateway) = match result {
            Result::Status(code) => ((500..600).contains(&code), matches!(code, 502..=504)),
            Result::Failed => (true, true),
        };
        if let Result::Status(_) = result {
            #[expect(
                clippy::cast_precision_loss,
                reason = "a latency in microseconds is far below 2^52"
            )]
            let sample = latency.as_micros() as f64;
            state.ewma_micros = if state.ewma_micros == 0.0 {
                sample
            } else {
                EWMA_WEIGHT * sample + (1.0 - EWMA_WEIGHT) * state.ewma_micros
            };
        }
        if five_xx {
            state.errors += 1;
            state.consecutive_5xx += 1;
        } else {
            state.consecutive_5xx = 0;
        }
        if gateway {
            state.consecutive_gateway += 1;
        } else {
            state.consecutive_gateway = 0;
        }
        let outlier = outlier?;
        if state.ejected(now) {
            return None;
        }
        let tripped = if outlier
            .consecutive_5xx
            .is_some_and(|n| state.consecutive_5xx >= n)
        {
            Some(("consecutive 5xx", state.consecutive_5xx))
        } else if outlier
            .consecutive_gateway
            .is_some_and(|n| state.consecutive_gateway >= n)
        {
            Some(("consecutive gateway errors", state.consecutive_gateway))
        } else {
            None
        };
        let (after, errors) = tripped?;
        // At most maxEjectionPercent of the endpoints out at once (one may always go when
        // the percentage allows any).
        if ejected_now * 100 >= outlier.max_percent as usize * total {
            return None;
        }
        if let Some(returned) = state.returned_at {
            let quiet = now.saturating_duration_since(returned);
            let intervals = u32::try_from(quiet.as_millis() / outlier.interval.as_millis().max(1))
                .unwrap_or(u32::MAX);
            state.ejections = state.ejections.saturating_sub(intervals);
        }
        state.ejections = (state.ejections + 1).min(MAX_EJECTION_MULTIPLIER);
        let duration = outlier.base_ejection * state.ejections;
        state.ejected_until = Some(now + duration);
        state.returned_at = Some(now + duration);
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        Some(Ejected {
            endpoint,
            duration,
            after,
            errors,
        })
    }

    /// The epoch a probe begun now reports into (see [`Endpoints::probed`]).
    pub fn health_epoch(&self) -> u64 {
        self.health_epoch
    }

    /// Records a health-check probe begun in `epoch`; returns the endpoint's new health when
    /// it changed. A probe from before the last [`Endpoints::clear_health`] counts for nothing.
    pub fn probed(
        &mut self,
        endpoint: SocketAddr,
        passed: bool,
        thresholds: (u32, u32),
        epoch: u64,
    ) -> Option<bool> {
        if epoch != self.health_epoch {
            return None;
        }
        let state = self.known.entry(endpoint).or_default();
        if passed != state.unhealthy {
            state.health_streak = 0;
            return None;
        }
        state.health_streak += 1;
        let needed = if passed { thresholds.0 } else { thresholds.1 };
        if state.health_streak < needed {
            return None;
        }
        state.unhealthy = !passed;
        state.health_streak = 0;
        Some(passed)
    }

    /// Forgets what health checks said: the backend's policy no longer has one, and an
    /// endpoint marked unhealthy would otherwise never be probed back into service. Returns
    /// the endpoints that take requests again.
    pub fn clear_health(&mut self) -> Vec<SocketAddr> {
        self.health_epoch += 1;
        let mut restored = Vec::new();
        for (endpoint, state) in &mut self.known {
            if state.unhealthy {
                restored.push(*endpoint);
            }
            state.unhealthy = false;
            state.health_streak = 0;
        }
        restored
    }

    /// Every endpoint's record, for `/endpoints`.
    pub fn snapshot(&self) -> Vec<(SocketAddr, Endpoint)> {
        let mut out: Vec<_> = self.known.iter().map(|(e, s)| (*e, s.clone())).collect();
        out.sort_by_key(|(e, _)| *e);
        out
    }

    pub fn ejected_count(&self) -> usize {
        let now = Instant::now();
        self.known.values().filter(|s| s.ejected(now)).count()
    }
}

fn hash_of(value: impl Hash, seed: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    value.hash(&mut hasher);
    hasher.finish()
}

/// A request's consistent-hash key.
pub fn key_hash(key: &[u8]) -> u64 {
    hash_of(key, 0)
}

/// Maglev's population (Eisenbud et al., NSDI 2016): each endpoint walks its own permutation
/// of the table, taking turns to claim the next free slot, until every slot is claimed.
fn maglev_table(endpoints: &[SocketAddr]) -> Vec<u16> {
    let size = MAGLEV_TABLE_SIZE as u64;
    let n = endpoints.len().min(usize::from(u16::MAX));
    if n == 0 {
        return Vec::new();
    }
    let permutation: Vec<(u64, u64)> = endpoints[..n]
        .iter()
        .map(|e| {
            let name = e.to_string();
            (hash_of(&name, 1) % size, hash_of(&name, 2) % (size - 1) + 1)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut table = vec![u16::MAX; MAGLEV_TABLE_SIZE];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in permutation.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % size;
            while table[usize::try_from(slot).unwrap_or(0)] != u16::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % size;
            }
            table[usize::try_from(slot).unwrap_or(0)] = u16::try_from(i).unwrap_or(0);
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_TABLE_SIZE {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
