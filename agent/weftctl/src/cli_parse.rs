//! What weftctl parses from its command line beyond clap: `--since` durations, and the flow
//! flags turned into the `/flows` query the agent applies. Apart from `main` so that it is
//! fuzzed (`tests/fuzz`, target `weftctl_parse`) and tested without a terminal.

use weft_api::{FlowQuery, Verdict};

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

/// The flags of `weftctl flows`, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFlags {
    pub from: Option<String>,
    pub to: Option<String>,
    pub verdict: Option<Verdict>,
    pub since: Option<String>,
    pub port: Option<u16>,
    pub follow: bool,
}

impl FlowFlags {
    /// The query the agent filters with; a bad `--since` fails here, before anything is sent.
    pub fn query(self) -> Result<FlowQuery, ParseError> {
        Ok(FlowQuery {
            from: self.from,
            to: self.to,
            verdict: self.verdict,
            since_ms: self.since.as_deref().map(parse_duration).transpose()?,
            port: self.port,
            follow: self.follow,
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

    #[test]
    fn flow_flags_become_the_query_the_agent_reads() {
        let flags = FlowFlags {
            from: Some("demo/client".into()),
            verdict: Some(Verdict::Deny),
            since: Some("1m".into()),
            follow: true,
            ..FlowFlags::default()
        };
        let query = flags.query().expect("query");
        assert_eq!(
            query.to_query(),
            "from=demo/client&verdict=deny&since=60000&follow=1"
        );
        assert_eq!(FlowQuery::parse(Some(&query.to_query())), Ok(query));
        let bad = FlowFlags {
            since: Some("soon".into()),
            ..FlowFlags::default()
        };
        assert_eq!(bad.query(), Err(ParseError::NotANumber("soon".into())));
    }
}
