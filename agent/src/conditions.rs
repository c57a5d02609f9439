//! Kubernetes mode: publishes each gated pod's enrollment as its `weft.io/enrolled` condition,
//! which pods list in `spec.readinessGates` so they turn Ready only once captured.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Patch, PatchParams},
    Api, Client,
};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use weft_mesh::registry::ENROLLED_CONDITION;

use crate::enrollment::PodCondition;

/// The status patch for one condition (strategic merge: conditions merge by `type`).
pub fn patch_for(condition: &PodCondition) -> serde_json::Value {
    let now = weft_mesh::registry::now_rfc3339();
    json!({
        "status": {
            "conditions": [{
                "type": ENROLLED_CONDITION,
                "status": if condition.enrolled { "True" } else { "False" },
                "reason": if condition.enrolled { "Captured" } else { "NotCaptured" },
                "message": condition.message,
                "lastTransitionTime": now,
            }]
        }
    })
}

/// The first retry's delay; it doubles per failed round up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Patches conditions as enrollment reports them. A patch that fails is retried with capped
/// backoff until it lands or a newer condition for the same pod replaces it: a gated pod must
/// never stay unready because the API server was briefly away. A pod that is gone (404) is
/// dropped.
pub async fn publish(client: Client, mut conditions: UnboundedReceiver<PodCondition>) {
    let mut pending: BTreeMap<(String, String), PodCondition> = BTreeMap::new();
    let mut delay = RETRY_MIN;
    loop {
        if pending.is_empty() {
            let Some(condition) = conditions.recv().await else {
                return;
            };
            pending.insert(key(&condition), condition);
        }
        while let Ok(condition) = conditions.try_recv() {
            pending.insert(key(&condition), condition);
        }
        let mut failed = false;
        for (key, condition) in std::mem::take(&mut pending) {
            let pod = format!("{}/{}", condition.namespace, condition.name);
            match set(&client, &condition).await {
                Ok(()) => {
                    tracing::info!(%pod, enrolled = condition.enrolled, "pod condition {ENROLLED_CONDITION} set");
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    tracing::debug!(%pod, "pod is gone; its condition is dropped");
                }
                Err(e) => {
                    tracing::warn!(%pod, error = %e, retry_in = ?delay, "could not set {ENROLLED_CONDITION}; the pod stays gated until it is set");
                    pending.insert(key, condition);
                    failed = true;
                }
            }
        }
        if !failed {
            delay = RETRY_MIN;
            continue;
        }
        // Wait out the backoff, but take newer conditions meanwhile: they replace what failed.
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            match tokio::time::timeout_at(deadline, conditions.recv()).await {
                Ok(Some(condition)) => {
                    pending.insert(key(&condition), condition);
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

fn key(condition: &PodCondition) -> (String, String) {
    (condition.namespace.clone(), condition.name.clone())
}

async fn set(client: &Client, condition: &PodCondition) -> Result<(), kube::Error> {
    Api::<Pod>::namespaced(client.clone(), &condition.namespace)
        .patch_status(
            &condition.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch_for(condition)),
        )
        .await
        .map(drop)
}
