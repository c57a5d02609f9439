//! The Kubernetes objects the registry keeps, reduced to the fields Weft uses, and their
//! validation. Unknown kinds are not errors (a manifest folder may hold anything); malformed
//! objects of known kinds are.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::Registry;

type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    annotations: Labels,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    pub annotations: Labels,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub node_name: Option<String>,
    pub service_account: String,
    pub ip: Option<Ipv4Addr>,
    /// Kubernetes mode: finds the pod's netns and cgroup on the node.
    pub uid: Option<String>,
    /// The pod waits for the agent's `weft.io/enrolled` condition before it is Ready.
    pub enrollment_gate: bool,
    /// `spec.hostNetwork`: the pod shares its node's netns and address, so it is never
    /// captured and its address is not a pod's.
    pub host_network: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// Numeric targetPort; a named one is resolved through the EndpointSlice.
    pub target_port: Option<u16>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<Ipv4Addr>,
    pub ready: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    pub service_name: String,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<EndpointPort>,
}

/// A Gateway API route as the agent keeps it: which parents (waypoints, Services) it binds to.
/// The rules are read by the waypoint.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Route {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `[namespace/]name` of each parentRef.
    pub parents: Vec<String>,
    pub hostnames: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ParentRefIn {
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RouteSpecIn {
    #[serde(default)]
    parent_refs: Vec<ParentRefIn>,
    #[serde(default)]
    hostnames: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpecIn {
    node_name: Option<String>,
    service_account_name: Option<String>,
    #[serde(default)]
    readiness_gates: Vec<ReadinessGateIn>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadinessGateIn {
    condition_type: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatusIn {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    phase: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServicePortIn {
    name: Option<String>,
    port: u16,
    target_port: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpecIn {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default)]
    ports: Vec<ServicePortIn>,
}

#[derive(Deserialize)]
struct ConditionsIn {
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct EndpointIn {
    addresses: Vec<String>,
    conditions: Option<ConditionsIn>,
}

#[derive(Deserialize)]
struct EndpointPortIn {
    name: Option<String>,
    port: Option<u16>,
}

/// Why an object is skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no kind")]
    NoKind,
    /// A kind Weft does not read, with what was probably meant.
    #[error("{0}")]
    UnknownKind(String),
    #[error("{field}: {message}")]
    BadField { field: String, message: String },
    #[error("{what} {text:?} is not an IPv4 address")]
    NotIpv4 { what: &'static str, text: String },
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("targetPort {0} is not a port")]
    BadTargetPort(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

impl Problem {
    /// The bounded label of the problem.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoKind | Self::UnknownKind(_) => "unknown_kind",
            Self::BadField { .. } => "bad_field",
            Self::NotIpv4 { .. } => "bad_address",
            Self::Missing(_) => "missing_field",
            Self::BadTargetPort(_) => "bad_port",
            Self::Policy(e) => e.reason(),
        }
    }
}

/// A rejected object (`Kind namespace/name`) and why.
#[derive(Debug)]
pub(super) struct Rejection {
    pub object: String,
    pub problem: Problem,
}

fn field<T: serde::de::DeserializeOwned>(
    doc: &serde_yaml::Value,
    key: &str,
    object: &str,
) -> Result<Option<T>, Rejection> {
    match doc.get(key) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(value) => serde_yaml::from_value(value.clone())
            .map(Some)
            .map_err(|e| Rejection {
                object: object.to_owned(),
                problem: Problem::BadField {
                    field: key.to_owned(),
                    message: e.to_string(),
                },
            }),
    }
}

fn ipv4(text: &str, what: &'static str, object: &str) -> Result<Ipv4Addr, Rejection> {
    text.parse().map_err(|_| Rejection {
        object: object.to_owned(),
        problem: Problem::NotIpv4 {
            what,
            text: text.to_owned(),
        },
    })
}

/// What every object shares, checked once.
struct Object<'a> {
    doc: &'a serde_yaml::Value,
    /// `Kind namespace/name`, for error reports.
    id: String,
    name: String,
    namespace: String,
    meta: Meta,
}

impl Object<'_> {
    fn field<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Rejection> {
        field(self.doc, key, &self.id)
    }

    fn ipv4(&self, text: &str, what: &'static str) -> Result<Ipv4Addr, Rejection> {
        ipv4(text, what, &self.id)
    }

    fn reject(&self, problem: impl Into<Problem>) -> Rejection {
        Rejection {
            object: self.id.clone(),
            problem: problem.into(),
        }
    }
}

/// Adds one document to the registry, or says why it was rejected.
pub(super) fn add(registry: &mut Registry, doc: &serde_yaml::Value) -> Result<(), Rejection> {
    let text = |key: &str| {
        doc.get(key)
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (kind, api) = (text("kind"), text("apiVersion"));
    if kind.is_empty() {
        return Err(Rejection {
            object: "<unknown>".into(),
            problem: Problem::NoKind,
        });
    }
    match super::kinds::classify(&api, &kind) {
        super::kinds::Verdict::Read => {}
        super::kinds::Verdict::Ignored => {
            *registry.ignored.entry(format!("{api}/{kind}")).or_default() += 1;
            return Ok(());
        }
        super::kinds::Verdict::Unknown(reason) => {
            let id = object_id(doc, &kind);
            fail_closed(registry, doc, &api, &kind, &id, &reason);
            return Err(Rejection {
                object: id,
                problem: Problem::UnknownKind(reason),
            });
        }
    }
    let meta: Meta = field(doc, "metadata", &kind)?.unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let object = Object {
        doc,
        id: format!("{kind} {namespace}/{name}"),
        name,
        namespace,
        meta,
    };
    if object.name.is_empty() {
        return Err(object.reject(Problem::Missing("metadata.name")));
    }
    match kind.as_str() {
        "Namespace" => {
            let Object { name, meta, .. } = object;
            registry.namespaces.insert(
                name.clone(),
                Namespace {
                    name,
                    labels: meta.labels,
                    annotations: meta.annotations,
                },
            );
        }
        // A finished pod (a completed Job) serves nothing, and its address may already be
        // another pod's: it is neither a destination nor an identity to sign.
        "Pod" => registry.pods.extend(pod(object)?),
        "Service" => registry.services.push(service(object)?),
        "AuthorizationPolicy" => match authorization_policy(&object) {
            Ok(policy) => registry.policies.push(policy),
            Err(rejection) => {
                let reason = rejection.problem.to_string();
                fail_closed(registry, doc, &api, &kind, &rejection.object, &reason);
                return Err(rejection);
            }
        },
        "TrafficPolicy" => registry.traffic_policies.push(traffic_policy(&object)?),
        "HTTPRoute" | "GRPCRoute" => registry.routes.push(route(&kind, object)?),
        _ => registry.endpoint_slices.push(endpoint_slice(object)?),
    }
    Ok(())
}

/// `Kind namespace/name` of a document, as far as it can be read.
fn object_id(doc: &serde_yaml::Value, kind: &str) -> String {
    let meta = |key: &str| {
        doc.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(serde_yaml::Value::as_str)
            .map(str::to_owned)
    };
    format!(
        "{kind} {}/{}",
        meta("namespace").unwrap_or_else(|| "default".into()),
        meta("name").unwrap_or_default()
    )
}

/// A policy Weft cannot read, but which was meant as a Weft `AuthorizationPolicy` (the
/// `weft.io` group, with the kind or a near spelling of it, under any version), must not let
/// through what it was written to stop: unless it says `AUDIT` or `dryRun`, it denies every
/// connection to the workloads it names until it is fixed. Its selector and targets are kept
/// when they can be read; otherwise it covers its whole namespace. Another mesh's policy of the
/// same kind (Istio's `security.istio.io`) is only reported.
fn fail_closed(
    registry: &mut Registry,
    doc: &serde_yaml::Value,
    api: &str,
    kind: &str,
    id: &str,
    reason: &str,
) {
    let ours = api.split('/').next() == Some("weft.io");
    let meant = kind == "AuthorizationPolicy"
        || super::kinds::meant(api, kind).is_some_and(|(_, k)| k == "AuthorizationPolicy");
    if !(ours && meant) {
        return;
    }
    let spec = doc.get("spec");
    let text = |key: &str| spec.and_then(|s| s.get(key));
    if text("action").and_then(serde_yaml::Value::as_str) == Some("AUDIT")
        || text("dryRun").and_then(serde_yaml::Value::as_bool) == Some(true)
    {
        return;
    }
    let meta: Meta = doc
        .get("metadata")
        .and_then(|m| serde_yaml::from_value(m.clone()).ok())
        .unwrap_or_default();
    let selector = text("selector").and_then(|s| serde_yaml::from_value(s.clone()).ok());
    let target_refs = text("targetRefs")
        .and_then(|s| serde_yaml::from_value(s.clone()).ok())
        .unwrap_or_default();
    registry.policies.push(crate::policy::Policy::fail_closed(
        &meta.namespace.unwrap_or_else(|| "default".into()),
        &meta.name.unwrap_or_else(|| id.to_owned()),
        selector,
        target_refs,
        reason,
    ));
}

fn authorization_policy(object: &Object<'_>) -> Result<crate::policy::Policy, Rejection> {
    let spec: crate::policy::crd::AuthorizationPolicySpec = object
        .field("spec")?
        .ok_or_else(|| object.reject(Problem::Missing("spec")))?;
    crate::policy::compile(&object.namespace, &object.name, spec).map_err(|e| object.reject(e))
}

fn traffic_policy(object: &Object<'_>) -> Result<crate::policy::TrafficSettings, Rejection> {
    let spec: crate::policy::traffic::TrafficPolicySpec = object
        .field("spec")?
        .ok_or_else(|| object.reject(Problem::Missing("spec")))?;
    crate::policy::traffic::compile(&object.namespace, &object.name, spec)
        .map_err(|e| object.reject(e))
}

fn pod(object: Object<'_>) -> Result<Option<Pod>, Rejection> {
    let spec: Option<PodSpecIn> = object.field("spec")?;
    let status: PodStatusIn = object.field("status")?.unwrap_or_default();
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let ip = status
        .pod_ip
        .as_deref()
        .map(|t| object.ipv4(t, "status.podIP"))
        .transpose()?;
    let (node_name, service_account, gates, host_network) =
        spec.map_or((None, None, Vec::new(), false), |s| {
            (
                s.node_name,
                s.service_account_name,
                s.readiness_gates,
                s.host_network,
            )
        });
    let enrollment_gate = gates
        .iter()
        .any(|g| g.condition_type == super::ENROLLED_CONDITION);
    Ok(Some(Pod {
        uid: object.meta.uid.clone(),
        enrollment_gate,
        namespace: object.namespace,
        name: object.name,
        labels: object.meta.labels,
        annotations: object.meta.annotations,
        node_name,
        service_account: service_account.unwrap_or_else(|| "default".into()),
        ip,
        host_network,
    }))
}

fn route(kind: &str, object: Object<'_>) -> Result<Route, Rejection> {
    let spec: RouteSpecIn = object.field("spec")?.unwrap_or_default();
    let parents = spec
        .parent_refs
        .into_iter()
        .map(|p| match p.namespace {
            Some(ns) if ns != object.namespace => format!("{ns}/{}", p.name),
            _ => p.name,
        })
        .collect();
    Ok(Route {
        kind: kind.to_owned(),
        namespace: object.namespace,
        name: object.name,
        parents,
        hostnames: spec.hostnames,
    })
}

fn service(object: Object<'_>) -> Result<Service, Rejection> {
    let spec: ServiceSpecIn = object
        .field("spec")?
        .ok_or_else(|| object.reject(Problem::Missing("spec")))?;
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("None" | "") => None,
        Some(t) => Some(object.ipv4(t, "spec.clusterIP")?),
    };
    let ports = spec
        .ports
        .into_iter()
        .map(|p| {
            let target_port = match p.target_port {
                None => Some(p.port),
                Some(serde_yaml::Value::Number(n)) => Some(
                    n.as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .ok_or_else(|| object.reject(Problem::BadTargetPort(n.to_string())))?,
                ),
                // A named targetPort is resolved through the EndpointSlice's port names.
                Some(_) => None,
            };
            Ok(ServicePort {
                name: p.name.unwrap_or_default(),
                port: p.port,
                target_port,
            })
        })
        .collect::<Result<_, Rejection>>()?;
    Ok(Service {
        namespace: object.namespace,
        name: object.name,
        labels: object.meta.labels,
        annotations: object.meta.annotations,
        cluster_ip,
        ports,
    })
}

fn endpoint_slice(object: Object<'_>) -> Result<EndpointSlice, Rejection> {
    let service_name = object
        .meta
        .labels
        .get("kubernetes.io/service-name")
        .cloned()
        .ok_or_else(|| object.reject(Problem::Missing("label kubernetes.io/service-name")))?;
    let endpoints: Vec<EndpointIn> = object.field("endpoints")?.unwrap_or_default();
    let ports: Vec<EndpointPortIn> = object.field("ports")?.unwrap_or_default();
    let endpoints = endpoints
        .into_iter()
        .map(|e| {
            let addresses = e
                .addresses
                .iter()
                .map(|a| object.ipv4(a, "endpoint address"))
                .collect::<Result<_, _>>()?;
            Ok(Endpoint {
                addresses,
                ready: e.conditions.and_then(|c| c.ready).unwrap_or(true),
            })
        })
        .collect::<Result<_, Rejection>>()?;
    let ports = ports
        .into_iter()
        .filter_map(|p| {
            p.port.map(|port| EndpointPort {
                name: p.name.unwrap_or_default(),
                port,
            })
        })
        .collect();
    Ok(EndpointSlice {
        namespace: object.namespace,
        name: object.name,
        service_name,
        endpoints,
        ports,
    })
}
