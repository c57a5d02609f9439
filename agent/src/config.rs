//! The agent's one `Config`: built from an optional YAML file, then `WEFT_*` environment
//! variables, then flags (later wins), and validated once before anything starts.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use weft_mesh::identity::CaSource;

/// Why a configuration was refused; each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("node name is empty: set --node-name or WEFT_NODE_NAME")]
    NoNodeName,
    #[error(
        "admin address {0} is not loopback: the admin API must stay on 127.0.0.1 (--admin-addr)"
    )]
    AdminNotLoopback(SocketAddr),
    #[error("excluded port {0} is one of the agent's own ports (15001, 15006, 15008)")]
    ExcludedAgentPort(u16),
    #[error("{0} excluded ports given; at most {max} fit the kernel map", max = weft_common::MAX_EXCLUDED_PORTS)]
    TooManyExcludedPorts(usize),
    #[error("a CA needs both --ca-cert and --ca-key (or neither, to generate one)")]
    HalfCa,
    #[error("SVID lifetime of {0} s is too short: give at least 10 s")]
    SvidLifetime(u64),
    #[error(
        "no configuration source: give --manifests DIR (local mode) or --kube (Kubernetes API)"
    )]
    NoSource,
    #[error("--manifests and --kube are two configuration sources: give one")]
    TwoSources,
    #[error("--ca-url needs --ca-root (the root bundle that verifies the CA service)")]
    RemoteCaWithoutRoot,
    #[error(transparent)]
    Tracing(#[from] weft_mesh::trace::SettingsError),
    #[error("--ca-url and --ca-cert/--ca-key both name a signer: give one")]
    TwoCas,
}

/// Where namespaces, pods, services and policies come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A folder of Kubernetes YAML manifests, re-read when it changes.
    Local { dir: PathBuf },
    /// The Kubernetes API (in-cluster config or KUBECONFIG); pods found through the host's
    /// `/proc` and cgroup tree.
    Kube {
        host_proc: PathBuf,
        cgroup_root: Option<PathBuf>,
        /// The node's own netns, to tell hostNetwork pods (default `<host_proc>/1/ns/net`).
        node_netns: Option<PathBuf>,
    },
}

/// The validated configuration of one agent.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub source: Source,
    /// Folder on a bpffs where programs, links and maps are pinned.
    pub bpffs_dir: PathBuf,
    pub state_dir: PathBuf,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub excluded_ports: Vec<u16>,
    pub trust_domain: String,
    pub ca: CaSource,
    pub svid_lifetime: std::time::Duration,
    /// On SIGTERM, how long open connections may finish before the agent exits (below the
    /// DaemonSet's termination grace period of 30 s).
    pub drain_timeout: std::time::Duration,
    /// A span per connection when set (see `weft_mesh::trace`); `None`: no spans.
    pub tracing: Option<weft_mesh::trace::Settings>,
}

/// `--drain-timeout` when none is given.
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// The file form: every field optional, overridden by env and flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    pub node_name: Option<String>,
    pub manifests: Option<PathBuf>,
    pub bpffs_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub readiness_addr: Option<SocketAddr>,
    pub excluded_ports: Option<Vec<u16>>,
    pub trust_domain: Option<String>,
    /// Folder of the generated local CA (`ca.pem`); default `<stateDir>/ca`.
    pub ca_dir: Option<PathBuf>,
    /// A CA certificate and key to sign with instead (a root, or an intermediate with
    /// `caChain` up to the root).
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub ca_chain: Option<PathBuf>,
    /// SVID lifetime in seconds (default 86400); renewed at half-life.
    pub svid_lifetime_secs: Option<u64>,
    /// On SIGTERM, seconds open connections may take to finish (default 25).
    pub drain_timeout_secs: Option<u64>,
    /// Read the cluster from the Kubernetes API instead of a manifest folder.
    pub kube: Option<bool>,
    /// Kubernetes mode: the host's /proc as mounted in the agent's pod.
    pub host_proc: Option<PathBuf>,
    /// Kubernetes mode: the host's cgroup2 mount (default: found in /proc/mounts).
    pub cgroup_root: Option<PathBuf>,
    /// Kubernetes mode: the node's network namespace (default: that of the host's PID 1).
    pub node_netns: Option<PathBuf>,
    /// Kubernetes mode: the cluster CA service (`https://weft-ca.weft-system.svc:15012`).
    pub ca_url: Option<String>,
    /// The root bundle that verifies the CA service and every peer.
    pub ca_root: Option<PathBuf>,
    /// The projected service-account token sent to the CA.
    pub token_file: Option<PathBuf>,
    /// `tracing:`; the standard `OTEL_*` variables override it.
    pub tracing: Option<weft_mesh::trace::SettingsFile>,
}

impl FileConfig {
    #[expect(
        clippy::disallowed_methods,
        reason = "read in main, before any runtime starts"
    )]
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Lays `over` (env and flags) on top of the file and validates the result.
    pub fn merge(self, over: Self) -> Result<Config, ConfigError> {
        let state_dir: PathBuf = over
            .state_dir
            .or(self.state_dir)
            .unwrap_or_else(|| "/var/lib/weft".into());
        let ca_url = over.ca_url.or(self.ca_url);
        let ca_root = over.ca_root.or(self.ca_root);
        let token_file = over.token_file.or(self.token_file);
        let ca = match (over.ca_cert.or(self.ca_cert), over.ca_key.or(self.ca_key)) {
            (Some(_), _) | (_, Some(_)) if ca_url.is_some() => return Err(ConfigError::TwoCas),
            (None, None) if ca_url.is_some() => CaSource::Remote {
                url: ca_url.unwrap_or_default(),
                root: ca_root.ok_or(ConfigError::RemoteCaWithoutRoot)?,
                token_file: token_file.unwrap_or_else(|| "/var/run/secrets/weft/token".into()),
            },
            (Some(cert), Some(key)) => CaSource::Files {
                cert,
                key,
                chain: over.ca_chain.or(self.ca_chain),
            },
            (None, None) => CaSource::Generated {
                dir: over
                    .ca_dir
                    .or(self.ca_dir)
                    .unwrap_or_else(|| state_dir.join("ca")),
            },
            _ => return Err(ConfigError::HalfCa),
        };
        let svid_lifetime_secs = over
            .svid_lifetime_secs
            .or(self.svid_lifetime_secs)
            .unwrap_or(86_400);
        if svid_lifetime_secs < 10 {
            return Err(ConfigError::SvidLifetime(svid_lifetime_secs));
        }
        let mut config = Config {
            ca,
            svid_lifetime: std::time::Duration::from_secs(svid_lifetime_secs),
            drain_timeout: over
                .drain_timeout_secs
                .or(self.drain_timeout_secs)
                .map_or(DEFAULT_DRAIN_TIMEOUT, std::time::Duration::from_secs),
            node_name: over.node_name.or(self.node_name).unwrap_or_default(),
            source: match (
                over.manifests.or(self.manifests),
                over.kube.or(self.kube).unwrap_or(false),
            ) {
                (Some(_), true) => return Err(ConfigError::TwoSources),
                (Some(dir), false) => Source::Local { dir },
                (None, true) => Source::Kube {
                    host_proc: over
                        .host_proc
                        .or(self.host_proc)
                        .unwrap_or_else(|| "/proc".into()),
                    cgroup_root: over.cgroup_root.or(self.cgroup_root),
                    node_netns: over.node_netns.or(self.node_netns),
                },
                (None, false) => return Err(ConfigError::NoSource),
            },
            bpffs_dir: over
                .bpffs_dir
                .or(self.bpffs_dir)
                .unwrap_or_else(|| "/sys/fs/bpf/weft".into()),
            state_dir,
            admin_addr: over
                .admin_addr
                .or(self.admin_addr)
                .unwrap_or(([127, 0, 0, 1], 15000).into()),
            metrics_addr: over
                .metrics_addr
                .or(self.metrics_addr)
                .unwrap_or(([0, 0, 0, 0], 15020).into()),
            readiness_addr: over
                .readiness_addr
                .or(self.readiness_addr)
                .unwrap_or(([0, 0, 0, 0], 15021).into()),
            excluded_ports: over
                .excluded_ports
                .or(self.excluded_ports)
                .unwrap_or_default(),
            trust_domain: over
                .trust_domain
                .or(self.trust_domain)
                .unwrap_or_else(|| "cluster.local".into()),
            tracing: over
                .tracing
                .unwrap_or_default()
                .over(self.tracing.unwrap_or_default())
                .check("weft-agent")?,
        };
        // A port listed twice would add the same routing rule twice, and the kernel refuses
        // the second: enrollment of every pod would fail over a repeated flag.
        config.excluded_ports.sort_unstable();
        config.excluded_ports.dedup();
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.node_name.trim().is_empty() {
            return Err(ConfigError::NoNodeName);
        }
        if !self.admin_addr.ip().is_loopback() {
            return Err(ConfigError::AdminNotLoopback(self.admin_addr));
        }
        if self.excluded_ports.len() > weft_common::MAX_EXCLUDED_PORTS as usize {
            return Err(ConfigError::TooManyExcludedPorts(self.excluded_ports.len()));
        }
        let own = [
            weft_common::OUTBOUND_PORT,
            weft_common::INBOUND_PORT,
            weft_common::HBONE_PORT,
        ];
        if let Some(port) = self.excluded_ports.iter().find(|p| own.contains(p)) {
            return Err(ConfigError::ExcludedAgentPort(*port));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(node: &str) -> FileConfig {
        FileConfig {
            node_name: Some(node.into()),
            manifests: Some("/m".into()),
            ..FileConfig::default()
        }
    }

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let file = FileConfig {
            node_name: Some("from-file".into()),
            trust_domain: Some("corp".into()),
            ..FileConfig::default()
        };
        let config = file.merge(flags("node-a")).expect("valid");
        assert_eq!(config.node_name, "node-a");
        assert_eq!(config.trust_domain, "corp");
        assert_eq!(config.admin_addr, ([127, 0, 0, 1], 15000).into());
    }

    #[test]
    fn refuses_public_admin_and_agent_ports() {
        let over = FileConfig {
            admin_addr: Some(([0, 0, 0, 0], 15000).into()),
            ..flags("n")
        };
        assert!(matches!(
            FileConfig::default().merge(over),
            Err(ConfigError::AdminNotLoopback(_))
        ));
        let over = FileConfig {
            excluded_ports: Some(vec![22, 15008]),
            ..flags("n")
        };
        assert!(matches!(
            FileConfig::default().merge(over),
            Err(ConfigError::ExcludedAgentPort(15008))
        ));
        assert!(matches!(
            FileConfig::default().merge(flags(" ")),
            Err(ConfigError::NoNodeName)
        ));
    }

    #[test]
    fn a_repeated_excluded_port_counts_once() {
        let over = FileConfig {
            excluded_ports: Some(vec![9100, 22, 9100]),
            ..flags("n")
        };
        let config = FileConfig::default().merge(over).expect("valid");
        assert_eq!(config.excluded_ports, [22, 9100]);
    }

    #[test]
    fn unknown_file_fields_are_errors() {
        let parsed: Result<FileConfig, _> = serde_yaml::from_str("nodeName: a\nbogus: 1\n");
        assert!(parsed.is_err());
    }
}
