//! Running `weftctl graph`: one admin API's edges (an agent's flows, or a waypoint's requests),
//! or with `--all` every playground member's, each read by a `weftctl --node/--waypoint`
//! child (a process enters one network namespace) and merged; then printed, or drawn to a
//! PNG by Graphviz's `dot`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use weft_api::{requests::RequestRecord, Flow, Workload};

use crate::{
    cli::Output,
    client::{Client, ClientError},
    graph::{self, Edges},
    playground::{self, PlaygroundError},
};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Playground(#[from] PlaygroundError),
    #[error(transparent)]
    Since(#[from] crate::cli_parse::ParseError),
    #[error("running {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {stderr}")]
    Member { what: String, stderr: String },
    #[error("{what} printed no edges: {source}")]
    Parse {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("-o png needs the file to write: weftctl graph -o png FILE")]
    NoFile,
    #[error("drawing the PNG needs Graphviz's `dot` (apt-get install graphviz): {0}")]
    Dot(std::io::Error),
    #[error("dot could not draw {file}: {stderr}")]
    Draw { file: PathBuf, stderr: String },
    #[error("-o dot and -o png are for `weftctl graph`; this command prints table, json or yaml")]
    NotAGraph,
    #[error(transparent)]
    Render(#[from] serde_json::Error),
    #[error(transparent)]
    Yaml(#[from] serde_yaml::Error),
}

/// The edges the admin API at `client` knows, over the last `since`. A waypoint (`waypoint`
/// names it) has request records; an agent has flows. Alone, an agent also counts what
/// arrived from other nodes (it says which pods are its own); `for_merge` counts each
/// connection only where it left, or where it arrived from outside the mesh, so that `--all`
/// counts every connection once.
pub async fn local(
    client: &Client,
    waypoint: Option<&str>,
    since: &str,
    for_merge: bool,
) -> Result<Edges, GraphError> {
    let window_ms = crate::cli_parse::parse_duration(since)?;
    let from = crate::render::now_unix_ms().saturating_sub(window_ms);
    let edges = if let Some(name) = waypoint {
        let records: Vec<RequestRecord> = client.get("/requests").await?;
        Edges::from_requests(&records, from, name)
    } else {
        let flows: Vec<Flow> = client.get("/flows").await?;
        if for_merge {
            Edges::from_flows(&flows, from, None)
        } else {
            let pods: Vec<String> = client
                .get::<Vec<Workload>>("/workloads")
                .await?
                .into_iter()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect();
            Edges::from_flows(&flows, from, Some(&pods))
        }
    };
    Ok(Edges {
        window_secs: window_ms / 1000,
        edges,
    })
}

/// Every node's and waypoint's edges, merged. Blocking (it waits for one child per member):
/// run it before any runtime starts.
#[expect(
    clippy::disallowed_methods,
    reason = "weftctl runs graph --all before it starts a runtime, on its only thread"
)]
pub fn all(playground: Option<&Path>, since: &str) -> Result<Edges, GraphError> {
    crate::cli_parse::parse_duration(since)?;
    let (file, nodes, waypoints) = playground::members(playground)?;
    let exe = std::env::current_exe().map_err(|source| GraphError::Spawn {
        what: "weftctl itself".into(),
        source,
    })?;
    let members = nodes
        .iter()
        .map(|n| ("--node", n))
        .chain(waypoints.iter().map(|w| ("--waypoint", w)));
    let mut merged = Edges::default();
    for (flag, name) in members {
        let what = format!("weftctl {flag} {name} graph");
        let out = Command::new(&exe)
            .arg("--playground")
            .arg(&file)
            .args([
                flag, name, "-o", "json", "graph", "--edges", "--since", since,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| GraphError::Spawn {
                what: what.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(GraphError::Member {
                what,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let edges: Edges = serde_json::from_slice(&out.stdout)
            .map_err(|source| GraphError::Parse { what, source })?;
        merged.merge(edges);
    }
    Ok(merged)
}

/// What `graph` prints for `output` (a PNG goes to `file`, and the text says where).
pub fn render(graph: &Edges, output: Output, file: Option<&Path>) -> Result<String, GraphError> {
    Ok(match output {
        Output::Table => graph::table(graph),
        Output::Json => serde_json::to_string_pretty(&summary(graph))?,
        Output::Yaml => serde_yaml::to_string(&summary(graph))?,
        Output::Dot => graph::dot(graph),
        Output::Png => {
            let file = file.ok_or(GraphError::NoFile)?;
            draw(&graph::dot(graph), file)?;
            format!("wrote {} ({} edges)", file.display(), graph.edges.len())
        }
    })
}

/// The graph for scripts: each edge's counts with its rates, shares and percentiles.
fn summary(graph: &Edges) -> serde_json::Value {
    let edges: Vec<serde_json::Value> = graph
        .edges
        .iter()
        .map(|e| {
            serde_json::json!({
                "source": e.source,
                "destination": e.destination,
                "via": e.via,
                "connections": e.connections,
                "mtlsConnections": e.mtls_connections,
                "failedConnections": e.failed_connections,
                "requests": e.requests,
                "failedRequests": e.failed_requests,
                "p50Ms": e.quantile_ms(0.5),
                "p99Ms": e.quantile_ms(0.99),
            })
        })
        .collect();
    serde_json::json!({"windowSecs": graph.window_secs, "edges": edges})
}

fn draw(dot: &str, file: &Path) -> Result<(), GraphError> {
    use std::io::Write as _;
    let mut child = Command::new("dot")
        .arg("-Tpng")
        .arg("-o")
        .arg(file)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GraphError::Dot)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot.as_bytes()).map_err(GraphError::Dot)?;
    }
    let out = child.wait_with_output().map_err(GraphError::Dot)?;
    if !out.status.success() {
        return Err(GraphError::Draw {
            file: file.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
