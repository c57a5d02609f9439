//! Local mode: the registry read from a folder of Kubernetes YAML manifests, re-read whenever a
//! file in it changes (polled, so it works on any filesystem and with editors that replace
//! files). Whatever the folder holds, a scan is bounded in time, memory and report size, and a
//! file that cannot be read or parsed keeps its last good objects in force.

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize as _;
use tokio::sync::watch;

use super::{ObjectError, Registry};

/// How often the folder is checked; enrollment must follow an edit within a second.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A manifest file larger than this is not read: 10,000 pods and 2,000 Services with their
/// EndpointSlices (the bench's scale file) take about 4 MiB; a file this big is a mistake, or
/// an attack on the agent's memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// All manifest files together; files past it (in name order) are not read.
pub const MAX_FOLDER_BYTES: u64 = 128 * 1024 * 1024;
/// Entries of the folder looked at; the rest are reported, not read.
pub const MAX_FILES: usize = 4096;
/// Documents in one file (the bench's scale file has 14,100); the rest of the file is
/// reported, not read.
pub const MAX_DOCUMENTS_PER_FILE: usize = 100_000;

/// Why a file of the folder was not (or not wholly) taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("not a regular file ({0}): skipped")]
    NotRegular(&'static str),
    #[error("cannot be opened: {0} (a dangling link or a symlink loop?)")]
    Unreadable(String),
    #[error("{size} bytes is over the limit of {limit} bytes per manifest file: not read")]
    TooLarge { size: u64, limit: u64 },
    #[error("the folder's manifests are over {limit} bytes together: this file was not read")]
    FolderTooLarge { limit: u64 },
    #[error("the folder has over {MAX_FILES} entries: this one was not looked at")]
    TooManyFiles,
    #[error("{MAX_DOCUMENTS_PER_FILE} documents at most per file: the rest was not read")]
    TooManyDocuments,
    #[error("is not UTF-8 text")]
    NotText,
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
}

/// What identifies a file's content cheaply: device, inode, size and modification time.
type Stamp = (u64, u64, u64, i64, i64);

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// One file as last read: the text of its last version that parsed, and its current error.
#[derive(Debug, Default)]
struct FileState {
    stamp: Option<Stamp>,
    /// The text of the last version that parsed: kept as text, not as parsed documents, so
    /// the folder costs its size in memory (a parsed document is ten times larger).
    good: Arc<str>,
    /// Objects that version holds.
    good_count: usize,
    error: Option<FileError>,
}

impl FileState {
    /// Whether the file's bytes were read, and so count toward [`MAX_FOLDER_BYTES`]: a file
    /// refused unread takes no room from the others.
    fn counts_toward_folder(&self) -> bool {
        !matches!(
            self.error,
            Some(
                FileError::NotRegular(_)
                    | FileError::Unreadable(_)
                    | FileError::TooLarge { .. }
                    | FileError::FolderTooLarge { .. }
                    | FileError::TooManyFiles
            )
        )
    }
}

/// The folder and what each of its files last gave. Scans run on a blocking thread: they read
/// files, and a file system can stall.
#[derive(Debug)]
pub struct Folder {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Entries that are not manifest files but were reported (FIFOs and the like), by stamp.
    listing: Vec<(PathBuf, Option<Stamp>)>,
    listing_error: Option<String>,
    scanned: bool,
}

fn is_manifest_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

impl Folder {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
            listing: Vec::new(),
            listing_error: None,
            scanned: false,
        }
    }

    /// The manifest entries of the folder with their stamps (`None`: could not be stat'ed),
    /// sorted by name, at most [`MAX_FILES`] plus one marker of overflow.
    #[expect(
        clippy::disallowed_methods,
        reason = "Folder scans run under spawn_blocking"
    )]
    fn list(&self) -> (Vec<(PathBuf, Option<Stamp>)>, Option<String>) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => return (Vec::new(), Some(e.to_string())),
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_manifest_name(p))
            .take(MAX_FILES + 1)
            .collect();
        names.sort();
        let listing = names
            .into_iter()
            // `metadata` follows links, as a ConfigMap mount needs; a loop or a dangling
            // link gives no stamp and is reported when read.
            .map(|p| {
                let stamp = std::fs::metadata(&p).ok().map(|m| stamp(&m));
                (p, stamp)
            })
            .collect();
        (listing, None)
    }

    /// Rescans the folder; returns a new registry when anything changed since the last scan.
    pub fn rescan(&mut self) -> Option<Registry> {
        let (listing, listing_error) = self.list();
        if self.scanned && listing == self.listing && listing_error == self.listing_error {
            return None;
        }
        self.scanned = true;
        self.listing = listing;
        self.listing_error = listing_error;
        Some(self.rebuild())
    }

    /// Reads what changed, keeps what did not, and builds the registry from every file's
    /// good documents.
    fn rebuild(&mut self) -> Registry {
        let mut total: u64 = 0;
        let mut seen = BTreeMap::new();
        let mut docs = Vec::new();
        for (index, (path, stamp)) in self.listing.iter().enumerate() {
            let mut state = self.files.remove(path).unwrap_or_default();
            let mut fresh = None;
            if index >= MAX_FILES {
                state.error = Some(FileError::TooManyFiles);
            } else if state.stamp != *stamp || stamp.is_none() {
                state.stamp = *stamp;
                match read_file(path, MAX_FOLDER_BYTES.saturating_sub(total)) {
                    Ok(text) => {
                        let (parsed, error) = parse_documents(&text);
                        if error.is_none() {
                            state.good = text.into();
                            state.good_count = parsed.len();
                            fresh = Some(parsed);
                        }
                        state.error = error;
                    }
                    Err(error) => state.error = Some(error),
                }
            }
            if state.counts_toward_folder() {
                total = total.saturating_add(stamp.map_or(0, |s| s.2));
            }
            // The good version parsed before, so it parses again the same.
            let objects = fresh.unwrap_or_else(|| parse_documents(&state.good).0);
            let source = path.display().to_string();
            docs.extend(objects.into_iter().map(|d| (source.clone(), d)));
            seen.insert(path.clone(), state);
        }
        self.files = seen;
        let mut errors = Vec::new();
        if let Some(e) = &self.listing_error {
            errors.push(ObjectError {
                source: self.dir.display().to_string(),
                object: "<folder>".into(),
                reason: format!("cannot list the manifest folder: {e}"),
                problem: "unlistable_folder",
            });
        }
        for (path, state) in &self.files {
            if let Some(error) = &state.error {
                let kept = if state.good_count == 0 {
                    String::new()
                } else {
                    format!(
                        "; its last good version ({} objects) stays in force",
                        state.good_count
                    )
                };
                errors.push(ObjectError {
                    source: path.display().to_string(),
                    object: "<file>".into(),
                    reason: format!("{error}{kept}"),
                    problem: "unreadable_file",
                });
            }
        }
        let mut registry = Registry::from_objects(docs);
        errors.append(&mut registry.errors);
        registry.errors = errors;
        registry.bound_errors();
        registry
    }
}

/// Reads one manifest file as text, refusing what is not a regular file or is too large. The
/// caller parses it; when that fails, it keeps the file's previous good version instead: a
/// half-written file must not remove the objects its complete version held.
#[expect(
    clippy::disallowed_methods,
    reason = "Folder scans run under spawn_blocking"
)]
fn read_file(path: &Path, folder_room: u64) -> Result<String, FileError> {
    // O_NONBLOCK: should the name become a FIFO between listing and opening, the open does not
    // wait for a writer; fstat below then refuses it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| FileError::Unreadable(e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::Unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(FileError::TooLarge {
            size: meta.len(),
            limit: MAX_FILE_BYTES,
        });
    }
    if meta.len() > folder_room {
        return Err(FileError::FolderTooLarge {
            limit: MAX_FOLDER_BYTES,
        });
    }
    let mut bytes = Vec::new();
    // The file may grow after fstat: never read past the cap.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::Unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| FileError::NotText)
}

/// Splits a (multi-document) YAML text into documents, stopping at the first error: after
/// one, the parser cannot find the next document reliably, and asking it again would only
/// repeat the error without end.
pub fn parse_documents(text: &str) -> (Vec<serde_yaml::Value>, Option<FileError>) {
    let mut docs = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        if index >= MAX_DOCUMENTS_PER_FILE {
            return (docs, Some(FileError::TooManyDocuments));
        }
        match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(value) => docs.push(value),
            Err(e) => {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                let message = e.to_string();
                // serde_yaml appends " at line L column C": said once, in front.
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_owned();
                return (
                    docs,
                    Some(FileError::Syntax {
                        line,
                        column,
                        message,
                    }),
                );
            }
        }
    }
    (docs, None)
}

/// Reads the folder for the first time on a blocking thread.
pub async fn first_read(dir: PathBuf) -> (Folder, Registry) {
    let read = tokio::task::spawn_blocking(move || {
        let mut folder = Folder::new(dir);
        let registry = folder.rescan().unwrap_or_default();
        (folder, registry)
    });
    read.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading the manifest folder panicked");
        (Folder::new(PathBuf::new()), Registry::default())
    })
}

/// Publishes a new snapshot whenever the folder changes, until every receiver is gone.
pub async fn watch(mut folder: Folder, tx: watch::Sender<Arc<Registry>>) {
    super::log_new_errors(&[], &tx.borrow().errors);
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let scan = tokio::task::spawn_blocking(move || {
            let registry = folder.rescan();
            (folder, registry)
        });
        let Ok((returned, registry)) = scan.await else {
            tracing::error!("scanning the manifest folder panicked; local mode stops following it");
            return;
        };
        folder = returned;
        let Some(registry) = registry else { continue };
        super::log_new_errors(&tx.borrow().errors, &registry.errors);
        tracing::info!(
            pods = registry.pods.len(),
            services = registry.services.len(),
            errors = registry.errors.len(),
            "manifests changed; registry reloaded"
        );
        if tx.send(Arc::new(registry)).is_err() {
            return;
        }
    }
}
