//! The waypoint's one `Config`: an optional YAML file, then `WEFT_*` environment variables,
//! then flags (later wins), validated once before anything starts.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
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
    #[error("the waypoint's Gateway is unnamed: give --namespace and --name (WEFT_NAMESPACE, WEFT_NAME)")]
    NoName,
    #[error(
        "admin address {0} is not loopback: the admin API must stay on 127.0.0.1 (--admin-addr)"
    )]
    AdminNotLoopback(SocketAddr),
    #[error(
        "no configuration source: give --manifests DIR (local mode) or --kube (Kubernetes API)"
    )]
    NoSource,
    #[error("--manifests and --kube are two configuration sources: give one")]
    TwoSources,
    #[error("a CA needs both --ca-cert and --ca-key (or neither)")]
    HalfCa,
    #[error("--ca-url needs --ca-root (the root bundle that verifies the CA service)")]
    RemoteCaWithoutRoot,
    #[error(
        "no signer: give --ca-dir (local mode's shared CA folder), --ca-cert/--ca-key, or --ca-url"
    )]
    NoCa,
    #[error(transparent)]
    Tracing(#[from] weft_mesh::trace::SettingsError),
}

/// Where the registry comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Local { dir: PathBuf },
    Kube,
}

/// The validated configuration of one waypoint.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Gateway this waypoint serves: `namespace/name`; its identity is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<name>`.
    pub namespace: String,
    pub name: String,
    pub source: Source,
    pub trust_domain: String,
    pub ca: CaSource,
    pub svid_lifetime: Duration,
    pub hbone_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub drain_timeout: Duration,
    /// Where spans go and which are kept; `None`: no spans, trace headers pass untouched.
    pub tracing: Option<weft_mesh::trace::Settings>,
}

/// `--drain-timeout` when none is given, as the agent's.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// The file form: every field optional, overridden by env and flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub manifests: Option<PathBuf>,
    pub kube: Option<bool>,
    pub trust_domain: Option<String>,
    pub ca_dir: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    pub ca_chain: Option<PathBuf>,
    pub ca_url: Option<String>,
    pub ca_root: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub svid_lifetime_secs: Option<u64>,
    pub hbone_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub readiness_addr: Option<SocketAddr>,
    pub drain_timeout_secs: Option<u64>,
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
        let ca_url = over.ca_url.or(self.ca_url);
        let ca = match (over.ca_cert.or(self.ca_cert), over.ca_key.or(self.ca_key)) {
            (Some(cert), Some(key)) => CaSource::Files {
                cert,
                key,
                chain: over.ca_chain.or(self.ca_chain),
            },
            (Some(_), None) | (None, Some(_)) => return Err(ConfigError::HalfCa),
            (None, None) => match (ca_url, over.ca_dir.or(self.ca_dir)) {
                (Some(url), _) => CaSource::Remote {
                    url,
                    root: over
                        .ca_root
                        .or(self.ca_root)
                        .ok_or(ConfigError::RemoteCaWithoutRoot)?,
                    token_file: over
                        .token_file
                        .or(self.token_file)
                        .unwrap_or_else(|| "/var/run/secrets/weft/token".into()),
                },
                (None, Some(dir)) => CaSource::Generated { dir },
                (None, None) => return Err(ConfigError::NoCa),
            },
        };
        let config = Config {
            namespace: over.namespace.or(self.namespace).unwrap_or_default(),
            name: over.name.or(self.name).unwrap_or_default(),
            source: match (
                over.manifests.or(self.manifests),
                over.kube.or(self.kube).unwrap_or(false),
            ) {
                (Some(_), true) => return Err(ConfigError::TwoSources),
                (Some(dir), false) => Source::Local { dir },
                (None, true) => Source::Kube,
                (None, false) => return Err(ConfigError::NoSource),
            },
            trust_domain: over
                .trust_domain
                .or(self.trust_domain)
                .unwrap_or_else(|| "cluster.local".into()),
            ca,
            svid_lifetime: Duration::from_secs(
                over.svid_lifetime_secs
                    .or(self.svid_lifetime_secs)
                    .unwrap_or(86_400)
                    .max(10),
            ),
            hbone_addr: over
                .hbone_addr
                .or(self.hbone_addr)
                .unwrap_or(([0, 0, 0, 0], weft_mesh::ports::HBONE_PORT).into()),
            admin_addr: over
                .admin_addr
                .or(self.admin_addr)
                .unwrap_or(([127, 0, 0, 1], weft_mesh::ports::ADMIN_PORT).into()),
            metrics_addr: over
                .metrics_addr
                .or(self.metrics_addr)
                .unwrap_or(([0, 0, 0, 0], weft_mesh::ports::METRICS_PORT).into()),
            readiness_addr: over
                .readiness_addr
                .or(self.readiness_addr)
                .unwrap_or(([0, 0, 0, 0], weft_mesh::ports::READINESS_PORT).into()),
            drain_timeout: over
                .drain_timeout_secs
                .or(self.drain_timeout_secs)
                .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_secs),
            tracing: over
                .tracing
                .unwrap_or_default()
                .over(self.tracing.unwrap_or_default())
                .check("weft-waypoint")?,
        };
        if config.namespace.trim().is_empty() || config.name.trim().is_empty() {
            return Err(ConfigError::NoName);
        }
        if !config.admin_addr.ip().is_loopback() {
            return Err(ConfigError::AdminNotLoopback(config.admin_addr));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> FileConfig {
        FileConfig {
            namespace: Some("demo".into()),
            name: Some("waypoint".into()),
            manifests: Some("/m".into()),
            ca_dir: Some("/ca".into()),
            ..FileConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_spec_ports() {
        let config = FileConfig::default().merge(named()).expect("valid");
        assert_eq!(config.hbone_addr.port(), 15008);
        assert_eq!(config.admin_addr, ([127, 0, 0, 1], 15000).into());
        assert_eq!(config.readiness_addr.port(), 15021);
    }

    #[test]
    fn refuses_what_cannot_run() {
        let unnamed = FileConfig {
            name: None,
            ..named()
        };
        assert!(matches!(
            FileConfig::default().merge(unnamed),
            Err(ConfigError::NoName)
        ));
        let public_admin = FileConfig {
            admin_addr: Some(([0, 0, 0, 0], 15000).into()),
            ..named()
        };
        assert!(matches!(
            FileConfig::default().merge(public_admin),
            Err(ConfigError::AdminNotLoopback(_))
        ));
        let no_ca = FileConfig {
            ca_dir: None,
            ..named()
        };
        assert!(matches!(
            FileConfig::default().merge(no_ca),
            Err(ConfigError::NoCa)
        ));
    }
}
