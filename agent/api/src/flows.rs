//! `/flows`: connection events (opened, closed, denied, failed) with why, and the query that
//! selects them (`from`, `to`, `verdict`, `since`, `port`, `follow`), which the agent applies.

use std::{
    fmt::{self, Write as _},
    net::SocketAddr,
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::traffic::{Direction, Security};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowEvent {
    Opened,
    Closed,
    Denied,
    Failed,
}

impl FlowEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Closed => "closed",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

/// How a connection came out: policy allowed it, policy denied it, or the agent could not
/// carry it (no endpoint, unreachable, tunnel refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    Failed,
}

impl Verdict {
    pub const ALL: [Self; 3] = [Self::Allow, Self::Deny, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Failed => "failed",
        }
    }

    /// `allow, deny, failed`, for error messages.
    pub fn valid() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = QueryError;

    fn from_str(text: &str) -> Result<Self, QueryError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| QueryError::Verdict(text.to_owned()))
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn at_most_one(attempts: &u32) -> bool {
    *attempts <= 1
}

/// One event of one connection: an element of `GET /flows`, or one line of
/// `GET /flows?follow=1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    pub time_unix_ms: u64,
    pub event: FlowEvent,
    pub direction: Direction,
    /// The enrolled pod on this node (`namespace/name`).
    pub workload: String,
    pub source: SocketAddr,
    /// What the client dialed.
    pub destination: SocketAddr,
    /// The Service the client dialed, when it dialed one (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The other side's workload when the registry knows it (`namespace/name`).
    pub peer_workload: Option<String>,
    /// The waypoint the connection went through (`namespace/name`), when its Service uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
    /// Inbound from a waypoint: the original client's identity the waypoint carried (its
    /// `baggage`), beside the waypoint's own proven one in `peer_identity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_identity: Option<String>,
    /// Endpoints tried to connect (shown when the connect was retried on another).
    #[serde(default, skip_serializing_if = "at_most_one")]
    pub connect_attempts: u32,
    pub peer_identity: Option<String>,
    /// Serial of the certificate the peer proved its identity with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_certificate_serial: Option<String>,
    /// This pod's own SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<String>,
    pub security: Security,
    pub verdict: Verdict,
    /// A fixed code: a policy reason (`no_policy`, `denied_by_policy`, …), a failure's
    /// (`connect_timeout`, `no_ready_endpoints`, …) or `none`.
    pub reason: String,
    /// For people: the deciding policy and rule, or what went wrong.
    pub detail: String,
    /// The deciding policy (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// What audit and dry-run policies said along the way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub duration_ms: u64,
}

impl Flow {
    /// (source, destination) as people name them: workloads when known, else addresses.
    pub fn ends(&self) -> (String, String) {
        let peer = |address: SocketAddr| {
            self.peer_workload
                .clone()
                .unwrap_or_else(|| address.to_string())
        };
        match self.direction {
            Direction::Outbound => (self.workload.clone(), peer(self.destination)),
            Direction::Inbound => (peer(self.source), self.workload.clone()),
        }
    }
}

/// What `GET /flows` selects. Every field narrows; none set means every kept event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowQuery {
    /// Source workload (`ns/name`), namespace, or address prefix.
    pub from: Option<String>,
    /// Destination workload (`ns/name`), namespace, or address prefix.
    pub to: Option<String>,
    pub verdict: Option<Verdict>,
    /// Only events of the last this many milliseconds (`since=60000`): relative, so the
    /// caller's clock does not matter.
    pub since_ms: Option<u64>,
    /// Destination port.
    pub port: Option<u16>,
    /// Keep streaming new events as JSON lines after the kept ones.
    pub follow: bool,
}

/// Why a `/flows` query was refused (the agent answers 400 with this text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryError {
    Verdict(String),
    Since(String),
    Port(String),
    Follow(String),
    Unknown(String),
    Encoding(String),
}

impl QueryError {
    /// The values the parameter takes, for the error body.
    pub fn valid(&self) -> Vec<String> {
        match self {
            Self::Verdict(_) => Verdict::ALL.map(|v| v.as_str().to_owned()).to_vec(),
            Self::Unknown(_) => FlowQuery::PARAMETERS.map(str::to_owned).to_vec(),
            Self::Follow(_) => ["1", "true", "0", "false"].map(str::to_owned).to_vec(),
            Self::Since(_) | Self::Port(_) | Self::Encoding(_) => Vec::new(),
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verdict(v) => write!(f, "verdict {v:?} is not one of {}", Verdict::valid()),
            Self::Since(v) => write!(
                f,
                "since {v:?}: give milliseconds, e.g. since=60000 for the last minute"
            ),
            Self::Port(v) => write!(f, "port {v:?}: give a TCP port, 1 to 65535"),
            Self::Follow(v) => write!(f, "follow {v:?}: give follow=1 or follow=0"),
            Self::Unknown(k) => write!(
                f,
                "unknown parameter {k:?}: /flows takes {}",
                FlowQuery::PARAMETERS.join(", ")
            ),
            Self::Encoding(v) => write!(f, "{v:?} is not percent-encoded UTF-8"),
        }
    }
}

impl std::error::Error for QueryError {}

impl FlowQuery {
    pub const PARAMETERS: [&'static str; 6] = ["from", "to", "verdict", "since", "port", "follow"];

    /// The query string (without `?`), values percent-encoded; empty when nothing is set.
    pub fn to_query(&self) -> String {
        let mut pairs: Vec<String> = Vec::new();
        let mut push = |key: &str, value: &str| pairs.push(format!("{key}={}", encode(value)));
        if let Some(from) = &self.from {
            push("from", from);
        }
        if let Some(to) = &self.to {
            push("to", to);
        }
        if let Some(verdict) = self.verdict {
            push("verdict", verdict.as_str());
        }
        if let Some(since) = self.since_ms {
            push("since", &since.to_string());
        }
        if let Some(port) = self.port {
            push("port", &port.to_string());
        }
        if self.follow {
            push("follow", "1");
        }
        pairs.join("&")
    }

    /// Reads a query string as the agent receives it. Empty values count as unset, so a form
    /// that leaves a field blank selects everything; unknown keys are refused, so a typo does
    /// not silently select everything.
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let mut out = Self::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(raw)?;
            let set = |value: String| Some(value).filter(|v| !v.is_empty());
            match key {
                "from" => out.from = set(value),
                "to" => out.to = set(value),
                "verdict" if value.is_empty() => out.verdict = None,
                "verdict" => out.verdict = Some(value.parse()?),
                "since" if value.is_empty() => out.since_ms = None,
                "since" => {
                    out.since_ms = Some(value.parse().map_err(|_| QueryError::Since(value))?);
                }
                "port" if value.is_empty() => out.port = None,
                "port" => {
                    out.port = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or(QueryError::Port(value))?,
                    );
                }
                // A bare `follow` asks to follow, as `follow=1` does.
                "follow" => {
                    out.follow = match value.as_str() {
                        "" | "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(QueryError::Follow(value)),
                    }
                }
                _ => return Err(QueryError::Unknown(key.to_owned())),
            }
        }
        Ok(out)
    }
}

/// Percent-encodes all but the unreserved characters and `/` and `:` (which workload names
/// and addresses carry, and which a query value may hold as they are).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/:".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Undoes [`encode`] (and a form's `+` for space).
fn decode(value: &str) -> Result<String, QueryError> {
    let bad = || QueryError::Encoding(value.to_owned());
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            time_unix_ms: 1_700_000_000_000,
            event: FlowEvent::Denied,
            direction: Direction::Inbound,
            workload: "demo/server-a".into(),
            source: "10.0.0.2:40000".parse().expect("addr"),
            destination: "10.0.0.3:9000".parse().expect("addr"),
            service: None,
            peer_workload: Some("demo/client".into()),
            waypoint: None,
            carried_identity: None,
            connect_attempts: 0,
            peer_identity: Some("spiffe://cluster.local/ns/demo/sa/client".into()),
            peer_certificate_serial: None,
            workload_identity: None,
            security: Security::Mtls,
            verdict: Verdict::Deny,
            reason: "denied_by_policy".into(),
            detail: "denied by demo/deny rule 0".into(),
            policy: Some("demo/deny".into()),
            notes: Vec::new(),
            bytes_from_client: 0,
            bytes_to_client: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn flows_are_camel_case_on_the_wire_and_round_trip() {
        let flow = flow();
        let json = serde_json::to_value(&flow).expect("serialize");
        for key in [
            "timeUnixMs",
            "peerWorkload",
            "peerIdentity",
            "bytesFromClient",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert!(
            json.as_object()
                .expect("object")
                .keys()
                .all(|k| !k.contains('_')),
            "{json}"
        );
        assert_eq!(json["verdict"], "deny");
        assert_eq!(json["direction"], "inbound");
        let back: Flow = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, flow);
    }

    #[test]
    fn every_response_type_is_camel_case() {
        let totals = serde_json::to_value(crate::Stats::default()).expect("stats");
        assert!(totals["proxy"].get("outboundOpened").is_some(), "{totals}");
        assert!(
            totals["pool"].get("connectionsOpened").is_some(),
            "{totals}"
        );
        let status = serde_json::to_value(crate::Status::default()).expect("status");
        assert!(status.get("adoptedPinnedPrograms").is_some(), "{status}");
        assert!(
            status["registry"].get("rejectedObjectsNotShown").is_some(),
            "{status}"
        );
        let back: crate::Status = serde_json::from_value(status).expect("status back");
        assert_eq!(back, crate::Status::default());
        let service = crate::Service {
            namespace: "demo".into(),
            name: "echo".into(),
            cluster_ip: Some(std::net::Ipv4Addr::new(10, 96, 0, 10)),
            ports: vec![crate::ServicePort {
                name: "http".into(),
                port: 80,
                target_port: Some(8080),
            }],
            endpoints: vec!["10.0.0.3:8080".into()],
        };
        let json = serde_json::to_value(&service).expect("service");
        assert_eq!(json["clusterIP"], "10.96.0.10");
        assert_eq!(json["ports"][0]["targetPort"], 8080);
        assert_eq!(
            serde_json::from_value::<crate::Service>(json).expect("back"),
            service
        );
    }

    #[test]
    fn ends_name_workloads_when_known_else_addresses() {
        let mut flow = flow();
        assert_eq!(flow.ends(), ("demo/client".into(), "demo/server-a".into()));
        flow.peer_workload = None;
        flow.direction = Direction::Outbound;
        assert_eq!(
            flow.ends(),
            ("demo/server-a".into(), "10.0.0.3:9000".into())
        );
    }

    #[test]
    fn queries_round_trip_and_unknown_values_are_refused() {
        let query = FlowQuery {
            from: Some("demo/client x&y".into()),
            to: Some("10.0.".into()),
            verdict: Some(Verdict::Deny),
            since_ms: Some(60_000),
            port: Some(8080),
            follow: true,
        };
        let text = query.to_query();
        assert_eq!(
            text,
            "from=demo/client%20x%26y&to=10.0.&verdict=deny&since=60000&port=8080&follow=1"
        );
        assert_eq!(FlowQuery::parse(Some(&text)), Ok(query));
        assert_eq!(FlowQuery::parse(None), Ok(FlowQuery::default()));
        assert_eq!(FlowQuery::parse(Some("")), Ok(FlowQuery::default()));
        assert!(
            FlowQuery::parse(Some("follow"))
                .expect("bare follow")
                .follow
        );
        let error = FlowQuery::parse(Some("verdict=bogus")).expect_err("bogus verdict");
        assert_eq!(error, QueryError::Verdict("bogus".into()));
        assert_eq!(
            error.to_string(),
            "verdict \"bogus\" is not one of allow, deny, failed"
        );
        assert_eq!(error.valid(), ["allow", "deny", "failed"]);
        assert!(matches!(
            FlowQuery::parse(Some("verdcit=deny")),
            Err(QueryError::Unknown(_))
        ));
        assert!(matches!(
            FlowQuery::parse(Some("since=1m")),
            Err(QueryError::Since(_))
        ));
        assert!(matches!(
            FlowQuery::parse(Some("port=0")),
            Err(QueryError::Port(_))
        ));
        assert!(matches!(
            FlowQuery::parse(Some("from=%zz")),
            Err(QueryError::Encoding(_))
        ));
        assert!(matches!(
            FlowQuery::parse(Some("from=%ff")),
            Err(QueryError::Encoding(_))
        ));
    }
}
