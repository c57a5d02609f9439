//! Kubernetes mode: writes each route's status for the Services this waypoint serves, as the
//! Gateway API asks of a mesh implementation: one `parents` entry per parent Service, under
//! controller `weft.io/waypoint`, with `Accepted` and `ResolvedRefs` and their reasons. Only a
//! status that changed is written (server-side apply on the `status` subresource), from one
//! task that always works on the newest table, so a burst of registry changes costs one write
//! per route.

use std::collections::BTreeMap;

use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    Client,
};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::routing::RouteStatus;

/// The `controllerName` of the parent statuses this waypoint writes.
pub const CONTROLLER_NAME: &str = "weft.io/waypoint";
/// The field manager of those writes.
pub const FIELD_MANAGER: &str = "weft-waypoint";

/// The status body of one route (`kind`, `namespace/name`) for all its `statuses`.
pub fn body(kind: &str, statuses: &[&RouteStatus], now: &str) -> Value {
    let parents: Vec<Value> = statuses
        .iter()
        .map(|s| {
            let (namespace, name) = s.parent.split_once('/').unwrap_or(("", s.parent.as_str()));
            let condition = |kind: &str, ok: bool, reason: &str, message: &str| {
                json!({
                    "type": kind, "status": if ok { "True" } else { "False" }, "reason": reason,
                    "message": message, "lastTransitionTime": now,
                })
            };
            json!({
                "parentRef": {"group": "", "kind": "Service", "namespace": namespace, "name": name},
                "controllerName": CONTROLLER_NAME,
                "conditions": [
                    condition("Accepted", s.accepted, s.accepted_reason, if s.accepted { "" } else { "no rule of the route could be used" }),
                    condition("ResolvedRefs", s.resolved_refs, s.resolved_refs_reason, &s.message),
                ],
            })
        })
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "status": {"parents": parents},
    })
}

/// What was last written, by route, so only changes are written again.
type Written = BTreeMap<(String, String), Vec<RouteStatus>>;

/// Writes the statuses `tables` carries, each time it changes, until the sender goes away.
pub async fn follow(client: Client, mut tables: watch::Receiver<Vec<RouteStatus>>) {
    let mut written = Written::new();
    loop {
        let statuses = tables.borrow_and_update().clone();
        write_changed(&client, &statuses, &mut written).await;
        if tables.changed().await.is_err() {
            return;
        }
    }
}

/// Writes each route whose statuses differ from `written`; a failed write is tried again at
/// the next change.
pub async fn write_changed(client: &Client, statuses: &[RouteStatus], written: &mut Written) {
    let mut by_route: BTreeMap<(String, String), Vec<&RouteStatus>> = BTreeMap::new();
    for status in statuses {
        by_route
            .entry((status.kind.clone(), status.route.clone()))
            .or_default()
            .push(status);
    }
    let now = weft_mesh::registry::now_rfc3339();
    for ((kind, route), statuses) in by_route {
        let owned: Vec<RouteStatus> = statuses.iter().map(|s| (*s).clone()).collect();
        let key = (kind.clone(), route.clone());
        if written.get(&key) == Some(&owned) {
            continue;
        }
        let Some((namespace, name)) = route.split_once('/') else {
            continue;
        };
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            &kind,
        ));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let patch = body(&kind, &statuses, &now);
        match api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::debug!(%kind, %route, "route status written");
                written.insert(key, owned);
            }
            Err(e) => {
                tracing::warn!(%kind, %route, error = %e, "writing the route's status failed; it is tried again at the next change");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_status_is_written_once_with_the_specs_conditions() {
        let (client, fake) = weft_fake_api::FakeApi::start();
        let status = RouteStatus {
            kind: "HTTPRoute".into(),
            route: "demo/missing".into(),
            parent: "demo/missing".into(),
            accepted: true,
            accepted_reason: "Accepted",
            resolved_refs: false,
            resolved_refs_reason: "BackendNotFound",
            message: "backend Services not found: demo/nowhere".into(),
        };
        let mut written = Written::new();
        write_changed(&client, std::slice::from_ref(&status), &mut written).await;
        write_changed(&client, std::slice::from_ref(&status), &mut written).await;
        let patches: Vec<_> = fake
            .seen()
            .into_iter()
            .filter(|s| s.method == http::Method::PATCH)
            .collect();
        assert_eq!(patches.len(), 1, "an unchanged status is not written again");
        assert_eq!(
            patches[0].path,
            "/apis/gateway.networking.k8s.io/v1/namespaces/demo/httproutes/missing/status"
        );
        assert!(patches[0].query.contains("fieldManager=weft-waypoint"));
        let parent = &patches[0].body["status"]["parents"][0];
        assert_eq!(parent["controllerName"], CONTROLLER_NAME);
        assert_eq!(parent["parentRef"]["kind"], "Service");
        assert_eq!(parent["parentRef"]["name"], "missing");
        assert_eq!(parent["conditions"][0]["type"], "Accepted");
        assert_eq!(parent["conditions"][0]["status"], "True");
        assert_eq!(parent["conditions"][1]["type"], "ResolvedRefs");
        assert_eq!(parent["conditions"][1]["status"], "False");
        assert_eq!(parent["conditions"][1]["reason"], "BackendNotFound");
        // A fixed backend is a change, written again.
        let fixed = RouteStatus {
            resolved_refs: true,
            resolved_refs_reason: "ResolvedRefs",
            message: String::new(),
            ..status
        };
        write_changed(&client, &[fixed], &mut written).await;
        let patches = fake
            .seen()
            .into_iter()
            .filter(|s| s.method == http::Method::PATCH)
            .count();
        assert_eq!(patches, 2);
    }
}
