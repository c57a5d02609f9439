//! Compiling policies (validation included) and evaluating a connection against them.

use super::error::PolicyError;
use std::net::IpAddr;

use serde::Serialize;

use super::crd::{Action, AuthorizationPolicySpec, Operation, Rule, Source};
use super::l7::{Attributes, CompiledCondition, Connection, OperationL7, SourceL7};
use crate::identity::SpiffeId;

/// A validated policy, ready to evaluate.
#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub spec: AuthorizationPolicySpec,
    /// Set on the stand-in for a policy that could not be read: why. It denies every
    /// connection to the workloads the policy names (fail closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    #[serde(skip)]
    rules: Vec<CompiledRule>,
}

impl Policy {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The stand-in for an `AuthorizationPolicy` that could not be read: it denies all that
    /// the policy's selector or targets cover, saying why, until the policy is fixed.
    pub fn fail_closed(
        namespace: &str,
        name: &str,
        selector: Option<super::crd::WorkloadSelector>,
        target_refs: Vec<super::crd::TargetRef>,
        why: &str,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            spec: AuthorizationPolicySpec {
                selector,
                target_refs,
                action: Action::Deny,
                rules: vec![Rule::default()],
                dry_run: false,
            },
            unreadable: Some(why.into()),
            rules: vec![CompiledRule::default()],
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub(super) fn parse(text: &str) -> Self {
        if text == "*" {
            Self::Any
        } else if let Some(rest) = text.strip_suffix('*') {
            Self::Prefix(rest.to_owned())
        } else if let Some(rest) = text.strip_prefix('*') {
            Self::Suffix(rest.to_owned())
        } else {
            Self::Exact(text.to_owned())
        }
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub(super) fn parse(text: &str) -> Result<Self, PolicyError> {
        let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = address
            .parse()
            .map_err(|_| PolicyError::NotCidr(text.into()))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .map_err(|_| PolicyError::BadPrefix(text.into()))?
        };
        if prefix > max {
            return Err(PolicyError::PrefixTooLong {
                text: text.into(),
                max,
            });
        }
        Ok(Self { network, prefix })
    }

    pub(super) fn contains(self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct CompiledSource {
    principals: Vec<Pattern>,
    not_principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
    not_namespaces: Vec<Pattern>,
    ip_blocks: Vec<Cidr>,
    not_ip_blocks: Vec<Cidr>,
    l7: SourceL7,
}

#[derive(Clone, Debug, Default)]
struct CompiledOperation {
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    l7: OperationL7,
}

#[derive(Clone, Debug, Default)]
struct CompiledRule {
    from: Vec<CompiledSource>,
    to: Vec<CompiledOperation>,
    when: Vec<CompiledCondition>,
    /// Hosts, methods, paths, request principals or `when`: only a waypoint can check them.
    needs_l7: bool,
}

fn patterns(list: &[String]) -> Vec<Pattern> {
    list.iter().map(|p| Pattern::parse(p)).collect()
}

fn cidrs(list: &[String]) -> Result<Vec<Cidr>, PolicyError> {
    list.iter().map(|c| Cidr::parse(c)).collect()
}

fn ports(list: &[String]) -> Result<Vec<u16>, PolicyError> {
    list.iter()
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| PolicyError::NotPort(p.clone()))
        })
        .collect()
}

fn compile_source(source: &Source) -> Result<CompiledSource, PolicyError> {
    Ok(CompiledSource {
        principals: patterns(&source.principals),
        not_principals: patterns(&source.not_principals),
        namespaces: patterns(&source.namespaces),
        not_namespaces: patterns(&source.not_namespaces),
        ip_blocks: cidrs(&source.ip_blocks)?,
        not_ip_blocks: cidrs(&source.not_ip_blocks)?,
        l7: SourceL7::compile(&source.request_principals, &source.not_request_principals),
    })
}

fn l7_fields(operation: &Operation) -> bool {
    [
        &operation.hosts,
        &operation.not_hosts,
        &operation.methods,
        &operation.not_methods,
        &operation.paths,
        &operation.not_paths,
    ]
    .iter()
    .any(|list| !list.is_empty())
}

fn compile_rule(rule: &Rule) -> Result<CompiledRule, PolicyError> {
    let from: Vec<CompiledSource> = rule
        .from
        .iter()
        .map(|f| compile_source(&f.source))
        .collect::<Result<_, _>>()?;
    let to = rule
        .to
        .iter()
        .map(|t| {
            Ok(CompiledOperation {
                ports: ports(&t.operation.ports)?,
                not_ports: ports(&t.operation.not_ports)?,
                l7: OperationL7::compile(&t.operation),
            })
        })
        .collect::<Result<_, PolicyError>>()?;
    let when = rule
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| CompiledCondition::compile(c).map_err(|e| e.within(format!("when[{i}]"))))
        .collect::<Result<_, _>>()?;
    let needs_l7 = !rule.when.is_empty()
        || rule.to.iter().any(|t| l7_fields(&t.operation))
        || from.iter().any(|s| !s.l7.is_empty());
    Ok(CompiledRule {
        from,
        to,
        when,
        needs_l7,
    })
}

/// Validates and compiles a policy; the error says what to fix.
pub fn compile(
    namespace: &str,
    name: &str,
    spec: AuthorizationPolicySpec,
) -> Result<Policy, PolicyError> {
    if spec.rules.is_empty() {
        return Err(PolicyError::NoRules);
    }
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| compile_rule(r).map_err(|e| e.within(format!("rules[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        namespace: namespace.into(),
        name: name.into(),
        spec,
        unreadable: None,
        rules,
    })
}

/// What is known about a connection when it is authorized.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub namespace: &'a str,
    pub labels: &'a crate::registry::Labels,
    /// Names of the Services in the pod's namespace that select the destination pod.
    pub services: &'a [String],
    pub port: u16,
    /// The client's proven identity (mutual TLS), if any.
    pub identity: Option<&'a SpiffeId>,
    pub source_ip: IpAddr,
    /// Whether the pod's mTLS mode is strict.
    pub strict: bool,
    /// At a waypoint: the request itself, so the L7 parts of rules are judged, not assumed.
    pub l7: Option<Attributes<'a>>,
    /// At a waypoint: the name of its `Gateway`, which policies may target.
    pub gateway: Option<&'a str>,
    /// Of `services`, those whose waypoint sent this connection: it has enforced the policies
    /// that target them, so they are not judged again on the waypoint's own identity.
    pub enforced_by_waypoint: &'a [String],
}

impl Request<'_> {
    fn connection(&self) -> Connection<'_> {
        Connection {
            identity: self.identity,
            source_ip: self.source_ip,
            port: self.port,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why: a small fixed set, usable as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NoPolicy,
    AllowedByPolicy,
    DeniedByPolicy,
    /// A policy that could not be read stands in as a denial of all it may cover.
    UnreadablePolicy,
    NoAllowRuleMatched,
    L7RequiresWaypoint,
    StrictMtlsPlaintext,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPolicy => "no_policy",
            Self::AllowedByPolicy => "allowed_by_policy",
            Self::DeniedByPolicy => "denied_by_policy",
            Self::UnreadablePolicy => "unreadable_policy",
            Self::NoAllowRuleMatched => "no_allow_rule_matched",
            Self::L7RequiresWaypoint => "l7_requires_waypoint",
            Self::StrictMtlsPlaintext => "strict_mtls_plaintext",
        }
    }
}

/// A verdict with its reason, the deciding policy and rule, and what audit and dry-run
/// policies said along the way.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// For people: which policy and rule, or what was missing.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The index of the deciding rule in that policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Decision {
    fn new(
        verdict: Verdict,
        reason: Reason,
        detail: String,
        policy: Option<String>,
        notes: Vec<String>,
    ) -> Self {
        Self {
            verdict,
            reason,
            detail,
            policy,
            rule: None,
            notes,
        }
    }

    #[must_use]
    fn by_rule(mut self, rule: usize) -> Self {
        self.rule = Some(rule);
        self
    }
}

fn applies(policy: &Policy, request: &Request<'_>) -> bool {
    if policy.namespace != request.namespace {
        return false;
    }
    if let Some(selector) = &policy.spec.selector {
        if !selector
            .match_labels
            .iter()
            .all(|(k, v)| request.labels.get(k) == Some(v.as_str()))
        {
            return false;
        }
    }
    if !policy.spec.target_refs.is_empty() {
        return policy
            .spec
            .target_refs
            .iter()
            .any(|t| match t.kind.as_str() {
                "Service" => {
                    request.services.contains(&t.name)
                        && !request.enforced_by_waypoint.contains(&t.name)
                }
                "Gateway" => request.gateway == Some(t.name.as_str()),
                _ => false,
            });
    }
    // A waypoint enforces what targets it or its Services; selectors are the agent's.
    request.gateway.is_none()
}

fn source_matches(source: &CompiledSource, request: &Request<'_>) -> bool {
    let principal = request
        .identity
        .map(|id| id.to_string().trim_start_matches("spiffe://").to_owned());
    let namespace = request.identity.map(|id| id.namespace.as_str());
    // Principal and namespace rules need a proven identity; their not-forms match a client
    // without one (it is not any of them).
    let any = |list: &[Pattern], value: Option<&str>| {
        value.is_some_and(|v| list.iter().any(|p| p.matches(v)))
    };
    let l7 = request
        .l7
        .as_ref()
        .is_none_or(|l7| source.l7.matches(l7.auth));
    l7 && (source.principals.is_empty() || any(&source.principals, principal.as_deref()))
        && (source.not_principals.is_empty() || !any(&source.not_principals, principal.as_deref()))
        && (source.namespaces.is_empty() || any(&source.namespaces, namespace))
        && (source.not_namespaces.is_empty() || !any(&source.not_namespaces, namespace))
        && (source.ip_blocks.is_empty()
            || source
                .ip_blocks
                .iter()
                .any(|c| c.contains(request.source_ip)))
        && (source.not_ip_blocks.is_empty()
            || !source
                .not_ip_blocks
                .iter()
                .any(|c| c.contains(request.source_ip)))
}

fn operation_matches(operation: &CompiledOperation, request: &Request<'_>) -> bool {
    (operation.ports.is_empty() || operation.ports.contains(&request.port))
        && (operation.not_ports.is_empty() || !operation.not_ports.contains(&request.port))
        && request
            .l7
            .as_ref()
            .is_none_or(|l7| operation.l7.matches(l7))
}

/// Whether the rule matches: all of it at a waypoint; at the agent, its L4 parts (what
/// needs L7 is judged by the caller from `needs_l7`).
fn rule_matches(rule: &CompiledRule, request: &Request<'_>) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, request)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, request)))
        && request.l7.as_ref().is_none_or(|l7| {
            let connection = request.connection();
            rule.when.iter().all(|c| c.matches(&connection, l7))
        })
}

/// Whether a matched rule decides here: always at a waypoint, at the agent only when it has
/// no L7 parts.
fn decides(rule: &CompiledRule, request: &Request<'_>) -> bool {
    !rule.needs_l7 || request.l7.is_some()
}

/// Decides a connection: strict mTLS first, then DENY policies, then ALLOW policies. AUDIT
/// and dry-run policies only add notes.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    request: &Request<'_>,
) -> Decision {
    if request.strict && request.identity.is_none() {
        return Decision::new(
            Verdict::Deny,
            Reason::StrictMtlsPlaintext,
            "plaintext refused: the workload's mTLS mode is strict".into(),
            None,
            Vec::new(),
        );
    }
    let applying: Vec<&Policy> = policies
        .into_iter()
        .filter(|p| applies(p, request))
        .collect();
    let mut notes = Vec::new();
    for policy in applying.iter().filter(|p| p.spec.action == Action::Audit) {
        if let Some(i) = policy.rules.iter().position(|r| rule_matches(r, request)) {
            notes.push(format!("audited by {} rule {i}", policy.id()));
        }
    }
    if let Some(denial) = first_denial(&applying, request, &mut notes) {
        return denial;
    }
    allow_phase(&applying, request, notes)
}

fn first_denial(
    applying: &[&Policy],
    request: &Request<'_>,
    notes: &mut Vec<String>,
) -> Option<Decision> {
    for policy in applying.iter().filter(|p| p.spec.action == Action::Deny) {
        if let Some((i, rule)) = policy
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| rule_matches(r, request))
        {
            let l7 = if decides(rule, request) {
                ""
            } else {
                " (its L7 conditions cannot be checked without a waypoint, so it applies as a whole)"
            };
            let detail = match &policy.unreadable {
                Some(why) => format!(
                    "denied by {}, which Weft cannot read ({why}): a policy that cannot be read denies all it may cover until it is fixed",
                    policy.id()
                ),
                None => format!("denied by {} rule {i}{l7}", policy.id()),
            };
            if policy.spec.dry_run {
                notes.push(format!("dry run: would be {detail}"));
                continue;
            }
            return Some(
                Decision::new(
                    Verdict::Deny,
                    if policy.unreadable.is_some() {
                        Reason::UnreadablePolicy
                    } else {
                        Reason::DeniedByPolicy
                    },
                    detail,
                    Some(policy.id()),
                    std::mem::take(notes),
                )
                .by_rule(i),
            );
        }
    }
    None
}

fn allow_phase(applying: &[&Policy], request: &Request<'_>, mut notes: Vec<String>) -> Decision {
    let mut l7_blocked = None;
    let mut enforced = Vec::new();
    for policy in applying.iter().filter(|p| p.spec.action == Action::Allow) {
        let matched = policy
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| rule_matches(r, request));
        if policy.spec.dry_run {
            let what = if matched.is_some_and(|(_, r)| decides(r, request)) {
                "allowed"
            } else {
                "denied"
            };
            notes.push(format!("dry run: {} would have {what} it", policy.id()));
            continue;
        }
        enforced.push(policy.id());
        match matched {
            Some((i, rule)) if decides(rule, request) => {
                return Decision::new(
                    Verdict::Allow,
                    Reason::AllowedByPolicy,
                    format!("allowed by {} rule {i}", policy.id()),
                    Some(policy.id()),
                    notes,
                )
                .by_rule(i);
            }
            Some((i, _)) => l7_blocked = l7_blocked.or(Some((policy.id(), i))),
            None => {}
        }
    }
    if enforced.is_empty() {
        return Decision::new(
            Verdict::Allow,
            Reason::NoPolicy,
            "no ALLOW policy applies to this workload".into(),
            None,
            notes,
        );
    }
    if let Some((policy, i)) = l7_blocked {
        let detail = format!("{policy} rule {i} needs L7 attributes (hosts, methods, paths or when) and no waypoint serves this workload: denied (fail closed)");
        return Decision::new(
            Verdict::Deny,
            Reason::L7RequiresWaypoint,
            detail,
            Some(policy),
            notes,
        )
        .by_rule(i);
    }
    let detail = format!(
        "no rule of the ALLOW policies {} matched",
        enforced.join(", ")
    );
    Decision::new(
        Verdict::Deny,
        Reason::NoAllowRuleMatched,
        detail,
        None,
        notes,
    )
}
