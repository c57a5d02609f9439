//! The harness itself, on the real kernel: pods reach each other across nodes with routes a
//! CNI would set, the test-only probe (`ebpf/weft-ebpf-probe`) acts on a pod's connections
//! through its cgroup, nothing of a run is left behind, and the agent's object carries no probe.

use std::{fs::File, time::Duration};

use aya::{
    maps::HashMap,
    programs::{links::CgroupAttachMode, CgroupSockAddr},
    EbpfLoader,
};
use weft_agent::capture::{kernel_object, programs::check_object};
use weft_harness::{
    netns,
    privileges::{require_probe_object, skip},
    require_privileges, Cluster, ClusterSpec, PodHandle, PodSpec,
};

const TESTPOD: &str = env!("CARGO_BIN_EXE_weft-testpod");

fn spec(pods: &[(&str, &str)]) -> ClusterSpec {
    ClusterSpec {
        nodes: vec!["node0".into(), "node1".into()],
        pods: pods
            .iter()
            .map(|(name, node)| PodSpec::new("t", name, node))
            .collect(),
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until a server in `server` accepts on `port`, probing from the server's own netns.
fn wait_listening(cluster: &Cluster, server: &PodHandle, port: u16) {
    let addr = format!("{}:{port}", server.ip);
    for _ in 0..100 {
        let out = cluster
            .run_in_netns_only(server, TESTPOD, &["connect", &addr])
            .expect("run testpod");
        if out.status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr} after 5 s");
}

fn assert_gone(prefix: &str, cgroup_parent: &std::path::Path) {
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "netns left behind: {left:?}");
    assert!(
        !cgroup_parent.exists(),
        "cgroup left behind: {}",
        cgroup_parent.display()
    );
}

#[test]
fn pods_reach_each_other_across_nodes_and_teardown_is_complete() {
    if !require_privileges() {
        return;
    }
    let cluster = Cluster::start(&spec(&[("a", "node0"), ("b", "node1")])).expect("cluster");
    let (a, b) = (cluster.pod("t", "a").clone(), cluster.pod("t", "b").clone());
    assert_ne!(
        cluster.node("node0").pod_cidr,
        cluster.node("node1").pod_cidr
    );
    cluster
        .spawn_in_pod(&b, TESTPOD, &["serve", "0.0.0.0:9000"])
        .expect("server");
    wait_listening(&cluster, &b, 9000);
    let out = cluster
        .run_in_pod(&a, TESTPOD, &["send", &format!("{}:9000", b.ip), "1048576"])
        .expect("client");
    assert!(
        out.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout(&out);
    assert!(line.contains("sent=1048576"), "{line}");
    // The server's reply carries a header line, so the totals differ; the checksum of the
    // echoed bytes is checked end to end in the capture tests.
    assert!(line.contains(&format!("peer={}:9000", b.ip)), "{line}");

    let prefix = cluster.run_id().prefix();
    let cgroup_parent = weft_harness::cgroup::run_parent(cluster.run_id()).expect("cgroup2");
    assert!(cgroup_parent.join("weft-t-a").is_dir());
    drop(cluster);
    assert_gone(&prefix, &cgroup_parent);
}

#[test]
fn kernel_program_acts_on_connections_from_inside_the_pod_only() {
    if !require_privileges() {
        return;
    }
    let Some(probe) = require_probe_object() else {
        return;
    };
    let cluster =
        Cluster::start(&spec(&[("client", "node0"), ("server", "node0")])).expect("cluster");
    let (client, server) = (
        cluster.pod("t", "client").clone(),
        cluster.pod("t", "server").clone(),
    );
    cluster
        .spawn_in_pod(&server, TESTPOD, &["serve", "0.0.0.0:9000"])
        .expect("server");
    wait_listening(&cluster, &server, 9000);
    let target = format!("{}:9000", server.ip);

    // The probe's maps are not pinned: they go when `ebpf` drops.
    let mut ebpf = EbpfLoader::new()
        .load_file(&probe)
        .expect("load the probe object");
    let program: &mut CgroupSockAddr = ebpf
        .program_mut("weft_probe_connect4")
        .expect("probe program in object")
        .try_into()
        .expect("cgroup/connect4 program");
    program.load().expect("verifier accepts the probe");
    // Pinned in the run's bpffs folder as the agent pins capture: the teardown must unpin it.
    let pins = cluster.bpffs_dir();
    std::fs::create_dir_all(&pins).expect("run bpffs folder");
    program
        .pin(pins.join("weft_probe_connect4"))
        .expect("pin the probe in the run's folder");
    let cgroup = File::open(&client.cgroup).expect("open pod cgroup");
    // bpf_link attachments to a cgroup always coexist with other programs there (the kernel
    // treats links as multi-attach); `Single` only means "no legacy flags".
    let link = program
        .attach(&cgroup, CgroupAttachMode::Single)
        .expect("attach to pod cgroup");
    let mut deny: HashMap<_, u16, u8> =
        HashMap::try_from(ebpf.map_mut("PROBE_DENY_PORTS").expect("deny map")).expect("hash map");
    deny.insert(9000, 1, 0).expect("deny 9000");

    let inside = cluster
        .run_in_pod(&client, TESTPOD, &["connect", &target])
        .expect("run");
    assert!(
        !inside.status.success(),
        "connect from inside the pod's cgroup passed: {}",
        stdout(&inside)
    );
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("Operation not permitted"),
        "the program, not the network, refused it: {}",
        String::from_utf8_lossy(&inside.stderr)
    );
    let netns_only = cluster
        .run_in_netns_only(&client, TESTPOD, &["connect", &target])
        .expect("run");
    assert!(
        netns_only.status.success(),
        "same netns outside the pod cgroup is untouched: {netns_only:?}"
    );

    let seen: HashMap<_, u64, u64> =
        HashMap::try_from(ebpf.map("PROBE_SEEN_BY_CGROUP").expect("seen map")).expect("hash map");
    let cgroup_id = weft_harness::cgroup::id(&client.cgroup).expect("cgroup id");
    assert_eq!(seen.get(&cgroup_id, 0).expect("client cgroup counted"), 1);
    assert_eq!(seen.keys().count(), 1, "only the pod's cgroup was seen");

    let program: &mut CgroupSockAddr = ebpf
        .program_mut("weft_probe_connect4")
        .expect("probe")
        .try_into()
        .expect("type");
    program.detach(link).expect("detach");
    let after = cluster
        .run_in_pod(&client, TESTPOD, &["connect", &target])
        .expect("run");
    assert!(
        after.status.success(),
        "detached program still acts: {after:?}"
    );

    let prefix = cluster.run_id().prefix();
    let cgroup_parent = weft_harness::cgroup::run_parent(cluster.run_id()).expect("cgroup2");
    assert!(pins.join("weft_probe_connect4").exists(), "probe pinned");
    drop(ebpf);
    drop(cluster);
    assert_gone(&prefix, &cgroup_parent);
    assert!(
        !pins.exists(),
        "bpffs pins left behind in {}",
        pins.display()
    );
}

/// The object the agent embeds holds the capture program and its maps only, and the check
/// that says so (run by `cargo xtask build` too) refuses the probe's object: it would see the
/// probe if it came back into the kernel crate. Parsing only, so no privileges needed.
#[test]
fn agent_object_carries_capture_only_and_the_check_sees_the_probe() {
    let object = match kernel_object() {
        Ok(object) => object,
        Err(why) => {
            skip("test of the agent's kernel object", &why.to_string());
            return;
        }
    };
    check_object(object).expect("the agent's object holds capture only");
    let Some(probe) = require_probe_object() else {
        return;
    };
    let probe = std::fs::read(&probe).expect("read the probe object");
    let refused = check_object(&probe)
        .expect_err("the check must refuse an object with the probe")
        .to_string();
    assert!(refused.contains("weft_probe_connect4"), "{refused}");
}
