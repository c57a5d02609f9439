//! Flow records: a bounded ring of recent connection events (opened, closed, denied, failed),
//! each with its reason, a broadcast of new ones for `weftctl flows --follow`, and the
//! server-side selection `/flows?from=&to=&verdict=&since=&port=` applies.

pub use weft_api::flows::{Flow, FlowEvent, FlowQuery, QueryError, Verdict};

pub use crate::ring::RING;

/// The agent's recent flow records and their followers.
pub type Flows = crate::ring::Ring<Flow>;

/// A [`FlowQuery`] fixed at the moment of the request: `since` becomes a point in time, so a
/// follower keeps the same cut-off while it streams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub query: FlowQuery,
    not_before_unix_ms: Option<u64>,
}

impl FlowFilter {
    pub fn new(query: FlowQuery, now_unix_ms: u64) -> Self {
        let not_before_unix_ms = query.since_ms.map(|ago| now_unix_ms.saturating_sub(ago));
        Self {
            query,
            not_before_unix_ms,
        }
    }

    /// Reads a `/flows` query string; an unknown parameter or value is an error naming the
    /// valid ones.
    pub fn parse(query: Option<&str>, now_unix_ms: u64) -> Result<Self, QueryError> {
        FlowQuery::parse(query).map(|q| Self::new(q, now_unix_ms))
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        let (source, destination) = flow.ends();
        let q = &self.query;
        q.from
            .as_deref()
            .is_none_or(|p| name_matches(p, &source, &flow.source.to_string()))
            && q.to
                .as_deref()
                .is_none_or(|p| name_matches(p, &destination, &flow.destination.to_string()))
            && q.verdict.is_none_or(|v| flow.verdict == v)
            && self
                .not_before_unix_ms
                .is_none_or(|t| flow.time_unix_ms >= t)
            && q.port.is_none_or(|p| flow.destination.port() == p)
    }

    /// The flows this filter selects, in their order.
    pub fn apply(&self, flows: impl IntoIterator<Item = Flow>) -> Vec<Flow> {
        flows.into_iter().filter(|f| self.matches(f)).collect()
    }
}

/// A workload (`ns/name`), its namespace, or a prefix of its address.
fn name_matches(pattern: &str, name: &str, address: &str) -> bool {
    name == pattern || name.split('/').next() == Some(pattern) || address.starts_with(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::{Direction, Security};

    fn flow(
        direction: Direction,
        peer: &str,
        verdict: Verdict,
        port: u16,
        time_unix_ms: u64,
    ) -> Flow {
        Flow {
            time_unix_ms,
            event: match verdict {
                Verdict::Allow => FlowEvent::Closed,
                Verdict::Deny => FlowEvent::Denied,
                Verdict::Failed => FlowEvent::Failed,
            },
            direction,
            workload: "demo/server-a".into(),
            source: "10.0.0.2:40000".parse().expect("addr"),
            destination: format!("10.0.1.3:{port}").parse().expect("addr"),
            service: None,
            peer_workload: Some(peer.into()),
            waypoint: None,
            carried_identity: None,
            connect_attempts: 0,
            peer_identity: None,
            peer_certificate_serial: None,
            workload_identity: None,
            security: Security::Mtls,
            verdict,
            reason: "none".into(),
            detail: String::new(),
            policy: None,
            notes: Vec::new(),
            bytes_from_client: 0,
            bytes_to_client: 0,
            duration_ms: 0,
        }
    }

    fn kept() -> Vec<Flow> {
        vec![
            flow(
                Direction::Inbound,
                "demo/client",
                Verdict::Allow,
                9000,
                1_000,
            ),
            flow(
                Direction::Inbound,
                "legacy/plain",
                Verdict::Deny,
                9000,
                50_000,
            ),
            flow(
                Direction::Outbound,
                "demo/echo",
                Verdict::Failed,
                8080,
                90_000,
            ),
        ]
    }

    fn select(query: &str, now: u64) -> Vec<u64> {
        FlowFilter::parse(Some(query), now)
            .expect("query")
            .apply(kept())
            .iter()
            .map(|f| f.time_unix_ms)
            .collect()
    }

    #[test]
    fn the_server_selects_by_ends_verdict_age_and_port() {
        assert_eq!(select("", 100_000), [1_000, 50_000, 90_000]);
        assert_eq!(select("verdict=deny", 100_000), [50_000]);
        assert_eq!(select("verdict=failed", 100_000), [90_000]);
        // Inbound: the peer is the source; a namespace or a workload name matches.
        assert_eq!(select("from=legacy", 100_000), [50_000]);
        assert_eq!(select("from=demo/client", 100_000), [1_000]);
        assert_eq!(select("to=demo/server-a", 100_000), [1_000, 50_000]);
        // An address prefix matches the destination address.
        assert_eq!(select("to=10.0.1.", 100_000), [1_000, 50_000, 90_000]);
        assert_eq!(select("since=60000", 100_000), [50_000, 90_000]);
        assert_eq!(select("port=8080", 100_000), [90_000]);
        assert_eq!(
            select("from=demo&verdict=allow&port=9000", 100_000),
            [1_000]
        );
    }

    #[test]
    fn an_unknown_verdict_is_an_error_naming_the_valid_ones() {
        let error = FlowFilter::parse(Some("verdict=bogus"), 0).expect_err("bogus");
        assert_eq!(error, QueryError::Verdict("bogus".into()));
        assert!(error.to_string().contains("allow, deny, failed"), "{error}");
        assert!(FlowFilter::parse(Some("colour=red"), 0).is_err());
    }
}
