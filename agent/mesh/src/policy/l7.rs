//! What only a waypoint can check in an `AuthorizationPolicy` rule: an operation's hosts,
//! methods and paths, `when` conditions and request principals. The node agent sees bytes,
//! not requests: for it these parts stay "needs a waypoint" (see `eval`).

use std::net::IpAddr;

use super::{
    crd::{Condition, Operation},
    eval::{Cidr, Pattern},
    PolicyError,
};
use crate::identity::SpiffeId;

/// An end user proven by a JWT that a `RequestAuthentication` rule validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Authenticated {
    /// `<issuer>/<subject>`, as `requestPrincipals` and `request.auth.principal` name it.
    pub principal: String,
    pub audiences: Vec<String>,
    /// `azp`, when the token has one.
    pub presenter: Option<String>,
    /// The whole claim set, for `request.auth.claims[...]`.
    pub claims: serde_json::Value,
}

/// What a waypoint knows of one request when it authorizes it.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    /// The `:authority` or `Host`, as sent (a port and case are ignored when matching).
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The end user, when a valid token came with the request.
    pub auth: Option<&'a Authenticated>,
}

/// Hosts, methods and paths of one `to.operation`.
#[derive(Clone, Debug, Default)]
pub(super) struct OperationL7 {
    hosts: Vec<Pattern>,
    not_hosts: Vec<Pattern>,
    methods: Vec<String>,
    not_methods: Vec<String>,
    paths: Vec<Pattern>,
    not_paths: Vec<Pattern>,
}

fn lowercase_patterns(list: &[String]) -> Vec<Pattern> {
    list.iter()
        .map(|p| Pattern::parse(&p.to_ascii_lowercase()))
        .collect()
}

fn patterns(list: &[String]) -> Vec<Pattern> {
    list.iter().map(|p| Pattern::parse(p)).collect()
}

impl OperationL7 {
    pub(super) fn compile(operation: &Operation) -> Self {
        let upper = |list: &[String]| list.iter().map(|m| m.to_ascii_uppercase()).collect();
        Self {
            hosts: lowercase_patterns(&operation.hosts),
            not_hosts: lowercase_patterns(&operation.not_hosts),
            methods: upper(&operation.methods),
            not_methods: upper(&operation.not_methods),
            paths: patterns(&operation.paths),
            not_paths: patterns(&operation.not_paths),
        }
    }

    pub(super) fn matches(&self, request: &Attributes<'_>) -> bool {
        let host = host_without_port(request.host).to_ascii_lowercase();
        let any = |list: &[Pattern], value: &str| list.iter().any(|p| p.matches(value));
        (self.hosts.is_empty() || any(&self.hosts, &host))
            && !any(&self.not_hosts, &host)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == request.method))
            && !self.not_methods.iter().any(|m| m == request.method)
            && (self.paths.is_empty() || any(&self.paths, request.path))
            && !any(&self.not_paths, request.path)
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    }
}

/// Request principals of one `from.source`.
#[derive(Clone, Debug, Default)]
pub(super) struct SourceL7 {
    request_principals: Vec<Pattern>,
    not_request_principals: Vec<Pattern>,
}

impl SourceL7 {
    pub(super) fn compile(request_principals: &[String], not: &[String]) -> Self {
        Self {
            request_principals: patterns(request_principals),
            not_request_principals: patterns(not),
        }
    }

    /// Without a token there is no request principal: `requestPrincipals` fails and
    /// `notRequestPrincipals` (even `*`) holds, so a DENY of `notRequestPrincipals: ["*"]`
    /// refuses every request without a valid token.
    pub(super) fn matches(&self, auth: Option<&Authenticated>) -> bool {
        let principal = auth.map(|a| a.principal.as_str());
        let any = |list: &[Pattern]| principal.is_some_and(|p| list.iter().any(|x| x.matches(p)));
        (self.request_principals.is_empty() || any(&self.request_principals))
            && (self.not_request_principals.is_empty() || !any(&self.not_request_principals))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.request_principals.is_empty() && self.not_request_principals.is_empty()
    }
}

/// The attribute a `when` key names.
#[derive(Clone, Debug)]
enum Key {
    Header(http::HeaderName),
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    /// `request.auth.claims[a][b]`: the path into the claim set.
    Claim(Vec<String>),
}

/// A compiled `when` entry.
#[derive(Clone, Debug)]
pub(super) struct CompiledCondition {
    key: Key,
    values: Values,
    not_values: Values,
}

#[derive(Clone, Debug)]
enum Values {
    Patterns(Vec<Pattern>),
    Cidrs(Vec<Cidr>),
    Ports(Vec<u16>),
}

/// The most brackets a claim path may have: deeper nesting is refused, not walked.
pub const MAX_CLAIM_DEPTH: usize = 8;

/// `name[a][b]` → `["a", "b"]` for the part after `name`.
fn bracketed(rest: &str, key: &str) -> Result<Vec<String>, PolicyError> {
    let bad = || PolicyError::BadConditionKey(key.into());
    let mut parts = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let end = inner.find(']').ok_or_else(bad)?;
        if end == 0 || parts.len() == MAX_CLAIM_DEPTH {
            return Err(bad());
        }
        parts.push(inner[..end].to_owned());
        rest = &inner[end + 1..];
    }
    if parts.is_empty() {
        return Err(bad());
    }
    Ok(parts)
}

fn parse_key(key: &str) -> Result<Key, PolicyError> {
    if let Some(rest) = key.strip_prefix("request.headers") {
        let names = bracketed(rest, key)?;
        let [name] = names.as_slice() else {
            return Err(PolicyError::BadConditionKey(key.into()));
        };
        return http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map(Key::Header)
            .map_err(|_| PolicyError::BadConditionKey(key.into()));
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return Ok(Key::Claim(bracketed(rest, key)?));
    }
    Ok(match key {
        "source.ip" | "remote.ip" => Key::SourceIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "destination.port" => Key::DestinationPort,
        "request.auth.principal" => Key::AuthPrincipal,
        "request.auth.audiences" => Key::AuthAudiences,
        "request.auth.presenter" => Key::AuthPresenter,
        _ => return Err(PolicyError::UnknownConditionKey(key.into())),
    })
}

fn values_for(key: &Key, list: &[String]) -> Result<Values, PolicyError> {
    Ok(match key {
        Key::SourceIp => Values::Cidrs(
            list.iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<_, _>>()?,
        ),
        Key::DestinationPort => Values::Ports(
            list.iter()
                .map(|p| p.parse().map_err(|_| PolicyError::NotPort(p.clone())))
                .collect::<Result<_, _>>()?,
        ),
        _ => Values::Patterns(patterns(list)),
    })
}

impl CompiledCondition {
    pub(super) fn compile(condition: &Condition) -> Result<Self, PolicyError> {
        let key = parse_key(&condition.key)?;
        if condition.values.is_empty() && condition.not_values.is_empty() {
            return Err(PolicyError::EmptyCondition(condition.key.clone()));
        }
        Ok(Self {
            values: values_for(&key, &condition.values)?,
            not_values: values_for(&key, &condition.not_values)?,
            key,
        })
    }

    /// `values`: one of them matches; `notValues`: none does. An attribute the request does
    /// not have matches no value, so it fails `values` and passes `notValues`.
    pub(super) fn matches(&self, request: &Connection<'_>, l7: &Attributes<'_>) -> bool {
        let found = self.observed(request, l7);
        let hit = |values: &Values| match values {
            Values::Patterns(list) => found.iter().any(|v| list.iter().any(|p| p.matches(v))),
            Values::Cidrs(list) => list.iter().any(|c| c.contains(request.source_ip)),
            Values::Ports(list) => list.contains(&request.port),
        };
        let empty = |values: &Values| match values {
            Values::Patterns(list) => list.is_empty(),
            Values::Cidrs(list) => list.is_empty(),
            Values::Ports(list) => list.is_empty(),
        };
        (empty(&self.values) || hit(&self.values))
            && (empty(&self.not_values) || !hit(&self.not_values))
    }

    /// The attribute's values as text (a header may repeat, a claim may be a list).
    fn observed(&self, request: &Connection<'_>, l7: &Attributes<'_>) -> Vec<String> {
        let auth = l7.auth;
        match &self.key {
            Key::Header(name) => l7
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect(),
            Key::SourceNamespace => request
                .identity
                .map(|id| id.namespace.clone())
                .into_iter()
                .collect(),
            Key::SourcePrincipal => request
                .identity
                .map(|id| id.to_string().trim_start_matches("spiffe://").to_owned())
                .into_iter()
                .collect(),
            Key::AuthPrincipal => auth.map(|a| a.principal.clone()).into_iter().collect(),
            Key::AuthAudiences => auth.map(|a| a.audiences.clone()).unwrap_or_default(),
            Key::AuthPresenter => auth.and_then(|a| a.presenter.clone()).into_iter().collect(),
            Key::Claim(path) => auth
                .map(|a| claim_values(&a.claims, path))
                .unwrap_or_default(),
            // Judged on the connection, not as text.
            Key::SourceIp | Key::DestinationPort => Vec::new(),
        }
    }
}

/// What a claim path holds, as text: a string, each string of a list, or a number or
/// boolean written out. Objects match nothing.
pub fn claim_values(claims: &serde_json::Value, path: &[String]) -> Vec<String> {
    let mut at = claims;
    for name in path {
        match at.get(name) {
            Some(next) => at = next,
            None => return Vec::new(),
        }
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match at {
        serde_json::Value::Array(items) => items.iter().filter_map(text).collect(),
        other => text(other).into_iter().collect(),
    }
}

/// The connection-level facts a `when` condition may name.
#[derive(Clone, Copy, Debug)]
pub(super) struct Connection<'a> {
    pub identity: Option<&'a SpiffeId>,
    pub source_ip: IpAddr,
    pub port: u16,
}
