//! Why a policy object is refused: one typed error per problem, each with the message that
//! says what to fix and a bounded `reason` label for the registry's rejection counter.

/// A problem in an `AuthorizationPolicy` or `TrafficPolicy` spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("rules is empty: give at least one rule (an empty rule `{{}}` matches everything)")]
    NoRules,
    #[error("ipBlock {0:?} is not a CIDR")]
    NotCidr(String),
    #[error("ipBlock {0:?} has a bad prefix length")]
    BadPrefix(String),
    #[error("ipBlock {text:?}: prefix length above {max}")]
    PrefixTooLong { text: String, max: u8 },
    #[error("port {0:?} is not a port number")]
    NotPort(String),
    #[error("targetRefs is empty: name at least one Service or HTTPRoute")]
    NoTargets,
    #[error("{kind} in group {group:?} cannot be targeted: use a Service or a gateway.networking.k8s.io HTTPRoute")]
    BadTarget { kind: String, group: String },
    #[error("{0:?} is not a duration: write e.g. 250ms, 5s, 1m30s")]
    NotDuration(String),
    #[error("{field} is 0: give a positive duration")]
    ZeroDuration { field: &'static str },
    #[error("{field} must be at least 1")]
    ZeroCount { field: &'static str },
    #[error("circuitBreaker: a limit of 0 would refuse everything; leave it out for no limit")]
    ZeroLimit,
    #[error("{field} is {value}: give 0 to 100")]
    NotPercent { field: &'static str, value: u32 },
    #[error("faultInjection.abort.httpStatus is {0}: give an HTTP status from 200 to 599")]
    NotStatus(u16),
    #[error("when key {0:?} is not one Weft reads: use request.headers[NAME], source.ip, source.namespace, source.principal, destination.port, request.auth.principal, request.auth.audiences, request.auth.presenter or request.auth.claims[NAME]")]
    UnknownConditionKey(String),
    #[error("when key {0:?} is malformed: write request.headers[x-name] or request.auth.claims[a][b] (at most 8 levels)")]
    BadConditionKey(String),
    #[error("when key {0:?} has neither values nor notValues")]
    EmptyCondition(String),
    #[error("{field}: {problem}")]
    BadValue {
        field: &'static str,
        problem: String,
    },
    /// A problem inside a field (`rules[2]`, `connectTimeout`).
    #[error("{field}: {source}")]
    In {
        field: String,
        #[source]
        source: Box<PolicyError>,
    },
}

impl PolicyError {
    /// The same problem, said to be inside `field`.
    #[must_use]
    pub fn within(self, field: impl Into<String>) -> Self {
        Self::In {
            field: field.into(),
            source: Box::new(self),
        }
    }

    /// The bounded label of the problem, whatever field it sits in.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRules | Self::NoTargets => "missing_field",
            Self::NotCidr(_) | Self::BadPrefix(_) | Self::PrefixTooLong { .. } => "bad_ip_block",
            Self::NotPort(_) => "bad_port",
            Self::BadTarget { .. } => "bad_target",
            Self::NotDuration(_) => "bad_duration",
            Self::ZeroDuration { .. }
            | Self::ZeroCount { .. }
            | Self::ZeroLimit
            | Self::NotPercent { .. }
            | Self::NotStatus(_) => "out_of_range",
            Self::BadValue { .. } | Self::EmptyCondition(_) => "bad_value",
            Self::UnknownConditionKey(_) | Self::BadConditionKey(_) => "bad_condition_key",
            Self::In { source, .. } => source.reason(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PolicyError;

    #[test]
    fn a_nested_problem_says_where_it_is_and_keeps_its_label() {
        let error = PolicyError::NotDuration("soon".into()).within("connectTimeout");
        assert_eq!(
            error.to_string(),
            "connectTimeout: \"soon\" is not a duration: write e.g. 250ms, 5s, 1m30s"
        );
        assert_eq!(error.reason(), "bad_duration");
        let error = PolicyError::NotPort("http".into())
            .within("rules[1]")
            .within("spec");
        assert_eq!(
            error.to_string(),
            "spec: rules[1]: port \"http\" is not a port number"
        );
        assert_eq!(error.reason(), "bad_port");
    }
}
