//! Attaching the capture program to one pod's netns, as a pinned link under
//! `<pin_dir>/pods/<namespace>_<pod>/sk_lookup`. A pinned link outlives the agent, which is
//! what keeps capture failing closed while it restarts; detaching is unpinning.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};

use super::{CaptureError, Programs};

const LINK: &str = "sk_lookup";

fn pin_error(path: &Path, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Pin(format!("{}: {e}", path.display()))
}

/// The folder of one pod's links.
pub fn pod_dir(pin_dir: &Path, pod_key: &str) -> PathBuf {
    pin_dir.join("pods").join(pod_key)
}

/// Pod keys that have pinned links (from this or an earlier agent).
#[expect(
    clippy::disallowed_methods,
    reason = "enrollment runs on a blocking thread; uninstall is synchronous"
)]
pub fn pinned_pods(pin_dir: &Path) -> Vec<String> {
    fs::read_dir(pin_dir.join("pods"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Attaches the capture program to the pod's netns, unless a link is already pinned there
/// (adoption after a restart). Returns whether a link was newly attached.
#[expect(
    clippy::disallowed_methods,
    reason = "enrollment runs on a blocking thread"
)]
pub fn attach(programs: &mut Programs, pod_key: &str, netns: &File) -> Result<bool, CaptureError> {
    let dir = pod_dir(&programs.pin_dir, pod_key);
    fs::create_dir_all(&dir).map_err(|e| pin_error(&dir, e))?;
    let pin = dir.join(LINK);
    if pin.exists() && PinnedLink::from_pin(&pin).is_ok() {
        return Ok(false);
    }
    let _ = fs::remove_file(&pin);
    let program_error = |source| CaptureError::Program {
        name: "weft_sk_lookup".to_owned(),
        source,
    };
    let id = programs.sk_lookup.attach(netns).map_err(program_error)?;
    let link: FdLink = programs
        .sk_lookup
        .take_link(id)
        .map_err(program_error)?
        .into();
    link.pin(&pin).map_err(|e| pin_error(&pin, e))?;
    Ok(true)
}

/// Detaches the pod's links by unpinning them. Returns the names removed.
#[expect(
    clippy::disallowed_methods,
    reason = "enrollment runs on a blocking thread; uninstall is synchronous"
)]
pub fn detach(pin_dir: &Path, pod_key: &str) -> Result<Vec<String>, CaptureError> {
    let dir = pod_dir(pin_dir, pod_key);
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match PinnedLink::from_pin(&path) {
            // Dropping the last reference to the link detaches it.
            Ok(link) => drop(link.unpin().map_err(|e| pin_error(&path, e))?),
            Err(_) => fs::remove_file(&path).map_err(|e| pin_error(&path, e))?,
        }
        removed.push(format!(
            "pods/{pod_key}/{}",
            entry.file_name().to_string_lossy()
        ));
    }
    fs::remove_dir(&dir).map_err(|e| pin_error(&dir, e))?;
    Ok(removed)
}

/// Detaches every pod's links under `pods_dir`.
pub fn detach_all(pods_dir: &Path) -> Result<Vec<String>, CaptureError> {
    let pin_dir = pods_dir.parent().unwrap_or(pods_dir);
    let mut removed = Vec::new();
    for key in pinned_pods(pin_dir) {
        removed.extend(detach(pin_dir, &key)?);
    }
    if pods_dir.exists() {
        fs::remove_dir(pods_dir).map_err(|e| pin_error(pods_dir, e))?;
    }
    Ok(removed)
}
