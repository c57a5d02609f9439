//! `cargo xtask fuzz [--time S] [--target T]`: builds the libFuzzer targets in `tests/fuzz`
//! with cargo-fuzz (nightly, AddressSanitizer) and runs each for `S` seconds from the seed
//! corpus kept in the repository. New inputs go to a scratch corpus under `target/`, so a run
//! never changes the checkout. Any crash, leak or timeout fails the task.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Stdio,
};

use anyhow::{bail, Context as _};

use crate::shell;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "manifest",
    "hbone_connect",
    "policy",
    "admin_request",
    "weftctl_parse",
    "jwt",
];

fn fuzz_dir() -> PathBuf {
    shell::root().join("tests/fuzz")
}

fn target_dir() -> PathBuf {
    shell::root().join("target/fuzz")
}

/// What one target's run reported.
#[derive(Debug)]
pub struct Outcome {
    pub runs: u64,
    pub seconds: u64,
    pub coverage: u64,
    pub features: u64,
}

pub fn run(seconds: u64, only: Option<&str>) -> anyhow::Result<Vec<Outcome>> {
    crate::setup::ensure_cargo_fuzz()?;
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target {t:?}: the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    shell::run(fuzz_cargo().args(["build", "--fuzz-dir"]).arg(fuzz_dir()))?;
    let mut outcomes = Vec::new();
    for target in targets {
        let outcome = run_one(target, seconds)?;
        eprintln!(
            "fuzz: {target}: {} runs in {} s, coverage {} edges, {} features, nothing found",
            outcome.runs, outcome.seconds, outcome.coverage, outcome.features
        );
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn fuzz_cargo() -> std::process::Command {
    let mut cmd = shell::cargo(Some("nightly"));
    cmd.arg("fuzz");
    cmd.env("CARGO_TARGET_DIR", target_dir());
    cmd
}

fn run_one(target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let scratch = target_dir().join("corpus").join(target);
    std::fs::create_dir_all(&scratch)?;
    let seeds = fuzz_dir().join("corpus").join(target);
    let mut child = fuzz_cargo()
        .args(["run", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg(target)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // One input may take at most this long, and the process this much memory: a parser
        // that loops or balloons is a finding, not a slow run.
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    let stderr = child.stderr.take().context("fuzzer stderr")?;
    let mut outcome = Outcome {
        runs: 0,
        seconds,
        coverage: 0,
        features: 0,
    };
    let mut tail = std::collections::VecDeque::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("stat::number_of_executed_units:") {
            outcome.runs = rest.trim().parse().unwrap_or(0);
        }
        for (key, slot) in [
            ("cov: ", &mut outcome.coverage),
            ("ft: ", &mut outcome.features),
        ] {
            if let Some(value) = line
                .split(key)
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
            {
                *slot = value;
            }
        }
        tail.push_back(line);
        if tail.len() > 60 {
            tail.pop_front();
        }
    }
    if !child.wait()?.success() {
        for line in &tail {
            eprintln!("{line}");
        }
        bail!("fuzz target {target} found a failure (see above; the input is saved under tests/fuzz/artifacts/{target})");
    }
    Ok(outcome)
}
