//! `weftctl graph`: the workload-to-workload service graph, built from the agents' flow
//! records (connections) and the waypoints' request records (requests), so it needs no
//! Prometheus. Each source yields [`Edges`] for a time window; `--all` merges the edges of
//! every playground node and waypoint. Printed as a table, as JSON/YAML, or as Graphviz `dot`
//! (which `-o png` renders with the `dot` program).

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};
use weft_api::{requests::RequestRecord, Direction, Flow, FlowEvent, Security};

/// What one edge carried in the window. Counts, not rates: merging sums them.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub source: String,
    pub destination: String,
    /// The waypoint that served the edge's requests (`namespace/name`), for L7 edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    pub connections: u64,
    pub mtls_connections: u64,
    /// Connections denied by policy or that failed.
    pub failed_connections: u64,
    pub requests: u64,
    /// Requests answered with a 5xx.
    pub failed_requests: u64,
    /// Each request's duration, for the percentiles (bounded by the records a waypoint keeps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub durations_ms: Vec<u64>,
}

/// The edges of a window, keyed by (source, destination, via).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edges {
    /// The window the counts cover, in seconds.
    pub window_secs: u64,
    pub edges: Vec<Edge>,
}

type Key = (String, String, Option<String>);

fn keyed(edges: Vec<Edge>) -> BTreeMap<Key, Edge> {
    edges
        .into_iter()
        .map(|e| ((e.source.clone(), e.destination.clone(), e.via.clone()), e))
        .collect()
}

impl Edges {
    /// An agent's connections since `since_ms`. Each connection is counted once: where it
    /// left (outbound), or where it arrived when no agent saw it leave (plaintext from
    /// outside the mesh, or a waypoint's upstream tunnel: waypoint pods are not captured), or
    /// when it left from another node and `local` lists this node's pods.
    pub fn from_flows(flows: &[Flow], since_ms: u64, local: Option<&[String]>) -> Vec<Edge> {
        let mut edges: BTreeMap<Key, Edge> = BTreeMap::new();
        for flow in flows.iter().filter(|f| f.time_unix_ms >= since_ms) {
            if matches!(flow.event, FlowEvent::Closed) {
                continue;
            }
            let (source, destination) = flow.ends();
            let counted = match flow.direction {
                Direction::Outbound => true,
                Direction::Inbound => {
                    flow.security == Security::Plaintext
                        || flow.carried_identity.is_some()
                        || local.is_some_and(|pods| !pods.contains(&source))
                }
            };
            if !counted {
                continue;
            }
            let edge = edges
                .entry((source.clone(), destination.clone(), None))
                .or_insert_with(|| Edge {
                    source,
                    destination,
                    ..Edge::default()
                });
            edge.connections += 1;
            if flow.security == Security::Mtls {
                edge.mtls_connections += 1;
            }
            if matches!(flow.event, FlowEvent::Denied | FlowEvent::Failed) {
                edge.failed_connections += 1;
            }
        }
        edges.into_values().collect()
    }

    /// A waypoint's requests since `since_ms`: client pod to the pod that answered.
    pub fn from_requests(records: &[RequestRecord], since_ms: u64, waypoint: &str) -> Vec<Edge> {
        let mut edges: BTreeMap<Key, Edge> = BTreeMap::new();
        for record in records.iter().filter(|r| r.at_unix_ms >= since_ms) {
            let source = record
                .client_pod
                .clone()
                .unwrap_or_else(|| record.client_ip.clone());
            let destination = record
                .upstream_pod
                .clone()
                .or_else(|| record.upstream.clone())
                .unwrap_or_else(|| format!("{} (answered by the waypoint)", record.service));
            let edge = edges
                .entry((
                    source.clone(),
                    destination.clone(),
                    Some(waypoint.to_owned()),
                ))
                .or_insert_with(|| Edge {
                    source,
                    destination,
                    via: Some(waypoint.to_owned()),
                    ..Edge::default()
                });
            edge.requests += 1;
            if record.status >= 500 {
                edge.failed_requests += 1;
            }
            edge.durations_ms.push(record.duration_ms);
        }
        edges.into_values().collect()
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: Edges) {
        let mut all = keyed(std::mem::take(&mut self.edges));
        for edge in other.edges {
            let key = (
                edge.source.clone(),
                edge.destination.clone(),
                edge.via.clone(),
            );
            let into = all.entry(key).or_insert_with(|| Edge {
                source: edge.source.clone(),
                destination: edge.destination.clone(),
                via: edge.via.clone(),
                ..Edge::default()
            });
            into.connections += edge.connections;
            into.mtls_connections += edge.mtls_connections;
            into.failed_connections += edge.failed_connections;
            into.requests += edge.requests;
            into.failed_requests += edge.failed_requests;
            into.durations_ms.extend(edge.durations_ms);
        }
        self.window_secs = self.window_secs.max(other.window_secs);
        self.edges = all.into_values().collect();
    }
}

impl Edge {
    /// The `q` quantile of the request durations, in ms.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let mut sorted = self.durations_ms.clone();
        sorted.sort_unstable();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into at most a few thousand durations"
        )]
        let index = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
        sorted.get(index).copied()
    }

    fn error_share(&self) -> Option<f64> {
        let (failed, total) = if self.requests > 0 {
            (self.failed_requests, self.requests)
        } else {
            (self.failed_connections, self.connections)
        };
        share(failed, total)
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "shares and rates of counts well below 2^52"
)]
fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "rates of counts well below 2^52"
)]
fn rate(count: u64, window_secs: u64) -> String {
    if count == 0 {
        return "-".into();
    }
    let per_second = count as f64 / window_secs.max(1) as f64;
    if per_second < 0.1 {
        format!("{per_second:.4}/s")
    } else {
        format!("{per_second:.2}/s")
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

/// The graph as a table: one row per edge, rates over the window.
pub fn table(graph: &Edges) -> String {
    if graph.edges.is_empty() {
        return format!(
            "no traffic in the last {} s (the graph comes from the records the agents and waypoints keep)",
            graph.window_secs
        );
    }
    let rows = graph.edges.iter().map(|edge| {
        vec![
            edge.source.clone(),
            edge.destination.clone(),
            edge.via.clone().unwrap_or_else(|| "-".into()),
            edge.connections.to_string(),
            rate(edge.connections, graph.window_secs),
            edge.requests.to_string(),
            rate(edge.requests, graph.window_secs),
            percent(edge.error_share()),
            edge.quantile_ms(0.99)
                .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
            percent(share(edge.mtls_connections, edge.connections)),
        ]
    });
    let header = [
        "SOURCE",
        "DESTINATION",
        "VIA",
        "CONN",
        "CONN RATE",
        "REQ",
        "REQ RATE",
        "ERRORS",
        "P99",
        "MTLS",
    ];
    format!(
        "{}\n(over the last {} s)",
        crate::render::table(&header, rows),
        graph.window_secs
    )
}

/// A Graphviz string; `\n` in it stays Graphviz's line break.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\\\""))
}

/// The graph in Graphviz's language: workloads as nodes, one labelled arrow per edge, dashed
/// where it was not all mutual TLS, red where some of it failed.
pub fn dot(graph: &Edges) -> String {
    let mut out =
        String::from("digraph weft {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for edge in &graph.edges {
        let mut label = Vec::new();
        if edge.connections > 0 {
            label.push(format!(
                "{} conn",
                rate(edge.connections, graph.window_secs)
            ));
        }
        if edge.requests > 0 {
            label.push(format!("{} req", rate(edge.requests, graph.window_secs)));
        }
        if let Some(errors) = edge.error_share().filter(|e| *e > 0.0) {
            label.push(format!("{} errors", percent(Some(errors))));
        }
        if let Some(p99) = edge.quantile_ms(0.99) {
            label.push(format!("p99 {p99} ms"));
        }
        if let Some(via) = &edge.via {
            label.push(format!("via {via}"));
        }
        let all_mtls = edge.connections == 0 || edge.mtls_connections == edge.connections;
        let failing = edge.error_share().is_some_and(|e| e > 0.0);
        let _ = writeln!(
            out,
            "  {} -> {} [label={}{}{}];",
            quoted(&edge.source),
            quoted(&edge.destination),
            quoted(&label.join("\\n")),
            if all_mtls { "" } else { ", style=dashed" },
            if failing { ", color=red" } else { "" },
        );
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests;
