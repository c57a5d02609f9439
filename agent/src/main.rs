//! `weft-agent`: reads its configuration and hands it to the app.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weft_agent::config::FileConfig;

#[derive(Parser)]
#[command(name = "weft-agent", version, about = "Weft node agent")]
struct Args {
    /// YAML configuration file; env (WEFT_*) and flags override it.
    #[arg(long, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "WEFT_NODE_NAME")]
    node_name: Option<String>,
    /// Local mode: folder of Kubernetes YAML manifests.
    #[arg(long, env = "WEFT_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// bpffs folder for pins.
    #[arg(long, env = "WEFT_BPFFS_DIR")]
    bpffs_dir: Option<PathBuf>,
    /// Folder for the agent's state (local CA, enrolled pods).
    #[arg(long, env = "WEFT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Ports never captured (repeat or comma-separate).
    #[arg(long, env = "WEFT_EXCLUDED_PORTS", value_delimiter = ',')]
    excluded_ports: Option<Vec<u16>>,
    #[arg(long, env = "WEFT_ADMIN_ADDR")]
    admin_addr: Option<std::net::SocketAddr>,
    #[arg(long, env = "WEFT_READINESS_ADDR")]
    readiness_addr: Option<std::net::SocketAddr>,
    /// Where Prometheus scrapes `/metrics` (default 0.0.0.0:15020, in the node's netns).
    #[arg(long, env = "WEFT_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Folder of the generated local CA (shared by the agents of a local cluster).
    #[arg(long, env = "WEFT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Sign SVIDs with this CA certificate (PEM) instead of a generated root.
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The chain from --ca-cert up to the root, when --ca-cert is an intermediate.
    #[arg(long, env = "WEFT_CA_CHAIN")]
    ca_chain: Option<PathBuf>,
    /// SVID lifetime in seconds; renewed at half-life.
    #[arg(long, env = "WEFT_SVID_LIFETIME_SECS")]
    svid_lifetime_secs: Option<u64>,
    /// On SIGTERM, seconds open connections may take to finish (default 25). `--drain-timeout`
    /// is the SPEC's name for it.
    #[arg(long, alias = "drain-timeout", env = "WEFT_DRAIN_TIMEOUT_SECS")]
    drain_timeout_secs: Option<u64>,
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Read the cluster from the Kubernetes API (in-cluster config or KUBECONFIG).
    #[arg(long, env = "WEFT_KUBE")]
    kube: bool,
    /// Kubernetes mode: the host's /proc, where pods' processes and netns are found.
    #[arg(long, env = "WEFT_HOST_PROC")]
    host_proc: Option<PathBuf>,
    /// Kubernetes mode: the host's cgroup2 mount (default: found in /proc/mounts).
    #[arg(long, env = "WEFT_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Kubernetes mode: the node's network namespace, to refuse hostNetwork pods (default:
    /// that of the host's PID 1, under --host-proc).
    #[arg(long, env = "WEFT_NODE_NETNS")]
    node_netns: Option<PathBuf>,
    /// Kubernetes mode: get SVIDs from this CA service instead of signing locally.
    #[arg(long, env = "WEFT_CA_URL")]
    ca_url: Option<String>,
    /// The root bundle (PEM) that verifies the CA service and every peer.
    #[arg(long, env = "WEFT_CA_ROOT")]
    ca_root: Option<PathBuf>,
    /// The projected service-account token sent to the CA service.
    #[arg(long, env = "WEFT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Log lines as JSON.
    #[arg(long, env = "WEFT_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default).
    Run,
    /// Check that this kernel can run Weft's programs, then exit.
    Check,
    /// Remove every program, link and pin the agent made on this node.
    Uninstall,
    /// Run the cluster CA service (a Deployment): signs SVIDs for agents, each only for
    /// service accounts of pods on the agent's own node. Signs with --ca-cert/--ca-key.
    Ca {
        #[arg(long, env = "WEFT_CA_LISTEN", default_value = "0.0.0.0:15012")]
        listen: std::net::SocketAddr,
        /// `namespace/name` of the agents' service account.
        #[arg(
            long,
            env = "WEFT_AGENT_SERVICE_ACCOUNT",
            default_value = "weft-system/weft-agent"
        )]
        agent_service_account: String,
        /// The audience agents' projected tokens are issued for.
        #[arg(long, env = "WEFT_TOKEN_AUDIENCE", default_value = "weft-ca")]
        token_audience: String,
        /// The image of the waypoint Deployments the waypoint controller creates for Gateways
        /// of class `weft-waypoint`; `none` turns the controller off.
        #[arg(long, env = "WEFT_WAYPOINT_IMAGE", default_value = weft_api::waypoint::DEFAULT_IMAGE)]
        waypoint_image: String,
    },
}

/// `weft-agent ca`: the cluster CA service, configured from the shared CA and identity flags.
fn run_ca(
    args: &Args,
    listen: std::net::SocketAddr,
    (agent_service_account, token_audience): (&str, &str),
    waypoint_image: Option<String>,
) -> anyhow::Result<()> {
    let (Some(cert), Some(key)) = (args.ca_cert.clone(), args.ca_key.clone()) else {
        anyhow::bail!("weft-agent ca signs with --ca-cert and --ca-key (WEFT_CA_CERT, WEFT_CA_KEY): mount the weft-ca Secret");
    };
    anyhow::ensure!(
        agent_service_account.split_once('/').is_some(),
        "--agent-service-account must be namespace/name, got {agent_service_account:?}"
    );
    let config = weft_agent::ca_server::CaConfig {
        listen,
        readiness: args
            .readiness_addr
            .unwrap_or_else(|| ([0, 0, 0, 0], 15021).into()),
        signing: weft_mesh::identity::CaSource::Files {
            cert,
            key,
            chain: args.ca_chain.clone(),
        },
        trust_domain: args
            .trust_domain
            .clone()
            .unwrap_or_else(|| "cluster.local".into()),
        agent_service_account: agent_service_account.to_owned(),
        audience: token_audience.to_owned(),
        svid_lifetime: std::time::Duration::from_secs(args.svid_lifetime_secs.unwrap_or(86_400)),
        dns_names: [
            "weft-ca",
            "weft-ca.weft-system",
            "weft-ca.weft-system.svc",
            "weft-ca.weft-system.svc.cluster.local",
            "localhost",
        ]
        .map(String::from)
        .to_vec(),
        waypoint_image,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(weft_agent::ca_server::run(config))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log_filter = weft_mesh::admin::SetLogFilter::init(args.log_json);
    if let Some(Cmd::Ca {
        listen,
        agent_service_account,
        token_audience,
        waypoint_image,
    }) = &args.command
    {
        let waypoint_image = (waypoint_image != "none").then(|| waypoint_image.clone());
        return run_ca(
            &args,
            *listen,
            (agent_service_account, token_audience),
            waypoint_image,
        );
    }
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let over = FileConfig {
        node_name: args.node_name,
        manifests: args.manifests,
        bpffs_dir: args.bpffs_dir,
        state_dir: args.state_dir,
        excluded_ports: args.excluded_ports,
        admin_addr: args.admin_addr,
        readiness_addr: args.readiness_addr,
        metrics_addr: args.metrics_addr,
        ca_dir: args.ca_dir,
        ca_cert: args.ca_cert,
        ca_key: args.ca_key,
        ca_chain: args.ca_chain,
        svid_lifetime_secs: args.svid_lifetime_secs,
        drain_timeout_secs: args.drain_timeout_secs,
        trust_domain: args.trust_domain,
        kube: args.kube.then_some(true),
        host_proc: args.host_proc,
        cgroup_root: args.cgroup_root,
        node_netns: args.node_netns,
        ca_url: args.ca_url,
        ca_root: args.ca_root,
        token_file: args.token_file,
        tracing: Some(
            weft_mesh::trace::SettingsFile::from_env(|name| {
                // The OpenTelemetry spec: an empty variable is an unset one.
                std::env::var(name).ok().filter(|v| !v.trim().is_empty())
            })
            .context("invalid OTEL_* tracing variable")?,
        ),
    };
    let config = file.merge(over).context("invalid configuration")?;
    match args.command.unwrap_or(Cmd::Run) {
        Cmd::Run => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(weft_agent::app::run(config, Some(log_filter)))?;
        }
        Cmd::Uninstall => {
            let removed = weft_agent::app::uninstall(&config)?;
            println!(
                "uninstalled: removed {} pins under {}",
                removed.len(),
                config.bpffs_dir.display()
            );
            for pin in removed {
                println!("  {pin}");
            }
        }
        Cmd::Ca { .. } => unreachable!("handled above"),
        Cmd::Check => {
            let report = weft_agent::app::check(&config)?;
            println!(
                "kernel ready: {} programs verified ({})",
                report.programs.len(),
                report.programs.join(", ")
            );
        }
    }
    Ok(())
}
