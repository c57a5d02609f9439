//! `cargo xtask demo`: the SPEC playground. Two nodes, an enrolled `demo` namespace and a
//! plain `legacy` one, echo servers behind Service `demo/echo`; a scripted tour, then teardown.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::json;
use weft_harness::{cluster, Cluster, ClusterSpec, PodHandle, PodSpec, RunId};

use crate::{build, setup, shell};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Action {
    /// Bring up, run the tour, tear down.
    Tour,
    /// Bring up and leave running.
    Up,
    /// Remove a playground left by `up`.
    Down,
}

fn spec() -> ClusterSpec {
    ClusterSpec {
        nodes: vec!["node-a".into(), "node-b".into()],
        pods: vec![
            PodSpec::new("demo", "client", "node-a"),
            PodSpec::new("demo", "echo-v1", "node-b"),
            PodSpec::new("demo", "echo-v2", "node-a"),
            PodSpec::new("legacy", "plain", "node-b"),
        ],
    }
}

fn state_dir() -> PathBuf {
    shell::root().join("target/weft-demo")
}

pub fn run(action: Action) -> anyhow::Result<()> {
    if let Action::Down = action {
        cluster::remove_named(&RunId::demo(), &spec());
        let _ = std::fs::remove_file(state_dir().join("playground.json"));
        println!("demo: playground removed");
        return Ok(());
    }
    setup::run()?;
    let bin = build::all(false)?;
    let cluster = Cluster::start_demo(&spec())?;
    for pod in cluster.pods.iter().filter(|p| p.name.starts_with("echo")) {
        let echo = bin.join("weft-echo");
        cluster.spawn_in_pod(pod, &echo.to_string_lossy(), &["0.0.0.0:8080", &pod.name])?;
    }
    write_playground(&cluster)?;
    match action {
        Action::Up => {
            let client = cluster.pod("demo", "client").clone();
            let echo = cluster.pod("demo", "echo-v1").clone();
            let pids = cluster.keep_running();
            println!(
                "demo: playground is up (processes {pids:?}); described in {}",
                state_dir().join("playground.json").display()
            );
            println!(
                "  try: ip netns exec {} curl -s http://{}:8080/",
                client.netns, echo.ip
            );
            println!("  remove it with: cargo xtask demo down");
            Ok(())
        }
        _ => tour(&cluster),
    }
}

fn tour(cluster: &Cluster) -> anyhow::Result<()> {
    let client = cluster.pod("demo", "client");
    wait_for_echo(cluster, client, cluster.pod("demo", "echo-v1"))?;
    wait_for_echo(cluster, client, cluster.pod("demo", "echo-v2"))?;
    for target in ["echo-v1", "echo-v2"] {
        let echo = cluster.pod("demo", target);
        println!(
            "\n== curl from demo/client ({}) to demo/{target} ({}:8080), cross-node: {}",
            client.ip,
            echo.ip,
            client.node != echo.node
        );
        let out = cluster.run_in_pod(
            client,
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}:8080/tour", echo.ip),
            ],
        )?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        anyhow::ensure!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("\ndemo: tour complete; removing the playground");
    Ok(())
}

fn wait_for_echo(cluster: &Cluster, client: &PodHandle, echo: &PodHandle) -> anyhow::Result<()> {
    let url = format!("http://{}:8080/ready", echo.ip);
    for _ in 0..50 {
        if cluster
            .run_in_pod(
                client,
                "curl",
                &["-s", "-o", "/dev/null", "--max-time", "1", &url],
            )?
            .status
            .success()
        {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    anyhow::bail!(
        "echo server {}/{} did not answer within 5 s",
        echo.namespace,
        echo.name
    )
}

fn write_playground(cluster: &Cluster) -> anyhow::Result<()> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir)?;
    let doc = json!({
        "nodes": cluster.nodes.iter().map(|n| json!({"name": n.name, "netns": n.netns, "ip": n.ip, "podCIDR": n.pod_cidr})).collect::<Vec<_>>(),
        "pods": cluster.pods.iter().map(|p| json!({"namespace": p.namespace, "name": p.name, "node": p.node, "netns": p.netns, "ip": p.ip})).collect::<Vec<_>>(),
    });
    let path = dir.join("playground.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
