//! `cargo xtask test`: set-up, formatting, clippy with warnings denied, then every test,
//! privileged ones included (they fail, never skip, under CI=true), the book's runnable
//! chapters, each fuzz target briefly, then the quick benchmark as a smoke test.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
};

use anyhow::Context as _;

use crate::{build, setup, shell};

/// How long `cargo xtask test` runs each fuzz target.
const FUZZ_SECONDS: u64 = 15;

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    shell::run(shell::cargo(None).args(["fmt", "--all", "--check"]))?;
    for krate in ["weft-ebpf", "weft-ebpf-probe"] {
        shell::run(
            shell::cargo(Some("nightly"))
                .current_dir(shell::root().join("ebpf").join(krate))
                .args(["fmt", "--check"]),
        )?;
    }
    build::ebpf()?;
    shell::run(build::user_cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    // End-to-end tests start the real binaries (weft-agent among them): build them all first.
    shell::run(build::user_cargo().args(["build", "--workspace", "--bins"]))?;
    disk_report("tests");
    let totals = run_tests()?;
    // One closing line for people and for CI: every test binary's results added up.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    anyhow::ensure!(
        totals.failed == 0 && totals.ok,
        "some tests failed (see above)"
    );
    anyhow::ensure!(totals.passed > 0, "no test ran");
    // The book, as a reader runs it, on the binaries just built: a chapter whose commands or
    // shown output no longer hold fails the run.
    crate::docs::run(&crate::docs::Options {
        chapter: None,
        keep: false,
        no_build: true,
    })
    .context("the book's runnable chapters (cargo xtask docs-test) failed")?;
    // Nothing after this point reads the debug build: under CI, where the disk may be short,
    // give its space to the fuzz and release builds.
    prune_in_ci("target/debug");
    disk_report("fuzz");
    // Every fuzz target, briefly, from the kept seeds: a parser regression that crashes,
    // leaks or hangs on a known input fails here.
    crate::fuzz::run(FUZZ_SECONDS, None).context("fuzzing found a failure")?;
    prune_in_ci("target/fuzz");
    disk_report("bench");
    // The benchmark as a smoke test: every scenario must run; no figure is judged.
    crate::bench::run(true).context("the quick benchmark (smoke test) failed")?;
    Ok(())
}

/// Below this much free disk a stage is likely to fail mid-build: say so before it starts,
/// so a "No space left on device" has its cause on the line above it.
const LOW_DISK_BYTES: u64 = 8 << 30;

fn disk_report(stage: &str) {
    let target = shell::root().join("target");
    let probe = if target.exists() {
        target
    } else {
        shell::root()
    };
    match shell::free_bytes(&probe) {
        Some(free) if free < LOW_DISK_BYTES => eprintln!(
            "disk: {:.1} GiB free before the {stage} stage, under the {} GiB it may need",
            gib(free),
            LOW_DISK_BYTES >> 30
        ),
        Some(free) => eprintln!("disk: {:.1} GiB free before the {stage} stage", gib(free)),
        None => eprintln!("disk: df could not tell the free space before the {stage} stage"),
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "a GiB figure for people, to one decimal"
)]
fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Removes a build folder a finished stage no longer needs, only under CI: on a developer's
/// machine it is the next run's head start.
fn prune_in_ci(relative: &str) {
    if !shell::in_ci() {
        return;
    }
    let folder = shell::root().join(relative);
    if !folder.exists() {
        return;
    }
    match std::fs::remove_dir_all(&folder) {
        Ok(()) => eprintln!("disk: removed {relative} (CI: a later stage does not read it)"),
        Err(e) => eprintln!("disk: could not remove {relative}: {e}"),
    }
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ok: bool,
}

/// Runs `cargo test`, echoing its output, and adds up its `test result:` lines.
fn run_tests() -> anyhow::Result<Totals> {
    let mut cmd = build::user_cargo();
    cmd.args([
        "test",
        "--workspace",
        "--all-features",
        // Every test binary runs even after one fails, so one run shows every failure.
        "--no-fail-fast",
        "--",
        "--test-threads=2",
    ]);
    eprintln!("+ cargo test --workspace --all-features --no-fail-fast -- --test-threads=2");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.passed += count_before(rest, " passed");
            totals.failed += count_before(rest, " failed");
        }
    }
    totals.ok = child.wait()?.success();
    Ok(totals)
}

fn count_before(text: &str, label: &str) -> u64 {
    text.find(label)
        .and_then(|end| text[..end].rsplit([' ', '.', ';']).next()?.parse().ok())
        .unwrap_or(0)
}
