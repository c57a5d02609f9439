//! What a privileged test needs from the machine and from the build, and the CI rule: under
//! `CI=true` a missing capability or kernel object fails the run instead of skipping it.

use std::path::{Path, PathBuf};

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
        Some(why) => skip("privileged test", &why),
    }
}

/// Where the harness probe's kernel object is: `WEFT_PROBE_OBJECT` (`cargo xtask test` sets
/// it), else where `cargo xtask build` puts it in this checkout. The probe is test-only, so it
/// is never in the agent's embedded object and is read from disk at run time.
pub fn probe_object_path() -> PathBuf {
    std::env::var_os("WEFT_PROBE_OBJECT").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/weft-ebpf-probe")
        },
        PathBuf::from,
    )
}

/// The probe object's path when it was built. Otherwise panics under `CI=true` (a test that
/// needs it must never pass by not running), or prints how to build it and returns `None`.
pub fn require_probe_object() -> Option<PathBuf> {
    let path = probe_object_path();
    if path.is_file() {
        Some(path)
    } else {
        let why = format!(
            "no harness probe object at {} (WEFT_PROBE_OBJECT): build it with `cargo xtask build`",
            path.display()
        );
        skip("test needing the probe object", &why);
        None
    }
}

/// Panics with `why` under `CI=true`, else prints it and returns `false` (skip the test).
pub fn skip(what: &str, why: &str) -> bool {
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "{what} cannot run under CI=true: {why}"
    );
    eprintln!("SKIPPED ({what}): {why}");
    false
}

pub(crate) fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}
