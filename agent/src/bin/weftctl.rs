//! `weftctl`: inspect a node's agent through its admin API. Tables for people, `-o json|yaml`
//! for scripts; every error says how to fix it.
#![expect(
    clippy::disallowed_methods,
    reason = "weftctl is a synchronous command-line tool"
)]
#![forbid(unsafe_code)]

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use weft_agent::cli_parse::{ends, text, FlowFilter};

#[derive(Parser)]
#[command(name = "weftctl", version, about = "Inspect a Weft node agent")]
struct Args {
    /// The agent's admin address (on its node).
    #[arg(
        long,
        global = true,
        env = "WEFTCTL_ADMIN",
        default_value = "127.0.0.1:15000"
    )]
    admin: SocketAddr,
    /// A playground node (`cargo xtask demo up`): its netns and admin address come from the
    /// playground file. Needs root to enter the node's network namespace.
    #[arg(long, global = true)]
    node: Option<String>,
    /// The playground file; default: target/weft-demo/playground.json here or in a parent.
    #[arg(long, global = true, env = "WEFT_PLAYGROUND")]
    playground: Option<PathBuf>,
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Cmd {
    /// The agent: readiness, enrolled pods, registry sizes, rejected objects.
    Status,
    /// Pods this node captures.
    Workloads,
    /// Services with their VIPs and ready endpoints.
    Services,
    /// Authorization and traffic policies in force, and what of each this node applies.
    Policies,
    /// SVIDs this agent holds.
    Certs,
    /// Connections open right now.
    Connections,
    /// Recent connection events, with why each was allowed, denied or failed.
    Flows {
        /// Keep streaming new events.
        #[arg(long)]
        follow: bool,
        /// Source workload (`ns/name`), namespace or IP prefix.
        #[arg(long)]
        from: Option<String>,
        /// Destination workload (`ns/name`), namespace or IP prefix.
        #[arg(long)]
        to: Option<String>,
        /// allow or deny.
        #[arg(long)]
        verdict: Option<String>,
        /// Only events newer than this (`30s`, `5m`, `1h`).
        #[arg(long)]
        since: Option<String>,
        /// Destination port.
        #[arg(long)]
        port: Option<u16>,
    },
    /// The busiest workload pairs, refreshed in place.
    Top {
        #[arg(long, default_value_t = 2)]
        interval_secs: u64,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Counters: proxy totals, kernel program counters, the HBONE pool.
    Stats,
    /// The agent's whole registry.
    ConfigDump,
    /// Change the agent's log filter (`debug`, `info,weft_agent=trace`).
    Logging {
        level: String,
    },
    Version,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("weftctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let admin = match &args.node {
        Some(node) => enter_node(node, args.playground.as_deref())?,
        None => args.admin,
    };
    let client = Admin(admin);
    let output = args.output;
    match args.command {
        Cmd::Version => {
            let status = client.get("/status").ok();
            println!("weftctl {}", env!("CARGO_PKG_VERSION"));
            match status {
                Some(s) => println!(
                    "agent   {} on node {}",
                    s["version"].as_str().unwrap_or("?"),
                    s["node"].as_str().unwrap_or("?")
                ),
                None => println!("agent   not reachable at {admin}"),
            }
            Ok(())
        }
        Cmd::Status => show(output, &client.get("/status")?, status_table),
        Cmd::Workloads => show(output, &client.get("/workloads")?, workloads_table),
        Cmd::Services => show(output, &client.get("/services")?, services_table),
        Cmd::Policies => {
            let policies = serde_json::json!({
                "authorizationPolicies": client.get("/policies")?,
                "trafficPolicies": client.get("/trafficpolicies")?,
            });
            show(output, &policies, policies_table)
        }
        Cmd::Certs => show(output, &client.get("/certs")?, certs_table),
        Cmd::Connections => show(output, &client.get("/connections")?, connections_table),
        Cmd::Flows {
            follow,
            from,
            to,
            verdict,
            since,
            port,
        } => {
            let since_ms = since
                .as_deref()
                .map(weft_agent::cli_parse::parse_duration)
                .transpose()?
                .map(|d| now_ms().saturating_sub(d));
            flows(
                &client,
                output,
                follow,
                &FlowFilter {
                    from,
                    to,
                    verdict,
                    since_ms,
                    port,
                },
            )
        }
        Cmd::Top {
            interval_secs,
            iterations,
        } => top(
            &client,
            Duration::from_secs(interval_secs.max(1)),
            iterations,
        ),
        Cmd::Stats => show(output, &client.get("/stats")?, stats_table),
        Cmd::ConfigDump => show(output, &client.get("/config_dump")?, |v| {
            serde_yaml::to_string(v).unwrap_or_default()
        }),
        Cmd::Logging { level } => show(
            output,
            &client.post(&format!("/logging?level={level}"))?,
            |v| format!("log filter is now {}", text(&v["level"])),
        ),
    }
}

fn workloads_table(v: &Value) -> String {
    rows(
        v,
        &["NAMESPACE", "NAME", "IP", "SERVICE ACCOUNT", "NETNS"],
        |w| {
            vec![
                text(&w["namespace"]),
                text(&w["name"]),
                text(&w["ip"]),
                text(&w["service_account"]),
                text(&w["netns"]),
            ]
        },
    )
}

fn services_table(v: &Value) -> String {
    rows(
        v,
        &["NAMESPACE", "NAME", "VIP", "PORTS", "ENDPOINTS"],
        |s| {
            let ports = list(&s["ports"], |p| {
                format!("{}->{}", text(&p["port"]), text(&p["target_port"]))
            });
            vec![
                text(&s["namespace"]),
                text(&s["name"]),
                text(&s["clusterIP"]),
                ports,
                list(&s["endpoints"], text),
            ]
        },
    )
}

fn policies_table(v: &Value) -> String {
    let authorization = rows(
        &v["authorizationPolicies"],
        &["NAMESPACE", "NAME", "ACTION", "RULES", "DRY RUN"],
        |p| {
            let spec = &p["spec"];
            let rules = spec["rules"].as_array().map_or(0, Vec::len).to_string();
            vec![
                text(&p["namespace"]),
                text(&p["name"]),
                text(&spec["action"]),
                rules,
                text(&spec["dryRun"]),
            ]
        },
    );
    let traffic = rows(
        &v["trafficPolicies"],
        &[
            "NAMESPACE",
            "NAME",
            "TARGETS",
            "CONNECT TIMEOUT",
            "LOAD BALANCER",
            "NEEDS A WAYPOINT (NOT APPLIED HERE)",
        ],
        |p| {
            let targets = list(&p["spec"]["targetRefs"], |t| {
                format!("{}/{}", text(&t["kind"]), text(&t["name"]))
            });
            let timeout = p["connectTimeout"]
                .as_u64()
                .map_or_else(|| "default".into(), human_duration);
            vec![
                text(&p["namespace"]),
                text(&p["name"]),
                targets,
                timeout,
                text(&p["algorithm"]),
                list(&p["waypointOnly"], text),
            ]
        },
    );
    let or_none = |list: &Value, table: String| {
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            table
        } else {
            "none".to_owned()
        }
    };
    format!(
        "AUTHORIZATION POLICIES\n{}\n\nTRAFFIC POLICIES\n{}",
        or_none(&v["authorizationPolicies"], authorization),
        or_none(&v["trafficPolicies"], traffic)
    )
}

fn certs_table(v: &Value) -> String {
    rows(
        v,
        &[
            "IDENTITY",
            "SERIAL",
            "NOT BEFORE",
            "NOT AFTER",
            "EXPIRES IN",
        ],
        |c| {
            let expiry = c["secondsToExpiry"]
                .as_i64()
                .map_or_else(|| "?".into(), |s| human_duration(s.unsigned_abs() * 1000));
            vec![
                text(&c["identity"]),
                text(&c["serial"]),
                text(&c["notBefore"]),
                text(&c["notAfter"]),
                expiry,
            ]
        },
    )
}

fn connections_table(v: &Value) -> String {
    rows(
        v,
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
        |c| {
            vec![
                text(&c["direction"]),
                text(&c["pod"]),
                text(&c["source"]),
                text(&c["destination"]),
                text(&c["service"]),
                text(&c["security"]),
                text(&c["peer_identity"]),
                age(c["started_unix_ms"].as_u64()),
            ]
        },
    )
}

fn flows(client: &Admin, output: Output, follow: bool, filter: &FlowFilter) -> anyhow::Result<()> {
    if follow {
        return client.follow_flows(|flow| {
            if filter.matches(&flow) {
                if output == Output::Table {
                    println!("{}", flow_line(&flow));
                } else {
                    println!("{flow}");
                }
            }
        });
    }
    let flows: Vec<Value> = client
        .get("/flows")?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| filter.matches(f))
        .collect();
    show(output, &Value::Array(flows), |v| {
        let header =
            "TIME      EVENT   DIR  SOURCE -> DESTINATION  SECURITY  VERDICT  REASON  DETAIL"
                .to_owned();
        std::iter::once(header)
            .chain(v.as_array().into_iter().flatten().map(flow_line))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Enters the playground node's netns (this process only) and returns its admin address.
fn enter_node(node: &str, playground: Option<&Path>) -> anyhow::Result<SocketAddr> {
    let path = match playground {
        Some(path) => path.to_owned(),
        None => find_playground().context("no playground file found (target/weft-demo/playground.json here or above): run `cargo xtask demo up`, or give --playground FILE or --admin ADDR")?,
    };
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a playground file", path.display()))?;
    let nodes = doc["nodes"].as_array().cloned().unwrap_or_default();
    let Some(entry) = nodes.iter().find(|n| n["name"] == node) else {
        let names: Vec<String> = nodes.iter().map(|n| text(&n["name"])).collect();
        bail!(
            "no node {node} in {}: the nodes are {}",
            path.display(),
            names.join(", ")
        );
    };
    let netns = format!("/run/netns/{}", text(&entry["netns"]));
    let file = std::fs::File::open(&netns).with_context(|| {
        format!("opening {netns}: is the playground still up (`cargo xtask demo up`)?")
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {netns} needs root: run weftctl with sudo"))?;
    text(&entry["admin"])
        .parse()
        .with_context(|| format!("bad admin address for node {node} in {}", path.display()))
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

struct Admin(SocketAddr);

impl Admin {
    fn connect(&self) -> anyhow::Result<TcpStream> {
        TcpStream::connect_timeout(&self.0, Duration::from_secs(3)).with_context(|| {
            format!(
                "no agent answers at {}: is it running? On a playground node use --node NAME; in a cluster, \
                 `kubectl -n weft-system port-forward pod/<weft-agent pod> 15000` first",
                self.0
            )
        })
    }

    /// One HTTP/1.0 request; the body runs to the end of the connection.
    fn request(&self, method: &str, path: &str) -> anyhow::Result<Value> {
        let mut stream = self.connect()?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.0
        )?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .context("reading the agent's answer")?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("the agent sent no HTTP response")?;
        let status = head.split_whitespace().nth(1).unwrap_or("?");
        let value: Value = serde_json::from_str(body)
            .with_context(|| format!("the agent answered {status} with non-JSON"))?;
        if !status.starts_with('2') {
            bail!(
                "the agent answered {status}: {}",
                value["error"].as_str().unwrap_or(body)
            );
        }
        Ok(value)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.request("GET", path)
    }

    fn post(&self, path: &str) -> anyhow::Result<Value> {
        self.request("POST", path)
    }

    fn follow_flows(&self, mut each: impl FnMut(Value)) -> anyhow::Result<()> {
        let mut stream = self.connect()?;
        write!(
            stream,
            "GET /flows?follow=1 HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.0
        )?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // Skip the response head.
        while reader.read_line(&mut line)? > 0 && line != "\r\n" {
            line.clear();
        }
        for line in reader.lines() {
            let line = line.context("the agent closed the flow stream")?;
            if let Ok(value) = serde_json::from_str(&line) {
                each(value);
            }
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

fn show(output: Output, value: &Value, table: impl Fn(&Value) -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(value)?),
        Output::Table => println!("{}", table(value)),
    }
    Ok(())
}

fn list(value: &Value, each: impl Fn(&Value) -> String) -> String {
    let items: Vec<String> = value.as_array().into_iter().flatten().map(each).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// An aligned table: a header row, then one row per array element.
fn rows(value: &Value, header: &[&str], row: impl Fn(&Value) -> Vec<String>) -> String {
    let mut table: Vec<Vec<String>> = vec![header.iter().map(ToString::to_string).collect()];
    table.extend(value.as_array().into_iter().flatten().map(row));
    align(&table)
}

fn align(table: &[Vec<String>]) -> String {
    let columns = table.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    table
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn status_table(v: &Value) -> String {
    let registry = &v["registry"];
    let mut table = vec![
        vec!["node".into(), text(&v["node"])],
        vec!["version".into(), text(&v["version"])],
        vec!["ready".into(), text(&v["ready"])],
        vec![
            "adopted pinned programs".into(),
            text(&v["adoptedPinnedPrograms"]),
        ],
        vec!["enrolled pods".into(), text(&v["enrolledPods"])],
        vec![
            "registry".into(),
            format!(
                "{} namespaces, {} pods, {} services, {} endpoint slices",
                text(&registry["namespaces"]),
                text(&registry["pods"]),
                text(&registry["services"]),
                text(&registry["endpointSlices"])
            ),
        ],
    ];
    for failure in v["enrollmentFailures"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(v["unplaceablePods"].as_array().into_iter().flatten())
    {
        table.push(vec!["not captured".into(), text(failure)]);
    }
    for rejected in registry["rejectedObjects"].as_array().into_iter().flatten() {
        table.push(vec![
            "rejected".into(),
            format!(
                "{}: {} ({})",
                text(&rejected["object"]),
                text(&rejected["reason"]),
                text(&rejected["source"])
            ),
        ]);
    }
    align(&table)
}

fn stats_table(v: &Value) -> String {
    let mut table = vec![vec!["COUNTER".to_owned(), "VALUE".to_owned()]];
    for (section, values) in [
        ("proxy", &v["proxy"]),
        ("kernel", &v["kernel"]),
        ("pool", &v["pool"]),
    ] {
        for (name, value) in values.as_object().into_iter().flatten() {
            let shown = if name.starts_with("bytes") {
                human_bytes(value.as_u64().unwrap_or(0))
            } else {
                text(value)
            };
            table.push(vec![format!("{section}.{name}"), shown]);
        }
    }
    align(&table)
}

fn flow_line(flow: &Value) -> String {
    let (source, destination) = ends(flow);
    let time = flow["time_unix_ms"]
        .as_u64()
        .map_or_else(|| "?".into(), clock);
    let mut line = format!(
        "{time}  {:<6}  {:<3}  {source} -> {destination}  {}  {}  {}",
        text(&flow["event"]),
        if flow["direction"] == "outbound" {
            "out"
        } else {
            "in"
        },
        text(&flow["security"]),
        text(&flow["verdict"]),
        text(&flow["reason"]),
    );
    if let Some(peer) = flow["peer_identity"].as_str() {
        let _ = write!(line, "  peer={peer}");
    }
    if flow["event"] == "closed" {
        let bytes = flow["bytes_from_client"].as_u64().unwrap_or(0)
            + flow["bytes_to_client"].as_u64().unwrap_or(0);
        let _ = write!(
            line,
            "  {} in {}",
            human_bytes(bytes),
            human_duration(flow["duration_ms"].as_u64().unwrap_or(0))
        );
    }
    if let Some(detail) = flow["detail"].as_str().filter(|d| !d.is_empty()) {
        let _ = write!(line, "  ({detail})");
    }
    line
}

fn top(client: &Admin, interval: Duration, iterations: Option<u64>) -> anyhow::Result<()> {
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut done = 0;
    loop {
        let flows = client.get("/flows")?;
        let mut pairs: std::collections::BTreeMap<(String, String), (u64, u64)> =
            std::collections::BTreeMap::new();
        for flow in flows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["event"] == "closed")
        {
            let entry = pairs.entry(ends(flow)).or_default();
            entry.0 += 1;
            entry.1 += flow["bytes_from_client"].as_u64().unwrap_or(0)
                + flow["bytes_to_client"].as_u64().unwrap_or(0);
        }
        let mut sorted: Vec<_> = pairs.into_iter().collect();
        sorted.sort_by_key(|entry| std::cmp::Reverse(entry.1 .1));
        let mut table = vec![vec![
            "SOURCE".to_owned(),
            "DESTINATION".to_owned(),
            "CONNECTIONS".to_owned(),
            "BYTES".to_owned(),
        ]];
        table.extend(
            sorted
                .into_iter()
                .take(20)
                .map(|((s, d), (n, b))| vec![s, d, n.to_string(), human_bytes(b)]),
        );
        if interactive {
            print!("\x1b[H\x1b[2J");
        }
        println!(
            "busiest workload pairs (recent closed connections), every {}s\n{}",
            interval.as_secs(),
            align(&table)
        );
        std::io::stdout().flush()?;
        done += 1;
        if iterations.is_some_and(|n| done >= n) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn clock(unix_ms: u64) -> String {
    let secs = unix_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn age(started_unix_ms: Option<u64>) -> String {
    started_unix_ms.map_or_else(
        || "?".into(),
        |t| human_duration(now_ms().saturating_sub(t)),
    )
}

#[expect(clippy::cast_precision_loss, reason = "a rounded number for display")]
fn human_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[expect(clippy::cast_precision_loss, reason = "a rounded number for display")]
fn human_bytes(bytes: u64) -> String {
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
