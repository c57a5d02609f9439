//! `cargo xtask docs-test`: the book under `docs/` checked the way a reader meets it. Its
//! links first, then each chapter's ```` ```sh run ```` blocks in order on a fresh playground,
//! with what each prints held against the ```` ```output ```` block shown after it.

use std::{
    fs::File,
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{build, demo, docs_check, setup, shell};

/// How long one runnable block may take before it is stopped and its chapter fails.
const BLOCK_TIMEOUT: Duration = Duration::from_mins(2);
/// What a failure report shows of a block's output, from its end.
const SHOWN_OUTPUT_LINES: usize = 60;

pub struct Options {
    /// Only chapters whose file name starts with this (`04`, `04-zero`).
    pub chapter: Option<String>,
    /// Leave the last chapter's playground running.
    pub keep: bool,
    /// Use the binaries already in target/debug (writers running one chapter again).
    pub no_build: bool,
}

pub fn docs_dir() -> PathBuf {
    shell::root().join("docs")
}

/// The chapters, `docs/NN-*.md`, in order.
fn chapters() -> anyhow::Result<Vec<PathBuf>> {
    let mut chapters: Vec<PathBuf> = std::fs::read_dir(docs_dir())
        .context("reading docs/")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "md")
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.len() > 3 && n.as_bytes()[..2].iter().all(u8::is_ascii_digit)
                })
        })
        .collect();
    chapters.sort();
    Ok(chapters)
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let broken = docs_check::broken_links(&book_files());
    anyhow::ensure!(
        broken.is_empty(),
        "broken links in the book:\n  {}",
        broken.join("\n  ")
    );
    let bin = if options.no_build {
        shell::root().join("target/debug")
    } else {
        setup::run()?;
        build::all(false)?
    };
    // One playground at a time: its names and addresses are fixed by SPEC.
    std::fs::create_dir_all(demo::state_dir())?;
    let lock = File::create(demo::state_dir().with_extension("lock"))?;
    lock.lock().context("locking the playground")?;
    let selected: Vec<PathBuf> = chapters()?
        .into_iter()
        .filter(|p| {
            options.chapter.as_deref().is_none_or(|prefix| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
        })
        .collect();
    anyhow::ensure!(!selected.is_empty(), "no chapter matches");
    let started = Instant::now();
    let mut ran = 0;
    for (n, chapter) in selected.iter().enumerate() {
        let keep = options.keep && n + 1 == selected.len();
        ran += run_chapter(chapter, &bin, keep)?;
    }
    println!(
        "docs-test: {} chapters, {ran} runnable blocks passed in {:.0?}",
        selected.len(),
        started.elapsed()
    );
    Ok(())
}

/// The book and the pages that point into it.
pub fn book_files() -> Vec<PathBuf> {
    let mut files = docs_check::markdown_files(&docs_dir());
    files.push(shell::root().join("README.md"));
    files
}

fn run_chapter(chapter: &Path, bin: &Path, keep: bool) -> anyhow::Result<usize> {
    let name = chapter
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = std::fs::read_to_string(chapter)?;
    let misspelt = docs_check::misspelt_runnable(&text);
    anyhow::ensure!(
        misspelt.is_empty(),
        "{name}: fences at lines {misspelt:?} look meant to run but are not `sh run`"
    );
    let blocks = docs_check::runnable_blocks(&text);
    if blocks.is_empty() {
        println!("docs-test: {name}: no runnable block");
        return Ok(0);
    }
    let up = Instant::now();
    let (cluster, _manifests) =
        demo::start(bin).with_context(|| format!("{name}: bringing up the playground"))?;
    let children = cluster.keep_running();
    println!("docs-test: {name}: playground up in {:.1?}", up.elapsed());
    let result = blocks.iter().try_for_each(|block| {
        let result = run_block(&name, block);
        reap(&children);
        result
    });
    if !keep || result.is_err() {
        demo::down();
        reap(&children);
    }
    result?;
    println!("docs-test: {name}: {} blocks passed", blocks.len());
    Ok(blocks.len())
}

/// Collects the playground processes a block stopped (an agent it upgraded, say), so they do
/// not linger as zombies that `kill -0` still finds while the test goes on.
fn reap(children: &[u32]) {
    for pid in children.iter().filter_map(|p| i32::try_from(*p).ok()) {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

fn run_block(chapter: &str, block: &docs_check::Block) -> anyhow::Result<()> {
    let started = Instant::now();
    let (status, output) = execute(&block.script)
        .with_context(|| format!("{chapter}:{}: running the block", block.line))?;
    let shown = || tail(&output, SHOWN_OUTPUT_LINES);
    let Some(status) = status else {
        anyhow::bail!(
            "{chapter}:{}: the block ran over {BLOCK_TIMEOUT:?} and was stopped\n--- script\n{}\n--- output (end)\n{}",
            block.line,
            block.script,
            shown()
        );
    };
    anyhow::ensure!(
        status.success(),
        "{chapter}:{}: the block failed ({status})\n--- script\n{}\n--- output (end)\n{}",
        block.line,
        block.script,
        shown()
    );
    if let Some(expected) = &block.expected {
        if let Some(line) = docs_check::first_unmatched(expected, &output) {
            anyhow::bail!(
                "{chapter}:{}: the output shown after the block does not match what it printed; \
                 first line not found in order: {line:?}\n--- script\n{}\n--- expected\n{}\n--- output (end)\n{}",
                block.line,
                block.script,
                expected.join("\n"),
                shown()
            );
        }
    }
    println!(
        "docs-test: {chapter}:{} ok in {:.1?}",
        block.line,
        started.elapsed()
    );
    Ok(())
}

/// Runs a block as the reader would paste it into bash: stdout and stderr together, from the
/// repository root with the debug binaries first on PATH. `None` status: it timed out.
fn execute(script: &str) -> anyhow::Result<(Option<std::process::ExitStatus>, String)> {
    let log_path = std::env::temp_dir().join(format!("weft-docs-block-{}.log", std::process::id()));
    let log = File::create(&log_path)?;
    let path = format!(
        "{}:{}",
        shell::root().join("target/debug").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(shell::root())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so a timeout stops what the block started too.
        .process_group(0)
        .spawn()
        .context("starting bash")?;
    let deadline = Instant::now() + BLOCK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // What the block left running in the background ends with it, so no chapter inherits
    // another's servers.
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut output = String::new();
    File::open(&log_path)?
        .read_to_string(&mut output)
        .or_else(|_| {
            // Binary output (a PNG to stdout): keep what reads as text.
            let bytes = std::fs::read(&log_path)?;
            output = String::from_utf8_lossy(&bytes).into_owned();
            Ok::<usize, std::io::Error>(output.len())
        })?;
    let _ = std::fs::remove_file(&log_path);
    Ok((status, output))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_book_has_no_broken_internal_link() {
        let broken = crate::docs_check::broken_links(&super::book_files());
        assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    }
}
