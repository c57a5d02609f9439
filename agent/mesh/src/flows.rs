//! Flow records: a bounded ring of recent connection events (opened, closed, denied, failed),
//! each with its reason, and a broadcast of new ones for `weftctl flows --follow`.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Mutex, PoisonError},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events kept for late readers.
pub const RING: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowEvent {
    Opened,
    Closed,
    Denied,
    Failed,
}

/// One event of one connection, as `weftctl flows` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Flow {
    pub time_unix_ms: u64,
    pub event: FlowEvent,
    pub direction: String,
    /// The enrolled pod on this node (`namespace/name`).
    pub workload: String,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// The other side's workload when the registry knows it (`namespace/name`).
    pub peer_workload: Option<String>,
    pub peer_identity: Option<String>,
    pub security: String,
    pub verdict: String,
    pub reason: String,
    pub detail: String,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub duration_ms: u64,
}

#[derive(Debug)]
pub struct Flows {
    ring: Mutex<VecDeque<Flow>>,
    live: broadcast::Sender<Flow>,
}

impl Default for Flows {
    fn default() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            live: broadcast::channel(1024).0,
        }
    }
}

impl Flows {
    pub fn record(&self, flow: Flow) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(flow.clone());
        }
        // Nobody following is fine.
        let _ = self.live.send(flow);
    }

    /// The kept events, oldest first.
    pub fn recent(&self) -> Vec<Flow> {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// New events from now on. A slow follower skips what it missed rather than slowing the
    /// data path.
    pub fn follow(&self) -> broadcast::Receiver<Flow> {
        self.live.subscribe()
    }
}
