//! What `weftctl` parses from its command line and applies to what the agent sends: `--since`
//! durations and flow filters. In the library so that it is fuzzed and tested without a
//! terminal.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("--since {0:?}: give e.g. 30s, 5m or 1h")]
    NotANumber(String),
    #[error("--since {0:?}: the unit must be ms, s, m or h")]
    Unit(String),
    #[error("--since {0:?}: too long ago to count")]
    Overflow(String),
}

/// `30s`, `5m`, `1h`, `250ms` (a bare number is seconds), in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, ParseError> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| ParseError::NotANumber(text.to_owned()))?;
    let factor = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(ParseError::Unit(text.to_owned())),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| ParseError::Overflow(text.to_owned()))
}

/// A JSON value as plain text: strings without quotes, `-` for null.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Which flows `weftctl flows` shows.
#[derive(Debug, Default)]
pub struct FlowFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    pub verdict: Option<String>,
    pub since_ms: Option<u64>,
    pub port: Option<u16>,
}

/// (source, destination) names of a flow: workloads when known, else addresses.
pub fn ends(flow: &Value) -> (String, String) {
    let local = text(&flow["workload"]);
    let peer = flow["peer_workload"]
        .as_str()
        .map_or_else(|| text(&flow["destination"]), str::to_owned);
    if flow["direction"] == "outbound" {
        (local, peer)
    } else {
        let source = flow["peer_workload"]
            .as_str()
            .map_or_else(|| text(&flow["source"]), str::to_owned);
        (source, local)
    }
}

fn name_matches(pattern: &str, name: &str, address: &str) -> bool {
    name == pattern || name.split('/').next() == Some(pattern) || address.starts_with(pattern)
}

impl FlowFilter {
    pub fn matches(&self, flow: &Value) -> bool {
        let (source, destination) = ends(flow);
        self.from
            .as_deref()
            .is_none_or(|p| name_matches(p, &source, &text(&flow["source"])))
            && self
                .to
                .as_deref()
                .is_none_or(|p| name_matches(p, &destination, &text(&flow["destination"])))
            && self.verdict.as_deref().is_none_or(|v| flow["verdict"] == v)
            && self
                .since_ms
                .is_none_or(|t| flow["time_unix_ms"].as_u64().unwrap_or(0) >= t)
            && self.port.is_none_or(|p| {
                text(&flow["destination"]).rsplit(':').next() == Some(&p.to_string())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_overflow_is_an_error_not_a_panic() {
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("7"), Ok(7000));
        assert!(matches!(parse_duration("1d"), Err(ParseError::Unit(_))));
        assert!(matches!(
            parse_duration("h"),
            Err(ParseError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999h"),
            Err(ParseError::Overflow(_))
        ));
    }
}
