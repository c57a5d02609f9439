//! `weftctl`: inspect a node's agent through its admin API. Tables for people, `-o json|yaml`
//! for scripts; every error says how to fix it.
#![forbid(unsafe_code)]

use std::{io::Write as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use tokio::io::AsyncWriteExt as _;
use weft_api::{
    requests::{RequestQuery, RequestRecord},
    Cert, Connection, Flow, Service, Stats, Status, Workload,
};
use weftctl::{
    cli::{Args, Cmd, Output, WaypointCmd},
    cli_parse::FlowFlags,
    client::{Client, ClientError},
    graph_cmd, playground,
    render::{self, show, Policies},
    waypoint_render,
};

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Cmd::Explain { reason } = &args.command {
        return print_now(&weftctl::explain::explain(reason.as_deref(), args.output)?);
    }
    let graph = match &args.command {
        Cmd::Graph {
            all,
            since,
            file,
            edges,
        } => Some((*all, since.clone(), file.clone(), *edges)),
        _ if matches!(args.output, Output::Dot | Output::Png) => {
            return Err(graph_cmd::GraphError::NotAGraph.into())
        }
        _ => None,
    };
    if let Some((true, since, file, _)) = &graph {
        let merged = graph_cmd::all(args.playground.as_deref(), since)?;
        return print_now(&graph_cmd::render(&merged, args.output, file.as_deref())?);
    }
    let admin = match (&args.node, &args.waypoint) {
        (_, Some(waypoint)) => playground::enter_waypoint(waypoint, args.playground.as_deref())?,
        (Some(node), None) => playground::enter_node(node, args.playground.as_deref())?,
        (None, None) => args.admin,
    };
    // Built after `--node` entered the node's netns: a current-thread runtime runs every task
    // on this thread, the one inside it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if let Some((_, since, file, for_merge)) = graph {
        let client = Client::new(admin);
        let edges = runtime.block_on(graph_cmd::local(
            &client,
            args.waypoint.as_deref(),
            &since,
            for_merge,
        ))?;
        // Drawn after the runtime is done: `dot` is a blocking child process.
        let text = if for_merge {
            serde_json::to_string(&edges)?
        } else {
            graph_cmd::render(&edges, args.output, file.as_deref())?
        };
        return print_now(&text);
    }
    runtime.block_on(command(Client::new(admin), args.output, args.command))
}

async fn print(text: &str) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    let written = async {
        out.write_all(text.as_bytes()).await?;
        out.write_all(b"\n").await?;
        out.flush().await
    };
    reader_gone_is_fine(written.await)
}

/// Outside the runtime: `text` and a newline on stdout.
fn print_now(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    reader_gone_is_fine(writeln!(out, "{text}").and_then(|()| out.flush()))
}

/// `weftctl flows | head -3`: the reader closing the pipe ends the output, not in an error.
fn reader_gone_is_fine(written: std::io::Result<()>) -> anyhow::Result<()> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

async fn command(client: Client, output: Output, command: Cmd) -> anyhow::Result<()> {
    let text = match command {
        Cmd::Version => {
            let agent = match client.get::<Status>("/status").await {
                Ok(s) => format!("agent   {} on node {}", s.version, s.node),
                Err(_) => format!("agent   not reachable at {}", client.addr),
            };
            format!("weftctl {}\n{agent}", env!("CARGO_PKG_VERSION"))
        }
        Cmd::Status => status(&client, output).await?,
        Cmd::Workloads => show(
            output,
            &client.get::<Vec<Workload>>("/workloads").await?,
            |w| render::workloads(w),
        )?,
        Cmd::Services => show(
            output,
            &client.get::<Vec<Service>>("/services").await?,
            |s| render::services(s),
        )?,
        Cmd::Policies => {
            let policies = Policies {
                authorization_policies: client.get("/policies").await?,
                traffic_policies: client.get("/trafficpolicies").await?,
            };
            show(output, &policies, render::policies)?
        }
        Cmd::Certs => show(output, &client.get::<Vec<Cert>>("/certs").await?, |c| {
            render::certs(c)
        })?,
        Cmd::Connections => {
            let live = client.get::<Vec<Connection>>("/connections").await?;
            show(output, &live, |c| {
                render::connections(c, render::now_unix_ms())
            })?
        }
        Cmd::Flows {
            follow,
            from,
            to,
            verdict,
            since,
            port,
        } => {
            let query = FlowFlags {
                from,
                to,
                verdict: verdict.map(Into::into),
                since,
                port,
                follow,
            }
            .query()?;
            let path = match query.to_query() {
                q if q.is_empty() => "/flows".to_owned(),
                q => format!("/flows?{q}"),
            };
            if follow {
                return follow_flows(&client, output, &path).await;
            }
            show(output, &client.get::<Vec<Flow>>(&path).await?, |f| {
                render::flows(f)
            })?
        }
        Cmd::Top {
            interval_secs,
            iterations,
        } => return top(&client, interval_secs.max(1), iterations).await,
        Cmd::Stats => stats(&client, output).await?,
        Cmd::ConfigDump => {
            // The registry as the agent holds it: untyped by design, YAML for people.
            let dump = client.get::<serde_json::Value>("/config_dump").await?;
            show(output, &dump, |v| {
                serde_yaml::to_string(v)
                    .unwrap_or_default()
                    .trim_end()
                    .to_owned()
            })?
        }
        command @ (Cmd::RouteCheck { .. }
        | Cmd::Waypoint { .. }
        | Cmd::Routes
        | Cmd::Endpoints { .. }
        | Cmd::Requests { .. }) => waypoint_command(&client, output, command).await?,
        Cmd::Graph { .. } => anyhow::bail!("weftctl graph is answered before the runtime starts"),
        Cmd::Explain { .. } => {
            anyhow::bail!("weftctl explain is answered before the runtime starts")
        }
        Cmd::Logging { level } => {
            let path = format!("/logging?level={}", encode_level(&level));
            let set = client.post::<weft_api::LogLevel>(&path).await?;
            show(output, &set, |s| format!("log filter is now {}", s.level))?
        }
    };
    print(&text).await
}

/// `status` of an agent or a waypoint: a waypoint's names its Gateway, an agent's its node.
async fn status(client: &Client, output: Output) -> anyhow::Result<String> {
    let status = client.get::<serde_json::Value>("/status").await?;
    if waypoint_render::is_waypoint_status(&status) {
        return Ok(show(output, &status, waypoint_render::status)?);
    }
    let status: Status = serde_json::from_value(status)
        .context("the agent's /status is not what this weftctl reads")?;
    Ok(show(output, &status, render::status)?)
}

/// `stats` of an agent or a waypoint (whose counts are requests).
async fn stats(client: &Client, output: Output) -> anyhow::Result<String> {
    let stats = client.get::<serde_json::Value>("/stats").await?;
    if stats.get("requests").is_some() {
        return Ok(show(output, &stats, waypoint_render::stats)?);
    }
    let stats: Stats = serde_json::from_value(stats)
        .context("the agent's /stats is not what this weftctl reads")?;
    Ok(show(output, &stats, render::stats)?)
}

/// The waypoint commands: `route-check` asks the waypoint at `client`; `waypoint generate`
/// only prints.
async fn waypoint_command(client: &Client, output: Output, command: Cmd) -> anyhow::Result<String> {
    Ok(match command {
        Cmd::RouteCheck {
            method,
            url,
            headers,
            caller_namespace,
            caller,
            source_ip,
        } => {
            let path = weftctl::waypoint::route_check_path(
                &method,
                &url,
                &headers,
                weftctl::waypoint::Caller {
                    namespace: caller_namespace.as_deref(),
                    identity: caller.as_deref(),
                    source_ip: source_ip.as_deref(),
                },
            );
            let answer = client.get::<serde_json::Value>(&path).await?;
            show(output, &answer, weftctl::waypoint::render_route_check)?
        }
        Cmd::Routes => show(
            output,
            &client.get::<serde_json::Value>("/routes").await?,
            waypoint_render::routes,
        )?,
        Cmd::Endpoints { service } => {
            let mut path = String::from("/endpoints?");
            form_urlencoded::Serializer::for_suffix(&mut path, 11).append_pair("service", &service);
            show(
                output,
                &client
                    .get::<Vec<weft_api::resilience::BackendReport>>(&path)
                    .await?,
                |b| waypoint_render::endpoints(b),
            )?
        }
        Cmd::Requests {
            follow,
            route,
            status,
        } => {
            let query = RequestQuery {
                route,
                status: status.map(|s| s.parse()).transpose().context("--status")?,
                follow,
            };
            let pairs = query.to_query();
            let path = if pairs.is_empty() {
                "/requests".to_owned()
            } else {
                let mut encoded = form_urlencoded::Serializer::new(String::new());
                for (key, value) in &pairs {
                    encoded.append_pair(key, value);
                }
                format!("/requests?{}", encoded.finish())
            };
            if follow {
                follow_requests(client, output, &path).await?;
                return Ok(String::new());
            }
            show(
                output,
                &client.get::<Vec<RequestRecord>>(&path).await?,
                |r| waypoint_render::requests(r),
            )?
        }
        // Printed, not asked of an agent.
        Cmd::Waypoint {
            command:
                WaypointCmd::Generate {
                    namespace,
                    name,
                    image,
                },
        } => weftctl::waypoint::generate(&namespace, &name, &image)?
            .trim_end()
            .to_owned(),
        _ => unreachable!("only waypoint commands come here"),
    })
}

/// An EnvFilter's text in a query value: `,` `=` and `_` may stay, the rest is escaped.
fn encode_level(level: &str) -> String {
    level
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b",=_-.:".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn follow_flows(client: &Client, output: Output, path: &str) -> anyhow::Result<()> {
    follow::<Flow>(client, output, path, render::flow_line).await
}

async fn follow_requests(client: &Client, output: Output, path: &str) -> anyhow::Result<()> {
    follow::<RequestRecord>(client, output, path, waypoint_render::request_line).await
}

/// Prints each JSON line of `path` as it comes, one line per record (`table`: `line`).
async fn follow<T>(
    client: &Client,
    output: Output,
    path: &str,
    line: fn(&T) -> String,
) -> anyhow::Result<()>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let mut lines = client.lines(path).await?;
    while let Some(record) = lines.next::<T>().await {
        let record = match record {
            Ok(record) => record,
            // The server's `lagged` notes are not records: skipped, as before.
            Err(ClientError::Json { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let text = match output {
            Output::Table | Output::Dot | Output::Png => line(&record),
            Output::Json | Output::Yaml => serde_json::to_string(&record)?,
        };
        print(&text).await?;
    }
    Ok(())
}

async fn top(client: &Client, interval_secs: u64, iterations: Option<u64>) -> anyhow::Result<()> {
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut done = 0;
    loop {
        let flows = client.get::<Vec<Flow>>("/flows").await?;
        let mut text = String::new();
        if interactive {
            text.push_str("\x1b[H\x1b[2J");
        }
        text.push_str(&render::top(&flows, interval_secs));
        print(&text).await?;
        done += 1;
        if iterations.is_some_and(|n| done >= n) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(interval_secs)).await;
    }
}
