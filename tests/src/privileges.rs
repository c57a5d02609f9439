//! What a privileged test needs from the machine, and the CI rule: under `CI=true` a missing
//! capability fails the run instead of skipping it.

use std::path::Path;

/// What is missing for privileged tests, in one sentence a user can act on, or `None`.
pub fn missing_privileges() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "root is needed to create network namespaces and load eBPF: run `sudo -E cargo xtask test`"
                .into(),
        );
    }
    if crate::cgroup::cgroup2_mount().is_none() {
        return Some(
            "no cgroup v2 mount in /proc/mounts: mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
                .into(),
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel exposes no BTF (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF=y".into());
    }
    if which("ip").is_none() {
        return Some(
            "the `ip` command is missing: install iproute2 (`cargo xtask setup` does)".into(),
        );
    }
    None
}

/// Returns `true` when privileged tests can run. Otherwise panics under `CI=true`, or prints
/// why the test is skipped and returns `false`.
pub fn require_privileges() -> bool {
    match missing_privileges() {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("privileged test cannot run under CI=true: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED (privileged test): {why}");
            false
        }
    }
}

pub(crate) fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}
