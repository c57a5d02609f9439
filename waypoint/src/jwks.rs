//! Key sets a `RequestAuthentication` names by `jwksUri`: fetched by the waypoint over HTTP,
//! through the mesh (HBONE under the waypoint's identity, the server's identity checked) when
//! the URI names a Service or a pod of the mesh, plain TCP otherwise; cached per URI,
//! refreshed after [`REFRESH`], and fetched again early, at most once per [`MIN_REFETCH`],
//! when a token names a key the cached set lacks (a rotation). Bounded in URIs, bytes and
//! time; a failed fetch keeps the last good set.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use weft_mesh::{
    identity::SpiffeId,
    policy::jwt::{KeySet, MAX_JWKS_BYTES},
};

use crate::app::Waypoint;

/// A fetched set is used this long before it is fetched again.
pub const REFRESH: Duration = Duration::from_mins(5);
/// The shortest time between two fetches of one URI, whatever asks.
pub const MIN_REFETCH: Duration = Duration::from_secs(2);
/// Connect, send and read, all of it.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The most URIs cached; past it one entry goes (counted as limit `jwks_uris`).
pub const MAX_URIS: usize = 64;

#[derive(Default)]
struct Entry {
    keys: Option<Arc<KeySet>>,
    fetched: Option<Instant>,
    error: Option<String>,
}

/// The cache, shared by every request of the waypoint.
#[derive(Default)]
pub struct JwksCache {
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Entry>>>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").finish_non_exhaustive()
    }
}

impl JwksCache {
    fn entry(
        &self,
        uri: &str,
        limits: &weft_mesh::limits::Limits,
    ) -> Arc<tokio::sync::Mutex<Entry>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if !entries.contains_key(uri) && entries.len() >= MAX_URIS {
            // Entries are few and rarely change: dropping any one is enough to stay bounded.
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
                limits.hit("waypoint", "jwks_uris", &victim);
            }
        }
        entries.entry(uri.to_owned()).or_default().clone()
    }

    /// The set last fetched from `uri`, without waiting or fetching (for route-check).
    pub fn cached(&self, uri: &http::Uri) -> Option<Arc<KeySet>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(&uri.to_string())?.clone();
        drop(entries);
        let entry = entry.try_lock().ok()?;
        entry.keys.clone()
    }

    /// The key set at `uri`, fetched when there is none yet, when it is older than
    /// [`REFRESH`], or when it lacks `kid`. Concurrent callers for one URI wait for one fetch.
    pub async fn keys(
        &self,
        waypoint: &Waypoint,
        uri: &http::Uri,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, String> {
        let entry = self.entry(&uri.to_string(), &waypoint.limits);
        let mut entry = entry.lock().await;
        let age = entry.fetched.map(|at| at.elapsed());
        let lacks_kid = match (&entry.keys, kid) {
            (Some(keys), Some(kid)) => !keys.has_kid(kid),
            _ => false,
        };
        let due = match age {
            None => true,
            Some(age) => {
                age >= REFRESH
                    || (lacks_kid && age >= MIN_REFETCH)
                    || (entry.keys.is_none() && age >= MIN_REFETCH)
            }
        };
        if due {
            entry.fetched = Some(Instant::now());
            match tokio::time::timeout(FETCH_TIMEOUT, fetch(waypoint, uri)).await {
                Ok(Ok(keys)) => {
                    entry.keys = Some(Arc::new(keys));
                    entry.error = None;
                }
                Ok(Err(e)) => entry.error = Some(e),
                Err(_) => entry.error = Some(format!("no answer within {FETCH_TIMEOUT:?}")),
            }
            if let Some(error) = &entry.error {
                tracing::warn!(uri = %uri, error = %error, "jwksUri fetch failed; the last good key set (if any) stays in use");
            }
        }
        match (&entry.keys, &entry.error) {
            (Some(keys), _) => Ok(keys.clone()),
            (None, Some(error)) => Err(error.clone()),
            (None, None) => Err("not fetched yet".into()),
        }
    }
}

/// Where a fetch goes: a Service (by VIP or `name.namespace[.svc…]`) is one of its ready
/// endpoints, anything else the address itself; with the identity the endpoint must prove
/// when it is a mesh pod.
fn target(waypoint: &Waypoint, uri: &http::Uri) -> Result<(SocketAddr, Option<SpiffeId>), String> {
    let host = uri.host().ok_or("the URI has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let registry = waypoint.registry.borrow().clone();
    let pick = |endpoints: Vec<SocketAddr>, what: &str| {
        let count = endpoints.len().max(1);
        endpoints
            .get(rand::random_range(0..count))
            .copied()
            .ok_or_else(|| format!("{what} has no ready endpoint on port {port}"))
    };
    let endpoint = if let Ok(ip) = host.parse::<Ipv4Addr>() {
        match registry.service_by_vip(SocketAddrV4::new(ip, port)) {
            Some((service, service_port)) => pick(
                registry.endpoints(service, service_port),
                &format!("Service {}/{}", service.namespace, service.name),
            )?,
            None => SocketAddr::new(IpAddr::V4(ip), port),
        }
    } else {
        let mut labels = host.split('.');
        let (Some(name), Some(namespace)) = (labels.next(), labels.next()) else {
            return Err(format!(
                "{host}: name a Service as name.namespace, or give an address"
            ));
        };
        let service = registry
            .service(namespace, name)
            .ok_or_else(|| format!("{host} names no Service Weft knows"))?;
        let service_port = service
            .ports
            .iter()
            .find(|p| p.port == port)
            .ok_or_else(|| format!("Service {namespace}/{name} has no port {port}"))?;
        pick(
            registry.endpoints(service, service_port),
            &format!("Service {namespace}/{name}"),
        )?
    };
    Ok((
        endpoint,
        crate::forward::identity_of(waypoint, &registry, endpoint),
    ))
}

async fn fetch(waypoint: &Waypoint, uri: &http::Uri) -> Result<KeySet, String> {
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{uri}: only http:// key sets are fetched; serve it inside the mesh (mTLS carries it) or give the set inline as jwks"
        ));
    }
    let host = uri.host().ok_or("the URI has no host")?;
    let (endpoint, identity) = target(waypoint, uri)?;
    let key = crate::upstream::Key {
        endpoint,
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        http2: false,
        carried: None,
    };
    let io = crate::upstream::connect(&waypoint.pool, &waypoint.identity, identity.as_ref(), &key)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "jwksUri connection ended");
        }
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::get(path)
        .header(
            http::header::HOST,
            uri.authority().map_or(host, |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the key set (at most {MAX_JWKS_BYTES} bytes): {e}"))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| "the key set is not UTF-8".to_owned())?;
    KeySet::parse(text).map_err(|e| e.to_string())
}
