//! `cargo xtask build`: the kernel objects with nightly (bpfel-unknown-none, build-std=core,
//! bpf-linker), then the user-space workspace with stable, which embeds the capture object.
//! The harness probe is built into an object of its own, for the tests only.

use std::path::PathBuf;

use crate::shell;

/// The kernel crate the agent embeds: capture only.
const CAPTURE_CRATE: &str = "weft-ebpf";
/// The test-only kernel crate: the harness probe, never embedded.
const PROBE_CRATE: &str = "weft-ebpf-probe";

fn kernel_object(krate: &str) -> PathBuf {
    shell::root()
        .join("target/ebpf/bpfel-unknown-none/release")
        .join(krate)
}

/// Where the capture object lands.
pub fn ebpf_object() -> PathBuf {
    kernel_object(CAPTURE_CRATE)
}

/// Where the harness probe's object lands (`WEFT_PROBE_OBJECT` for the tests).
pub fn probe_object() -> PathBuf {
    kernel_object(PROBE_CRATE)
}

/// The architectures aya-ebpf 0.2 has kernel bindings for (aya-build 0.2's list).
const BPF_TARGET_ARCHES: &[&str] = &[
    "aarch64",
    "arm",
    "loongarch64",
    "mips",
    "mips64",
    "powerpc64",
    "riscv64",
    "s390x",
    "x86_64",
];

/// `bpf_target_arch` for aya-ebpf: the architecture the agent is built for, which is this
/// machine's (xtask builds user space without `--target`). Rust's `target_arch` names are the
/// ones aya uses. It selects which architecture's kernel bindings aya-ebpf compiles in
/// (`pt_regs` and the like): capture's contexts are the same everywhere, but a program reading
/// registers would read the wrong ones on another architecture.
fn bpf_target_arch() -> anyhow::Result<&'static str> {
    let arch = std::env::consts::ARCH;
    anyhow::ensure!(
        BPF_TARGET_ARCHES.contains(&arch),
        "aya-ebpf has no kernel bindings for {arch} (it knows {})",
        BPF_TARGET_ARCHES.join(", ")
    );
    Ok(arch)
}

/// Builds one kernel crate under `ebpf/` and returns its object's path.
fn kernel_crate(krate: &str) -> anyhow::Result<PathBuf> {
    let root = shell::root();
    let arch = format!("--cfg=bpf_target_arch=\"{}\"", bpf_target_arch()?);
    shell::run(
        shell::cargo(Some("nightly"))
            .current_dir(root.join("ebpf").join(krate))
            .args([
                "build",
                "--release",
                "--locked",
                "-Z",
                "build-std=core",
                "--target",
                "bpfel-unknown-none",
                "--target-dir",
            ])
            .arg(root.join("target/ebpf"))
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                [arch.as_str(), "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
            ),
    )?;
    let object = kernel_object(krate);
    anyhow::ensure!(
        object.exists(),
        "the kernel build produced no {}",
        object.display()
    );
    Ok(object)
}

/// Builds the kernel objects, checks that the capture object holds exactly what the agent
/// loads (so the probe, or any test-only program, can never ship), and returns its path.
pub fn ebpf() -> anyhow::Result<PathBuf> {
    let object = kernel_crate(CAPTURE_CRATE)?;
    let bytes =
        std::fs::read(&object).map_err(|e| anyhow::anyhow!("reading {}: {e}", object.display()))?;
    weft_agent::capture::programs::check_object(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", object.display()))?;
    eprintln!(
        "build: {} holds programs {:?} only",
        object.display(),
        weft_agent::capture::programs::PROGRAMS
    );
    kernel_crate(PROBE_CRATE)?;
    Ok(object)
}

/// A stable `cargo` that embeds the capture object built by [`ebpf`] and points the tests it
/// runs at the probe object.
pub fn user_cargo() -> std::process::Command {
    let mut cmd = shell::cargo(None);
    cmd.env("WEFT_BPF_OBJECT", ebpf_object());
    cmd.env("WEFT_PROBE_OBJECT", probe_object());
    cmd
}

/// Builds, in release, only what `cargo xtask bench` runs: the agent and the load tool (not
/// xtask's own plotting stack), and returns their folder. The agent is built on its own, after
/// the load tool, so nothing the test crates ask of shared dependencies is unified into it.
pub fn bench() -> anyhow::Result<PathBuf> {
    ebpf()?;
    shell::run(user_cargo().args([
        "build",
        "--release",
        "-p",
        "weft-tests",
        "--bin",
        "weft-bench",
        // The waypoint scenarios' backends (the fixture's echo and byte servers).
        "--bin",
        "weft-echo",
        "--bin",
        "weft-testpod",
    ]))?;
    shipped_agent("release")?;
    Ok(shell::root().join("target/release"))
}

/// Test-only code that must never be in a shipped agent: the scripted Kubernetes API
/// (`weft-fake-api`, a test-support crate no product crate depends on), the mock service it
/// rides on, and the harness probe's programs (which [`ebpf`] already keeps out of the
/// embedded object; this sees them in the binary itself).
const TEST_ONLY_MARKERS: &[&str] = &["fake_api", "tower_test", "weft_probe"];

/// Builds the shipped binaries, `weft-agent`, `weft-waypoint` and `weftctl`, from their own
/// packages alone (no test crate's features can be unified in) and checks none carries
/// test-only code.
fn shipped_agent(profile: &str) -> anyhow::Result<()> {
    let mut cmd = user_cargo();
    cmd.args([
        "build",
        "-p",
        "weft-agent",
        "--bins",
        "-p",
        "weft-waypoint",
        "-p",
        "weftctl",
    ]);
    if profile == "release" {
        cmd.arg("--release");
    }
    shell::run(&mut cmd)?;
    for name in ["weft-agent", "weft-waypoint", "weftctl"] {
        let binary = shell::root().join("target").join(profile).join(name);
        let bytes = std::fs::read(&binary)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", binary.display()))?;
        for marker in TEST_ONLY_MARKERS {
            anyhow::ensure!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} carries test-only code ({marker}): it must be built on its own package",
                binary.display()
            );
        }
        eprintln!(
            "build: {} carries none of {}",
            binary.display(),
            TEST_ONLY_MARKERS.join(", ")
        );
    }
    Ok(())
}

/// Builds everything and returns the folder holding the binaries.
pub fn all(release: bool) -> anyhow::Result<PathBuf> {
    ebpf()?;
    let mut cmd = user_cargo();
    cmd.args(["build", "--workspace", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    shell::run(&mut cmd)?;
    if release {
        // The workspace build unifies the test crates' features of shared dependencies: build
        // the shipped binaries again from their own package, over the unified ones.
        shipped_agent("release")?;
    }
    Ok(shell::root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}
