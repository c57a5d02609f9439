//! The route table: every `HTTPRoute` whose `parentRef` is a Service this waypoint serves
//! (GAMMA), compiled once per registry snapshot, and the choice of one rule for a request by
//! the Gateway API's precedence. Producer routes (in the Service's namespace) apply to every
//! caller; consumer routes (in the caller's namespace) only to callers of that namespace, and
//! win over producer routes for them. A Service with no route gets the default: every request
//! to the Service itself.

use std::{collections::BTreeMap, sync::Arc};

use regex::Regex;
use weft_mesh::registry::{
    routes::{BackendRef, Filter, GrpcMethod, MethodMatch, PathMatch, RouteMatch, ValueMatch},
    Registry, Route, Service,
};

/// One compiled match of one rule.
#[derive(Debug)]
struct Match {
    path: Path,
    method: Option<http::Method>,
    headers: Vec<(http::HeaderName, Value)>,
    query: Vec<(String, Value)>,
}

#[derive(Debug)]
enum Path {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum Value {
    Exact(String),
    Regex(Regex),
}

impl Value {
    fn matches(&self, actual: &str) -> bool {
        match self {
            Self::Exact(want) => want == actual,
            Self::Regex(re) => re.is_match(actual),
        }
    }
}

/// A backend of a rule: a Service port and its weight.
#[derive(Debug, Clone)]
pub struct Backend {
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    pub weight: u32,
}

/// One rule of one route, with where it came from.
#[derive(Debug)]
pub struct Rule {
    /// `namespace/name` of the route.
    pub route: String,
    pub index: usize,
    matches: Vec<Match>,
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    /// The route is the caller namespace's (consumer), not the Service's (producer).
    consumer_namespace: Option<String>,
    /// The Service ports its parentRefs name; `None`: every port (a parentRef without one).
    pub ports: Option<Vec<u16>>,
    /// `timeouts.request`: until the response head, from when the waypoint has the request.
    pub request_timeout: Option<std::time::Duration>,
    /// `timeouts.backendRequest`: the same, for each attempt to a backend.
    pub backend_timeout: Option<std::time::Duration>,
    /// The `retry` field, compiled.
    pub retry: Option<RetryPolicy>,
}

/// Most retries after the first attempt a rule may ask for; more are cut to this.
pub const MAX_RETRY_ATTEMPTS: u32 = 5;
/// The pause between attempts when a rule's `retry` names none.
pub const DEFAULT_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(25);

/// A rule's `retry`: after a response with one of `codes`, a failed connection, or (when 504
/// is among the codes) an attempt's `backendRequest` timeout, the request is sent again, to a
/// backend and endpoint chosen afresh, up to `attempts` more times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub backoff: std::time::Duration,
}

fn compile_retry(retry: &weft_mesh::registry::routes::Retry) -> Result<RetryPolicy, String> {
    let backoff = match &retry.backoff {
        Some(text) => parse_duration(text)
            .ok_or_else(|| format!("retry.backoff {text:?} is not a Gateway API duration"))?,
        None => DEFAULT_RETRY_BACKOFF,
    };
    if let Some(bad) = retry.codes.iter().find(|c| !(400..600).contains(*c)) {
        return Err(format!("retry.codes: {bad} is not a 4xx or 5xx status"));
    }
    Ok(RetryPolicy {
        attempts: retry.attempts.unwrap_or(1).min(MAX_RETRY_ATTEMPTS),
        codes: retry.codes.clone(),
        backoff,
    })
}

/// What one request matched, and why it ranks where it does.
#[derive(Debug, Clone, Copy)]
pub struct Chosen<'a> {
    pub rule: &'a Rule,
}

/// Why a route could not be used, for `weftctl routes` and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    pub route: String,
    pub problem: String,
}

/// Every rule that applies to each Service this waypoint serves, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Table {
    rules: BTreeMap<String, Vec<Rule>>,
    pub problems: Vec<RouteProblem>,
    pub statuses: Vec<RouteStatus>,
}

fn compile_value(v: &ValueMatch) -> Result<Value, String> {
    match v.kind.as_str() {
        "Exact" => Ok(Value::Exact(v.value.clone())),
        "RegularExpression" => Regex::new(&format!("^(?:{})$", v.value))
            .map(Value::Regex)
            .map_err(|e| format!("{}: {e}", v.name)),
        other => Err(format!("match type {other} is not supported")),
    }
}

fn compile_path(p: Option<&PathMatch>) -> Result<Path, String> {
    let Some(p) = p else {
        // Trailing slashes are trimmed: "/" is the empty prefix, which every path has.
        return Ok(Path::Prefix(String::new()));
    };
    match p.kind.as_str() {
        "Exact" => Ok(Path::Exact(p.value.clone())),
        "PathPrefix" => Ok(Path::Prefix(p.value.trim_end_matches('/').to_owned())),
        "RegularExpression" => Regex::new(&format!("^(?:{})$", p.value))
            .map(Path::Regex)
            .map_err(|e| format!("path: {e}")),
        other => Err(format!("path match type {other} is not supported")),
    }
}

/// A GRPCRoute method match as the path it means: `/<service>/<method>`.
fn grpc_path(m: &GrpcMethod) -> Result<Path, String> {
    let service = m.service.as_deref();
    let method = m.method.as_deref();
    match (m.kind.as_str(), service, method) {
        ("Exact", Some(s), Some(meth)) => Ok(Path::Exact(format!("/{s}/{meth}"))),
        ("Exact", Some(s), None) => Ok(Path::Prefix(format!("/{s}"))),
        ("Exact", None, Some(meth)) => Regex::new(&format!("^/[^/]+/{}$", regex::escape(meth)))
            .map(Path::Regex)
            .map_err(|e| e.to_string()),
        ("Exact", None, None) => Ok(Path::Prefix(String::new())),
        ("RegularExpression", s, meth) => Regex::new(&format!(
            "^/(?:{})/(?:{})$",
            s.unwrap_or("[^/]+"),
            meth.unwrap_or("[^/]+")
        ))
        .map(Path::Regex)
        .map_err(|e| format!("gRPC method: {e}")),
        (other, ..) => Err(format!("gRPC method match type {other} is not supported")),
    }
}

fn compile_match(m: &RouteMatch) -> Result<Match, String> {
    let (path, method) = match &m.method {
        Some(MethodMatch::Grpc(grpc)) => (grpc_path(grpc)?, Some(http::Method::POST)),
        Some(MethodMatch::Http(method)) => (
            compile_path(m.path.as_ref())?,
            Some(http::Method::from_bytes(method.as_bytes()).map_err(|e| format!("method: {e}"))?),
        ),
        None => (compile_path(m.path.as_ref())?, None),
    };
    Ok(Match {
        path,
        method,
        headers: m
            .headers
            .iter()
            .map(|h| {
                let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| format!("header {}: {e}", h.name))?;
                Ok((name, compile_value(h)?))
            })
            .collect::<Result<_, String>>()?,
        query: m
            .query_params
            .iter()
            .map(|q| Ok((q.name.clone(), compile_value(q)?)))
            .collect::<Result<_, String>>()?,
    })
}

fn backend(route: &Route, b: &BackendRef) -> Backend {
    Backend {
        namespace: b
            .namespace
            .clone()
            .unwrap_or_else(|| route.namespace.clone()),
        name: b.name.clone(),
        port: b.port,
        weight: b.weight.unwrap_or(1),
    }
}

/// Whether `route` attaches to `service` (a Service parentRef, on any or this port).
fn attaches(route: &Route, service: &Service) -> bool {
    parents_on(route, service).next().is_some()
}

fn parents_on<'a>(
    route: &'a Route,
    service: &'a Service,
) -> impl Iterator<Item = &'a weft_mesh::registry::routes::ParentRef> {
    route.spec.parent_refs.iter().filter(move |p| {
        p.is_service()
            && p.name == service.name
            && p.namespace.as_deref().unwrap_or(&route.namespace) == service.namespace
    })
}

/// The Service ports `route` attaches to: as the Gateway API has it for a Service parent, a
/// parentRef with a `port` takes that port only, one without takes them all.
fn attached_ports(route: &Route, service: &Service) -> Option<Vec<u16>> {
    parents_on(route, service)
        .map(|p| p.port)
        .collect::<Option<Vec<u16>>>()
}

fn compile_rule(
    route: &Route,
    id: &str,
    index: usize,
    rule: &weft_mesh::registry::routes::RouteRule,
    consumer_namespace: Option<String>,
) -> Result<Rule, String> {
    let matches: Vec<Match> = if rule.matches.is_empty() {
        vec![compile_match(&RouteMatch::default())?]
    } else {
        rule.matches
            .iter()
            .map(compile_match)
            .collect::<Result<_, _>>()?
    };
    let timeouts = rule.timeouts.as_ref();
    let duration = |text: Option<&String>, field: &str| {
        text.map(|t| {
            parse_duration(t).ok_or_else(|| {
                format!(
                    "timeouts.{field} {t:?} is not a Gateway API duration (e.g. 10s, 500ms, 1m30s)"
                )
            })
        })
        .transpose()
    };
    Ok(Rule {
        route: id.to_owned(),
        index,
        matches,
        filters: rule.filters.clone(),
        backends: rule
            .backend_refs
            .iter()
            .map(|b| backend(route, b))
            .collect(),
        consumer_namespace,
        ports: None,
        request_timeout: duration(timeouts.and_then(|t| t.request.as_ref()), "request")?,
        backend_timeout: duration(
            timeouts.and_then(|t| t.backend_request.as_ref()),
            "backendRequest",
        )?,
        retry: rule.retry.as_ref().map(compile_retry).transpose()?,
    })
}

/// A Gateway API duration: one to four `<number><h|m|s|ms>` parts (`1h30m`, `500ms`); `0s`
/// means no timeout.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || digits > 5 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_hours(1), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_mins(1), 1)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else {
            return None;
        };
        total += unit * u32::try_from(value).ok()?;
        rest = &rest[len..];
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// A route's status for one parent it attaches to, as Gateway API reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    pub route: String,
    /// The parent Service (`namespace/name`).
    pub parent: String,
    /// `Accepted`: True with reason `Accepted`, or False with `UnsupportedValue` when no rule
    /// could be compiled.
    pub accepted: bool,
    pub accepted_reason: &'static str,
    /// `ResolvedRefs`: True with `ResolvedRefs`, or False with `BackendNotFound`.
    pub resolved_refs: bool,
    pub resolved_refs_reason: &'static str,
    pub message: String,
}

fn status_of(registry: &Registry, route: &Route, parent: &str, problems: usize) -> RouteStatus {
    let missing: Vec<String> = route
        .spec
        .rules
        .iter()
        .flat_map(|r| {
            // A mirror's target is a reference like a backend's: missing, its copies are lost.
            let mirrors = r
                .filters
                .iter()
                .chain(r.backend_refs.iter().flat_map(|b| &b.filters))
                .filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref));
            r.backend_refs.iter().chain(mirrors)
        })
        .filter(|b| b.kind.as_deref().is_none_or(|k| k == "Service"))
        .map(|b| {
            (
                b.namespace
                    .clone()
                    .unwrap_or_else(|| route.namespace.clone()),
                b.name.clone(),
            )
        })
        .filter(|(ns, name)| registry.service(ns, name).is_none())
        .map(|(ns, name)| format!("{ns}/{name}"))
        // Named once, however many rules or mirrors refer to it.
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let accepted = problems < route.spec.rules.len() || route.spec.rules.is_empty();
    RouteStatus {
        kind: route.kind.clone(),
        route: format!("{}/{}", route.namespace, route.name),
        parent: parent.to_owned(),
        accepted,
        accepted_reason: if accepted {
            "Accepted"
        } else {
            "UnsupportedValue"
        },
        resolved_refs: missing.is_empty(),
        resolved_refs_reason: if missing.is_empty() {
            "ResolvedRefs"
        } else {
            "BackendNotFound"
        },
        message: if missing.is_empty() {
            String::new()
        } else {
            format!("referenced Services not found: {}", missing.join(", "))
        },
    }
}

impl Rule {
    /// Whether the rule applies to requests for the Service's `port`.
    pub fn on_port(&self, port: u16) -> bool {
        self.ports
            .as_ref()
            .is_none_or(|ports| ports.contains(&port))
    }

    /// The shorter of the rule's timeouts, if it sets one above 0: the longest one attempt
    /// may wait for its response head.
    pub fn deadline(&self) -> Option<std::time::Duration> {
        [self.request_timeout, self.backend_timeout]
            .into_iter()
            .flatten()
            .filter(|t| !t.is_zero())
            .min()
    }

    /// `timeouts.request` above 0: the whole request's budget, over every attempt.
    pub fn request_budget(&self) -> Option<std::time::Duration> {
        self.request_timeout.filter(|t| !t.is_zero())
    }

    /// `timeouts.backendRequest` above 0: one attempt's budget.
    pub fn attempt_budget(&self) -> Option<std::time::Duration> {
        self.backend_timeout.filter(|t| !t.is_zero())
    }

    /// The `PathPrefix` values of this rule's matches.
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.matches.iter().filter_map(|m| match &m.path {
            Path::Prefix(p) => Some(p.as_str()),
            _ => None,
        })
    }
}

impl Table {
    /// The table for the Services of `registry` that use the waypoint `namespace/name`.
    pub fn build(registry: &Registry, namespace: &str, name: &str) -> Self {
        let mut table = Self::default();
        let served: Vec<&Service> = registry
            .services
            .iter()
            .map(AsRef::as_ref)
            .filter(|s| {
                registry
                    .waypoint_for(s)
                    .is_some_and(|w| w.namespace == namespace && w.name == name)
            })
            .collect();
        // Oldest first breaks the last ties; without creation times, names stand in.
        let mut routes: Vec<&Route> = registry
            .routes
            .iter()
            .filter(|r| r.kind == "HTTPRoute" || r.kind == "GRPCRoute")
            .collect();
        routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for service in served {
            let key = format!("{}/{}", service.namespace, service.name);
            let mut rules = Vec::new();
            for route in routes.iter().filter(|r| attaches(r, service)) {
                let id = format!("{}/{}", route.namespace, route.name);
                let consumer =
                    (route.namespace != service.namespace).then(|| route.namespace.clone());
                let mut problems = 0;
                let ports = attached_ports(route, service);
                for (index, rule) in route.spec.rules.iter().enumerate() {
                    match compile_rule(route, &id, index, rule, consumer.clone()) {
                        Ok(rule) => rules.push(Rule {
                            ports: ports.clone(),
                            ..rule
                        }),
                        Err(problem) => {
                            problems += 1;
                            table.problems.push(RouteProblem {
                                route: id.clone(),
                                problem: format!("rule {index}: {problem}"),
                            });
                        }
                    }
                }
                table
                    .statuses
                    .push(status_of(registry, route, &key, problems));
            }
            table.rules.insert(key, rules);
        }
        table
    }

    /// The Services this table routes for.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.rules.keys().map(String::as_str)
    }

    /// The rules attached to `service`.
    pub fn rules_of(&self, service: &str) -> &[Rule] {
        self.rules.get(service).map_or(&[], Vec::as_slice)
    }

    /// The rule a request to `service` from a caller in `caller_namespace` takes, by the
    /// Gateway API's precedence: consumer routes before producer routes, then an exact path,
    /// a regular expression, the longest prefix, a method, the most header matches, the most query matches, and
    /// the earliest route and rule. `None`: no rule matches (404), or the Service has no route
    /// at all (the caller then gets the Service itself).
    pub fn choose<'a>(
        &'a self,
        (service, port): (&str, u16),
        caller_namespace: Option<&str>,
        request: &http::request::Parts,
    ) -> Option<Chosen<'a>> {
        let rules = self.rules.get(service)?;
        let consumers_present = rules.iter().any(|r| {
            r.on_port(port)
                && r.consumer_namespace.is_some()
                && r.consumer_namespace.as_deref() == caller_namespace
        });
        let mut best: Option<(Rank, &Rule)> = None;
        for rule in rules.iter().filter(|r| r.on_port(port)) {
            // A caller whose namespace has its own routes for the Service sees only those.
            let visible = match &rule.consumer_namespace {
                Some(ns) => Some(ns.as_str()) == caller_namespace,
                None => !consumers_present,
            };
            if !visible {
                continue;
            }
            for m in &rule.matches {
                if let Some(rank) = m.rank(request) {
                    if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                        best = Some((rank, rule));
                    }
                }
            }
        }
        best.map(|(_, rule)| Chosen { rule })
    }

    /// Whether `service` has any route attached on `port` (else its traffic goes to it
    /// unchanged).
    pub fn has_routes(&self, service: &str, port: u16) -> bool {
        self.rules
            .get(service)
            .is_some_and(|rules| rules.iter().any(|r| r.on_port(port)))
    }
}

/// How specific a match is; higher wins. Ties keep the first found (earliest route, rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    exact: bool,
    /// A regular expression ranks below an exact path and above every prefix, as Envoy
    /// Gateway and Istio order them (the Gateway API leaves it to implementations).
    regex: bool,
    prefix_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

impl Match {
    fn rank(&self, request: &http::request::Parts) -> Option<Rank> {
        let path = request.uri.path();
        let (exact, prefix_len) = match &self.path {
            Path::Exact(want) => (path == want, want.len()),
            Path::Prefix(prefix) => {
                let hit = prefix.is_empty()
                    || (path.starts_with(prefix.as_str())
                        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')));
                (false, if hit { prefix.len() } else { usize::MAX })
            }
            Path::Regex(re) => (false, if re.is_match(path) { 0 } else { usize::MAX }),
        };
        let regex = matches!(self.path, Path::Regex(_));
        let path_hit = match &self.path {
            Path::Exact(_) => exact,
            _ => prefix_len != usize::MAX,
        };
        if !path_hit {
            return None;
        }
        if self.method.as_ref().is_some_and(|m| *m != request.method) {
            return None;
        }
        for (name, value) in &self.headers {
            let actual = request.headers.get(name).and_then(|v| v.to_str().ok())?;
            if !value.matches(actual) {
                return None;
            }
        }
        for (name, value) in &self.query {
            if !value.matches(query_value(request.uri.query(), name)?) {
                return None;
            }
        }
        Some(Rank {
            exact,
            regex,
            prefix_len: if exact || regex { 0 } else { prefix_len },
            method: self.method.is_some(),
            headers: self.headers.len(),
            query: self.query.len(),
        })
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(p) => write!(f, "Exact {p}"),
            Self::Prefix(p) if p.is_empty() => write!(f, "PathPrefix /"),
            Self::Prefix(p) => write!(f, "PathPrefix {p}"),
            Self::Regex(re) => write!(f, "RegularExpression {}", re.as_str()),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(v) => write!(f, "{v:?}"),
            Self::Regex(re) => write!(f, "/{}/", re.as_str()),
        }
    }
}

impl Match {
    /// Why `request` misses this match, in words; only asked when [`Match::rank`] is `None`
    /// (route-check), so the request path allocates nothing for misses.
    fn why_not(&self, request: &http::request::Parts) -> String {
        let path = request.uri.path();
        let path_only = Self {
            path: match &self.path {
                Path::Exact(p) => Path::Exact(p.clone()),
                Path::Prefix(p) => Path::Prefix(p.clone()),
                Path::Regex(re) => Path::Regex(re.clone()),
            },
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        };
        if path_only.rank(request).is_none() {
            return format!("path {path} does not match {}", self.path);
        }
        if let Some(method) = self.method.as_ref().filter(|m| **m != request.method) {
            return format!("method {} is not {method}", request.method);
        }
        for (name, value) in &self.headers {
            match request.headers.get(name).and_then(|v| v.to_str().ok()) {
                None => return format!("header {name} is absent (wants {value})"),
                Some(actual) if !value.matches(actual) => {
                    return format!("header {name} is {actual:?} (wants {value})");
                }
                Some(_) => {}
            }
        }
        for (name, value) in &self.query {
            match query_value(request.uri.query(), name) {
                None => return format!("query parameter {name} is absent (wants {value})"),
                Some(actual) if !value.matches(actual) => {
                    return format!("query parameter {name} is {actual:?} (wants {value})");
                }
                Some(_) => {}
            }
        }
        "matches".into()
    }
}

/// What route-check says of one rule for one request.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleVerdict {
    pub route: String,
    pub rule: usize,
    /// The rule is the one the request takes.
    pub chosen: bool,
    /// It matches (but may rank below the chosen one).
    pub matches: bool,
    /// Why it matched or did not, or why a match ranked lower.
    pub why: String,
}

impl Table {
    /// Every rule of `service` weighed for `request`, as [`Table::choose`] weighs them, with
    /// why each one was or was not taken.
    pub fn explain(
        &self,
        (service, port): (&str, u16),
        caller_namespace: Option<&str>,
        request: &http::request::Parts,
    ) -> Vec<RuleVerdict> {
        let chosen = self
            .choose((service, port), caller_namespace, request)
            .map(|c| (c.rule.route.clone(), c.rule.index));
        let consumers_present = self.rules_of(service).iter().any(|r| {
            r.on_port(port)
                && r.consumer_namespace.is_some()
                && r.consumer_namespace.as_deref() == caller_namespace
        });
        self.rules_of(service)
            .iter()
            .map(|rule| {
                let is_chosen = chosen.as_ref() == Some(&(rule.route.clone(), rule.index));
                let elsewhere = rule
                    .ports
                    .as_ref()
                    .filter(|_| !rule.on_port(port))
                    .map(|ports| format!("attached to port {ports:?} of the Service, not {port}"));
                let hidden = elsewhere.or_else(|| match &rule.consumer_namespace {
                    Some(ns) => (Some(ns.as_str()) != caller_namespace)
                        .then(|| format!("a consumer route of namespace {ns}, not the caller's")),
                    None => consumers_present.then(|| {
                        "a producer route, replaced by the caller namespace's own routes".to_owned()
                    }),
                });
                let matched = rule.matches.iter().any(|m| m.rank(request).is_some());
                let why = if let Some(hidden) = hidden {
                    hidden
                } else if is_chosen {
                    "matches, and ranks first".into()
                } else if matched {
                    "matches, but a more specific or earlier rule ranks first".into()
                } else {
                    rule.matches
                        .iter()
                        .map(|m| m.why_not(request))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                RuleVerdict {
                    route: rule.route.clone(),
                    rule: rule.index,
                    chosen: is_chosen,
                    matches: matched,
                    why,
                }
            })
            .collect()
    }
}

/// Picks one backend of `backends` by weight (`None` when every weight is 0 or there are
/// none).
pub fn pick_backend(backends: &[Backend]) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rand::random_range(0..total);
    for backend in backends {
        let weight = u64::from(backend.weight);
        if ticket < weight {
            return Some(backend);
        }
        ticket -= weight;
    }
    None
}

/// The table, shared by every request, replaced on each registry change.
pub type SharedTable = Arc<arc_swap::ArcSwap<Table>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(yaml: &str) -> Registry {
        let docs = yaml
            .split("\n---\n")
            .map(|d| ("test".to_owned(), serde_yaml::from_str(d).expect("yaml")));
        Registry::from_objects(docs)
    }

    const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    weft.io/use-waypoint: waypoint\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n";

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn precedence_exact_then_longest_prefix_then_headers() {
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\n  namespace: demo\nspec:\n  parentRefs:\n  - {group: '', kind: Service, name: echo}\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: prefix-api, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /api/v2}}]\n    backendRefs: [{name: prefix-v2, port: 80}]\n  - matches: [{path: {type: Exact, value: /api/v2/x}}]\n    backendRefs: [{name: exact, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: 'yes'}]}]\n    backendRefs: [{name: canary, port: 80}]\n";
        let registry = registry(&format!("{BASE}---\n{routes}"));
        let table = Table::build(&registry, "demo", "waypoint");
        assert!(table.problems.is_empty(), "{:?}", table.problems);
        let pick = |uri: &str, headers: &[(&str, &str)]| {
            table
                .choose(
                    ("demo/echo", 80),
                    Some("demo"),
                    &request("GET", uri, headers),
                )
                .map(|c| c.rule.backends[0].name.clone())
        };
        assert_eq!(pick("/api/v2/x", &[]).as_deref(), Some("exact"));
        assert_eq!(pick("/api/v2/y", &[]).as_deref(), Some("prefix-v2"));
        assert_eq!(pick("/api/v1", &[]).as_deref(), Some("prefix-api"));
        assert_eq!(
            pick("/api/v1", &[("x-canary", "yes")]).as_deref(),
            Some("canary")
        );
        // A prefix matches whole segments only.
        assert_eq!(pick("/apiary", &[]), None);
    }

    #[test]
    fn route_check_says_why_each_rule_was_or_was_not_taken() {
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\n  namespace: demo\nspec:\n  parentRefs:\n  - {kind: Service, name: echo}\n  rules:\n  - matches: [{headers: [{name: x-version, value: v2}]}]\n    backendRefs: [{name: v2, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]\n    backendRefs: [{name: api, port: 80}]\n  - backendRefs: [{name: v1, port: 80}]\n";
        let registry = registry(&format!("{BASE}---\n{routes}"));
        let table = Table::build(&registry, "demo", "waypoint");
        let verdicts = table.explain(
            ("demo/echo", 80),
            Some("demo"),
            &request("GET", "/api/x", &[("x-version", "v1")]),
        );
        assert_eq!(verdicts.len(), 3);
        assert!(
            verdicts[0]
                .why
                .contains("header x-version is \"v1\" (wants \"v2\")"),
            "{verdicts:?}"
        );
        assert!(
            verdicts[1].why.contains("method GET is not POST"),
            "{verdicts:?}"
        );
        assert!(verdicts[2].chosen, "{verdicts:?}");
        assert_eq!(verdicts.iter().filter(|v| v.chosen).count(), 1);
    }

    #[test]
    fn a_bad_regex_is_reported_and_the_other_rules_still_apply() {
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\n  namespace: demo\nspec:\n  parentRefs:\n  - {kind: Service, name: echo}\n  rules:\n  - matches: [{path: {type: RegularExpression, value: '(unclosed'}}]\n    backendRefs: [{name: x, port: 80}]\n  - backendRefs: [{name: y, port: 80}]\n";
        let registry = registry(&format!("{BASE}---\n{routes}"));
        let table = Table::build(&registry, "demo", "waypoint");
        assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
        let chosen = table
            .choose(("demo/echo", 80), Some("demo"), &request("GET", "/", &[]))
            .expect("the second rule");
        assert_eq!(chosen.rule.index, 1);
    }

    #[test]
    fn a_regex_ranks_below_an_exact_path_and_above_any_prefix_and_retry_compiles() {
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\n  namespace: demo\nspec:\n  parentRefs:\n  - {kind: Service, name: echo}\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /re/1}}]\n    backendRefs: [{name: prefix, port: 80}]\n  - matches: [{path: {type: RegularExpression, value: '/re/[0-9]+'}}]\n    backendRefs: [{name: regex, port: 80}]\n    retry: {codes: [503], attempts: 9, backoff: 5ms}\n  - matches: [{path: {type: Exact, value: /re/12}}]\n    backendRefs: [{name: exact, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /x}}]\n    retry: {codes: [200]}\n";
        let registry = registry(&format!("{BASE}---\n{routes}"));
        let table = Table::build(&registry, "demo", "waypoint");
        let pick = |uri: &str| {
            table
                .choose(("demo/echo", 80), Some("demo"), &request("GET", uri, &[]))
                .map(|c| c.rule.backends[0].name.clone())
        };
        assert_eq!(pick("/re/12").as_deref(), Some("exact"));
        assert_eq!(pick("/re/1").as_deref(), Some("regex"));
        let regex = &table.rules_of("demo/echo")[1];
        assert_eq!(
            regex.retry,
            Some(RetryPolicy {
                attempts: MAX_RETRY_ATTEMPTS,
                codes: vec![503],
                backoff: std::time::Duration::from_millis(5),
            })
        );
        assert_eq!(table.problems.len(), 1, "{:?}", table.problems);
        assert!(
            table.problems[0]
                .problem
                .contains("200 is not a 4xx or 5xx"),
            "{:?}",
            table.problems
        );
    }

    #[test]
    fn durations_follow_the_gateway_api_format() {
        use std::time::Duration;
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_mins(90)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "10", "s", "1d", "123456s", "1h1m1s1ms1h", "-1s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_missing_backend_is_reported_as_backend_not_found() {
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\n  namespace: demo\nspec:\n  parentRefs:\n  - {kind: Service, name: echo}\n  rules:\n  - backendRefs: [{name: nowhere, port: 80}]\n    timeouts: {request: 2s}\n";
        let registry = registry(&format!("{BASE}---\n{routes}"));
        let table = Table::build(&registry, "demo", "waypoint");
        assert_eq!(table.statuses.len(), 1);
        let status = &table.statuses[0];
        assert!(status.accepted);
        assert!(!status.resolved_refs);
        assert_eq!(status.resolved_refs_reason, "BackendNotFound");
        assert!(status.message.contains("demo/nowhere"), "{status:?}");
        assert_eq!(
            table.rules_of("demo/echo")[0].request_timeout,
            Some(std::time::Duration::from_secs(2))
        );
    }

    #[test]
    fn a_parent_ref_with_a_port_takes_that_port_only() {
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\n  namespace: demo\nspec:\n  parentRefs:\n  - {kind: Service, name: echo, port: 80}\n  rules:\n  - backendRefs: [{name: echo, port: 80}]\n";
        let registry = registry(&format!("{BASE}---\n{routes}"));
        let table = Table::build(&registry, "demo", "waypoint");
        let get = request("GET", "/", &[]);
        assert!(table
            .choose(("demo/echo", 80), Some("demo"), &get)
            .is_some());
        assert!(table.has_routes("demo/echo", 80));
        assert!(
            table
                .choose(("demo/echo", 9090), Some("demo"), &get)
                .is_none()
                && !table.has_routes("demo/echo", 9090),
            "port 9090 is not the route's: its traffic goes to the Service unchanged"
        );
        let why = &table.explain(("demo/echo", 9090), Some("demo"), &get)[0].why;
        assert!(why.contains("attached to port [80]"), "{why}");
    }

    #[test]
    fn a_missing_mirror_target_is_a_missing_reference_too() {
        let routes = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\n  namespace: demo\nspec:\n  parentRefs:\n  - {kind: Service, name: echo}\n  rules:\n  - backendRefs: [{name: echo, port: 80}]\n    filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: shadow, port: 80}}\n";
        let registry = registry(&format!("{BASE}---\n{routes}"));
        let status = &Table::build(&registry, "demo", "waypoint").statuses[0];
        assert!(!status.resolved_refs, "{status:?}");
        assert!(status.message.contains("demo/shadow"), "{status:?}");
    }

    #[test]
    fn weights_zero_take_nothing() {
        let backends = vec![
            Backend {
                namespace: "demo".into(),
                name: "a".into(),
                port: None,
                weight: 0,
            },
            Backend {
                namespace: "demo".into(),
                name: "b".into(),
                port: None,
                weight: 3,
            },
        ];
        for _ in 0..50 {
            assert_eq!(pick_backend(&backends).map(|b| b.name.as_str()), Some("b"));
        }
        assert!(pick_backend(&backends[..1]).is_none());
    }
}
