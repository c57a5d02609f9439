//! Kubernetes mode's pod discovery on the real kernel: a pod's netns and cgroup are found from
//! the node's own /proc through the pod UID in its cgroup path, for the cgroupfs and systemd
//! naming the kubelet uses, and a hostNetwork pod is refused.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use weft_harness::{cgroup, netns, require_privileges, Cluster, ClusterSpec, PodSpec};
use weft_mesh::registry::{Labels, Locate as _, Pod};

fn pod(uid: &str) -> Pod {
    Pod {
        namespace: "shop".into(),
        name: "web".into(),
        labels: Labels::default(),
        annotations: Labels::default(),
        node_name: Some("node0".into()),
        service_account: "web".into(),
        ip: None,
        uid: Some(uid.into()),
        enrollment_gate: false,
        host_network: false,
    }
}

fn inode(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or_else(|e| panic!("{}: {e}", path.display()), |m| m.ino())
}

#[test]
fn pods_are_found_through_their_uid_in_cgroup_paths() {
    if !require_privileges() {
        return;
    }
    let cluster = Cluster::start(&ClusterSpec {
        nodes: vec!["node0".into()],
        pods: vec![PodSpec::new("shop", "web", "node0")],
    })
    .expect("cluster");
    let parent = cgroup::run_parent(cluster.run_id()).expect("run cgroup");
    let cgroup_root = cgroup::cgroup2_mount().expect("cgroup2");
    let harness_pod = cluster.pod("shop", "web").clone();
    // The kubelet's two layouts: cgroupfs `pod<uid>`, systemd `…-pod<uid_with_underscores>.slice`.
    let (cgroupfs_uid, systemd_uid) = (
        "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "6f1e7d3c-9a55-4b1e-8c3a-2d6f0c9e1a77",
    );
    let layouts = [
        (
            cgroupfs_uid,
            parent.join(format!("weft-kubepods/pod{cgroupfs_uid}")),
        ),
        (
            systemd_uid,
            parent.join(format!(
                "weft-kubepods-besteffort-pod{}.slice",
                systemd_uid.replace('-', "_")
            )),
        ),
    ];
    for (_, dir) in &layouts {
        cgroup::create(dir).expect("pod cgroup");
        // The pod's sandbox: a process in that cgroup and in the pod's netns.
        let mut sandbox = harness_pod.clone();
        sandbox.cgroup.clone_from(dir);
        cluster
            .spawn_in_pod(&sandbox, "sleep", &["60"])
            .expect("sandbox process");
    }
    // This test's own netns stands for the node's (pid 1 may be out of reach in a sandbox).
    let locate = weft_agent::podns::HostProc {
        node_netns: "/proc/self/ns/net".into(),
        ..weft_agent::podns::HostProc::new("/proc".into(), cgroup_root.clone())
    };
    for (uid, dir) in &layouts {
        let mut found = Err(String::new());
        for _ in 0..100 {
            found = locate.locate(&pod(uid));
            if found.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (netns_path, cgroup_path) = found.unwrap_or_else(|e| panic!("pod {uid}: {e}"));
        assert_eq!(
            inode(&netns_path),
            inode(&netns::path(&harness_pod.netns)),
            "pod {uid}: wrong netns {}",
            netns_path.display()
        );
        assert_eq!(
            cgroup_path.as_deref(),
            Some(dir.as_path()),
            "pod {uid}: wrong cgroup"
        );
    }

    let missing = locate.locate(&pod("00000000-0000-0000-0000-000000000000"));
    assert!(missing.is_err_and(|e| e.contains("no process of pod UID")));

    // A hostNetwork pod: its process is in the node's (here: this test's) netns.
    let host_uid = "0a0b0c0d-0000-4000-8000-00000000feed";
    let host_dir = parent.join(format!("weft-kubepods/pod{host_uid}"));
    cgroup::create(&host_dir).expect("cgroup");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && exec sleep 60"#)
        .arg("sh")
        .arg(&host_dir)
        .spawn()
        .expect("host-network process");
    let mut refused = Err(String::new());
    for _ in 0..100 {
        refused = locate.locate(&pod(host_uid));
        if refused.as_ref().is_err_and(|e| e.contains("hostNetwork")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        refused.is_err_and(|e| e.contains("hostNetwork")),
        "a pod in the node's netns must not be captured"
    );
}
