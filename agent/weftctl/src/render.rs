//! What weftctl prints: a table per typed answer for people (comfy-table, no borders, columns
//! two spaces apart, like kubectl), or the answer itself as JSON or YAML for scripts.

use std::{collections::BTreeMap, fmt::Write as _};

use comfy_table::{Cell, Table, TableStyle};
use serde::{Deserialize, Serialize};
use weft_api::{
    AuthorizationPolicy, Cert, Connection, Direction, Flow, FlowEvent, Service, Stats, Status,
    TrafficPolicy, Workload,
};

use crate::cli::Output;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// `weftctl policies`: both kinds in one answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policies {
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub traffic_policies: Vec<TrafficPolicy>,
}

/// `value` in the chosen format; `table` draws it for people.
pub fn show<T: Serialize + ?Sized>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String, RenderError> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(value)?,
        Output::Yaml => serde_yaml::to_string(value)?.trim_end().to_owned(),
        Output::Table | Output::Dot | Output::Png => table(value),
    })
}

/// A table with a header row and one row per item.
pub(crate) fn table<S: Into<Cell>>(
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<S>>,
) -> String {
    let mut t = Table::new();
    t.load_style(TableStyle::new());
    t.set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    finish(&mut t)
}

/// Borderless, left-aligned, two spaces between columns, no trailing blanks.
fn finish(t: &mut Table) -> String {
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t.trim_fmt()
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

pub fn status(s: &Status) -> String {
    let r = &s.registry;
    let mut t = Table::new();
    t.load_style(TableStyle::new());
    t.add_row(vec!["node".to_owned(), s.node.clone()]);
    t.add_row(vec!["version".to_owned(), s.version.clone()]);
    t.add_row(vec!["ready".to_owned(), s.ready.to_string()]);
    t.add_row(vec![
        "adopted pinned programs".to_owned(),
        s.adopted_pinned_programs.to_string(),
    ]);
    t.add_row(vec![
        "capture generation".to_owned(),
        if s.capture_owner_generation > s.capture_generation && s.capture_generation > 0 {
            format!(
                "{} (superseded by {}: finishing its connections only)",
                s.capture_generation, s.capture_owner_generation
            )
        } else {
            s.capture_generation.to_string()
        },
    ]);
    if let Some(ms) = s.capture_ready_after_ms {
        t.add_row(vec![
            "capture ready after".to_owned(),
            format!("{ms} ms from start"),
        ]);
    }
    t.add_row(vec![
        "enrolled pods".to_owned(),
        s.enrolled_pods.to_string(),
    ]);
    t.add_row(vec![
        "registry".to_owned(),
        format!(
            "{} namespaces, {} pods, {} services, {} endpoint slices",
            r.namespaces, r.pods, r.services, r.endpoint_slices
        ),
    ]);
    for failure in s.enrollment_failures.iter().chain(&s.unplaceable_pods) {
        t.add_row(vec!["not captured".to_owned(), failure.clone()]);
    }
    for rejected in &r.rejected_objects {
        t.add_row(vec![
            "rejected".to_owned(),
            format!(
                "{}: {} ({})",
                rejected.object, rejected.reason, rejected.source
            ),
        ]);
    }
    if r.rejected_objects_not_shown > 0 {
        t.add_row(vec![
            "rejected".to_owned(),
            format!("{} more not shown", r.rejected_objects_not_shown),
        ]);
    }
    for (kind, watch) in s.kubernetes_watches.iter().flatten() {
        let state = if watch.synced { "synced" } else { "not synced" };
        let error = watch
            .last_error
            .as_deref()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default();
        t.add_row(vec![
            format!("watch {kind}"),
            format!(
                "{state}, {} objects, {} errors{error}",
                watch.objects, watch.errors
            ),
        ]);
    }
    finish(&mut t)
}

pub fn workloads(w: &[Workload]) -> String {
    table(
        &["NAMESPACE", "NAME", "IP", "SERVICE ACCOUNT", "NETNS"],
        w.iter().map(|w| {
            vec![
                w.namespace.clone(),
                w.name.clone(),
                w.ip.to_string(),
                w.service_account.clone(),
                w.netns.clone(),
            ]
        }),
    )
}

pub fn services(s: &[Service]) -> String {
    table(
        &["NAMESPACE", "NAME", "VIP", "PORTS", "ENDPOINTS"],
        s.iter().map(|s| {
            let ports = list(s.ports.iter().map(|p| {
                let target = p.target_port.map_or_else(|| "-".into(), |t| t.to_string());
                format!("{}->{target}", p.port)
            }));
            vec![
                s.namespace.clone(),
                s.name.clone(),
                s.cluster_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                ports,
                list(s.endpoints.iter().cloned()),
            ]
        }),
    )
}

pub fn policies(p: &Policies) -> String {
    let authorization = if p.authorization_policies.is_empty() {
        "none".to_owned()
    } else {
        table(
            &[
                "NAMESPACE",
                "NAME",
                "ACTION",
                "RULES",
                "DRY RUN",
                "ENFORCED AT",
            ],
            p.authorization_policies.iter().map(|p| {
                let spec = &p.spec;
                let action = spec["action"].as_str().unwrap_or("ALLOW").to_owned();
                let action = match &p.unreadable {
                    Some(why) => format!("DENY (unreadable: {why})"),
                    None => action,
                };
                vec![
                    p.namespace.clone(),
                    p.name.clone(),
                    action,
                    spec["rules"].as_array().map_or(0, Vec::len).to_string(),
                    spec["dryRun"].as_bool().unwrap_or(false).to_string(),
                    if p.enforced_at.is_empty() {
                        "-".into()
                    } else {
                        p.enforced_at.join(" + ")
                    },
                ]
            }),
        )
    };
    let traffic = if p.traffic_policies.is_empty() {
        "none".to_owned()
    } else {
        table(
            &[
                "NAMESPACE",
                "NAME",
                "TARGETS",
                "CONNECT TIMEOUT",
                "LOAD BALANCER",
                "NEEDS A WAYPOINT (NOT APPLIED HERE)",
            ],
            p.traffic_policies.iter().map(|p| {
                let targets = list(p.spec["targetRefs"].as_array().into_iter().flatten().map(
                    |t| {
                        format!(
                            "{}/{}",
                            t["kind"].as_str().unwrap_or("?"),
                            t["name"].as_str().unwrap_or("?")
                        )
                    },
                ));
                vec![
                    p.namespace.clone(),
                    p.name.clone(),
                    targets,
                    p.connect_timeout
                        .map_or_else(|| "default".into(), human_duration),
                    p.algorithm.clone(),
                    if p.applied_by.is_empty() || p.waypoint_only.is_empty() {
                        list(p.waypoint_only.iter().cloned())
                    } else {
                        format!("none: waypoint {} applies them", p.applied_by.join(", "))
                    },
                ]
            }),
        )
    };
    format!("AUTHORIZATION POLICIES\n{authorization}\n\nTRAFFIC POLICIES\n{traffic}")
}

pub fn certs(c: &[Cert]) -> String {
    table(
        &[
            "IDENTITY",
            "SERIAL",
            "NOT BEFORE",
            "NOT AFTER",
            "EXPIRES IN",
        ],
        c.iter().map(|c| {
            let left = human_duration(c.seconds_to_expiry.unsigned_abs().saturating_mul(1000));
            let expiry = if c.seconds_to_expiry < 0 {
                format!("expired {left} ago")
            } else {
                left
            };
            vec![
                c.identity.clone(),
                c.serial.clone(),
                c.not_before.clone(),
                c.not_after.clone(),
                expiry,
            ]
        }),
    )
}

/// Wall-clock milliseconds since the Unix epoch: what record times are compared with.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn connections(c: &[Connection], now_unix_ms: u64) -> String {
    table(
        &[
            "DIRECTION",
            "WORKLOAD",
            "SOURCE",
            "DESTINATION",
            "SERVICE",
            "SECURITY",
            "PEER",
            "AGE",
        ],
        c.iter().map(|c| {
            vec![
                c.direction.as_str().to_owned(),
                c.pod.clone(),
                c.source.to_string(),
                c.destination.to_string(),
                or_dash(c.service.as_deref()),
                c.security.as_str().to_owned(),
                or_dash(c.peer_identity.as_deref()),
                human_duration(now_unix_ms.saturating_sub(c.started_unix_ms)),
            ]
        }),
    )
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Outbound => "out",
        Direction::Inbound => "in",
    }
}

/// What a closed flow moved, and in how long.
fn moved(flow: &Flow) -> Option<String> {
    (flow.event == FlowEvent::Closed).then(|| {
        format!(
            "{} in {}",
            human_bytes(flow.bytes_from_client + flow.bytes_to_client),
            human_duration(flow.duration_ms)
        )
    })
}

pub fn flows(f: &[Flow]) -> String {
    table(
        &[
            "TIME",
            "EVENT",
            "DIR",
            "SOURCE -> DESTINATION",
            "SECURITY",
            "VERDICT",
            "REASON",
            "PEER",
            "MOVED",
            "DETAIL",
        ],
        f.iter().map(|flow| {
            let (source, destination) = flow.ends();
            vec![
                clock(flow.time_unix_ms),
                flow.event.as_str().to_owned(),
                direction(flow.direction).to_owned(),
                format!("{source} -> {destination}"),
                flow.security.as_str().to_owned(),
                flow.verdict.as_str().to_owned(),
                flow.reason.clone(),
                peer_cell(flow),
                moved(flow).unwrap_or_else(|| "-".into()),
                if flow.detail.is_empty() {
                    "-".into()
                } else {
                    flow.detail.clone()
                },
            ]
        }),
    )
}

/// The peer's proven identity, and the client a waypoint peer carried for.
fn peer_cell(flow: &Flow) -> String {
    match (&flow.peer_identity, &flow.carried_identity) {
        (Some(peer), Some(carried)) => format!("{peer} for {carried}"),
        (peer, _) => or_dash(peer.as_deref()),
    }
}

/// One followed flow on one line: a stream cannot be laid out as a table.
pub fn flow_line(flow: &Flow) -> String {
    let (source, destination) = flow.ends();
    let mut line = format!(
        "{}  {:<6}  {:<3}  {source} -> {destination}  {}  {}  {}",
        clock(flow.time_unix_ms),
        flow.event.as_str(),
        direction(flow.direction),
        flow.security.as_str(),
        flow.verdict.as_str(),
        flow.reason,
    );
    if let Some(peer) = &flow.peer_identity {
        let _ = write!(line, "  peer={peer}");
    }
    if let Some(carried) = &flow.carried_identity {
        let _ = write!(line, "  for={carried}");
    }
    if let Some(moved) = moved(flow) {
        let _ = write!(line, "  {moved}");
    }
    if !flow.detail.is_empty() {
        let _ = write!(line, "  ({})", flow.detail);
    }
    line
}

pub fn stats(s: &Stats) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let sections = [
        ("proxy", serde_json::to_value(&s.proxy).unwrap_or_default()),
        (
            "kernel",
            serde_json::to_value(&s.kernel).unwrap_or_default(),
        ),
        ("pool", serde_json::to_value(&s.pool).unwrap_or_default()),
    ];
    for (section, values) in &sections {
        for (name, value) in values.as_object().into_iter().flatten() {
            let shown = if name.starts_with("bytes") {
                human_bytes(value.as_u64().unwrap_or(0))
            } else {
                value.to_string()
            };
            rows.push(vec![format!("{section}.{name}"), shown]);
        }
    }
    for hit in &s.limits {
        rows.push(vec![
            format!("limits.{}.{}", hit.listener, hit.limit),
            hit.hits.to_string(),
        ]);
    }
    rows.push(vec!["ca.signed".into(), s.ca.signed.to_string()]);
    table(&["COUNTER", "VALUE"], rows)
}

/// `weftctl top`: the busiest (source, destination) pairs over the closed flows.
pub fn top(flows: &[Flow], every_secs: u64) -> String {
    let mut pairs: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for flow in flows.iter().filter(|f| f.event == FlowEvent::Closed) {
        let entry = pairs.entry(flow.ends()).or_default();
        entry.0 += 1;
        entry.1 += flow.bytes_from_client + flow.bytes_to_client;
    }
    let mut sorted: Vec<_> = pairs.into_iter().collect();
    sorted.sort_by_key(|entry| std::cmp::Reverse(entry.1 .1));
    let rows = sorted
        .into_iter()
        .take(20)
        .map(|((s, d), (n, b))| vec![s, d, n.to_string(), human_bytes(b)]);
    format!(
        "busiest workload pairs (recent closed connections), every {every_secs}s\n{}",
        table(&["SOURCE", "DESTINATION", "CONNECTIONS", "BYTES"], rows)
    )
}

fn clock(unix_ms: u64) -> String {
    let secs = unix_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[expect(clippy::cast_precision_loss, reason = "a rounded number for display")]
pub fn human_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[expect(clippy::cast_precision_loss, reason = "a rounded number for display")]
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use weft_api::{Security, Verdict};

    use super::*;

    fn denied() -> Flow {
        Flow {
            time_unix_ms: 3_723_000,
            event: FlowEvent::Denied,
            direction: Direction::Inbound,
            workload: "demo/server-a".into(),
            source: "10.0.0.2:40000".parse().expect("addr"),
            destination: "10.0.0.3:9000".parse().expect("addr"),
            service: None,
            peer_workload: Some("demo/server-b".into()),
            waypoint: None,
            carried_identity: None,
            connect_attempts: 0,
            peer_identity: Some("spiffe://cluster.local/ns/demo/sa/server-b".into()),
            peer_certificate_serial: None,
            workload_identity: None,
            security: Security::Mtls,
            verdict: Verdict::Deny,
            reason: "denied_by_policy".into(),
            detail: "denied by demo/deny-b rule 0".into(),
            policy: Some("demo/deny-b".into()),
            notes: Vec::new(),
            bytes_from_client: 0,
            bytes_to_client: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn a_flow_table_names_both_ends_and_says_why() {
        let mut closed = denied();
        closed.event = FlowEvent::Closed;
        closed.verdict = Verdict::Allow;
        closed.bytes_from_client = 2048;
        closed.detail = String::new();
        let text = flows(&[denied(), closed]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("TIME      EVENT   DIR"), "{text}");
        assert!(
            lines[1].starts_with("01:02:03  denied")
                && lines[1].contains("demo/server-b -> demo/server-a")
                && lines[1].contains("denied by demo/deny-b rule 0"),
            "{text}"
        );
        assert!(lines[2].contains("2.0 KiB in 0ms"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text:?}");
        let line = flow_line(&denied());
        assert!(
            line.contains("demo/server-b -> demo/server-a  mtls  deny  denied_by_policy"),
            "{line}"
        );
    }

    #[test]
    fn waypoint_settings_are_needed_unless_a_waypoint_serves_the_service() {
        let policy = |applied_by: Vec<String>| weft_api::TrafficPolicy {
            namespace: "demo".into(),
            name: "echo".into(),
            spec: serde_json::json!({"targetRefs": [{"kind": "Service", "name": "echo"}]}),
            services: vec!["echo".into()],
            connect_timeout: None,
            algorithm: "RoundRobin".into(),
            waypoint_only: vec!["retry".into(), "circuitBreaker".into()],
            applied_by,
        };
        let shown = |applied_by| {
            super::policies(&super::Policies {
                authorization_policies: Vec::new(),
                traffic_policies: vec![policy(applied_by)],
            })
        };
        let alone = shown(Vec::new());
        assert!(alone.contains("retry,circuitBreaker"), "{alone}");
        let served = shown(vec!["demo/waypoint".into()]);
        assert!(
            served.contains("none: waypoint demo/waypoint applies them"),
            "{served}"
        );
        assert!(!served.contains("circuitBreaker"), "{served}");
    }

    #[test]
    fn tables_are_aligned_and_json_is_the_typed_answer() {
        let workload = Workload {
            namespace: "demo".into(),
            name: "server-a".into(),
            ip: "10.0.0.3".parse().expect("ip"),
            service_account: "server-a".into(),
            netns: "/run/netns/weft-demo-server-a".into(),
            cgroup: None,
        };
        let text = workloads(std::slice::from_ref(&workload));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE  NAME      IP"), "{text}");
        assert!(
            lines[1].starts_with("demo       server-a  10.0.0.3"),
            "{text}"
        );
        let json = show(Output::Json, &[workload.clone()][..], workloads).expect("json");
        let back: Vec<Workload> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, std::slice::from_ref(&workload));
        assert!(json.contains("\"serviceAccount\""), "{json}");
        let yaml = show(Output::Yaml, &[workload][..], workloads).expect("yaml");
        assert!(yaml.contains("serviceAccount: server-a"), "{yaml}");
    }

    #[test]
    fn stats_show_every_section_with_readable_bytes() {
        let mut s = Stats::default();
        s.proxy.denied = 2;
        s.proxy.bytes_from_clients = 3 << 20;
        s.kernel.insert("inbound_redirected".into(), 5);
        let text = stats(&s);
        assert!(text.contains("proxy.denied"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("kernel.inbound_redirected ")
                    && l.split_whitespace().nth(1) == Some("5")),
            "{text}"
        );
        assert!(text.contains("pool.connectRefusalsRetried"), "{text}");
        assert!(text.contains("3.0 MiB"), "{text}");
        assert!(text.contains("pool.connectionsOpened"), "{text}");
    }
}
