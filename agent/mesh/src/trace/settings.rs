//! The tracing settings both binaries take: a `tracing:` section of their config file, then
//! the standard `OTEL_*` environment variables over it, checked once into [`Settings`].

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

/// Why a tracing setting was refused; each names the setting to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("tracing endpoint {0:?} is not an http:// URL (TLS to the collector is not supported; run a collector beside the agent and give http://HOST:PORT)")]
    Endpoint(String),
    #[error("tracing protocol {0:?} is not one of grpc, http/protobuf (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or tracing.protocol)")]
    Protocol(String),
    #[error("tracing sampler {0:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio (OTEL_TRACES_SAMPLER)")]
    Sampler(String),
    #[error(
        "tracing sampler argument {0:?} is not a ratio between 0 and 1 (OTEL_TRACES_SAMPLER_ARG)"
    )]
    Ratio(String),
    #[error("{name} = {value:?} is not a whole number")]
    Number { name: &'static str, value: String },
    #[error("{name} = {value} is outside {min}..={max}")]
    Range {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("OTEL_TRACES_EXPORTER {0:?} is not one of otlp, none")]
    Exporter(String),
    #[error("tracing header {0:?} is not a valid HTTP header name and value (OTEL_EXPORTER_OTLP_HEADERS is `key=value,key2=value2`, values percent-encoded)")]
    Header(String),
    #[error(
        "more than {MAX_HEADERS} tracing headers, or more than {MAX_HEADER_BYTES} bytes of them"
    )]
    TooManyHeaders,
}

/// The `tracing:` section of a config file; every field optional.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SettingsFile {
    /// Where spans go, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318/v1/traces` (HTTP). None: no spans are made.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<String>,
    /// An `OTEL_TRACES_SAMPLER` name.
    pub sampler: Option<String>,
    pub sampler_arg: Option<f64>,
    pub service_name: Option<String>,
    pub max_queue_size: Option<u64>,
    pub max_export_batch_size: Option<u64>,
    pub scheduled_delay_ms: Option<u64>,
    pub export_timeout_ms: Option<u64>,
    /// Sent with every export (an API key for a hosted collector, a tenant).
    pub headers: Option<BTreeMap<String, String>>,
}

/// How spans leave: OTLP over gRPC or over HTTP with protobuf bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Which traces are kept: the names and meaning of `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// Checked tracing settings: `None` of these in a binary's `Config` means tracing is off and
/// trace headers pass through untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub endpoint: http::Uri,
    pub protocol: Protocol,
    pub sampling: Sampling,
    pub service_name: String,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub scheduled_delay: Duration,
    pub export_timeout: Duration,
    pub headers: http::HeaderMap,
}

/// The span queue when none is given (the SDK's own default); the most a queue may hold.
pub const DEFAULT_QUEUE: u64 = 2048;
pub const MAX_QUEUE: u64 = 65_536;
pub const DEFAULT_BATCH: u64 = 512;
pub const DEFAULT_DELAY_MS: u64 = 5_000;
pub const DEFAULT_EXPORT_TIMEOUT_MS: u64 = 10_000;
/// The most export headers, and their bytes together.
pub const MAX_HEADERS: usize = 32;
pub const MAX_HEADER_BYTES: usize = 8192;

/// `key=value,key2=value2`, values percent-decoded, as the OpenTelemetry spec writes them.
fn parse_headers(text: &str) -> Result<BTreeMap<String, String>, SettingsError> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| SettingsError::Header(pair.to_owned()))?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| SettingsError::Header(pair.to_owned()))?;
            Ok((key.trim().to_owned(), value.into_owned()))
        })
        .collect()
}

fn header_map(headers: BTreeMap<String, String>) -> Result<http::HeaderMap, SettingsError> {
    let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(SettingsError::TooManyHeaders);
    }
    headers
        .into_iter()
        .map(|(key, value)| {
            let bad = || SettingsError::Header(key.clone());
            Ok((
                http::HeaderName::from_bytes(key.as_bytes()).map_err(|_| bad())?,
                http::HeaderValue::from_str(&value).map_err(|_| bad())?,
            ))
        })
        .collect()
}

fn number(name: &'static str, value: Option<String>) -> Result<Option<u64>, SettingsError> {
    value
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| SettingsError::Number { name, value: v })
        })
        .transpose()
}

fn in_range(name: &'static str, value: u64, min: u64, max: u64) -> Result<u64, SettingsError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(SettingsError::Range {
            name,
            value,
            min,
            max,
        })
    }
}

impl SettingsFile {
    /// The standard variables, read through `var` (the process environment in `main`). The
    /// signal-specific ones win over the general ones, as the OpenTelemetry spec says.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let either = |specific: &str, general: &str| var(specific).or_else(|| var(general));
        let protocol = either(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        );
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            // The general endpoint is a base: HTTP appends the signal's path, gRPC does not.
            var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| {
                if protocol.as_deref() == Some("http/protobuf") {
                    format!("{}/v1/traces", base.trim_end_matches('/'))
                } else {
                    base
                }
            })
        });
        let sampler_arg = var("OTEL_TRACES_SAMPLER_ARG")
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| SettingsError::Ratio(v.clone()))
            })
            .transpose()?;
        let mut file = Self {
            endpoint,
            protocol,
            sampler: var("OTEL_TRACES_SAMPLER"),
            sampler_arg,
            service_name: var("OTEL_SERVICE_NAME"),
            max_queue_size: number("OTEL_BSP_MAX_QUEUE_SIZE", var("OTEL_BSP_MAX_QUEUE_SIZE"))?,
            max_export_batch_size: number(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
            )?,
            scheduled_delay_ms: number("OTEL_BSP_SCHEDULE_DELAY", var("OTEL_BSP_SCHEDULE_DELAY"))?,
            export_timeout_ms: number(
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                either(
                    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                ),
            )?,
            headers: either(
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_HEADERS",
            )
            .map(|text| parse_headers(&text))
            .transpose()?,
        };
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => file.endpoint = Some(String::new()),
            Some(other) => return Err(SettingsError::Exporter(other.to_owned())),
        }
        if disabled {
            // An empty endpoint turns tracing off even over a file that names one.
            file.endpoint = Some(String::new());
        }
        Ok(file)
    }

    /// `self` (env) laid over `under` (the file).
    #[must_use]
    pub fn over(self, under: Self) -> Self {
        Self {
            endpoint: self.endpoint.or(under.endpoint),
            protocol: self.protocol.or(under.protocol),
            sampler: self.sampler.or(under.sampler),
            sampler_arg: self.sampler_arg.or(under.sampler_arg),
            service_name: self.service_name.or(under.service_name),
            max_queue_size: self.max_queue_size.or(under.max_queue_size),
            max_export_batch_size: self.max_export_batch_size.or(under.max_export_batch_size),
            scheduled_delay_ms: self.scheduled_delay_ms.or(under.scheduled_delay_ms),
            export_timeout_ms: self.export_timeout_ms.or(under.export_timeout_ms),
            headers: self.headers.or(under.headers),
        }
    }

    /// The checked settings; `Ok(None)` when no endpoint is set (tracing off).
    pub fn check(self, default_service: &str) -> Result<Option<Settings>, SettingsError> {
        let Some(endpoint) = self.endpoint.filter(|e| !e.trim().is_empty()) else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| SettingsError::Endpoint(endpoint.clone()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(SettingsError::Endpoint(endpoint));
        }
        let protocol = match self.protocol.as_deref().map(str::trim) {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => return Err(SettingsError::Protocol(other.to_owned())),
        };
        let ratio = match self.sampler_arg {
            None => 1.0,
            Some(r) if (0.0..=1.0).contains(&r) => r,
            Some(r) => return Err(SettingsError::Ratio(r.to_string())),
        };
        let sampling = match self.sampler.as_deref().map(str::trim) {
            None | Some("parentbased_always_on") => Sampling::ParentBasedAlwaysOn,
            Some("always_on") => Sampling::AlwaysOn,
            Some("always_off") => Sampling::AlwaysOff,
            Some("traceidratio") => Sampling::Ratio(ratio),
            Some("parentbased_always_off") => Sampling::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => Sampling::ParentBasedRatio(ratio),
            Some(other) => return Err(SettingsError::Sampler(other.to_owned())),
        };
        let queue = in_range(
            "tracing.maxQueueSize",
            self.max_queue_size.unwrap_or(DEFAULT_QUEUE),
            1,
            MAX_QUEUE,
        )?;
        let batch = in_range(
            "tracing.maxExportBatchSize",
            self.max_export_batch_size
                .unwrap_or(DEFAULT_BATCH.min(queue)),
            1,
            queue,
        )?;
        let delay = in_range(
            "tracing.scheduledDelayMs",
            self.scheduled_delay_ms.unwrap_or(DEFAULT_DELAY_MS),
            1,
            60_000,
        )?;
        let timeout = in_range(
            "tracing.exportTimeoutMs",
            self.export_timeout_ms.unwrap_or(DEFAULT_EXPORT_TIMEOUT_MS),
            1,
            60_000,
        )?;
        Ok(Some(Settings {
            endpoint: uri,
            protocol,
            sampling,
            service_name: self
                .service_name
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| default_service.to_owned()),
            max_queue_size: usize::try_from(queue).unwrap_or(usize::MAX),
            max_export_batch_size: usize::try_from(batch).unwrap_or(usize::MAX),
            scheduled_delay: Duration::from_millis(delay),
            export_timeout: Duration::from_millis(timeout),
            headers: header_map(self.headers.unwrap_or_default())?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn no_endpoint_means_no_tracing() {
        let file = SettingsFile::from_env(env(&[])).expect("env");
        assert_eq!(file.check("weft-agent"), Ok(None));
    }

    #[test]
    fn the_standard_variables_win_over_the_file() {
        let file = SettingsFile {
            endpoint: Some("http://collector:4317".into()),
            sampler: Some("always_off".into()),
            service_name: Some("from-file".into()),
            ..SettingsFile::default()
        };
        let env = SettingsFile::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=s%3Dcret, x-tenant = a ",
            ),
        ]))
        .expect("env");
        let settings = env.over(file).check("weft-waypoint").expect("valid");
        let settings = settings.expect("on");
        assert_eq!(settings.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(settings.protocol, Protocol::HttpProtobuf);
        assert_eq!(settings.sampling, Sampling::ParentBasedRatio(0.25));
        assert_eq!(settings.service_name, "from-file");
        assert_eq!(settings.max_queue_size, 100);
        assert_eq!(
            settings.max_export_batch_size, 100,
            "the batch fits the queue"
        );
        assert_eq!(settings.headers["x-api-key"], "s=cret");
        assert_eq!(settings.headers["x-tenant"], "a");
    }

    #[test]
    fn disabled_sdk_turns_a_configured_endpoint_off() {
        let file = SettingsFile {
            endpoint: Some("http://collector:4317".into()),
            ..SettingsFile::default()
        };
        let env = SettingsFile::from_env(env(&[("OTEL_SDK_DISABLED", "true")])).expect("env");
        assert_eq!(env.over(file).check("x"), Ok(None));
    }

    #[test]
    fn bad_values_name_what_to_fix() {
        let bad = |file: SettingsFile| {
            SettingsFile {
                endpoint: file.endpoint.or(Some("http://c:4317".into())),
                ..file
            }
            .check("x")
            .expect_err("refused")
            .to_string()
        };
        assert!(bad(SettingsFile {
            endpoint: Some("https://c:4317".into()),
            ..SettingsFile::default()
        })
        .contains("not an http:// URL"));
        assert!(bad(SettingsFile {
            protocol: Some("http/json".into()),
            ..SettingsFile::default()
        })
        .contains("grpc, http/protobuf"));
        assert!(bad(SettingsFile {
            sampler: Some("sometimes".into()),
            ..SettingsFile::default()
        })
        .contains("OTEL_TRACES_SAMPLER"));
        assert!(bad(SettingsFile {
            sampler_arg: Some(2.0),
            ..SettingsFile::default()
        })
        .contains("ratio"));
        assert!(bad(SettingsFile {
            max_queue_size: Some(0),
            ..SettingsFile::default()
        })
        .contains("maxQueueSize"));
        let no_value = SettingsFile::from_env(env(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]));
        assert!(no_value
            .expect_err("refused")
            .to_string()
            .contains("key=value"));
        let bad_name = SettingsFile {
            headers: Some(BTreeMap::from([("bad name".to_owned(), "x".to_owned())])),
            ..SettingsFile::default()
        };
        assert!(bad(bad_name).contains("bad name"));
        let env = SettingsFile::from_env(env(&[("OTEL_BSP_SCHEDULE_DELAY", "soon")]));
        assert!(env
            .expect_err("refused")
            .to_string()
            .contains("OTEL_BSP_SCHEDULE_DELAY"));
    }
}
