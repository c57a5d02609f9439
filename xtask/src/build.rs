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
/// xtask's own plotting stack), and returns their folder.
pub fn bench() -> anyhow::Result<PathBuf> {
    ebpf()?;
    shell::run(user_cargo().args([
        "build",
        "--release",
        "-p",
        "weft-agent",
        "--bin",
        "weft-agent",
        "-p",
        "weft-tests",
        "--bin",
        "weft-bench",
    ]))?;
    Ok(shell::root().join("target/release"))
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
    Ok(shell::root()
        .join("target")
        .join(if release { "release" } else { "debug" }))
}
