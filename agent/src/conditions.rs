//! Kubernetes mode: publishes each gated pod's enrollment as its `weft.io/enrolled` condition,
//! which pods list in `spec.readinessGates` so they turn Ready only once captured.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Patch, PatchParams},
    Api, Client,
};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{enrollment::PodCondition, registry::ENROLLED_CONDITION};

/// The status patch for one condition (strategic merge: conditions merge by `type`).
pub fn patch_for(condition: &PodCondition) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
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

/// Patches conditions as enrollment reports them, retrying each a few times with backoff.
pub async fn publish(client: Client, mut conditions: UnboundedReceiver<PodCondition>) {
    while let Some(condition) = conditions.recv().await {
        let api = Api::<Pod>::namespaced(client.clone(), &condition.namespace);
        let patch = patch_for(&condition);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=5 {
            match api
                .patch_status(
                    &condition.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(pod = %format!("{}/{}", condition.namespace, condition.name), enrolled = condition.enrolled, "pod condition {ENROLLED_CONDITION} set");
                    break;
                }
                Err(e) if attempt == 5 => {
                    tracing::warn!(pod = %format!("{}/{}", condition.namespace, condition.name), error = %e, "could not set {ENROLLED_CONDITION}; the pod stays gated until the next change");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}
