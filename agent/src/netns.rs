//! Pods' network namespaces: the agent enters one on the current thread only for as long as it
//! takes to create a socket or write a sysctl, then returns to the node's namespace. Sockets
//! keep the namespace they were created in, which is how the agent's listeners and connections
//! live inside each pod (the in-pod socket model), and how the routing netlink socket changes
//! the pod's rules.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::sched::{setns, CloneFlags};

/// The agent's own (node) side: the namespace every thread returns to after entering a pod's,
/// and the procfs sysctls are written through. One value, made at start and handed to each
/// [`Netns`]: no process-wide state.
#[derive(Debug)]
pub struct Host {
    netns: File,
    /// Container runtimes mount the agent's own `/proc/sys` read-only, so in Kubernetes mode
    /// sysctls go through the host's `/proc`, mounted writable.
    proc_root: PathBuf,
}

impl Host {
    /// The calling thread's namespace, as the node's. Call at start, before entering any pod.
    #[expect(
        clippy::disallowed_methods,
        reason = "called from the agent's start-up on a blocking thread, or in a synchronous command"
    )]
    pub fn current(proc_root: &Path) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            netns: File::open("/proc/thread-self/ns/net")?,
            proc_root: proc_root.to_owned(),
        }))
    }
}

/// An open handle on a pod's network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
    host: Arc<Host>,
}

impl Netns {
    #[expect(
        clippy::disallowed_methods,
        reason = "enrollment runs on a blocking thread"
    )]
    pub fn open(host: &Arc<Host>, path: &Path) -> io::Result<Self> {
        let file = File::open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("opening netns {}: {e}", path.display()))
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            host: host.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on this thread inside the namespace. `f` must not block or await.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        if let Err(e) = setns(&self.host.netns, CloneFlags::CLONE_NEWNET) {
            // A worker thread stuck in a pod's namespace would put other pods' traffic there.
            tracing::error!(error = %e, "cannot return to the node network namespace; aborting");
            std::process::abort();
        }
        Ok(out)
    }

    /// A non-blocking IPv4 TCP socket that lives in this namespace.
    pub fn tcp_socket(&self) -> io::Result<socket2::Socket> {
        let socket = self.enter(|| {
            socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
        })??;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        Ok(socket)
    }

    /// Writes a sysctl of this namespace (`/proc/sys/net/...` resolves per opening thread).
    #[expect(
        clippy::disallowed_methods,
        reason = "enrollment runs on a blocking thread"
    )]
    pub fn write_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = self.host.proc_root.join("sys").join(key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))?
    }
}
