//! Kubernetes mode: the registry fed by watches on the API server. One watch per kind, each
//! listing from the API server's cache (`resourceVersion=0`, so a restart of every agent at once
//! does not become a list storm on etcd), resuming from its last resourceVersion after an
//! error, with jittered backoff. Objects are cut down to the fields Weft reads before they are
//! kept, then go through [`Registry::from_objects`], the code path local mode uses.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, watch};

use super::Registry;

/// Kinds the agent cannot work without: no snapshot is published before each has listed once.
pub const REQUIRED: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "EndpointSlice",
    "AuthorizationPolicy",
];
/// Kinds whose CRDs may be absent from a cluster: the agent runs without them. A missing
/// `TrafficPolicy` CRD (an upgrade that has not applied it yet) leaves the defaults in force;
/// a missing `AuthorizationPolicy` would mean unenforced policy, so that one is required.
pub const OPTIONAL: &[&str] = &["HTTPRoute", "GRPCRoute", "TrafficPolicy"];

/// Changes arriving within this window are folded into one snapshot.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How one kind's watch is doing, for `/status` and readiness.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindStatus {
    pub synced: bool,
    pub objects: usize,
    pub events: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Every kind's watch status, shared with the admin API.
pub type WatchStatus = Arc<Mutex<BTreeMap<&'static str, KindStatus>>>;

enum Change {
    Apply(&'static str, String, Kept),
    Delete(&'static str, String),
    /// A (re)list began: objects arriving until `ResyncDone` replace the kind's set.
    ResyncStart(&'static str),
    ResyncItem(&'static str, String, Kept),
    ResyncDone(&'static str),
    Error(&'static str, String),
}

/// Starts every watch and the task that turns their events into snapshots on `tx`.
pub fn spawn(client: &Client, tx: watch::Sender<Arc<Registry>>) -> WatchStatus {
    let status = WatchStatus::default();
    let (changes_tx, changes_rx) = mpsc::channel(1024);
    spawn_typed::<Namespace>(Api::all(client.clone()), "Namespace", &changes_tx);
    spawn_typed::<Pod>(Api::all(client.clone()), "Pod", &changes_tx);
    spawn_typed::<Service>(Api::all(client.clone()), "Service", &changes_tx);
    spawn_typed::<EndpointSlice>(Api::all(client.clone()), "EndpointSlice", &changes_tx);
    for (group, version, kind) in [
        ("weft.io", "v1alpha1", "AuthorizationPolicy"),
        ("weft.io", "v1alpha1", "TrafficPolicy"),
        ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        ("gateway.networking.k8s.io", "v1", "GRPCRoute"),
    ] {
        // Custom resources are read untyped: one malformed object must be reported and
        // skipped by the registry, not break the whole list.
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        spawn_watch(api, kind, &changes_tx);
    }
    tokio::spawn(fold(changes_rx, tx, status.clone()));
    status
}

fn spawn_typed<K>(api: Api<K>, kind: &'static str, changes: &mpsc::Sender<Change>)
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static,
{
    spawn_watch(api, kind, changes);
}

fn spawn_watch<K>(api: Api<K>, kind: &'static str, changes: &mpsc::Sender<Change>)
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static,
{
    let changes = changes.clone();
    tokio::spawn(async move {
        let mut config = watcher::Config::default().any_semantic();
        // Unpaged, so resourceVersion=0 is sent and the API server answers from its watch
        // cache (a paged list bypasses it and reads etcd).
        config.page_size = None;
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let change = match event {
                Ok(watcher::Event::Init) => Change::ResyncStart(kind),
                Ok(watcher::Event::InitApply(object)) => match keep(kind, &object) {
                    Some((key, doc)) => Change::ResyncItem(kind, key, doc),
                    None => continue,
                },
                Ok(watcher::Event::InitDone) => Change::ResyncDone(kind),
                Ok(watcher::Event::Apply(object)) => match keep(kind, &object) {
                    Some((key, doc)) => Change::Apply(kind, key, doc),
                    None => continue,
                },
                Ok(watcher::Event::Delete(object)) => Change::Delete(kind, key_of(&object)),
                Err(e) => Change::Error(kind, e.to_string()),
            };
            if changes.send(change).await.is_err() {
                return;
            }
        }
    });
}

fn key_of<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// A kept object: its trimmed form as compact JSON text. A parsed tree costs several times
/// the text's size in map nodes and small strings; the text is parsed again only when a
/// snapshot is rebuilt, which already walked every object.
type Kept = Box<str>;

/// The object as the registry will read it, reduced to the fields Weft uses.
fn keep<K: Resource + Serialize>(kind: &str, object: &K) -> Option<(String, Kept)> {
    let json = serde_json::to_value(object).ok()?;
    let text = serde_json::to_string(&trim(kind, &json)).ok()?;
    Some((key_of(object), text.into_boxed_str()))
}

/// Keeps only what the registry reads: identity, labels, Weft's own annotations and the
/// kind's used fields. Drops managedFields, last-applied configurations, container specs and
/// statuses, which are most of a real object's size.
pub fn trim(kind: &str, object: &serde_json::Value) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let get = |path: &[&str]| -> Value {
        path.iter()
            .try_fold(object, |v, key| v.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut metadata = Map::new();
    for key in ["name", "namespace", "uid"] {
        let value = get(&["metadata", key]);
        if !value.is_null() {
            metadata.insert(key.into(), value);
        }
    }
    if let Value::Object(labels) = get(&["metadata", "labels"]) {
        metadata.insert("labels".into(), Value::Object(labels));
    }
    if let Value::Object(annotations) = get(&["metadata", "annotations"]) {
        let ours: Map<String, Value> = annotations
            .into_iter()
            .filter(|(k, _)| k.starts_with("weft.io/"))
            .collect();
        if !ours.is_empty() {
            metadata.insert("annotations".into(), Value::Object(ours));
        }
    }
    let mut kept = json!({
        "apiVersion": get(&["apiVersion"]),
        "kind": kind,
        "metadata": metadata,
    });
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            kept[key] = value;
        }
    };
    match kind {
        "Namespace" => {}
        "Pod" => {
            let gates = get(&["spec", "readinessGates"]);
            put(
                "spec",
                json!({
                    "nodeName": get(&["spec", "nodeName"]),
                    "serviceAccountName": get(&["spec", "serviceAccountName"]),
                    "readinessGates": gates,
                    "hostNetwork": get(&["spec", "hostNetwork"]),
                }),
            );
            // The phase tells a finished pod (a completed Job) from a live one: its address
            // may already belong to another pod.
            put(
                "status",
                json!({"podIP": get(&["status", "podIP"]), "phase": get(&["status", "phase"])}),
            );
        }
        "Service" => put(
            "spec",
            json!({
                "clusterIP": get(&["spec", "clusterIP"]),
                "ports": get(&["spec", "ports"]),
                "selector": get(&["spec", "selector"]),
            }),
        ),
        "EndpointSlice" => {
            put("addressType", get(&["addressType"]));
            put("ports", get(&["ports"]));
            let endpoints: Vec<Value> = get(&["endpoints"])
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|e| json!({"addresses": e.get("addresses"), "conditions": {"ready": e.pointer("/conditions/ready")}}))
                        .collect()
                })
                .unwrap_or_default();
            put("endpoints", Value::Array(endpoints));
        }
        // Policies and routes are small and read whole.
        _ => put("spec", get(&["spec"])),
    }
    // JSON nulls the registry would read as "absent" anyway; dropping them keeps YAML clean.
    for part in ["spec", "status"] {
        if let Some(fields) = kept.get_mut(part).and_then(Value::as_object_mut) {
            fields.retain(|_, v| !v.is_null());
        }
    }
    kept
}

/// Applies watch changes to the kept objects and publishes a snapshot per burst of changes,
/// once every required kind has listed.
async fn fold(
    mut changes: mpsc::Receiver<Change>,
    tx: watch::Sender<Arc<Registry>>,
    status: WatchStatus,
) {
    let mut objects: HashMap<&'static str, BTreeMap<String, Kept>> = HashMap::new();
    let mut relisting: HashMap<&'static str, BTreeMap<String, Kept>> = HashMap::new();
    while let Some(first) = changes.recv().await {
        let mut dirty = apply(first, &mut objects, &mut relisting, &status);
        // Fold a burst (a relist, a rollout) into one snapshot.
        let deadline = tokio::time::Instant::now() + DEBOUNCE;
        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, changes.recv()).await {
            dirty |= apply(next, &mut objects, &mut relisting, &status);
        }
        let ready = {
            let status = status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            REQUIRED
                .iter()
                .all(|k| status.get(k).is_some_and(|s| s.synced))
        };
        if !dirty || !ready {
            continue;
        }
        let docs = objects.iter().flat_map(|(kind, set)| {
            set.iter().filter_map(move |(key, text)| {
                // Text this module wrote from a JSON value: it always parses back.
                let doc = serde_json::from_str::<serde_yaml::Value>(text).ok()?;
                Some((format!("kubernetes {kind} {key}"), doc))
            })
        });
        let registry = Registry::from_objects(docs);
        super::log_new_errors(&tx.borrow().errors, &registry.errors);
        tracing::debug!(
            pods = registry.pods.len(),
            services = registry.services.len(),
            "registry rebuilt from watches"
        );
        if tx.send(Arc::new(registry)).is_err() {
            return;
        }
    }
}

/// Returns whether the kept objects changed.
fn apply(
    change: Change,
    objects: &mut HashMap<&'static str, BTreeMap<String, Kept>>,
    relisting: &mut HashMap<&'static str, BTreeMap<String, Kept>>,
    status: &WatchStatus,
) -> bool {
    let mut status = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let changed = match change {
        Change::Apply(kind, key, doc) => {
            status.entry(kind).or_default().events += 1;
            // Most updates anywhere in the cluster (kubelet status heartbeats, other
            // controllers' annotations) touch nothing Weft keeps: they must not rebuild the
            // registry and re-run enrollment on every node.
            let set = objects.entry(kind).or_default();
            if set.get(&key) == Some(&doc) {
                false
            } else {
                set.insert(key, doc);
                true
            }
        }
        Change::Delete(kind, key) => {
            status.entry(kind).or_default().events += 1;
            objects.entry(kind).or_default().remove(&key).is_some()
        }
        Change::ResyncStart(kind) => {
            relisting.insert(kind, BTreeMap::new());
            false
        }
        Change::ResyncItem(kind, key, doc) => {
            relisting.entry(kind).or_default().insert(key, doc);
            false
        }
        Change::ResyncDone(kind) => {
            // Until the relist completes the previous set stays in force: a watch error never
            // empties the registry.
            let fresh = relisting.remove(kind).unwrap_or_default();
            let entry = status.entry(kind).or_default();
            entry.synced = true;
            entry.last_error = None;
            objects.insert(kind, fresh);
            true
        }
        Change::Error(kind, error) => {
            let entry = status.entry(kind).or_default();
            entry.errors += 1;
            if entry.last_error.as_deref() != Some(error.as_str()) {
                let level_optional = OPTIONAL.contains(&kind);
                if level_optional {
                    tracing::info!(kind, %error, "watch failed (optional kind: is its CRD installed?); retrying with backoff");
                } else {
                    tracing::warn!(kind, %error, "watch failed; retrying with backoff from the last resourceVersion");
                }
            }
            entry.last_error = Some(error);
            false
        }
    };
    for (kind, set) in objects.iter() {
        status.entry(kind).or_default().objects = set.len();
    }
    changed
}
