//! Kubernetes mode end to end on the real kernel: a real `weft-agent --kube` process reads the
//! scripted API server over HTTP (inside its node's netns, named by a kubeconfig), finds pods
//! that were running before it started through `/proc` and the pod UIDs in their cgroup paths
//! (the kubelet's cgroupfs layout), captures the enrolled one, and sets its readiness condition.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

use serde_json::json;
use weft_fake_api::FakeApi;
use weft_harness::{
    agent::Source, cgroup, netns, require_privileges, Cluster, ClusterSpec, PodHandle, PodSpec,
};

const TESTPOD: &str = env!("CARGO_BIN_EXE_weft-testpod");

fn agent_bin() -> PathBuf {
    let agent = std::path::Path::new(TESTPOD).with_file_name("weft-agent");
    assert!(
        agent.exists(),
        "{} is missing: run `cargo xtask test`",
        agent.display()
    );
    agent
}

/// Stable per pod, shaped like a Kubernetes UID.
fn uid(pod: &PodHandle) -> String {
    let mut tail = String::new();
    for byte in pod.name.bytes().take(6) {
        let _ = std::fmt::Write::write_fmt(&mut tail, format_args!("{byte:02x}"));
    }
    format!("7a1e0c2d-0000-4000-8000-{tail:0<12}")
}

fn served_pod(pod: &PodHandle, with_gate: bool) -> serde_json::Value {
    let gates = if with_gate {
        json!([{"conditionType": "weft.io/enrolled"}])
    } else {
        json!([])
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": uid(pod), "resourceVersion": "10"},
        "spec": {"nodeName": pod.node, "serviceAccountName": pod.name, "readinessGates": gates,
                 "containers": [{"name": "main", "image": "app"}]},
        "status": {"phase": "Running", "podIP": pod.ip.to_string()}
    })
}

fn namespace(name: &str, enrolled: bool) -> serde_json::Value {
    let labels = if enrolled {
        json!({"weft.io/mesh": "enabled"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels, "resourceVersion": "5"}})
}

#[test]
fn pods_running_before_a_kubernetes_mode_agent_starts_are_found_captured_and_reported_ready() {
    if !require_privileges() {
        return;
    }
    let cluster = Cluster::start(&ClusterSpec {
        nodes: vec!["node0".into()],
        pods: vec![
            PodSpec::new("shop", "web", "node0"),
            PodSpec::new("shop", "late", "node0"),
            PodSpec::new("legacy", "plain", "node0"),
        ],
    })
    .expect("cluster");
    let node = cluster.node("node0").clone();
    let web = cluster.pod("shop", "web").clone();
    let plain = cluster.pod("legacy", "plain").clone();
    let late = cluster.pod("shop", "late").clone();
    let parent = cgroup::run_parent(cluster.run_id()).expect("run cgroup");
    let cgroup_root = cgroup::cgroup2_mount().expect("cgroup2");

    // What the kubelet and runtime would have made before the agent existed: each pod's
    // sandbox process in a `kubepods/pod<uid>` cgroup and in the pod's netns.
    for pod in [&web, &plain] {
        start_sandbox(&cluster, &parent, pod);
    }
    cluster
        .spawn_in_pod(
            &plain,
            TESTPOD,
            &["serve", "0.0.0.0:9000", "--name", "plain"],
        )
        .expect("server");

    // The API server: served over HTTP on the node's loopback, where the agent runs.
    let fake = FakeApi::default();
    fake.set_list(
        "/api/v1/namespaces",
        vec![namespace("shop", true), namespace("legacy", false)],
    );
    fake.set_list(
        "/api/v1/pods",
        vec![
            served_pod(&web, true),
            served_pod(&late, false),
            served_pod(&plain, false),
        ],
    );
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(cluster.run_id().root_name())
        .join("logs");
    let api = ApiServer::start(&fake, &node.netns, &logs);
    let log = || std::fs::read_to_string(logs.join("node0.log")).unwrap_or_default();
    cluster
        .start_agent_from(
            &node,
            &agent_bin(),
            &Source::Kube {
                kubeconfig: &api.kubeconfig,
                cgroup_root: &cgroup_root,
            },
            &logs,
            &[],
            "info,weft_agent=debug",
        )
        .unwrap_or_else(|e| panic!("{e:#}; log: {}", log()));

    // Ready means listed and enrolled: the pod that predates the agent is captured, found in
    // its own netns through /proc; the pod of the namespace without the label is not.
    let status = cluster.admin(&node, "/status").expect("status");
    assert_eq!(
        status["kubernetesWatches"]["Pod"]["synced"], true,
        "{status}"
    );
    let workloads = cluster.admin(&node, "/workloads").expect("workloads");
    let enrolled: Vec<String> = workloads
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| format!("{}/{}", w["namespace"], w["name"]).replace('"', ""))
        .collect();
    assert_eq!(enrolled, ["shop/web"], "log: {}", log());
    let found_netns = workloads[0]["netns"]
        .as_str()
        .expect("netns path")
        .to_owned();
    let inode = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.ino()).ok();
    assert_eq!(
        inode(std::path::Path::new(&found_netns)),
        inode(&netns::path(&web.netns)),
        "the agent must have found the pod's own netns ({found_netns})"
    );

    // The gated pod's condition reached the API server.
    let patch =
        wait_for_status_patch(&fake).unwrap_or_else(|| panic!("no status patch; log: {}", log()));
    assert_eq!(patch.path, "/api/v1/namespaces/shop/pods/web/status");
    let condition = &patch.body["status"]["conditions"][0];
    assert_eq!(
        (&condition["type"], &condition["status"]),
        (&json!("weft.io/enrolled"), &json!("True"))
    );

    // And its traffic is captured: a connection from it passes through the agent.
    let before = cluster.proxy_stat(&node, "outboundOpened");
    send(&cluster, &web, &format!("{}:9000", plain.ip));
    assert_eq!(
        cluster.proxy_stat(&node, "outboundOpened"),
        before + 1,
        "the enrolled pod's connection went through the agent"
    );

    captured_once_its_sandbox_appears(&cluster, &fake, &parent, &late, &plain, &log);
    api.stop();
}

/// A pod the API listed before its sandbox existed is captured once its process appears,
/// with no further word from the API server: the agent retries what it could not place.
fn captured_once_its_sandbox_appears(
    cluster: &Cluster,
    fake: &FakeApi,
    parent: &std::path::Path,
    late: &PodHandle,
    plain: &PodHandle,
    log: &dyn Fn() -> String,
) {
    let node = cluster.node(&late.node).clone();
    let status = cluster.admin(&node, "/status").expect("status");
    assert!(
        status
            .to_string()
            .contains("shop/late: no process of pod UID"),
        "the pod without a sandbox yet is reported: {status}"
    );
    let requests_before = fake.seen().len();
    start_sandbox(cluster, parent, late);
    let captured = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        cluster
            .admin(&node, "/workloads")
            .is_ok_and(|w| w.to_string().contains("\"late\""))
    });
    assert!(
        captured,
        "shop/late was not captured within 5 s; log: {}",
        log()
    );
    assert!(
        fake.seen()[requests_before..]
            .iter()
            .all(|s| s.method != http::Method::GET || s.query.contains("watch")),
        "the retry must not relist"
    );
    send(cluster, late, &format!("{}:9000", plain.ip));
}

/// What the kubelet and runtime make for a pod: its sandbox process in a `kubepods/pod<uid>`
/// cgroup and in the pod's netns.
fn start_sandbox(cluster: &Cluster, parent: &std::path::Path, pod: &PodHandle) {
    let mut sandbox = pod.clone();
    sandbox.cgroup = parent.join(format!("weft-kubepods/pod{}", uid(pod)));
    cgroup::create(&sandbox.cgroup).expect("pod cgroup");
    cluster
        .spawn_in_pod(&sandbox, "sleep", &["300"])
        .expect("sandbox");
}

fn wait_for_status_patch(fake: &FakeApi) -> Option<weft_fake_api::Seen> {
    for _ in 0..250 {
        let patch = fake
            .seen()
            .into_iter()
            .find(|s| s.method == http::Method::PATCH);
        if patch.is_some() {
            return patch;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Sends 4 KiB from `from` to `to` with `weft-testpod` and checks it came back intact.
fn send(cluster: &Cluster, from: &PodHandle, to: &str) {
    let out = cluster
        .run_in_pod(
            from,
            TESTPOD,
            &["--connect-timeout-ms", "2000", "send", to, "4096"],
        )
        .expect("testpod");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        report.contains("sent=4096") && report.contains("echoed=4096"),
        "{report}"
    );
}

/// The fake served over HTTP from a thread in the node's netns, and a kubeconfig naming it.
struct ApiServer {
    kubeconfig: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl ApiServer {
    fn start(fake: &FakeApi, node_netns: &str, folder: &std::path::Path) -> Self {
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = fake.clone();
        let thread = netns::spawn_thread(node_netns, move || async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            address_tx.send(listener.local_addr()?)?;
            serving.serve_http(listener);
            let _ = stopped.await;
            Ok(())
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake API server address");
        std::fs::create_dir_all(folder).expect("folder");
        let kubeconfig = folder.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{address}\nusers:\n- name: agent\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\ncurrent-context: fake\n"
            ),
        )
        .expect("kubeconfig");
        Self {
            kubeconfig,
            stop,
            thread,
        }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
