//! `cargo xtask build`: the kernel object with nightly (bpfel-unknown-none, build-std=core,
//! bpf-linker), then the user-space workspace with stable, which embeds that object.

use std::path::PathBuf;

use crate::shell;

/// Where the kernel object lands.
pub fn ebpf_object() -> PathBuf {
    shell::root().join("target/ebpf/bpfel-unknown-none/release/weft-ebpf")
}

/// Builds the kernel programs and returns the object's path.
pub fn ebpf() -> anyhow::Result<PathBuf> {
    let root = shell::root();
    shell::run(
        shell::cargo(Some("nightly"))
            .current_dir(root.join("ebpf/weft-ebpf"))
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
                [
                    "--cfg=bpf_target_arch=\"x86_64\"",
                    "-Cdebuginfo=2",
                    "-Clink-arg=--btf",
                ]
                .join("\x1f"),
            ),
    )?;
    let object = ebpf_object();
    anyhow::ensure!(
        object.exists(),
        "the kernel build produced no {}",
        object.display()
    );
    Ok(object)
}

/// A stable `cargo` that embeds the kernel object built by [`ebpf`].
pub fn user_cargo() -> std::process::Command {
    let mut cmd = shell::cargo(None);
    cmd.env("WEFT_BPF_OBJECT", ebpf_object());
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
    ]))?;
    shipped_agent("release")?;
    Ok(shell::root().join("target/release"))
}

/// Test-only code that must never be in a shipped agent: the scripted Kubernetes API
/// (`weft-fake-api`, a test-support crate no product crate depends on) and the mock service it
/// rides on. The check keeps it that way.
const TEST_ONLY_MARKERS: &[&str] = &["fake_api", "tower_test"];

/// Builds the shipped binaries, `weft-agent` (package weft-agent) and `weftctl` (package
/// weftctl), from their own packages alone (no test crate's features can be unified in) and
/// checks neither carries test-only code.
fn shipped_agent(profile: &str) -> anyhow::Result<()> {
    let mut cmd = user_cargo();
    cmd.args(["build", "-p", "weft-agent", "--bins", "-p", "weftctl"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    shell::run(&mut cmd)?;
    for name in ["weft-agent", "weftctl"] {
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
