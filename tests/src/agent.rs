//! Running `weft-agent` on a harness node and reading its admin API from inside that node.

use std::{path::Path, process::Command, time::Duration};

use anyhow::Context as _;

use crate::{netns, Cluster, NodeHandle};

/// Where an agent of a harness run keeps its pins.
pub fn pin_dir(cluster: &Cluster, node: &NodeHandle) -> std::path::PathBuf {
    cluster.bpffs_dir().join(&node.name)
}

/// Where an agent keeps its state, beside its log.
pub fn state_dir(log_dir: &Path, node: &NodeHandle) -> std::path::PathBuf {
    log_dir.join(format!("{}-state", node.name))
}

impl Cluster {
    /// Starts `weft-agent` in the node's netns, logging to `<log_dir>/<node>.log`, and waits
    /// until it reports ready. Returns its PID; the cluster stops it on drop.
    pub fn start_agent(
        &self,
        node: &NodeHandle,
        agent: &Path,
        manifests: &Path,
        log_dir: &Path,
    ) -> anyhow::Result<u32> {
        std::fs::create_dir_all(log_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join(format!("{}.log", node.name)))
            .context("agent log file")?;
        let mut command = Command::new(agent);
        command
            .args(["--node-name", &node.name, "--manifests"])
            .arg(manifests)
            .arg("--bpffs-dir")
            .arg(pin_dir(self, node))
            .arg("--state-dir")
            .arg(state_dir(log_dir, node))
            .env("RUST_LOG", "info,weft_agent=debug");
        let pid = self.spawn_in_node_logged(node, &command, log)?;
        self.wait_ready(node, pid)?;
        Ok(pid)
    }

    /// Polls the node's readiness endpoint for up to 10 s.
    pub fn wait_ready(&self, node: &NodeHandle, pid: u32) -> anyhow::Result<()> {
        for _ in 0..200 {
            let out = netns::exec(
                &node.netns,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "1",
                    "http://127.0.0.1:15021/healthz/ready",
                ],
            );
            if out.is_ok_and(|code| code.trim() == "200") {
                return Ok(());
            }
            if self.has_exited(pid) {
                anyhow::bail!(
                    "agent on {} exited before it was ready (see its log)",
                    node.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("agent on {} not ready after 10 s", node.name)
    }

    /// GETs a path of the node agent's admin API (127.0.0.1:15000 inside the node).
    pub fn admin(&self, node: &NodeHandle, path: &str) -> anyhow::Result<serde_json::Value> {
        let body = netns::exec(
            &node.netns,
            &[
                "curl",
                "-sf",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:15000{path}"),
            ],
        )
        .with_context(|| format!("admin API of {}", node.name))?;
        serde_json::from_str(&body)
            .with_context(|| format!("admin {path} answered non-JSON: {body}"))
    }

    /// A proxy counter from `/stats`; panics when the agent does not answer.
    pub fn proxy_stat(&self, node: &NodeHandle, name: &str) -> u64 {
        let stats = self
            .admin(node, "/stats")
            .unwrap_or_else(|e| panic!("{e:#}"));
        stats["proxy"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no proxy counter {name} in {stats}"))
    }
}
