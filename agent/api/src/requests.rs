//! A waypoint's `/requests`: one record per request it answered (its route and rule, backend,
//! upstream pod, bytes, duration and reason), and the query that selects them (`route`,
//! `status`, `follow`), which the waypoint applies.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One request, as the access log line and `weftctl requests` show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// When the response ended (or the client went away), Unix ms.
    pub at_unix_ms: u64,
    /// The Service (`namespace/name`) the client dialed.
    pub service: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    /// `namespace/name rule N`, or `-` for a Service without routes.
    pub route: String,
    /// The backend Service (`namespace/name`), or `-` when none was picked.
    pub backend: String,
    /// The endpoint the last attempt went to, and its pod when the registry knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_pod: Option<String>,
    /// The client's SPIFFE identity and address, from the tunnel.
    pub client: String,
    pub client_ip: String,
    /// The client's pod (`namespace/name`) when the registry knows its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pod: Option<String>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// From the request's arrival to the end of its response.
    pub duration_ms: u64,
    /// The bounded reason (`routed`, `no_route`, `timeout`, …).
    pub reason: String,
    /// Attempts to backends (0: the waypoint answered itself).
    pub attempts: u32,
    /// What authorization said (`allow`/`deny`), the policy (`namespace/name`) and rule that
    /// decided, and the end user of a valid token (`<issuer>/<subject>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principal: Option<String>,
}

/// What `GET /requests` selects: `route` (a route `namespace/name`, or its rule
/// `namespace/name rule N`), `status` (a code, or a class like `5xx`), `follow`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestQuery {
    pub route: Option<String>,
    pub status: Option<StatusSelector>,
    pub follow: bool,
}

/// One code (`503`) or a class (`5xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusSelector {
    Code(u16),
    Class(u16),
}

impl StatusSelector {
    pub fn matches(self, status: u16) -> bool {
        match self {
            Self::Code(code) => status == code,
            Self::Class(class) => status / 100 == class,
        }
    }
}

impl fmt::Display for StatusSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "{code}"),
            Self::Class(class) => write!(f, "{class}xx"),
        }
    }
}

impl std::str::FromStr for StatusSelector {
    type Err = RequestQueryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || RequestQueryError::Status(text.to_owned());
        if let Some(class) = text.strip_suffix("xx") {
            let class: u16 = class.parse().map_err(|_| bad())?;
            return (1..=5)
                .contains(&class)
                .then_some(Self::Class(class))
                .ok_or_else(bad);
        }
        let code: u16 = text.parse().map_err(|_| bad())?;
        (100..=599)
            .contains(&code)
            .then_some(Self::Code(code))
            .ok_or_else(bad)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestQueryError {
    Status(String),
    Unknown(String),
}

impl fmt::Display for RequestQueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(text) => write!(
                f,
                "status {text:?} is not a code (100-599) or a class (1xx-5xx)"
            ),
            Self::Unknown(key) => write!(f, "unknown parameter {key:?}"),
        }
    }
}

impl std::error::Error for RequestQueryError {}

impl RequestQueryError {
    /// The parameters `/requests` reads.
    pub fn valid(&self) -> Vec<String> {
        ["route", "status", "follow"].map(String::from).to_vec()
    }
}

impl RequestQuery {
    /// Reads `route=&status=&follow=` (percent-decoded by the caller's form parser).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, RequestQueryError> {
        let mut query = Self::default();
        for (key, value) in pairs {
            match key {
                "route" => query.route = Some(value.to_owned()),
                "status" => query.status = Some(value.parse()?),
                "follow" => query.follow = value != "0" && value != "false",
                other => return Err(RequestQueryError::Unknown(other.to_owned())),
            }
        }
        Ok(query)
    }

    /// The query string that asks for this selection.
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(route) = &self.route {
            pairs.push(("route", route.clone()));
        }
        if let Some(status) = self.status {
            pairs.push(("status", status.to_string()));
        }
        if self.follow {
            pairs.push(("follow", "1".into()));
        }
        pairs
    }

    pub fn matches(&self, record: &RequestRecord) -> bool {
        let route_ok = self.route.as_deref().is_none_or(|want| {
            record.route == want
                || record
                    .route
                    .strip_prefix(want)
                    .is_some_and(|rest| rest.starts_with(" rule "))
        });
        route_ok && self.status.is_none_or(|s| s.matches(record.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_selects_by_route_or_rule_and_by_code_or_class() {
        let record = RequestRecord {
            route: "demo/echo rule 2".into(),
            status: 503,
            ..RequestRecord::default()
        };
        let query = |pairs: &[(&str, &str)]| {
            RequestQuery::from_pairs(pairs.iter().copied()).expect("query")
        };
        assert!(query(&[("route", "demo/echo")]).matches(&record));
        assert!(query(&[("route", "demo/echo rule 2")]).matches(&record));
        assert!(!query(&[("route", "demo/echo rule 1")]).matches(&record));
        assert!(!query(&[("route", "demo/ech")]).matches(&record));
        assert!(query(&[("status", "5xx")]).matches(&record));
        assert!(query(&[("status", "503")]).matches(&record));
        assert!(!query(&[("status", "200")]).matches(&record));
        assert!(query(&[("follow", "1")]).follow);
        for bad in ["6xx", "99", "abc", "0xx"] {
            assert!(
                RequestQuery::from_pairs([("status", bad)]).is_err(),
                "{bad}"
            );
        }
        assert!(RequestQuery::from_pairs([("verdict", "x")]).is_err());
    }
}
