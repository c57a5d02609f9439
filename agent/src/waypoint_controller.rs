//! Kubernetes mode, in the cluster Deployment (`weft-agent ca`): the waypoint controller. For
//! each Gateway of class `weft-waypoint` it applies the waypoint's ServiceAccount, Deployment
//! and Service (server-side apply, owned by the Gateway, so deleting the Gateway deletes
//! them), keeps one ClusterRoleBinding (`weft-waypoints`) giving every waypoint's
//! ServiceAccount the `weft-waypoint` ClusterRole (read the registry, write route status), and
//! sets the Gateway's `Accepted` condition, written only when it changes (a status write is an
//! event of the watched Gateway: writing it every time would reconcile without end).
//! kube-runtime's `Controller` drives it: a watch of Gateways, retries with backoff on
//! failure, and a resync every five minutes, which also rebuilds the binding from the
//! Gateways that still exist (a deleted Gateway triggers no reconcile).

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{controller::Action, reflector::Store, watcher, Controller},
    Client, ResourceExt as _,
};
use serde_json::{json, Value};
use weft_api::waypoint::{GATEWAY_CLASS, READER_ROLE};

/// The field manager of everything the controller applies.
pub const FIELD_MANAGER: &str = "weft-waypoint-controller";
/// The ClusterRoleBinding whose subjects are every waypoint's ServiceAccount.
pub const BINDING: &str = "weft-waypoints";
/// How long after a failed reconcile it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often each Gateway is reconciled even without a change.
pub const RESYNC: Duration = Duration::from_mins(5);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Gateway {0} has no namespace or uid yet")]
    Incomplete(String),
}

/// What each reconcile needs.
struct Context {
    client: Client,
    image: String,
    gateways: Store<DynamicObject>,
}

fn resource(group: &str, version: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// Whether `gateway` declares a Weft waypoint.
pub fn is_waypoint(gateway: &DynamicObject) -> bool {
    gateway.data["spec"]["gatewayClassName"] == GATEWAY_CLASS
}

/// Runs the controller until the process stops.
pub async fn run(client: Client, image: String) {
    let gateway = resource("gateway.networking.k8s.io", "v1", "Gateway");
    let gateways: Api<DynamicObject> = Api::all_with(client.clone(), &gateway);
    let controller = Controller::new_with(gateways, watcher::Config::default(), gateway);
    let store = controller.store();
    tokio::spawn(resync_binding(client.clone(), store.clone()));
    let context = Arc::new(Context {
        client,
        image,
        gateways: store,
    });
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((gateway, _)) => tracing::debug!(%gateway, "waypoint reconciled"),
                Err(e) => tracing::warn!(error = %e, "waypoint controller"),
            }
        })
        .await;
}

/// Rebuilds the reader binding from the Gateways that exist, every [`RESYNC`]: a deleted
/// waypoint's ServiceAccount leaves it within that time even when no waypoint is left.
async fn resync_binding(client: Client, gateways: Store<DynamicObject>) {
    if gateways.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let every = gateways.state();
        let binding = binding(&every);
        let rbac = ("rbac.authorization.k8s.io", "v1");
        if let Err(e) = apply(&client, &binding, "ClusterRoleBinding", rbac).await {
            tracing::warn!(error = %e, "rebuilding the waypoints' reader binding");
        }
        tokio::time::sleep(RESYNC).await;
    }
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "kube-runtime's Controller::run hands the object and context over by value"
)]
fn error_policy(gateway: Arc<DynamicObject>, error: &ControllerError, _: Arc<Context>) -> Action {
    tracing::warn!(gateway = %gateway.name_any(), %error, retry_in = ?RETRY_AFTER, "waypoint not applied");
    Action::requeue(RETRY_AFTER)
}

async fn apply(
    client: &Client,
    object: &Value,
    kind: &'static str,
    (group, version): (&str, &str),
) -> Result<(), ControllerError> {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = if namespace.is_empty() {
        Api::all_with(client.clone(), &resource(group, version, kind))
    } else {
        Api::namespaced_with(client.clone(), namespace, &resource(group, version, kind))
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .map(drop)
        .map_err(|source| ControllerError::Apply {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })
}

/// The objects of waypoint `namespace/name`, each owned by its Gateway (`uid`).
pub fn owned_objects(namespace: &str, name: &str, uid: &str, image: &str) -> Vec<Value> {
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": name,
        "uid": uid,
        // No blockOwnerDeletion: it would need `update` on gateways/finalizers where owner
        // references are enforced, and nothing here must outlive a foreground deletion.
        "controller": true,
    }]);
    weft_api::waypoint::objects(namespace, name, image)
        .into_iter()
        .map(|mut object| {
            object["metadata"]["ownerReferences"] = owner.clone();
            object
        })
        .collect()
}

/// The ClusterRoleBinding naming the ServiceAccount of every waypoint in `gateways`.
pub fn binding(gateways: &[Arc<DynamicObject>]) -> Value {
    let mut subjects: Vec<Value> = gateways
        .iter()
        .filter(|g| is_waypoint(g))
        .filter_map(|g| {
            Some(json!({"kind": "ServiceAccount", "namespace": g.namespace()?, "name": g.name_any()}))
        })
        .collect();
    subjects.sort_by_key(ToString::to_string);
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": BINDING, "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": READER_ROLE},
        "subjects": subjects,
    })
}

/// Whether the Gateway's status already says Accepted for `generation` (then it is not
/// written again).
pub fn accepted_for(gateway: &DynamicObject, generation: i64) -> bool {
    gateway.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["type"] == "Accepted"
                && c["status"] == "True"
                && c["observedGeneration"] == generation
        })
}

async fn reconcile(
    gateway: Arc<DynamicObject>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    if !is_waypoint(&gateway) {
        return Ok(Action::await_change());
    }
    let name = gateway.name_any();
    let (Some(namespace), Some(uid)) = (gateway.namespace(), gateway.uid()) else {
        return Err(ControllerError::Incomplete(name));
    };
    let client = &context.client;
    for object in owned_objects(&namespace, &name, &uid, &context.image) {
        let (kind, group_version) = match object["kind"].as_str() {
            Some("Deployment") => ("Deployment", ("apps", "v1")),
            Some("Service") => ("Service", ("", "v1")),
            _ => ("ServiceAccount", ("", "v1")),
        };
        apply(client, &object, kind, group_version).await?;
    }
    let every = context.gateways.state();
    apply(
        client,
        &binding(&every),
        "ClusterRoleBinding",
        ("rbac.authorization.k8s.io", "v1"),
    )
    .await?;
    let generation = gateway.metadata.generation.unwrap_or_default();
    if accepted_for(&gateway, generation) {
        return Ok(Action::requeue(RESYNC));
    }
    let now = weft_mesh::registry::now_rfc3339();
    let status = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "status": {"conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": generation,
             "lastTransitionTime": now, "message": "the waypoint's ServiceAccount, Deployment and Service are applied"},
            {"type": "Programmed", "status": "Unknown", "reason": "Pending", "observedGeneration": generation,
             "lastTransitionTime": now, "message": "the controller does not track the Deployment's readiness; see the waypoint pods"},
        ]},
    });
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &namespace,
        &resource("gateway.networking.k8s.io", "v1", "Gateway"),
    );
    gateways
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .map_err(|source| ControllerError::Apply {
            kind: "Gateway status",
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        })?;
    tracing::info!(waypoint = %format!("{namespace}/{name}"), "waypoint applied");
    Ok(Action::requeue(RESYNC))
}
