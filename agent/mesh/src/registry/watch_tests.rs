//! Kubernetes mode against recorded-style API answers (kube's mock service): the registry
//! follows namespace and pod changes, a watch that expires relists without losing state, and
//! only the used fields are kept. (Pod conditions are tested beside the agent's publisher.)

use std::{sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::{watch as kube_watch, Registry};
use weft_fake_api::FakeApi;

const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";

fn namespace(name: &str, enrolled: bool) -> Value {
    let labels = if enrolled {
        json!({"weft.io/mesh": "enabled"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(name: &str, node: &str, ip: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"), "labels": labels,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(2000)},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {"f:containers": {}}}}]},
        "spec": {"nodeName": node, "serviceAccountName": "sa", "containers": [{"name": "main", "image": "app:1", "env": [{"name": "A", "value": "b"}]}]},
        "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn enrolled_on(registry: &Registry, node: &str) -> Vec<String> {
    let mut names: Vec<String> = registry
        .enrolled_pods_on(node)
        .map(|p| p.name.clone())
        .collect();
    names.sort();
    names
}

/// Waits up to 10 s for a snapshot where `check` holds.
async fn until(
    rx: &mut watch::Receiver<Arc<Registry>>,
    what: &str,
    check: impl Fn(&Registry) -> bool,
) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if check(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    let registry = rx.borrow().clone();
    assert!(
        waited.is_ok() && check(&registry),
        "{what}: registry is {:?}",
        enrolled_on(&registry, "n1")
    );
}

/// The `resourceVersion` each watch of `path` asked for, in order.
fn watch_versions(fake: &FakeApi, path: &str) -> Vec<String> {
    fake.seen()
        .iter()
        .filter(|s| s.path == path && s.query.split('&').any(|q| q == "watch=true"))
        .filter_map(|s| {
            s.query
                .split('&')
                .find_map(|q| q.strip_prefix("resourceVersion="))
                .map(str::to_owned)
        })
        .collect()
}

fn lists_of(fake: &FakeApi, path: &str) -> usize {
    fake.seen()
        .iter()
        .filter(|s| s.path == path && !s.query.contains("watch"))
        .count()
}

/// Waits up to 10 s for a watch of `path` from `version`: the watcher resumed where it was.
async fn resumes_from(fake: &FakeApi, path: &str, version: u64) {
    let version = version.to_string();
    for _ in 0..1000 {
        if watch_versions(fake, path).contains(&version) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no watch of {path} resumed from resourceVersion {version}: {:?}",
        watch_versions(fake, path)
    );
}

fn start_with_status(
    fake: &FakeApi,
    client: &kube::Client,
) -> (watch::Receiver<Arc<Registry>>, kube_watch::WatchStatus) {
    fake.set_list(NAMESPACES, vec![namespace("demo", true)]);
    fake.set_list(
        PODS,
        vec![
            pod("a", "n1", "10.0.0.1", &json!({})),
            pod("b", "n1", "10.0.0.2", &json!({})),
            pod("far", "n2", "10.0.1.1", &json!({})),
        ],
    );
    let (tx, rx) = watch::channel(Arc::new(Registry::default()));
    let status = kube_watch::spawn(client, tx);
    (rx, status)
}

/// Watches started on the fake's initial objects, once they have listed.
async fn listed() -> (
    FakeApi,
    watch::Receiver<Arc<Registry>>,
    kube_watch::WatchStatus,
) {
    let (client, fake) = FakeApi::start();
    let (mut rx, status) = start_with_status(&fake, &client);
    until(&mut rx, "initial listing", |r| {
        enrolled_on(r, "n1") == ["a", "b"]
    })
    .await;
    (fake, rx, status)
}

fn pod_status(status: &kube_watch::WatchStatus) -> kube_watch::KindStatus {
    status
        .lock()
        .expect("status")
        .get("Pod")
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn namespace_and_pod_changes_flip_enrollment() {
    let (fake, mut rx, _) = listed().await;
    // Only this node's pods are enrolled here, but peers elsewhere are known (for HBONE).
    assert!(rx
        .borrow()
        .pod_by_ip("10.0.1.1".parse().expect("ip"))
        .is_some());

    fake.event(
        PODS,
        "MODIFIED",
        pod("b", "n1", "10.0.0.2", &json!({"weft.io/mesh": "disabled"})),
    )
    .await;
    let mut pod_event_versions = vec![fake.version()];
    until(&mut rx, "pod label opts b out", |r| {
        enrolled_on(r, "n1") == ["a"]
    })
    .await;

    fake.event(NAMESPACES, "MODIFIED", namespace("demo", false))
        .await;
    until(&mut rx, "namespace label removed", |r| {
        enrolled_on(r, "n1").is_empty()
    })
    .await;

    fake.event(NAMESPACES, "MODIFIED", namespace("demo", true))
        .await;
    until(&mut rx, "namespace label back", |r| {
        enrolled_on(r, "n1") == ["a"]
    })
    .await;

    fake.event(PODS, "ADDED", pod("c", "n1", "10.0.0.3", &json!({})))
        .await;
    pod_event_versions.push(fake.version());
    until(&mut rx, "pod added", |r| enrolled_on(r, "n1") == ["a", "c"]).await;

    fake.event(PODS, "DELETED", pod("a", "n1", "10.0.0.1", &json!({})))
        .await;
    until(&mut rx, "pod deleted", |r| enrolled_on(r, "n1") == ["c"]).await;

    fake.event(NAMESPACES, "DELETED", namespace("demo", true))
        .await;
    until(&mut rx, "namespace deleted", |r| {
        enrolled_on(r, "n1").is_empty()
    })
    .await;

    fake.event(NAMESPACES, "ADDED", namespace("demo", true))
        .await;
    until(&mut rx, "namespace added again", |r| {
        enrolled_on(r, "n1") == ["c"]
    })
    .await;

    // Each event ended its watch (the fake closes it); every reconnect resumed from the last
    // event's resourceVersion, and none of the eight turned into a relist.
    for version in pod_event_versions {
        resumes_from(&fake, PODS, version).await;
    }
    assert_eq!(lists_of(&fake, PODS), 1, "pods were listed again");
    assert_eq!(
        lists_of(&fake, NAMESPACES),
        1,
        "namespaces were listed again"
    );
}

#[tokio::test]
async fn a_failed_watch_resumes_from_its_version_after_backoff() {
    let (fake, mut rx, status) = listed().await;
    let before = watch_versions(&fake, PODS);
    let resumed_from = before.last().expect("a pod watch").clone();

    let failed_at = fake.fail_watch(PODS).await;
    let mut waited = 0;
    while watch_versions(&fake, PODS).len() == before.len() && waited < 1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let after = watch_versions(&fake, PODS);
    assert_eq!(
        after.get(before.len()),
        Some(&resumed_from),
        "the watch after a 500 must resume from the same resourceVersion: {after:?}"
    );
    assert_eq!(lists_of(&fake, PODS), 1, "a 500 must not relist");
    // Backoff, not a hot loop: the retry waited (kube's default backoff starts near 0.8 s).
    let retried_at = fake
        .seen()
        .iter()
        .filter(|s| s.path == PODS && s.query.contains("watch=true"))
        .nth(before.len())
        .map(|s| s.at)
        .expect("the retried watch");
    assert!(
        retried_at.duration_since(failed_at) >= Duration::from_millis(300),
        "retried {:?} after the failure",
        retried_at.duration_since(failed_at)
    );
    let kind = pod_status(&status);
    assert_eq!(kind.errors, 1, "{kind:?}");
    assert!(
        kind.last_error
            .as_deref()
            .is_some_and(|e| e.contains("etcd leader changed")),
        "{kind:?}"
    );
    assert_eq!(enrolled_on(&rx.borrow(), "n1"), ["a", "b"], "state kept");
    // The resumed watch still delivers.
    fake.event(PODS, "ADDED", pod("c", "n1", "10.0.0.3", &json!({})))
        .await;
    until(&mut rx, "event after the failures", |r| {
        enrolled_on(r, "n1") == ["a", "b", "c"]
    })
    .await;
}

#[tokio::test]
async fn an_expired_watch_relists_without_losing_state() {
    let (fake, mut rx, _) = listed().await;
    let lists_before = fake
        .seen()
        .iter()
        .filter(|s| s.path == PODS && !s.query.contains("watch"))
        .count();

    // While the pod watch is down, the cluster changes: b goes, d arrives.
    fake.set_list(
        PODS,
        vec![
            pod("a", "n1", "10.0.0.1", &json!({})),
            pod("d", "n1", "10.0.0.4", &json!({})),
        ],
    );
    // The relist is held until the state during it has been checked.
    fake.hold_lists(PODS);
    fake.expire(PODS).await;
    let mut waited = 0;
    while fake.held_lists(PODS) == 0 && waited < 1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(fake.held_lists(PODS), 1, "no relist after 410 Gone");
    // Longer than the fold's debounce: a snapshot taken during the relist would be out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = rx.borrow().clone();
    assert_eq!(
        enrolled_on(&kept, "n1"),
        ["a", "b"],
        "state lost while the relist was in flight"
    );
    fake.release_lists(PODS);
    until(&mut rx, "relist after 410", |r| {
        enrolled_on(r, "n1") == ["a", "d"]
    })
    .await;
    assert!(
        !rx.borrow().namespaces.is_empty(),
        "other kinds must survive a pod relist"
    );

    let seen = fake.seen();
    let lists_after = seen
        .iter()
        .filter(|s| s.path == PODS && !s.query.contains("watch"))
        .count();
    assert_eq!(lists_after, lists_before + 1, "one relist, no storm");
    // Lists are served from the API server's cache, watches resume from a resourceVersion.
    let lists: Vec<&String> = seen
        .iter()
        .filter(|s| !s.query.contains("watch"))
        .map(|s| &s.query)
        .collect();
    assert!(
        lists.iter().all(|q| q.contains("resourceVersion=0")),
        "lists must use resourceVersion=0: {lists:?}"
    );
    assert!(seen
        .iter()
        .filter(|s| s.query.contains("watch=true"))
        .all(|s| s.query.contains("resourceVersion=")));
}

#[test]
fn an_object_settles_into_the_registry_form_and_keeps_nothing_else() {
    use super::typed::{PodObject, Settle as _, Settled};
    let mut full = pod("a", "n1", "10.0.0.1", &json!({"app": "web"}));
    full["metadata"]["annotations"]["weft.io/netns"] = json!("/run/netns/a");
    let mut object: PodObject = serde_json::from_value(full).expect("a pod");
    object.settle();
    let Settled::Kept(kept) = &object.settled else {
        panic!("not kept: {:?}", object.settled);
    };
    assert_eq!(kept.labels.get("app"), Some("web"));
    assert_eq!(kept.node_name.as_deref(), Some("n1"));
    assert_eq!(kept.ip, Some("10.0.0.1".parse().expect("ip")));
    assert_eq!(kept.uid.as_deref(), Some("uid-a"));
    assert_eq!(kept.service_account, "sa");
    // Only Weft's own annotations; the 2 kB last-applied configuration is gone.
    assert_eq!(
        kept.annotations.keys().collect::<Vec<_>>(),
        ["weft.io/netns"]
    );
    // The store keeps the settled pod and the object's key, nothing of what it was read from.
    assert!(object.spec.is_none() && object.status.is_none());
    let meta = &object.metadata;
    assert_eq!(meta.name.as_deref(), Some("a"));
    assert_eq!(meta.namespace.as_deref(), Some("demo"));
    assert!(meta.managed_fields.is_none() && meta.annotations.is_none());
    assert!(meta.labels.is_none() && meta.uid.is_none() && meta.resource_version.is_none());
    // Local mode parses the same document into the same registry pod.
    let registry = Registry::from_objects([(
        "test".to_owned(),
        serde_yaml::to_value(pod("a", "n1", "10.0.0.1", &json!({"app": "web"}))).expect("yaml"),
    )]);
    assert!(registry.errors.is_empty(), "{:?}", registry.errors);
    assert_eq!(registry.pods[0].labels, kept.labels);
    assert_eq!(registry.pods[0].uid, kept.uid);
}

#[tokio::test]
async fn updates_to_fields_weft_does_not_keep_publish_nothing() {
    let (fake, mut rx, _) = listed().await;
    // A kubelet status heartbeat: new conditions and annotations Weft does not read.
    let mut heartbeat = pod("a", "n1", "10.0.0.1", &json!({}));
    heartbeat["status"]["conditions"] =
        json!([{"type": "Ready", "status": "True", "lastProbeTime": "2026-11-23T10:00:00Z"}]);
    heartbeat["metadata"]["annotations"]["example.com/build"] = json!("42");
    rx.borrow_and_update();
    fake.event(PODS, "MODIFIED", heartbeat).await;
    // Longer than the fold's debounce: a rebuild would have been published by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rx.has_changed().expect("sender alive"),
        "a change to unkept fields rebuilt the registry"
    );
    // A change to a kept field still does.
    fake.event(
        PODS,
        "MODIFIED",
        pod("a", "n1", "10.0.0.1", &json!({"weft.io/mesh": "disabled"})),
    )
    .await;
    until(&mut rx, "label change", |r| enrolled_on(r, "n1") == ["b"]).await;
}

#[tokio::test]
async fn traffic_policies_and_host_network_pods_come_through_the_watches() {
    let (fake, mut rx, _) = listed().await;
    fake.event(
        "/apis/weft.io/v1alpha1/trafficpolicies",
        "ADDED",
        json!({"apiVersion": "weft.io/v1alpha1", "kind": "TrafficPolicy",
               "metadata": {"name": "echo", "namespace": "demo"},
               "spec": {"targetRefs": [{"kind": "Service", "name": "echo"}], "connectTimeout": "250ms"}}),
    )
    .await;
    until(&mut rx, "traffic policy", |r| {
        r.traffic_policies.iter().any(|t| t.id() == "demo/echo")
    })
    .await;
    // A hostNetwork pod keeps that field through trimming, so its address (the node's) is
    // never mistaken for a mesh peer's.
    let mut host = pod("exporter", "n1", "192.168.0.1", &json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    fake.event(PODS, "ADDED", host).await;
    until(&mut rx, "hostNetwork pod", |r| {
        r.pod("demo", "exporter").is_some()
    })
    .await;
    let registry = rx.borrow().clone();
    assert!(registry
        .pod("demo", "exporter")
        .is_some_and(|p| p.host_network));
    assert!(registry
        .pod_by_ip("192.168.0.1".parse().expect("ip"))
        .is_none());
    assert_eq!(enrolled_on(&registry, "n1"), ["a", "b"]);
}

#[tokio::test]
async fn an_object_without_a_name_is_reported_and_the_watch_goes_on() {
    let (fake, mut rx, status) = listed().await;
    let mut nameless = pod("x", "n1", "10.0.0.9", &json!({}));
    nameless["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("name");
    fake.event(PODS, "ADDED", nameless).await;
    // The watch is still alive: a later pod arrives.
    fake.event(PODS, "ADDED", pod("c", "n1", "10.0.0.3", &json!({})))
        .await;
    until(&mut rx, "the pod after the nameless one", |r| {
        enrolled_on(r, "n1") == ["a", "b", "c"]
    })
    .await;
    let kind = pod_status(&status);
    assert!(
        kind.last_error
            .as_deref()
            .is_some_and(|e| e.contains("without metadata.name")),
        "{kind:?}"
    );
}

#[tokio::test]
async fn a_rejected_object_is_reported_with_its_kind_and_name() {
    let (fake, mut rx, _) = listed().await;
    fake.event(PODS, "ADDED", pod("bad", "n1", "not-an-ip", &json!({})))
        .await;
    until(&mut rx, "the rejection report", |r| !r.errors.is_empty()).await;
    let registry = rx.borrow().clone();
    let error = &registry.errors[0];
    assert_eq!(error.source, "kubernetes Pod demo/bad");
    assert_eq!(error.object, "Pod demo/bad");
    assert_eq!(error.problem, "bad_address");
}
