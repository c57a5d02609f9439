//! `--node NAME`: finds a playground node (`cargo xtask demo up`) in the playground file,
//! enters its network namespace and returns the admin address there.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PlaygroundError {
    #[error("no playground file found (target/weft-demo/playground.json here or above): run `cargo xtask demo up`, or give --playground FILE or --admin ADDR")]
    NotFound,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a playground file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no node {node} in {path}: the nodes are {names}")]
    NoNode {
        node: String,
        path: PathBuf,
        names: String,
    },
    #[error("opening {netns}: is the playground still up (`cargo xtask demo up`)? ({source})")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering {netns} needs root: run weftctl with sudo ({source})")]
    Setns {
        netns: String,
        #[source]
        source: nix::Error,
    },
}

/// The part of `playground.json` weftctl reads.
#[derive(Debug, Deserialize)]
struct Playground {
    #[serde(default)]
    nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Node {
    name: String,
    netns: String,
    admin: SocketAddr,
}

/// Enters the node's netns (this thread only, so before any runtime thread is started) and
/// returns its admin address.
#[expect(
    clippy::disallowed_methods,
    reason = "runs before weftctl starts its runtime, on the only thread"
)]
pub fn enter_node(node: &str, playground: Option<&Path>) -> Result<SocketAddr, PlaygroundError> {
    let path = match playground {
        Some(path) => path.to_owned(),
        None => find_playground().ok_or(PlaygroundError::NotFound)?,
    };
    let text = std::fs::read_to_string(&path).map_err(|source| PlaygroundError::Read {
        path: path.clone(),
        source,
    })?;
    let entry = find_node(&text, &path, node)?;
    let netns = format!("/run/netns/{}", entry.netns);
    let file = std::fs::File::open(&netns).map_err(|source| PlaygroundError::Netns {
        netns: netns.clone(),
        source,
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|source| PlaygroundError::Setns { netns, source })?;
    Ok(entry.admin)
}

fn find_node(text: &str, path: &Path, node: &str) -> Result<Node, PlaygroundError> {
    let doc: Playground = serde_json::from_str(text).map_err(|source| PlaygroundError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let names = doc
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    doc.nodes
        .into_iter()
        .find(|n| n.name == node)
        .ok_or_else(|| PlaygroundError::NoNode {
            node: node.to_owned(),
            path: path.to_owned(),
            names,
        })
}

fn find_playground() -> Option<PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join("target/weft-demo/playground.json");
        if candidate.exists() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_found_by_name_and_a_miss_lists_the_others() {
        let text = r#"{"nodes": [{"name": "node-a", "netns": "weft-node-a", "admin": "127.0.0.1:15000", "pid": 7}], "pods": []}"#;
        let path = Path::new("playground.json");
        let node = find_node(text, path, "node-a").expect("node-a");
        assert_eq!(node.netns, "weft-node-a");
        let error = find_node(text, path, "node-z").expect_err("no node-z");
        assert!(
            error.to_string().contains("the nodes are node-a"),
            "{error}"
        );
    }
}
