//! The kernel object the agent embeds and the checks that a kernel can run it.

use std::path::{Path, PathBuf};

/// Errors of kernel capture, each saying what the operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("this weft-agent was built without its kernel programs (WEFT_BPF_OBJECT unset at build time): build it with `cargo xtask build`")]
    ObjectNotBuilt,
    #[error("the kernel lacks what capture needs: {0}")]
    KernelFeature(String),
    #[error("loading the kernel object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("kernel program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "the kernel object has no map or program {0}: agent and object are from different builds"
    )]
    MissingMap(&'static str),
    #[error("the kernel object does not hold exactly what the agent loads: {0}")]
    ObjectContents(String),
    #[error("kernel map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("kernel link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("bpffs pin {0}")]
    Pin(String),
    #[error("pod: {0}")]
    Pod(String),
}

static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-ebpf.o"));

/// The embedded eBPF object, or why there is none.
pub fn kernel_object() -> Result<&'static [u8], CaptureError> {
    if KERNEL_OBJECT.is_empty() {
        Err(CaptureError::ObjectNotBuilt)
    } else {
        Ok(KERNEL_OBJECT)
    }
}

/// Where cgroup v2 is mounted, from `/proc/mounts`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    find_mount("cgroup2")
}

/// Where a bpffs is mounted, from `/proc/mounts` (the first one).
pub fn bpffs_mount() -> Option<PathBuf> {
    find_mount("bpf")
}

#[expect(
    clippy::disallowed_methods,
    reason = "start-up checks, on a blocking thread or in a synchronous command"
)]
fn find_mount(fstype: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == fstype).then(|| PathBuf::from(dir))
    })
}

/// Every kernel feature capture needs that this machine lacks, each as an actionable sentence.
pub fn missing_kernel_features() -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push(
            "BTF (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
                .to_owned(),
        );
    }
    if cgroup2_mount().is_none() {
        missing.push("a cgroup v2 mount: mount cgroup2 (e.g. at /sys/fs/cgroup) or boot with systemd.unified_cgroup_hierarchy=1".to_owned());
    }
    if bpffs_mount().is_none() {
        missing.push("a bpffs mount for pins: `mount -t bpf bpf /sys/fs/bpf`".to_owned());
    }
    if !Path::new("/proc/self/ns/net").exists() {
        missing.push("network namespaces (CONFIG_NET_NS)".to_owned());
    }
    missing
}
