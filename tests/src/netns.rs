//! Named network namespaces (`ip netns`), and running code inside one: a command, or a thread
//! with its own tokio runtime that has joined the namespace.

use std::{fs::File, future::Future, path::PathBuf, thread::JoinHandle};

use anyhow::Context as _;
use nix::sched::{setns, CloneFlags};

use crate::run::run_cmd;

/// Names of all named network namespaces on the machine.
pub fn list() -> Vec<String> {
    run_cmd("ip", &["netns", "list"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `ip netns add` races with itself: the first call in a fresh /run/netns sets up a shared
/// bind mount, and a concurrent call can lose its target. Serialize them in this process and
/// retry the rare cross-process collision.
static ADD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn add(name: &str) -> anyhow::Result<()> {
    let _serialized = ADD_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut last = None;
    for _ in 0..3 {
        match run_cmd("ip", &["netns", "add", name]) {
            Ok(_) => return Ok(()),
            Err(e) => {
                let _ = run_cmd("ip", &["netns", "delete", name]);
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("ip netns add {name} failed")))
}

pub fn delete(name: &str) -> anyhow::Result<()> {
    run_cmd("ip", &["netns", "delete", name]).map(drop)
}

/// The bind-mounted namespace file `ip netns` keeps.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Runs `ip -n <ns> <args…>`.
pub fn ip(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run_cmd("ip", &full)
}

/// Runs a command inside the namespace and returns its stdout.
pub fn exec(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run_cmd("ip", &full)
}

/// Sets a sysctl inside the namespace (e.g. `net.ipv4.ip_forward`).
pub fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    exec(ns, &["sysctl", "-qw", &format!("{key}={value}")]).map(drop)
}

/// Kills the processes living in a namespace of ours (leftovers of a crashed run).
pub fn kill_pids_in(ns: &str) {
    let Ok(out) = run_cmd("ip", &["netns", "pids", ns]) else {
        return;
    };
    for pid in out.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
}

/// Moves the calling thread into the namespace. Only this thread changes netns.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let file = File::open(path(name)).with_context(|| format!("opening netns {name}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering netns {name}"))
}

/// Runs `make_future` on a new thread that joined the namespace, on its own current-thread
/// tokio runtime, and returns the thread's handle.
pub fn spawn_thread<F, Fut, T>(name: &str, make_future: F) -> JoinHandle<anyhow::Result<T>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let name = name.to_owned();
    std::thread::spawn(move || {
        enter(&name)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(make_future())
    })
}

/// Runs a future inside the namespace to completion and returns its output.
pub fn block_on<F, Fut, T>(name: &str, make_future: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    spawn_thread(name, make_future)
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns {name} panicked"))?
}
