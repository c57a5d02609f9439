//! Graceful shutdown: one [`Trigger`] and a [`Signal`] shared by everything that serves.
//! Listeners watch the signal and stop accepting; every connection holds a [`Held`] until it
//! ends; the trigger signals, then waits until nothing is held or its deadline passes, and
//! says how many connections were still open then.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{watch, Notify};

#[derive(Debug, Default)]
struct Shared {
    open: AtomicUsize,
    idle: Notify,
}

/// Makes a trigger and its signal.
pub fn channel() -> (Trigger, Signal) {
    let (signal, signaled) = watch::channel(false);
    let shared = Arc::new(Shared::default());
    (
        Trigger {
            signal,
            shared: shared.clone(),
        },
        Signal { signaled, shared },
    )
}

/// Starts a drain and waits for it.
#[derive(Debug)]
pub struct Trigger {
    signal: watch::Sender<bool>,
    shared: Arc<Shared>,
}

/// What serving code watches; clones are cheap and hold nothing open.
#[derive(Clone, Debug)]
pub struct Signal {
    signaled: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct Held(Arc<Shared>);

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished in time.
    Finished,
    /// The deadline passed with this many connections still open.
    Cut(usize),
}

impl Trigger {
    /// Tells everything to drain and waits until no connection is open, at most `deadline`.
    pub async fn drain(self, deadline: Duration) -> Drained {
        let _ = self.signal.send(true);
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a last drop in between is not missed.
            idle.as_mut().enable();
            if self.shared.open.load(Ordering::Acquire) == 0 {
                return Drained::Finished;
            }
            if tokio::time::timeout_at(until, idle).await.is_err() {
                return Drained::Cut(self.shared.open.load(Ordering::Acquire));
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }
}

impl Signal {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Counts a connection as open until the returned value is dropped.
    pub fn hold(&self) -> Held {
        self.shared.open.fetch_add(1, Ordering::AcqRel);
        Held(self.shared.clone())
    }

    /// Resolves once a drain has started (at once if it already has).
    pub async fn signaled(&self) {
        let mut signaled = self.signaled.clone();
        let _ = signaled.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.signaled.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_every_open_connection_or_its_deadline() {
        let (trigger, signal) = channel();
        let held = signal.hold();
        let watching = signal.clone();
        let worker = tokio::spawn(async move {
            watching.signaled().await;
            // A connection that needs a moment to finish after the signal.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(held);
        });
        assert!(!signal.is_draining());
        assert_eq!(trigger.open(), 1);
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            Drained::Finished
        );
        worker.await.expect("worker");
        assert!(signal.is_draining());

        let (trigger, signal) = channel();
        let _stuck = signal.hold();
        assert_eq!(trigger.drain(Duration::from_secs(5)).await, Drained::Cut(1));
    }
}
