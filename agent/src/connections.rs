//! Live proxied connections and running totals: the agent's own record of what it carried,
//! which the admin API shows and tests use to prove traffic went through the agent.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::SystemTime,
};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// Whether the hop between agents was protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// HBONE: mutual TLS between workload identities.
    Mtls,
    /// Plain TCP (a destination or a client outside the mesh).
    Plaintext,
}

/// One connection the agent is carrying.
#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    pub id: u64,
    pub direction: Direction,
    /// The enrolled pod on this node (`namespace/name`).
    pub pod: String,
    pub source: SocketAddr,
    /// What the client dialed.
    pub original_destination: SocketAddr,
    /// Where the agent connected.
    pub destination: SocketAddr,
    pub service: Option<String>,
    pub security: Security,
    /// The SPIFFE ID of the peer workload, when mutual TLS proved it.
    pub peer_identity: Option<String>,
    /// Serial of the certificate the peer proved its identity with.
    pub peer_certificate_serial: Option<String>,
    pub started_unix_ms: u64,
}

/// Monotonic totals since the agent started.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub outbound_opened: AtomicU64,
    pub inbound_opened: AtomicU64,
    pub closed: AtomicU64,
    pub failed: AtomicU64,
    /// Connections to a capture listener that the kernel did not redirect (no open relay).
    pub refused_not_captured: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
}

/// How many closed connections the agent remembers for the admin API.
pub const RECENT: usize = 1024;

/// A connection that ended, with what it moved.
#[derive(Clone, Debug, Serialize)]
pub struct Closed {
    #[serde(flatten)]
    pub connection: Connection,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub ended_unix_ms: u64,
}

#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Connection>>,
    recent: Mutex<VecDeque<Closed>>,
    pub totals: Totals,
}

/// Moves the connection from the live set to the recent ones when dropped, however the proxy
/// task ends.
#[derive(Debug)]
pub struct Guard<'a> {
    connections: &'a Connections,
    id: u64,
    bytes: Mutex<(u64, u64)>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Connections {
    pub fn open(&self, mut connection: Connection) -> Guard<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        connection.id = id;
        connection.started_unix_ms = now_unix_ms();
        let counter = match connection.direction {
            Direction::Outbound => &self.totals.outbound_opened,
            Direction::Inbound => &self.totals.inbound_opened,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, connection);
        Guard {
            connections: self,
            id,
            bytes: Mutex::new((0, 0)),
        }
    }

    pub fn live(&self) -> Vec<Connection> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The most recently closed connections, newest last.
    pub fn recent(&self) -> Vec<Closed> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

impl Guard<'_> {
    /// Records the bytes moved when the connection ends.
    pub fn finish(&self, from_client: u64, to_client: u64) {
        let totals = &self.connections.totals;
        totals
            .bytes_from_clients
            .fetch_add(from_client, Ordering::Relaxed);
        totals
            .bytes_to_clients
            .fetch_add(to_client, Ordering::Relaxed);
        *self.bytes.lock().unwrap_or_else(PoisonError::into_inner) = (from_client, to_client);
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let connection = self
            .connections
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        self.connections
            .totals
            .closed
            .fetch_add(1, Ordering::Relaxed);
        if let Some(connection) = connection {
            let (bytes_from_client, bytes_to_client) =
                *self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
            let mut recent = self
                .connections
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(Closed {
                connection,
                bytes_from_client,
                bytes_to_client,
                ended_unix_ms: now_unix_ms(),
            });
        }
    }
}
