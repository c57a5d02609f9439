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
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check that this kernel can run Weft's programs, then exit.
    Check,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let over = FileConfig {
        node_name: args.node_name,
        manifests: args.manifests,
        bpffs_dir: args.bpffs_dir,
        ..FileConfig::default()
    };
    let config = file.merge(over).context("invalid configuration")?;
    match args.command {
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
