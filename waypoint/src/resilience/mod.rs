//! `TrafficPolicy` at the waypoint: which policy applies to a request (the one targeting its
//! HTTPRoute, else the dialed Service's) and to each backend Service, and the state kept for
//! them: rate-limit buckets and retry budgets per policy, breakers and endpoint records per
//! backend Service port. Request-level settings (rate limit, faults, retry, retry budget)
//! come from the request's policy; backend-level ones (load balancing, circuit breaker,
//! outlier detection, health checks) from each backend Service's.

pub mod balance;
pub mod breaker;
pub mod health;
pub mod limit;
pub mod report;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use weft_mesh::{
    limits::Limits,
    policy::{resilience::HashOn, traffic::Algorithm, TrafficSettings},
    registry::Registry,
};

use crate::routing::{Backend, Rule};

/// Backend Service ports and policies with state kept; past it new ones run with fresh state
/// that is not kept (and the limit is counted).
pub const MAX_TRACKED: usize = 4_096;

/// The state of one backend Service port (`namespace/name:port`).
#[derive(Debug, Default)]
pub struct BackendState {
    pub name: String,
    pub breaker: Arc<breaker::Breaker>,
    pub endpoints: Mutex<balance::Endpoints>,
}

impl BackendState {
    pub fn endpoints(&self) -> std::sync::MutexGuard<'_, balance::Endpoints> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The state of one policy's request-level settings.
#[derive(Debug, Default)]
pub struct PolicyState {
    pub bucket: Mutex<limit::Bucket>,
    pub budget: breaker::RetryBudget,
}

#[derive(Debug, Default)]
pub struct State {
    backends: Mutex<HashMap<String, Arc<BackendState>>>,
    policies: Mutex<HashMap<String, Arc<PolicyState>>>,
}

fn tracked<T: Default>(
    map: &Mutex<HashMap<String, Arc<T>>>,
    key: &str,
    limits: &Limits,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(state) = map.get(key) {
        return state.clone();
    }
    let state = Arc::new(make());
    if map.len() >= MAX_TRACKED {
        limits.hit("waypoint", "tracked_backends", &key);
        return state;
    }
    map.insert(key.to_owned(), state.clone());
    state
}

impl State {
    pub fn backend(&self, key: &str, limits: &Limits) -> Arc<BackendState> {
        tracked(&self.backends, key, limits, || BackendState {
            name: key.to_owned(),
            ..BackendState::default()
        })
    }

    pub fn policy(&self, id: &str, limits: &Limits) -> Arc<PolicyState> {
        tracked(&self.policies, id, limits, PolicyState::default)
    }

    /// Every backend with state, by name.
    pub fn backends(&self) -> Vec<Arc<BackendState>> {
        let map = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map.values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Forgets backends and policies the registry no longer has.
    pub fn retain(&self, registry: &Registry) {
        self.backends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| {
                let service = key.split_once(':').map_or(key.as_str(), |(s, _)| s);
                let (namespace, name) = service.split_once('/').unwrap_or(("", service));
                registry.service(namespace, name).is_some()
            });
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| registry.traffic_policies.iter().any(|t| t.id() == *id));
    }
}

/// The policy a request follows: the one targeting its rule's HTTPRoute, else the dialed
/// Service's (`namespace/name`).
pub fn request_policy<'r>(
    registry: &'r Registry,
    rule: Option<&Rule>,
    dialed: &str,
) -> Option<&'r TrafficSettings> {
    let by_route = rule.and_then(|r| {
        let (namespace, name) = r.route.split_once('/')?;
        registry.traffic_for_route(namespace, name)
    });
    by_route.or_else(|| {
        let (namespace, name) = dialed.split_once('/')?;
        registry.traffic_for(registry.service(namespace, name)?)
    })
}

/// The policy of a backend Service.
pub fn backend_policy<'r>(
    registry: &'r Registry,
    backend: &Backend,
) -> Option<&'r TrafficSettings> {
    registry.traffic_for(registry.service(&backend.namespace, &backend.name)?)
}

/// The consistent-hash key of a request, when the backend's policy hashes and the request
/// has what it hashes.
pub fn hash_key(
    policy: Option<&TrafficSettings>,
    parts: &http::request::Parts,
    client: IpAddr,
) -> Option<u64> {
    let policy = policy.filter(|p| p.algorithm == Algorithm::ConsistentHash)?;
    match policy.resilience.hash.as_ref()? {
        HashOn::Header(name) => parts
            .headers
            .get(name.as_str())
            .map(|v| balance::key_hash(v.as_bytes())),
        HashOn::Cookie(name) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| balance::key_hash(v.as_bytes()))
            }),
        HashOn::SourceIp => Some(balance::key_hash(client.to_string().as_bytes())),
    }
}

/// An endpoint's active request, held until the response body ends; it also frees the
/// breaker's slot.
#[derive(Debug)]
pub struct Held {
    backend: Arc<BackendState>,
    endpoint: SocketAddr,
    _admission: Option<breaker::Admission>,
}

impl Held {
    pub fn new(
        backend: Arc<BackendState>,
        endpoint: SocketAddr,
        admission: Option<breaker::Admission>,
    ) -> Self {
        backend.endpoints().started(endpoint);
        Self {
            backend,
            endpoint,
            _admission: admission,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.backend.endpoints().finished(self.endpoint);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use weft_mesh::policy::traffic::{compile, TrafficPolicySpec};

    use super::hash_key;

    fn policy(key: &str) -> weft_mesh::policy::TrafficSettings {
        let spec: TrafficPolicySpec = serde_yaml::from_str(&format!(
            "targetRefs: [{{kind: Service, name: s}}]\nloadBalancer: {{algorithm: ConsistentHash, consistentHash: {{{key}}}}}"
        ))
        .expect("spec");
        compile("demo", "p", spec).expect("compiles")
    }

    fn request(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::get("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn a_hash_key_comes_from_the_header_the_cookie_or_the_source_ip() {
        let client = IpAddr::from([10, 0, 0, 1]);
        let other = IpAddr::from([10, 0, 0, 2]);
        let by_header = policy("header: x-user");
        let alice = hash_key(Some(&by_header), &request(&[("x-user", "alice")]), client);
        assert!(alice.is_some());
        assert_eq!(
            alice,
            hash_key(Some(&by_header), &request(&[("X-User", "alice")]), other)
        );
        assert_ne!(
            alice,
            hash_key(Some(&by_header), &request(&[("x-user", "bob")]), client)
        );
        assert_eq!(hash_key(Some(&by_header), &request(&[]), client), None);

        let by_cookie = policy("cookie: session");
        let with =
            |cookies: &str| hash_key(Some(&by_cookie), &request(&[("cookie", cookies)]), client);
        assert!(with("a=1; session=s1").is_some());
        assert_eq!(with("a=1; session=s1"), with("session=s1"));
        assert_ne!(with("session=s1"), with("session=s2"));
        assert_eq!(with("sessions=s1"), None);

        let by_source = policy("sourceIP: true");
        let here = hash_key(Some(&by_source), &request(&[]), client);
        assert!(here.is_some());
        assert_ne!(here, hash_key(Some(&by_source), &request(&[]), other));
        // Another algorithm hashes nothing.
        assert_eq!(
            hash_key(None, &request(&[("x-user", "alice")]), client),
            None
        );
    }
}
