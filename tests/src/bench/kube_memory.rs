//! How much memory the Kubernetes-mode registry keeps, measured on the heap: a large cluster's
//! objects, shaped as an API server serves them (managed fields, container specs, statuses),
//! go through the agent's real watch code against its scripted API server, and the bytes still
//! live afterwards are compared with holding the same objects whole, as kube's typed structs
//! (what a plain reflector store would keep).

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde::{Deserialize as _, Serialize};
use serde_json::{json, Value};
use weft_fake_api::FakeApi;
use weft_mesh::registry::{typed::Settle, watch as kube_watch, Registry};

const NAMESPACES: usize = 100;
const ENDPOINTS_PER_SLICE: usize = 5;
/// Indexed resolutions timed per figure (the scan baseline runs a twentieth of them).
const LOOKUPS: usize = 20_000;

/// What the measurement found, in bytes of heap.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct KubeRegistryMemory {
    pub pods: usize,
    pub services: usize,
    /// The objects as served, as JSON text.
    pub served_json_bytes: usize,
    /// The same objects held whole as kube's typed structs.
    pub whole_objects_bytes: usize,
    /// What the agent's watches keep (trimmed objects) plus the registry built from them.
    pub kept_bytes: usize,
    /// Building one snapshot (objects to registry with its indexes), the median of 3, in ms.
    pub rebuild_ms: f64,
    /// One outbound resolution (Service by VIP:port and its endpoints, the peer pod by
    /// address), in ns: through the snapshot's indexes, and by scanning the lists as the
    /// registry did before it had them.
    pub lookup_ns: f64,
    pub lookup_scan_ns: f64,
}

/// Times snapshot rebuilds and per-connection lookups over the trimmed objects.
fn time_registry(objects: &kube_watch::Objects, services: usize) -> (f64, f64, f64) {
    let mut rebuilds: Vec<f64> = (0..3)
        .map(|_| {
            let started = std::time::Instant::now();
            let registry = objects.snapshot();
            let took = started.elapsed().as_secs_f64() * 1e3;
            drop(registry);
            took
        })
        .collect();
    rebuilds.sort_by(f64::total_cmp);
    let registry = objects.snapshot();
    let vips: Vec<std::net::SocketAddrV4> = registry
        .services
        .iter()
        .filter_map(|s| {
            Some(std::net::SocketAddrV4::new(
                s.cluster_ip?,
                s.ports.first()?.port,
            ))
        })
        .collect();
    assert_eq!(vips.len(), services, "every Service has a VIP");
    let indexed = time_per(LOOKUPS, |i| {
        let vip = vips[i % vips.len()];
        let (service, port) = registry.service_by_vip(vip).expect("a Service");
        let endpoints = registry.endpoints(service, port);
        registry
            .pod_by_ip(match endpoints[0].ip() {
                std::net::IpAddr::V4(ip) => ip,
                std::net::IpAddr::V6(_) => unreachable!("IPv4 endpoints"),
            })
            .is_some()
    });
    // The same resolution by scanning, as before the indexes; fewer rounds, it is slow.
    let scanned = time_per(LOOKUPS / 20, |i| {
        let vip = vips[i % vips.len()];
        let Some(service) = registry.services.iter().find(|s| {
            s.cluster_ip == Some(*vip.ip()) && s.ports.iter().any(|p| p.port == vip.port())
        }) else {
            return false;
        };
        let first = registry
            .endpoint_slices
            .iter()
            .filter(|e| e.namespace == service.namespace && e.service_name == service.name)
            .flat_map(|e| e.endpoints.iter().filter(|e| e.ready))
            .flat_map(|e| e.addresses.iter())
            .next()
            .copied();
        first.is_some_and(|ip| registry.pods.iter().any(|p| p.ip == Some(ip)))
    });
    (rebuilds[1], indexed, scanned)
}

/// Served objects parsed and settled as the watches settle them.
fn settled<K: Settle + serde::de::DeserializeOwned>(
    served: &[Value],
) -> anyhow::Result<Vec<Arc<K>>> {
    served
        .iter()
        .map(|v| {
            let mut object = K::deserialize(v)?;
            object.settle();
            Ok(Arc::new(object))
        })
        .collect()
}

/// Mean nanoseconds of `lookup` over `rounds` calls, each checked to find what it looks for.
fn time_per(rounds: usize, mut lookup: impl FnMut(usize) -> bool) -> f64 {
    let started = std::time::Instant::now();
    let found = (0..rounds)
        .filter(|&i| std::hint::black_box(lookup(i)))
        .count();
    assert_eq!(
        found, rounds,
        "every lookup finds its Service, endpoint and pod"
    );
    #[expect(clippy::cast_precision_loss, reason = "counts fit")]
    let per = started.elapsed().as_secs_f64() * 1e9 / rounds as f64;
    per
}

/// A pod as a Deployment's ReplicaSet makes it and the kubelet reports it.
fn served_pod(n: usize, services: usize) -> Value {
    let ns = format!("scale-{}", n % NAMESPACES);
    let app = format!("svc-{}", n % services.max(1));
    let name = format!("{app}-7f9c6d8b5-{n:05}");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("0b1c2d3e-0000-4000-8000-{n:012}"),
            "resourceVersion": (100_000 + n).to_string(), "creationTimestamp": "2026-11-01T10:00:00Z",
            "generateName": format!("{app}-7f9c6d8b5-"),
            "labels": {"app": app, "pod-template-hash": "7f9c6d8b5", "version": "v1"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-01T09:59:00Z", "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7f9c6d8b5"),
                "uid": "a1b2c3d4-0000-4000-8000-000000000000", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2026-11-01T10:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}, "f:version": {}},
                   "f:ownerReferences": {".": {}, "k:{\"uid\":\"a1b2c3d4\"}": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:ports": {}, "f:resources": {}}},
                   "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {}, "f:terminationGracePeriodSeconds": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-01T10:00:05Z", "subresource": "status",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}}
            ]
        },
        "spec": {
            "nodeName": format!("far-{}", n % 100), "serviceAccountName": format!("sa-{}", n % 7),
            "serviceAccount": format!("sa-{}", n % 7), "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30, "enableServiceLinks": true,
            "priority": 0, "preemptionPolicy": "PreemptLowerPriority", "securityContext": {},
            "containers": [{
                "name": "app", "image": "registry.example/app:1.24.3", "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"
            }],
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": "192.0.2.10", "podIP": pod_ip(n), "podIPs": [{"ip": pod_ip(n)}],
            "qosClass": "Burstable", "startTime": "2026-11-01T10:00:01Z",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-01T10:00:01Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-01T10:00:05Z"},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-01T10:00:05Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-01T10:00:00Z"}],
            "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0,
                "image": "registry.example/app:1.24.3", "imageID": "registry.example/app@sha256:4f2a0e7c9b1d3e5f7a9c1b3d5e7f9a1c3b5d7e9f1a3c5b7d9e1f3a5c7b9d1e3f",
                "containerID": format!("containerd://{n:064}"), "state": {"running": {"startedAt": "2026-11-01T10:00:03Z"}}}]
        }
    })
}

fn pod_ip(n: usize) -> String {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + n).to_string()
}

fn served_service(s: usize) -> Value {
    let ns = format!("scale-{}", s % NAMESPACES);
    let n = u32::try_from(s).unwrap_or(u32::MAX);
    let vip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 100, 0, 0)) + n);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{s}"), "namespace": ns, "uid": format!("5e6f7a8b-0000-4000-8000-{s:012}"),
            "resourceVersion": (50_000 + s).to_string(), "creationTimestamp": "2026-11-01T09:00:00Z",
            "labels": {"app": format!("svc-{s}")},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!("{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"svc-{s}\",\"namespace\":\"{ns}\"}},\"spec\":{{\"ports\":[{{\"name\":\"http\",\"port\":80,\"targetPort\":8080}}],\"selector\":{{\"app\":\"svc-{s}\"}}}}}}\n")},
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1", "time": "2026-11-01T09:00:00Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:annotations": {}, "f:labels": {}}, "f:spec": {"f:internalTrafficPolicy": {}, "f:ports": {}, "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}}}}]},
        "spec": {"clusterIP": vip.to_string(), "clusterIPs": [vip.to_string()], "type": "ClusterIP",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": format!("svc-{s}")}},
        "status": {"loadBalancer": {}}
    })
}

fn served_slice(s: usize, pods: usize, services: usize) -> Value {
    let ns = format!("scale-{}", s % NAMESPACES);
    let endpoints: Vec<Value> = (0..ENDPOINTS_PER_SLICE)
        .map(|k| {
            let n = (s + k * services) % pods.max(1);
            json!({"addresses": [pod_ip(n)], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": format!("far-{}", n % 100), "zone": "zone-a",
                   "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("svc-{s}-7f9c6d8b5-{n:05}"), "uid": format!("0b1c2d3e-0000-4000-8000-{n:012}")}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{s}-x8k2m"), "namespace": ns, "uid": format!("9a8b7c6d-0000-4000-8000-{s:012}"),
            "resourceVersion": (70_000 + s).to_string(), "generateName": format!("svc-{s}-"),
            "labels": {"kubernetes.io/service-name": format!("svc-{s}"), "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-11-01T10:00:05Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": format!("svc-{s}"), "uid": format!("5e6f7a8b-0000-4000-8000-{s:012}"), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "discovery.k8s.io/v1", "time": "2026-11-01T10:00:05Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:addressType": {}, "f:endpoints": {}, "f:metadata": {"f:annotations": {}, "f:generateName": {}, "f:labels": {}, "f:ownerReferences": {}}, "f:ports": {}}}]},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// Runs the measurement with `live_bytes` reading the process's live heap. Call it in a
/// process of its own (`weft-bench kube-registry`) so nothing else moves the count.
pub async fn measure(
    pods: usize,
    services: usize,
    live_bytes: fn() -> usize,
) -> anyhow::Result<KubeRegistryMemory> {
    let (client, fake) = FakeApi::start();
    // Everything allocated after this point and still live at the end is what the watches keep
    // (the served objects themselves are all dropped by then).
    let base = live_bytes();
    let namespaces: Vec<Value> = (0..NAMESPACES)
        .map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("scale-{ns}"), "labels": {"weft.io/mesh": "enabled"}}}))
        .collect();
    let served_pods: Vec<Value> = (0..pods).map(|n| served_pod(n, services)).collect();
    let served_services: Vec<Value> = (0..services).map(served_service).collect();
    let served_slices: Vec<Value> = (0..services)
        .map(|s| served_slice(s, pods, services))
        .collect();
    let served_json_bytes = [&served_pods, &served_services, &served_slices]
        .iter()
        .flat_map(|list| list.iter())
        .map(|v| v.to_string().len())
        .sum();

    // Whole objects, as a reflector of typed objects would hold them.
    let before_whole = live_bytes();
    let whole = (
        served_pods
            .iter()
            .map(Pod::deserialize)
            .collect::<Result<Vec<_>, _>>()?,
        served_services
            .iter()
            .map(Service::deserialize)
            .collect::<Result<Vec<_>, _>>()?,
        served_slices
            .iter()
            .map(EndpointSlice::deserialize)
            .collect::<Result<Vec<_>, _>>()?,
    );
    let whole_objects_bytes = live_bytes().saturating_sub(before_whole);
    drop(whole);

    // Rebuild and lookup cost over the objects as the watches keep them.
    let objects = kube_watch::Objects {
        namespaces: settled(&namespaces)?,
        nodes: Vec::new(),
        pods: settled(&served_pods)?,
        services: settled(&served_services)?,
        endpoint_slices: settled(&served_slices)?,
        custom: Vec::new(),
    };
    let (rebuild_ms, lookup_ns, lookup_scan_ns) = time_registry(&objects, services);
    drop(objects);

    // The agent's watches, fed the same objects; the fake's copies are dropped before reading.
    fake.set_list("/api/v1/namespaces", namespaces);
    fake.set_list("/api/v1/pods", served_pods);
    fake.set_list("/api/v1/services", served_services);
    fake.set_list("/apis/discovery.k8s.io/v1/endpointslices", served_slices);
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(Registry::default()));
    let _status = kube_watch::spawn(&client, tx);
    tokio::time::timeout(Duration::from_mins(2), async {
        loop {
            if rx.borrow_and_update().pods.len() >= pods {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .context("the watches did not deliver every pod within 2 minutes")?;
    let registry = rx.borrow().clone();
    anyhow::ensure!(
        registry.pods.len() == pods && registry.services.len() == services,
        "registry holds {} pods and {} services, expected {pods} and {services}",
        registry.pods.len(),
        registry.services.len()
    );
    for path in [
        "/api/v1/namespaces",
        "/api/v1/pods",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ] {
        fake.set_list(path, Vec::new());
    }
    // Let the fold task settle (it may still hold a burst's temporaries).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept_bytes = live_bytes().saturating_sub(base);
    Ok(KubeRegistryMemory {
        pods,
        services,
        served_json_bytes,
        whole_objects_bytes,
        kept_bytes,
        rebuild_ms,
        lookup_ns,
        lookup_scan_ns,
    })
}
