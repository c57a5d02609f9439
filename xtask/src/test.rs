//! `cargo xtask test`: set-up, formatting, clippy with warnings denied, then every test,
//! privileged ones included (they fail, never skip, under CI=true), each fuzz target briefly,
//! then the quick benchmark as a smoke test.

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
    let totals = run_tests()?;
    // One closing line for people and for CI: every test binary's results added up.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    anyhow::ensure!(
        totals.failed == 0 && totals.ok,
        "some tests failed (see above)"
    );
    anyhow::ensure!(totals.passed > 0, "no test ran");
    // Every fuzz target, briefly, from the kept seeds: a parser regression that crashes,
    // leaks or hangs on a known input fails here.
    crate::fuzz::run(FUZZ_SECONDS, None).context("fuzzing found a failure")?;
    // The benchmark as a smoke test: every scenario must run; no figure is judged.
    crate::bench::run(true).context("the quick benchmark (smoke test) failed")?;
    Ok(())
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
        "--",
        "--test-threads=2",
    ]);
    eprintln!("+ cargo test --workspace --all-features -- --test-threads=2");
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
