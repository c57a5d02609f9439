//! The transparent L4 proxy: accepts what capture redirected in each enrolled pod, resolves
//! the original destination through the registry and carries the bytes both ways.

pub mod copy;
pub mod inbound;
pub mod outbound;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::{net::TcpStream, sync::watch};

use crate::{
    capture::Maps,
    connections::{Connections, Guard},
    hbone::client::Pool,
    identity::{CertStore, SpiffeId},
    netns::Netns,
    registry::{PodPlacement, Registry},
};

/// Shared by every proxied connection on the node.
#[derive(Debug)]
pub struct ProxyContext {
    pub registry: watch::Receiver<Arc<Registry>>,
    pub certs: Arc<CertStore>,
    pub pool: Pool,
    pub maps: Arc<Mutex<Maps>>,
    pub connections: Arc<Connections>,
    round_robin: Mutex<HashMap<String, usize>>,
}

/// An enrolled pod as the proxy sees it.
#[derive(Debug)]
pub struct PodContext {
    pub placement: PodPlacement,
    pub identity: SpiffeId,
    pub netns: Netns,
}

impl PodContext {
    pub fn name(&self) -> String {
        format!("{}/{}", self.placement.namespace, self.placement.name)
    }
}

impl ProxyContext {
    pub fn new(
        registry: watch::Receiver<Arc<Registry>>,
        certs: Arc<CertStore>,
        maps: Arc<Mutex<Maps>>,
        connections: Arc<Connections>,
    ) -> Self {
        let pool = Pool::new(certs.clone());
        Self {
            registry,
            certs,
            pool,
            maps,
            connections,
            round_robin: Mutex::new(HashMap::new()),
        }
    }

    /// Picks the next of `choices` for `key`, in turn.
    fn next_of(&self, key: &str, choices: &[SocketAddr]) -> Option<SocketAddr> {
        if choices.is_empty() {
            return None;
        }
        let mut counters = self
            .round_robin
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let counter = counters.entry(key.to_owned()).or_insert(0);
        let pick = choices[*counter % choices.len()];
        *counter = counter.wrapping_add(1);
        Some(pick)
    }
}

/// Carries a proxied connection until both directions are done; a half-close on one side is
/// passed on as a shutdown of the other while the reverse direction keeps flowing.
pub async fn splice(mut client: TcpStream, mut server: TcpStream, guard: &Guard<'_>) {
    let ((from_client, to_client), error) = copy::both_ways(&mut client, &mut server).await;
    guard.finish(from_client, to_client);
    if let Some(e) = error {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
