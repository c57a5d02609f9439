//! `--node NAME` and `--waypoint NS/NAME`: finds a playground node or waypoint (`cargo xtask
//! demo up`) in the playground file, enters its network namespace and returns the admin
//! address there.

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
    #[error("no waypoint {waypoint} in {path}: the waypoints are {names}")]
    NoWaypoint {
        waypoint: String,
        path: PathBuf,
        names: String,
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
    #[serde(default)]
    waypoints: Vec<WaypointEntry>,
}

#[derive(Debug, Deserialize)]
struct WaypointEntry {
    namespace: String,
    name: String,
    netns: String,
    admin: SocketAddr,
}

#[derive(Debug, Deserialize)]
struct Node {
    name: String,
    netns: String,
    admin: SocketAddr,
}

/// Enters the node's netns (this thread only, so before any runtime thread is started) and
/// returns its admin address.
pub fn enter_node(node: &str, playground: Option<&Path>) -> Result<SocketAddr, PlaygroundError> {
    let (text, path) = read(playground)?;
    let entry = find_node(&text, &path, node)?;
    enter(&entry.netns)?;
    Ok(entry.admin)
}

/// Enters the netns of waypoint `namespace/name` and returns its admin address.
pub fn enter_waypoint(
    waypoint: &str,
    playground: Option<&Path>,
) -> Result<SocketAddr, PlaygroundError> {
    let (text, path) = read(playground)?;
    let entry = find_waypoint(&text, &path, waypoint)?;
    enter(&entry.netns)?;
    Ok(entry.admin)
}

#[expect(
    clippy::disallowed_methods,
    reason = "runs before weftctl starts its runtime, on the only thread"
)]
fn read(playground: Option<&Path>) -> Result<(String, PathBuf), PlaygroundError> {
    let path = match playground {
        Some(path) => path.to_owned(),
        None => find_playground().ok_or(PlaygroundError::NotFound)?,
    };
    let text = std::fs::read_to_string(&path).map_err(|source| PlaygroundError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((text, path))
}

#[expect(
    clippy::disallowed_methods,
    reason = "runs before weftctl starts its runtime, on the only thread"
)]
fn enter(netns: &str) -> Result<(), PlaygroundError> {
    let netns = format!("/run/netns/{netns}");
    let file = std::fs::File::open(&netns).map_err(|source| PlaygroundError::Netns {
        netns: netns.clone(),
        source,
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|source| PlaygroundError::Setns { netns, source })
}

fn parse(text: &str, path: &Path) -> Result<Playground, PlaygroundError> {
    serde_json::from_str(text).map_err(|source| PlaygroundError::Parse {
        path: path.to_owned(),
        source,
    })
}

fn find_waypoint(
    text: &str,
    path: &Path,
    waypoint: &str,
) -> Result<WaypointEntry, PlaygroundError> {
    let doc = parse(text, path)?;
    let names = doc
        .waypoints
        .iter()
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect::<Vec<_>>()
        .join(", ");
    doc.waypoints
        .into_iter()
        .find(|w| format!("{}/{}", w.namespace, w.name) == waypoint)
        .ok_or_else(|| PlaygroundError::NoWaypoint {
            waypoint: waypoint.to_owned(),
            path: path.to_owned(),
            names: if names.is_empty() {
                "none".into()
            } else {
                names
            },
        })
}

/// Every node and waypoint (`namespace/name`) of the playground, and the file they are in:
/// what `graph --all` asks.
pub fn members(
    playground: Option<&Path>,
) -> Result<(PathBuf, Vec<String>, Vec<String>), PlaygroundError> {
    let (text, path) = read(playground)?;
    let doc = parse(&text, &path)?;
    let nodes = doc.nodes.into_iter().map(|n| n.name).collect();
    let waypoints = doc
        .waypoints
        .into_iter()
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect();
    Ok((path, nodes, waypoints))
}

fn find_node(text: &str, path: &Path, node: &str) -> Result<Node, PlaygroundError> {
    let doc = parse(text, path)?;
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

    #[test]
    fn waypoints_are_found_by_namespace_and_name() {
        let text = r#"{"nodes": [], "waypoints": [{"namespace": "demo", "name": "waypoint", "netns": "weft-demo-waypoint", "admin": "127.0.0.1:15000"}]}"#;
        let path = Path::new("playground.json");
        let found = find_waypoint(text, path, "demo/waypoint").expect("demo/waypoint");
        assert_eq!(found.netns, "weft-demo-waypoint");
        let error = find_waypoint(text, path, "demo/other").expect_err("no demo/other");
        assert!(
            error
                .to_string()
                .contains("the waypoints are demo/waypoint"),
            "{error}"
        );
    }
}
