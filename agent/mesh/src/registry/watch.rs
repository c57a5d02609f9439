//! Kubernetes mode: the registry fed by kube-runtime reflectors on the API server. One watch
//! per kind, each listing from the API server's cache (`resourceVersion=0`, so a restart of
//! every agent at once does not become a list storm on etcd), resuming from its last
//! resourceVersion after an error, with jittered backoff. Each object is settled into the
//! registry's form as it arrives (`.modify()`), an update that changes nothing settled is
//! filtered out before it reaches the store, and every snapshot is built from the stores
//! through the code path local mode uses.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{future, StreamExt as _, TryStreamExt as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    core::TypeMeta,
    runtime::{
        reflector::{self, store::Writer, Lookup, Store},
        watcher, WatchStreamExt as _,
    },
    Api, Client, Resource,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, watch};

use super::{
    typed::{EndpointSliceObject, NamespaceObject, NodeObject, PodObject, ServiceObject, Settle},
    Registry,
};

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
pub const OPTIONAL: &[&str] = &[
    "HTTPRoute",
    "GRPCRoute",
    "TrafficPolicy",
    "RequestAuthentication",
];

/// The custom resources, read untyped so that one malformed object is reported by the
/// registry and skipped, not a broken list.
const CUSTOM: [(&str, &str, &str); 5] = [
    ("weft.io", "v1alpha1", "AuthorizationPolicy"),
    ("weft.io", "v1alpha1", "TrafficPolicy"),
    ("weft.io", "v1alpha1", "RequestAuthentication"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute"),
];

/// Changes arriving within this window are folded into one snapshot.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How one kind's watch is doing, for `/status` and readiness.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindStatus {
    pub synced: bool,
    pub objects: usize,
    /// Changes that reached the store: an update that changed nothing Weft keeps is not one.
    pub events: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Every kind's watch status, shared with the admin API.
pub type WatchStatus = Arc<Mutex<BTreeMap<&'static str, KindStatus>>>;

/// What a watch tells the fold; the objects themselves are in its store.
enum Change {
    /// An object was added, changed in what the registry keeps, or deleted.
    Changed(&'static str),
    /// A (re)list completed: the store now holds exactly the listed objects.
    Listed(&'static str),
    Error(&'static str, String),
}

/// Every kind's store, read whole for each snapshot.
struct Stores {
    namespaces: Store<NamespaceObject>,
    nodes: Store<NodeObject>,
    pods: Store<PodObject>,
    services: Store<ServiceObject>,
    endpoint_slices: Store<EndpointSliceObject>,
    custom: Vec<(&'static str, Store<DynamicObject>)>,
}

impl Stores {
    fn len(&self, kind: &str) -> usize {
        match kind {
            "Namespace" => self.namespaces.len(),
            "Node" => self.nodes.len(),
            "Pod" => self.pods.len(),
            "Service" => self.services.len(),
            "EndpointSlice" => self.endpoint_slices.len(),
            _ => self
                .custom
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(0, |(_, store)| store.len()),
        }
    }

    /// What every store holds now.
    fn objects(&self) -> Objects {
        Objects {
            namespaces: self.namespaces.state(),
            nodes: self.nodes.state(),
            pods: self.pods.state(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            custom: self
                .custom
                .iter()
                .map(|(kind, store)| (*kind, store.state()))
                .collect(),
        }
    }
}

/// The stores' objects at one moment, shared with the stores.
#[derive(Debug, Default)]
pub struct Objects {
    pub namespaces: Vec<Arc<NamespaceObject>>,
    pub nodes: Vec<Arc<NodeObject>>,
    pub pods: Vec<Arc<PodObject>>,
    pub services: Vec<Arc<ServiceObject>>,
    pub endpoint_slices: Vec<Arc<EndpointSliceObject>>,
    pub custom: Vec<(&'static str, Vec<Arc<DynamicObject>>)>,
}

/// `objects` sorted by namespace and name: a store's order is a hash map's, and a snapshot's
/// lists and reports must not reorder from one rebuild to the next.
fn by_name<K: Resource>(objects: &[Arc<K>]) -> Vec<&K> {
    let mut sorted: Vec<&K> = objects.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable_by(|a, b| {
        let (a, b) = (a.meta(), b.meta());
        (a.namespace.as_deref(), a.name.as_deref())
            .cmp(&(b.namespace.as_deref(), b.name.as_deref()))
    });
    sorted
}

/// How a report names where an object came from: `kubernetes Pod demo/web`.
fn source_of<K: Resource>(kind: &str, object: &K) -> String {
    let meta = object.meta();
    format!(
        "kubernetes {kind} {}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

impl Objects {
    /// One snapshot of the objects, in a stable order.
    pub fn snapshot(&self) -> Registry {
        fn add<K: Settle>(registry: &mut Registry, kind: &str, objects: &[Arc<K>]) {
            for object in by_name(objects) {
                registry.add_settled(|| source_of(kind, object), object);
            }
        }
        let mut registry = Registry::default();
        add(&mut registry, "Namespace", &self.namespaces);
        add(&mut registry, "Node", &self.nodes);
        add(&mut registry, "Pod", &self.pods);
        add(&mut registry, "Service", &self.services);
        add(&mut registry, "EndpointSlice", &self.endpoint_slices);
        for (kind, objects) in &self.custom {
            for object in by_name(objects) {
                // A DynamicObject always serializes; one that did not would be reported as
                // an object without a kind.
                let doc = serde_yaml::to_value(object).unwrap_or_default();
                registry.add_document(source_of(kind, object), &doc);
            }
        }
        registry.finish()
    }
}

/// Starts every watch and the task that turns their events into snapshots on `tx`.
pub fn spawn(client: &Client, tx: watch::Sender<Arc<Registry>>) -> WatchStatus {
    let status = WatchStatus::default();
    let (changes_tx, changes_rx) = mpsc::channel(1024);
    let stores = Stores {
        namespaces: typed(client, "Namespace", &changes_tx),
        nodes: typed(client, "Node", &changes_tx),
        pods: typed(client, "Pod", &changes_tx),
        services: typed(client, "Service", &changes_tx),
        endpoint_slices: typed(client, "EndpointSlice", &changes_tx),
        custom: CUSTOM
            .iter()
            .map(|&(group, version, kind)| {
                let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
                let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                let writer = Writer::new(resource.clone());
                let store = writer.as_reader();
                let dyntype = resource.clone();
                spawn_reflector(api, (writer, dyntype), kind, &changes_tx, move |object| {
                    trim_custom(&resource, object);
                });
                (kind, store)
            })
            .collect(),
    };
    tokio::spawn(fold(changes_rx, stores, tx, status.clone()));
    status
}

fn typed<K>(client: &Client, kind: &'static str, changes: &mpsc::Sender<Change>) -> Store<K>
where
    K: Settle + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::Kept: PartialEq,
{
    let (store, writer) = reflector::store();
    let api = Api::<K>::all(client.clone());
    spawn_reflector(api, (writer, ()), kind, changes, K::settle);
    store
}

/// Which objects a watch's filter compares: what settling (or trimming) kept.
trait Kept {
    fn same_as(&self, other: &Self) -> bool;
}

impl<K: Settle> Kept for K
where
    K::Kept: PartialEq,
{
    fn same_as(&self, other: &Self) -> bool {
        self.settled() == other.settled()
    }
}

impl Kept for DynamicObject {
    fn same_as(&self, other: &Self) -> bool {
        self.metadata == other.metadata && self.data == other.data
    }
}

/// One kind's reflector: list/watch with backoff, `settle` applied to every object, updates
/// that change nothing kept dropped before the store, and the rest told to the fold.
fn spawn_reflector<K>(
    api: Api<K>,
    (writer, dyntype): (Writer<K>, K::DynamicType),
    kind: &'static str,
    changes: &mpsc::Sender<Change>,
    settle: impl FnMut(&mut K) + Send + 'static,
) where
    K: Resource + Kept + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let changes = changes.clone();
    let store = writer.as_reader();
    tokio::spawn(async move {
        let mut config = watcher::Config::default().any_semantic();
        // Unpaged, so resourceVersion=0 is sent and the API server answers from its watch
        // cache (a paged list bypasses it and reads etcd).
        config.page_size = None;
        // Most updates anywhere in the cluster (kubelet status heartbeats, other controllers'
        // annotations) touch nothing Weft keeps: they must not rebuild the registry and re-run
        // enrollment on every node. The store itself holds the previous version to compare
        // with, so this filter keeps no second copy per object (kube's `predicate_filter`
        // would cache name, namespace and UID of each).
        let unchanged = move |event: &watcher::Event<K>| match event {
            watcher::Event::Apply(object) => store
                .get(&object.to_object_ref(dyntype.clone()))
                .is_some_and(|old| old.same_as(object)),
            _ => false,
        };
        // kube-runtime keys its store by name and panics on an object without one; the API
        // server never sends such an object, but network input must not stop a watch.
        let nameless = |event: &watcher::Event<K>| match event {
            watcher::Event::Apply(object)
            | watcher::Event::InitApply(object)
            | watcher::Event::Delete(object) => object.meta().name.is_none(),
            watcher::Event::Init | watcher::Event::InitDone => false,
        };
        let told = changes.clone();
        let mut events = watcher(api, config)
            .default_backoff()
            .modify(settle)
            .try_filter(move |event| {
                let skip = if nameless(event) {
                    let error = "an object without metadata.name was skipped".to_owned();
                    let _ = told.try_send(Change::Error(kind, error));
                    true
                } else {
                    unchanged(event)
                };
                future::ready(!skip)
            })
            .reflect(writer)
            .boxed();
        while let Some(event) = events.next().await {
            let change = match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(watcher::Event::InitDone) => Change::Listed(kind),
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Change::Changed(kind),
                Err(e) => Change::Error(kind, e.to_string()),
            };
            if changes.send(change).await.is_err() {
                return;
            }
        }
    });
}

/// A custom resource as it is kept: identity, labels, Weft's own annotations and its spec
/// (policies and routes are small and read whole). Drops managedFields, last-applied
/// configurations and status.
fn trim_custom(resource: &ApiResource, object: &mut DynamicObject) {
    let meta = &mut object.metadata;
    let annotations = meta.annotations.take().map(|mut all| {
        all.retain(|key, _| key.starts_with("weft.io/"));
        all
    });
    object.metadata = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        labels: meta.labels.take(),
        annotations: annotations.filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    };
    // Items of a list carry no apiVersion and kind; the registry reads both.
    object.types = Some(TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    let spec = object.data.get_mut("spec").map(serde_json::Value::take);
    object.data = serde_json::json!({ "spec": spec });
}

/// Publishes a snapshot per burst of changes, once every required kind has listed.
async fn fold(
    mut changes: mpsc::Receiver<Change>,
    stores: Stores,
    tx: watch::Sender<Arc<Registry>>,
    status: WatchStatus,
) {
    while let Some(first) = changes.recv().await {
        let mut dirty = apply(first, &stores, &status);
        // Fold a burst (a relist, a rollout) into one snapshot.
        let deadline = tokio::time::Instant::now() + DEBOUNCE;
        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, changes.recv()).await {
            dirty |= apply(next, &stores, &status);
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
        let registry = stores.objects().snapshot();
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

/// Returns whether the stores changed.
fn apply(change: Change, stores: &Stores, status: &WatchStatus) -> bool {
    let mut status = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (kind, changed) = match change {
        Change::Changed(kind) => {
            status.entry(kind).or_default().events += 1;
            (kind, true)
        }
        Change::Listed(kind) => {
            // The reflector kept the previous set in force until this relist completed: a
            // watch error never empties the registry.
            let entry = status.entry(kind).or_default();
            entry.synced = true;
            entry.last_error = None;
            (kind, true)
        }
        Change::Error(kind, error) => {
            let entry = status.entry(kind).or_default();
            entry.errors += 1;
            if entry.last_error.as_deref() != Some(error.as_str()) {
                if OPTIONAL.contains(&kind) {
                    tracing::info!(kind, %error, "watch failed (optional kind: is its CRD installed?); retrying with backoff");
                } else {
                    tracing::warn!(kind, %error, "watch failed; retrying with backoff from the last resourceVersion");
                }
            }
            entry.last_error = Some(error);
            (kind, false)
        }
    };
    status.entry(kind).or_default().objects = stores.len(kind);
    changed
}
