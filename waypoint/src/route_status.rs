//! Kubernetes mode: writes each route's status for the Services this waypoint serves, as the
//! Gateway API asks of a mesh implementation: one `parents` entry per parent Service, under
//! controller `weft.io/waypoint`, with `Accepted` and `ResolvedRefs` and their reasons.
//! `status.parents` is one list shared by every controller a route is attached to, so it is
//! read, this waypoint's entries (its controller, its parents) are replaced and the others
//! kept, and it is written back guarded by the resourceVersion read (a conflict reads again,
//! up to [`CONFLICT_RETRIES`] times). Only a status that changed is written, from one task that
//! always works on the newest table, so a burst of registry changes costs one write per route.

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
/// Reads and writes again after a conflicting write, before waiting for the next change.
pub const CONFLICT_RETRIES: usize = 3;

/// This waypoint's `status.parents` entries for one route's `statuses`.
pub fn entries(statuses: &[&RouteStatus], now: &str) -> Vec<Value> {
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
    parents
}

/// `existing` parents with this waypoint's entries for the same parents replaced by `ours`.
pub fn merged(existing: &[Value], ours: Vec<Value>) -> Vec<Value> {
    let same_parent = |a: &Value, b: &Value| {
        a["controllerName"] == b["controllerName"]
            && a["parentRef"]["kind"] == b["parentRef"]["kind"]
            && a["parentRef"]["name"] == b["parentRef"]["name"]
            && a["parentRef"]["namespace"] == b["parentRef"]["namespace"]
    };
    let mut parents: Vec<Value> = existing
        .iter()
        .filter(|e| !ours.iter().any(|o| same_parent(e, o)))
        .cloned()
        .collect();
    parents.extend(ours);
    parents
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

/// Reads the route's status, merges `ours` into its parents and writes it back if nothing
/// changed it meanwhile; a conflict reads again.
async fn write_guarded(
    api: &Api<DynamicObject>,
    name: &str,
    ours: &[Value],
) -> Result<(), kube::Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let mut tries = 0;
    loop {
        let current = api.get_status(name).await?;
        let existing: Vec<Value> = current.data["status"]["parents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": {"parents": merged(&existing, ours.to_vec())},
        });
        match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
            Err(kube::Error::Api(e)) if e.code == 409 && tries < CONFLICT_RETRIES => tries += 1,
            done => return done.map(drop),
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
        let ours = entries(&statuses, &now);
        match write_guarded(&api, name, &ours).await {
            Ok(()) => {
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
    async fn a_changed_status_is_written_once_and_other_controllers_entries_are_kept() {
        let (client, fake) = weft_fake_api::FakeApi::start();
        let path = "/apis/gateway.networking.k8s.io/v1/namespaces/demo/httproutes/missing/status";
        let edge = json!({
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
            "controllerName": "example.com/edge",
            "conditions": [{"type": "Accepted", "status": "True"}],
        });
        fake.set_object(
            path,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "missing", "namespace": "demo", "resourceVersion": "41"},
                "status": {"parents": [edge.clone()]},
            }),
        );
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
        assert_eq!(patches[0].path, path);
        assert!(patches[0].query.contains("fieldManager=weft-waypoint"));
        let body = &patches[0].body;
        assert_eq!(
            body["metadata"]["resourceVersion"], "41",
            "guarded by what was read"
        );
        let parents = body["status"]["parents"].as_array().expect("parents");
        assert_eq!(parents.len(), 2, "{parents:?}");
        assert_eq!(parents[0], edge, "another controller's entry is kept");
        let parent = &parents[1];
        assert_eq!(parent["controllerName"], CONTROLLER_NAME);
        assert_eq!(parent["parentRef"]["kind"], "Service");
        assert_eq!(parent["parentRef"]["name"], "missing");
        assert_eq!(parent["conditions"][0]["type"], "Accepted");
        assert_eq!(parent["conditions"][0]["status"], "True");
        assert_eq!(parent["conditions"][1]["type"], "ResolvedRefs");
        assert_eq!(parent["conditions"][1]["status"], "False");
        assert_eq!(parent["conditions"][1]["reason"], "BackendNotFound");
        // Our own earlier entry is replaced, not repeated.
        let again = merged(&[edge.clone(), parent.clone()], vec![parent.clone()]);
        assert_eq!(again.len(), 2);
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
