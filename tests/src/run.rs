//! Run identity and leftover sweeping: each harness run owns a short id, records its PID under
//! `/run/weft-harness/`, and removes what dead runs left behind before it starts.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context as _;

const RECORD_DIR: &str = "/run/weft-harness";

/// The id every name of one run carries: `weft-<id>-…`. `None` inside means the fixed names of
/// the demo playground (`weft-node-a`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId(Option<String>);

impl RunId {
    /// A fresh id for a test run, recorded as owned by this process.
    pub fn fresh() -> anyhow::Result<Self> {
        fs::create_dir_all(RECORD_DIR).with_context(|| format!("creating {RECORD_DIR}"))?;
        for _ in 0..64 {
            let id = format!("t{:04x}", rand::random::<u16>());
            let record = PathBuf::from(RECORD_DIR).join(&id);
            if fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&record)
                .is_ok()
            {
                fs::write(&record, std::process::id().to_string())?;
                return Ok(Self(Some(id)));
            }
        }
        anyhow::bail!("no free run id in {RECORD_DIR}: remove stale records there")
    }

    /// The fixed names of the demo playground.
    pub fn demo() -> Self {
        Self(None)
    }

    /// `weft-<id>-` or, for the demo, `weft-`.
    pub fn prefix(&self) -> String {
        match &self.0 {
            Some(id) => format!("weft-{id}-"),
            None => "weft-".into(),
        }
    }

    /// The run's own top-level name: `weft-<id>` or `weft-demo`.
    pub fn root_name(&self) -> String {
        match &self.0 {
            Some(id) => format!("weft-{id}"),
            None => "weft-demo".into(),
        }
    }

    pub(crate) fn release(&self) {
        if let Some(id) = &self.0 {
            let _ = fs::remove_file(PathBuf::from(RECORD_DIR).join(id));
        }
    }
}

/// Removes everything of test runs whose owning process is gone (crashed or killed runs).
pub fn sweep_dead_runs() {
    let Ok(entries) = fs::read_dir(RECORD_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let owner = fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if owner.is_some_and(pid_alive) {
            continue;
        }
        let run = RunId(Some(id));
        eprintln!(
            "harness: sweeping leftovers of dead run {}",
            run.root_name()
        );
        remove_everything(&run);
        run.release();
    }
}

/// Removes every netns, cgroup and bpffs folder carrying the run's names. Errors are reported,
/// not fatal: a sweep must get as far as it can.
pub fn remove_everything(run: &RunId) {
    let prefix = run.prefix();
    for ns in crate::netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
    {
        crate::netns::kill_pids_in(&ns);
        if let Err(e) = crate::netns::delete(&ns) {
            eprintln!("harness: {e:#}");
        }
    }
    if let Some(root) = crate::cgroup::run_parent(run) {
        crate::cgroup::remove_tree(&root);
    }
    let pins = PathBuf::from("/sys/fs/bpf").join(run.root_name());
    if pins.exists() {
        let _ = fs::remove_dir_all(&pins);
    }
}

pub(crate) fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Runs a command to completion, failing with its stderr.
pub(crate) fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}: is it installed?"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
