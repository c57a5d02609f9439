//! `weft-waypoint`: reads its configuration and hands it to the app.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use weft_waypoint::config::FileConfig;

#[derive(Parser)]
#[command(name = "weft-waypoint", version, about = "Weft L7 waypoint proxy")]
struct Args {
    /// YAML configuration file; env (WEFT_*) and flags override it.
    #[arg(long, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    /// The namespace of the waypoint's Gateway.
    #[arg(long, env = "WEFT_NAMESPACE")]
    namespace: Option<String>,
    /// The Gateway's name (also the waypoint's service account).
    #[arg(long, env = "WEFT_NAME")]
    name: Option<String>,
    /// Local mode: folder of Kubernetes YAML manifests.
    #[arg(long, env = "WEFT_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Read the cluster from the Kubernetes API (in-cluster config or KUBECONFIG).
    #[arg(long, env = "WEFT_KUBE")]
    kube: bool,
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Folder of the local CA shared with the agents (local mode).
    #[arg(long, env = "WEFT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    #[arg(long, env = "WEFT_CA_CHAIN")]
    ca_chain: Option<PathBuf>,
    /// Kubernetes mode: get the SVID from this CA service.
    #[arg(long, env = "WEFT_CA_URL")]
    ca_url: Option<String>,
    #[arg(long, env = "WEFT_CA_ROOT")]
    ca_root: Option<PathBuf>,
    #[arg(long, env = "WEFT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[arg(long, env = "WEFT_SVID_LIFETIME_SECS")]
    svid_lifetime_secs: Option<u64>,
    #[arg(long, env = "WEFT_HBONE_ADDR")]
    hbone_addr: Option<SocketAddr>,
    #[arg(long, env = "WEFT_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    #[arg(long, env = "WEFT_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    #[arg(long, env = "WEFT_READINESS_ADDR")]
    readiness_addr: Option<SocketAddr>,
    /// On SIGTERM, seconds open requests may take to finish (default 25).
    #[arg(long, alias = "drain-timeout", env = "WEFT_DRAIN_TIMEOUT_SECS")]
    drain_timeout_secs: Option<u64>,
    /// Log lines as JSON.
    #[arg(long, env = "WEFT_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log_filter = weft_mesh::admin::SetLogFilter::init(args.log_json);
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let over = FileConfig {
        namespace: args.namespace,
        name: args.name,
        manifests: args.manifests,
        kube: args.kube.then_some(true),
        trust_domain: args.trust_domain,
        ca_dir: args.ca_dir,
        ca_cert: args.ca_cert,
        ca_key: args.ca_key,
        ca_chain: args.ca_chain,
        ca_url: args.ca_url,
        ca_root: args.ca_root,
        token_file: args.token_file,
        svid_lifetime_secs: args.svid_lifetime_secs,
        hbone_addr: args.hbone_addr,
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        readiness_addr: args.readiness_addr,
        drain_timeout_secs: args.drain_timeout_secs,
        tracing: Some(
            weft_mesh::trace::SettingsFile::from_env(|name| {
                // The OpenTelemetry spec: an empty variable is an unset one.
                std::env::var(name).ok().filter(|v| !v.trim().is_empty())
            })
            .context("invalid OTEL_* tracing variable")?,
        ),
    };
    let config = file.merge(over).context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(weft_waypoint::app::run(config, Some(log_filter)))?;
    Ok(())
}
