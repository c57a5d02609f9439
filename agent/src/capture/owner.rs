//! Which agent owns capture on a node, so two agents during an upgrade never fight over a
//! pod. The owner's generation number sits in the pinned `OWNER` map, beside the other pins; a
//! starting agent claims the next one under the node's capture lock, and an agent that finds a
//! newer generation than its own reconciles nothing again. A shared lock every live agent
//! holds tells a start after a crash (nobody holds it) from an upgrade (the old agent does).

use std::{
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
};

use aya::maps::{Array, MapData};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use weft_common::owner::{CARRIED, GENERATION, NETNS};

use super::CaptureError;

/// Held exclusively while an agent changes capture (pod listeners in the maps, links,
/// routing), in the agent's state folder: bpffs holds no regular files.
const CAPTURE_LOCK: &str = "capture.lock";
/// Held shared by every running agent for its whole life; the kernel lets go of it when the
/// process dies, however it dies.
const ALIVE_LOCK: &str = "alive.lock";

/// This agent's claim on capture.
pub struct Owner {
    map: Mutex<Array<MapData, u64>>,
    /// 0 until the first reconcile claims a generation.
    generation: AtomicU64,
    capture_lock: PathBuf,
    /// No other agent was alive when this one started: the previous owner, if any, exited
    /// or died.
    alone_at_start: bool,
    /// Kept for its lock.
    _alive: Flock<File>,
    netns_inode: u64,
}

/// What claiming capture found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The generation taken over from (0: no agent owned capture before).
    pub previous: u64,
    /// The previous owner was not running: the connections it carried when it last published
    /// them, lost with it (0 after a clean exit).
    pub lost_in_crash: Option<u64>,
}

/// The node's capture lock, held while an agent changes capture.
#[derive(Debug)]
pub struct CaptureLock(
    #[expect(dead_code, reason = "held for its Drop, which unlocks")] Flock<File>,
);

fn lock_error(path: &Path, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Pin(format!("locking {}: {e}", path.display()))
}

#[expect(
    clippy::disallowed_methods,
    reason = "called on blocking threads: start-up and enrollment"
)]
fn open_lock_file(path: &Path) -> Result<File, CaptureError> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| lock_error(path, e))
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("generation", &self.generation())
            .field("alone_at_start", &self.alone_at_start)
            .finish_non_exhaustive()
    }
}

impl Owner {
    /// Joins the node's live agents. Called on a blocking thread at start-up (taking the shared
    /// lock waits while another agent is between its two steps here).
    #[expect(
        clippy::disallowed_methods,
        reason = "called on the start-up blocking thread"
    )]
    pub fn join(map: Array<MapData, u64>, state_dir: &Path) -> Result<Self, CaptureError> {
        let alive_path = state_dir.join(ALIVE_LOCK);
        let (alive, alone_at_start) = match Flock::lock(
            open_lock_file(&alive_path)?,
            FlockArg::LockExclusiveNonblock,
        ) {
            Ok(alone) => {
                alone
                    .relock(FlockArg::LockShared)
                    .map_err(|e| lock_error(&alive_path, e))?;
                (alone, true)
            }
            Err((file, Errno::EWOULDBLOCK)) => (
                Flock::lock(file, FlockArg::LockShared)
                    .map_err(|(_, e)| lock_error(&alive_path, e))?,
                false,
            ),
            Err((_, e)) => return Err(lock_error(&alive_path, e)),
        };
        let netns_inode = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        Ok(Self {
            map: Mutex::new(map),
            generation: 0.into(),
            capture_lock: state_dir.join(CAPTURE_LOCK),
            alone_at_start,
            _alive: alive,
            netns_inode,
        })
    }

    fn slot(&self, slot: u32) -> u64 {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&slot, 0)
            .unwrap_or(0)
    }

    fn set(&self, slot: u32, value: u64) -> Result<(), CaptureError> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set(slot, value, 0)
            .map_err(Into::into)
    }

    /// The generation that owns capture now (0: no agent ever claimed it).
    pub fn current(&self) -> u64 {
        self.slot(GENERATION)
    }

    /// This agent's generation, 0 before it claimed one.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether a newer agent has claimed capture since this one did.
    pub fn superseded(&self) -> bool {
        let mine = self.generation();
        mine != 0 && self.current() > mine
    }

    /// Whether the owner runs in this agent's network namespace, so that its admin, metrics
    /// and readiness ports are the ones this agent listens on.
    pub fn owner_shares_netns(&self) -> bool {
        self.slot(NETNS) == self.netns_inode
    }

    /// Takes the node's capture lock, blocking until the agent holding it has finished its
    /// pass (enrollment runs on a blocking thread).
    pub fn lock(&self) -> Result<CaptureLock, CaptureError> {
        Flock::lock(open_lock_file(&self.capture_lock)?, FlockArg::LockExclusive)
            .map(CaptureLock)
            .map_err(|(_, e)| lock_error(&self.capture_lock, e))
    }

    /// Claims capture for this agent, under `_lock`: the next generation after whatever owns it
    /// now.
    pub fn claim(&self, _lock: &CaptureLock) -> Result<Claim, CaptureError> {
        let previous = self.current();
        let lost_in_crash = (previous != 0 && self.alone_at_start).then(|| self.slot(CARRIED));
        let mine = previous + 1;
        self.set(NETNS, self.netns_inode)?;
        self.set(CARRIED, 0)?;
        self.set(GENERATION, mine)?;
        self.generation.store(mine, Ordering::Relaxed);
        Ok(Claim {
            previous,
            lost_in_crash,
        })
    }

    /// Records how many connections the owner carries, for the agent after it should this one
    /// die. Does nothing once superseded: the slot is the new owner's.
    pub fn publish_carried(&self, open: u64) {
        if self.generation() == self.current() && self.generation() != 0 {
            let _ = self.set(CARRIED, open);
        }
    }
}
