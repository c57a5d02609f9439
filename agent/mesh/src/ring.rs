//! A bounded ring of recent records with a broadcast of new ones: the agent's flow records and
//! the waypoint's request records. A slow follower skips what it missed (and is told how many)
//! rather than slowing whoever records.

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
};

use tokio::sync::broadcast;

/// Records kept for late readers.
pub const RING: usize = 4096;
/// New records queued per follower before it lags.
pub const FOLLOW_QUEUE: usize = 1024;

#[derive(Debug)]
pub struct Ring<T> {
    ring: Mutex<VecDeque<T>>,
    live: broadcast::Sender<T>,
}

impl<T: Clone> Default for Ring<T> {
    fn default() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            live: broadcast::channel(FOLLOW_QUEUE).0,
        }
    }
}

impl<T: Clone> Ring<T> {
    pub fn record(&self, record: T) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(record.clone());
        }
        // Nobody following is fine.
        let _ = self.live.send(record);
    }

    /// The kept records, oldest first.
    pub fn recent(&self) -> Vec<T> {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// New records from now on.
    pub fn follow(&self) -> broadcast::Receiver<T> {
        self.live.subscribe()
    }
}
