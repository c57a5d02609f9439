//! Local mode: the registry read from a folder of Kubernetes YAML manifests, re-read whenever a
//! file in it changes (polled, so it works on any filesystem and with editors that replace
//! files).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use super::{ObjectError, Registry};

/// How often the folder is checked; enrollment must follow an edit within a second.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Reads every `*.yaml`, `*.yml` and `*.json` file (multi-document YAML allowed). A file that
/// cannot be read or parsed is reported as a whole; the others still count.
pub fn read_dir(dir: &Path) -> Registry {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let files = match manifest_files(dir) {
        Ok(files) => files,
        Err(e) => {
            errors.push(ObjectError {
                source: dir.display().to_string(),
                object: "<folder>".into(),
                reason: e.to_string(),
            });
            Vec::new()
        }
    };
    for file in files {
        let source = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(ObjectError {
                    source,
                    object: "<file>".into(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        for (index, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => {}
                Ok(value) => docs.push((source.clone(), value)),
                Err(e) => errors.push(ObjectError {
                    source: source.clone(),
                    object: format!("<document {index}>"),
                    reason: e.to_string(),
                }),
            }
        }
    }
    for e in &errors {
        tracing::warn!(source = %e.source, object = %e.object, reason = %e.reason, "skipping unreadable manifest");
    }
    let mut registry = Registry::from_objects(docs);
    errors.append(&mut registry.errors);
    registry.errors = errors;
    registry
}

use serde::Deserialize as _;

fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// What identifies the folder's content cheaply: names, sizes and modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let modified = meta.and_then(|m| m.modified().ok());
            (p, size, modified)
        })
        .collect()
}

/// Publishes a new snapshot whenever the folder changes, until every receiver is gone.
pub async fn watch(dir: PathBuf, tx: watch::Sender<Arc<Registry>>) {
    let mut last = fingerprint(&dir);
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    loop {
        ticker.tick().await;
        let now = fingerprint(&dir);
        if now == last {
            continue;
        }
        last = now;
        let registry = read_dir(&dir);
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
