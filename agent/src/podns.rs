//! Kubernetes mode: finds a pod's network namespace and cgroup from the node's own view. The
//! kubelet puts every container of a pod under a cgroup named for the pod's UID (`pod<uid>` with
//! the cgroupfs driver, `…-pod<uid_with_underscores>.slice` with systemd); any process in that
//! cgroup (the sandbox's pause process first of all) holds the pod's netns.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use weft_mesh::registry::{Locate, Pod};

/// Scans the host's `/proc` (mounted into the agent's pod) for a process of the pod.
#[derive(Clone, Debug)]
pub struct HostProc {
    pub proc_root: PathBuf,
    pub cgroup_root: PathBuf,
    /// The node's own netns (`<proc_root>/1/ns/net`): pods sharing it are not captured.
    pub node_netns: PathBuf,
}

impl HostProc {
    pub fn new(proc_root: PathBuf, cgroup_root: PathBuf) -> Self {
        let node_netns = proc_root.join("1/ns/net");
        Self {
            proc_root,
            cgroup_root,
            node_netns,
        }
    }
}

impl HostProc {
    /// The first process whose cgroup path names the pod, with that cgroup (relative path).
    #[expect(
        clippy::disallowed_methods,
        reason = "pods are located during enrollment, on a blocking thread"
    )]
    fn process_of(&self, uid: &str) -> Option<(u32, String)> {
        let dashed = format!("pod{uid}");
        let underscored = format!("pod{}", uid.replace('-', "_"));
        let entries = std::fs::read_dir(&self.proc_root).ok()?;
        let mut pids: Vec<u32> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        // Lowest PID first: the sandbox starts before the containers.
        pids.sort_unstable();
        pids.into_iter().find_map(|pid| {
            let text = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"))
                .ok()?;
            // cgroup v2: the single `0::<path>` line.
            let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
            let mut pod_cgroup = String::new();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                pod_cgroup.push('/');
                pod_cgroup.push_str(part);
                if part.contains(&dashed) || part.contains(&underscored) {
                    return Some((pid, pod_cgroup));
                }
            }
            None
        })
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "pods are located during enrollment, on a blocking thread"
)]
fn netns_inode(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Locate for HostProc {
    fn locate(&self, pod: &Pod) -> Result<(PathBuf, Option<PathBuf>), String> {
        let uid = pod.uid.as_deref().ok_or("has no metadata.uid")?;
        let (pid, cgroup) = self.process_of(uid).ok_or_else(|| {
            format!(
                "no process of pod UID {uid} under {} yet",
                self.proc_root.display()
            )
        })?;
        let netns = self.proc_root.join(pid.to_string()).join("ns/net");
        // A hostNetwork pod shares the node's netns: capturing it would capture the node.
        let node = netns_inode(&self.node_netns).map_err(|e| {
            format!("{e}: the node's own netns is needed to refuse hostNetwork pods (give --node-netns)")
        })?;
        if netns_inode(&netns)? == node {
            return Err("uses the node's network (hostNetwork): not captured".into());
        }
        let cgroup = self.cgroup_root.join(cgroup.trim_start_matches('/'));
        Ok((netns, Some(cgroup)))
    }
}
