//! The certificate worker: issues the SVID of each identity of the node's workloads when its
//! pod is enrolled, before the first connection needs it, and renews SVIDs near half-life.
//! A connection that comes first still gets one ([`CertStore::get_async`] issues once for all
//! who ask at the same time), so the worker only takes the issuing off the connection path.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{CertStore, SpiffeId};

/// Identities waiting to be issued; past it, the first connection of a pod issues its SVID.
pub const QUEUE: usize = 1024;
/// How often SVIDs are checked for renewal.
pub const RENEWAL_CHECK: Duration = Duration::from_secs(1);

/// Where enrollment says which identities the node needs.
#[derive(Clone, Debug)]
pub struct CertWorker {
    wanted: mpsc::Sender<SpiffeId>,
}

impl CertWorker {
    /// Starts the worker on the current runtime.
    pub fn spawn(certs: Arc<CertStore>) -> Self {
        let (wanted, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(certs, rx));
        Self { wanted }
    }

    /// Asks for `id`'s SVID to be issued now. Never waits: from a blocking thread or a task.
    pub fn want(&self, id: SpiffeId) {
        if let Err(e) = self.wanted.try_send(id) {
            tracing::debug!(error = %e, "certificate worker queue full; the first connection issues the SVID");
        }
    }
}

async fn run(certs: Arc<CertStore>, mut wanted: mpsc::Receiver<SpiffeId>) {
    let mut renewal = tokio::time::interval(RENEWAL_CHECK);
    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            id = wanted.recv() => {
                let Some(id) = id else { return };
                let certs = certs.clone();
                tokio::spawn(async move {
                    if let Err(e) = certs.get_async(&id).await {
                        tracing::warn!(identity = %id, error = %e, "SVID not issued at enrollment; the first connection tries again");
                    }
                });
            }
            _ = renewal.tick() => {
                let renewed = certs.renew_due().await;
                if renewed > 0 {
                    tracing::info!(renewed, "SVIDs renewed near half-life; open connections keep theirs");
                }
            }
        }
    }
}
