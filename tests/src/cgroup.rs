//! cgroup v2 for pods: the mount found from `/proc/mounts`, a parent per run, a leaf per pod,
//! and removal that first kills what still runs inside (only the run's own cgroups).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::RunId;

/// Where cgroup v2 is mounted, read from `/proc/mounts` (never assumed).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The run's parent cgroup, `<cgroup2>/weft-<run>`.
pub fn run_parent(run: &RunId) -> Option<PathBuf> {
    cgroup2_mount().map(|m| m.join(run.root_name()))
}

/// Creates a cgroup folder (and its parents).
pub fn create(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating cgroup {}", path.display()))
}

/// Kills every process in `path` and its children, then removes the folders bottom-up.
pub fn remove_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "harness: could not remove cgroup {} (still busy)",
        path.display()
    );
}

/// The cgroup id the kernel reports (`bpf_get_current_cgroup_id`): the folder's inode number.
pub fn id(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}
