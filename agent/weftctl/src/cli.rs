//! weftctl's command line (clap): the global flags that pick an agent and an output format,
//! and one subcommand per SPEC command.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about = "Inspect a Weft node agent")]
pub struct Args {
    /// The agent's admin address (on its node).
    #[arg(
        long,
        global = true,
        env = "WEFTCTL_ADMIN",
        default_value = "127.0.0.1:15000"
    )]
    pub admin: SocketAddr,
    /// A playground node (`cargo xtask demo up`): its netns and admin address come from the
    /// playground file. Needs root to enter the node's network namespace.
    #[arg(long, global = true, conflicts_with = "waypoint")]
    pub node: Option<String>,
    /// A playground waypoint `NAMESPACE/NAME`: its netns and admin address come from the
    /// playground file (in Kubernetes, port-forward its 15000 and give `--admin`). Needs root.
    #[arg(long, global = true)]
    pub waypoint: Option<String>,
    /// The playground file; default: target/weft-demo/playground.json here or in a parent.
    #[arg(long, global = true, env = "WEFT_PLAYGROUND")]
    pub playground: Option<PathBuf>,
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
    /// Graphviz (`graph` only).
    Dot,
    /// A PNG drawn by Graphviz's `dot` (`graph` only; give the file).
    Png,
}

/// `--verdict`: the values [`weft_api::Verdict`] has, so a typo fails before anything is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Verdict {
    /// Policy allowed it.
    Allow,
    /// Policy denied it.
    Deny,
    /// The agent could not carry it (no endpoint, unreachable, tunnel refused).
    Failed,
}

impl From<Verdict> for weft_api::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Allow => Self::Allow,
            Verdict::Deny => Self::Deny,
            Verdict::Failed => Self::Failed,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
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
    /// Recent connection events, with why each was allowed, denied or failed. The agent
    /// selects them.
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
        #[arg(long, value_enum)]
        verdict: Option<Verdict>,
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
    /// Counters: proxy totals, kernel program counters, the HBONE pool, limits hit.
    Stats,
    /// The agent's whole registry.
    ConfigDump,
    /// Change the agent's log filter (`debug`, `info,weft_agent=trace`).
    Logging {
        level: String,
    },
    Version,
    /// What a `reason` (in flows, requests, metrics, rejected objects) means and what to do
    /// about it; with none named, every reason Weft reports. Needs no agent.
    Explain {
        reason: Option<String>,
    },
    /// At a waypoint: each route with its status (Accepted, ResolvedRefs) and its rules.
    Routes,
    /// At a waypoint: the endpoints of SERVICE (`namespace/name`) with their health,
    /// ejection, active requests, latency average and locality, and its breaker's occupancy.
    Endpoints {
        service: String,
    },
    /// At a waypoint: recent requests with the route and backend each took. The waypoint
    /// selects them.
    Requests {
        /// Keep streaming new requests.
        #[arg(long)]
        follow: bool,
        /// A route `namespace/name`, or one rule of it: `namespace/name rule N`.
        #[arg(long)]
        route: Option<String>,
        /// A status code (`503`) or class (`5xx`).
        #[arg(long)]
        status: Option<String>,
    },
    /// At a waypoint (`--waypoint NS/NAME`, or `--admin` its admin address): which route rule `METHOD URL` would take,
    /// why every other rule did not, and what the chosen one would do. Nothing is sent to a
    /// backend. URL's host is a Service VIP or `name.namespace`.
    RouteCheck {
        method: String,
        url: String,
        /// A request header, `name: value` (repeat for more).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The caller's namespace, for its consumer routes.
        #[arg(long)]
        caller_namespace: Option<String>,
        /// The caller's identity, `NAMESPACE/SERVICEACCOUNT`, for the policies that would
        /// judge the request (its namespace also picks consumer routes).
        #[arg(long)]
        caller: Option<String>,
        /// The caller's address, for `ipBlocks` and `source.ip`.
        #[arg(long)]
        source_ip: Option<String>,
    },
    /// The workload-to-workload graph of this node (or waypoint), or of the whole playground
    /// with `--all`: connection and request rates, error share, p99 and mTLS share per edge,
    /// from the records the agents and waypoints keep (no Prometheus needed).
    Graph {
        /// Every node and waypoint of the playground file.
        #[arg(long)]
        all: bool,
        /// The window the counts and rates cover (`30s`, `5m`, `1h`).
        #[arg(long, default_value = "5m")]
        since: String,
        /// With `-o png`: the file to write.
        file: Option<PathBuf>,
        /// The raw edge counts as JSON, for `--all` to merge.
        #[arg(long, hide = true)]
        edges: bool,
    },
    /// Waypoints: `generate` prints the objects one needs in Kubernetes (what the controller
    /// creates for a Gateway of class `weft-waypoint`).
    Waypoint {
        #[command(subcommand)]
        command: WaypointCmd,
    },
}

#[derive(Debug, Subcommand)]
pub enum WaypointCmd {
    /// Prints the Gateway, ServiceAccount, Deployment and Service of waypoint NAME.
    Generate {
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        name: String,
        /// The image of the Deployment.
        #[arg(long, default_value = crate::waypoint::DEFAULT_IMAGE)]
        image: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_flags_are_exactly_the_api_verdicts() {
        let flags: Vec<weft_api::Verdict> = Verdict::value_variants()
            .iter()
            .map(|&v| v.into())
            .collect();
        assert_eq!(flags, weft_api::Verdict::ALL);
        for v in Verdict::value_variants() {
            let name = v.to_possible_value().expect("shown");
            assert_eq!(name.get_name(), weft_api::Verdict::from(*v).as_str());
        }
    }

    #[test]
    fn an_unknown_verdict_fails_before_anything_is_sent() {
        let error = Args::try_parse_from(["weftctl", "flows", "--verdict", "bogus"])
            .expect_err("bogus verdict");
        let text = error.to_string();
        assert!(
            text.contains("bogus") && text.contains("allow, deny, failed"),
            "{text}"
        );
        let args = Args::try_parse_from(["weftctl", "-o", "json", "flows", "--verdict", "deny"])
            .expect("deny");
        assert!(matches!(
            args.command,
            Cmd::Flows {
                verdict: Some(Verdict::Deny),
                ..
            }
        ));
        assert_eq!(args.output, Output::Json);
    }
}
