//! The Kubernetes objects the registry keeps, reduced to the fields Weft uses, and their
//! validation. Unknown kinds are not errors (a manifest folder may hold anything); malformed
//! objects of known kinds are.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    typed::{EndpointSliceObject, NamespaceObject, NodeObject, PodObject, ServiceObject, Settle},
    Registry,
};

pub use super::labels::Labels;

/// The metadata Weft reads. A manifest's other metadata fields (ownerReferences, generation…)
/// are not read, so a malformed one does not reject the object.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

impl Meta {
    fn into_object_meta(self) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            uid: self.uid,
            labels: self.labels,
            annotations: self.annotations,
            ..ObjectMeta::default()
        }
    }
}

/// A node's place: its `topology.kubernetes.io/region` and `/zone` labels.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub region: Option<String>,
    pub zone: Option<String>,
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
    /// `appProtocol`, which with the name decides how a waypoint speaks on this port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// How a waypoint carries a Service port's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/1.1 (`appProtocol: http`, a name `http-…` or `http`).
    Http1,
    /// HTTP/2 with prior knowledge (`kubernetes.io/h2c`, `http2-…`).
    Http2,
    /// gRPC, which is HTTP/2 (`grpc`, `grpc-…`).
    Grpc,
    /// Bytes, passed through at L4 (`tcp`, `tcp-…`, or any other declared protocol).
    Tcp,
    /// Nothing declared: the waypoint sniffs the first bytes.
    Unknown,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
            Self::Unknown => "sniffed",
        }
    }
}

impl ServicePort {
    /// `appProtocol` first, then the name's prefix (`http-`, `http2-`, `grpc-`, `tcp-`), as
    /// Istio reads them; anything else is sniffed.
    pub fn protocol(&self) -> AppProtocol {
        let classify = |word: &str| match word.to_ascii_lowercase().as_str() {
            // gRPC-Web is carried over HTTP/1.1 by browsers and their proxies.
            "http" | "kubernetes.io/http" | "grpc-web" => Some(AppProtocol::Http1),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(AppProtocol::Http2),
            "grpc" => Some(AppProtocol::Grpc),
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "kubernetes.io/ws"
            | "kubernetes.io/wss" => Some(AppProtocol::Tcp),
            _ => None,
        };
        if let Some(declared) = self.app_protocol.as_deref() {
            return classify(declared).unwrap_or(AppProtocol::Tcp);
        }
        let prefix = self.name.split('-').next().unwrap_or_default();
        classify(prefix).unwrap_or(AppProtocol::Unknown)
    }
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

/// A Gateway API route as the registry keeps it: which parents (waypoints, Services) it binds
/// to, and its rules, which the waypoint compiles.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Route {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `[namespace/]name` of each parentRef.
    pub parents: Vec<String>,
    pub hostnames: Vec<String>,
    pub spec: super::routes::RouteSpec,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
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

/// What every object shares, checked once.
struct Object<'a> {
    doc: &'a serde_yaml::Value,
    /// `Kind namespace/name`, for error reports.
    id: String,
    name: String,
    namespace: String,
}

impl Object<'_> {
    fn field<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Rejection> {
        field(self.doc, key, &self.id)
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
    if let Some(added) = add_core(registry, doc, &kind) {
        return added;
    }
    let meta: Meta = field(doc, "metadata", &kind)?.unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let object = Object {
        doc,
        id: format!("{kind} {namespace}/{name}"),
        name,
        namespace,
    };
    if object.name.is_empty() {
        return Err(object.reject(Problem::Missing("metadata.name")));
    }
    match kind.as_str() {
        "AuthorizationPolicy" => match authorization_policy(&object) {
            Ok(policy) => registry.policies.push(policy),
            Err(rejection) => {
                let reason = rejection.problem.to_string();
                fail_closed(registry, doc, &api, &kind, &rejection.object, &reason);
                return Err(rejection);
            }
        },
        "TrafficPolicy" => registry.traffic_policies.push(traffic_policy(&object)?),
        "RequestAuthentication" => registry.request_auths.push(request_auth(&object)?),
        _ => registry.routes.push(route(&kind, object)?),
    }
    Ok(())
}

/// The core kinds parse into the typed objects the Kubernetes watches keep, one field at a
/// time so a report names the field that failed. `None` for every other kind.
fn add_core(
    registry: &mut Registry,
    doc: &serde_yaml::Value,
    kind: &str,
) -> Option<Result<(), Rejection>> {
    if !matches!(
        kind,
        "Namespace" | "Node" | "Pod" | "Service" | "EndpointSlice"
    ) {
        return None;
    }
    let id = object_id(doc, kind);
    let metadata = || -> Result<ObjectMeta, Rejection> {
        Ok(field::<Meta>(doc, "metadata", &id)?
            .unwrap_or_default()
            .into_object_meta())
    };
    let read = |registry: &mut Registry| match kind {
        "Namespace" => keep(
            registry,
            NamespaceObject {
                metadata: metadata()?,
                ..NamespaceObject::default()
            },
        ),
        "Node" => keep(
            registry,
            NodeObject {
                metadata: metadata()?,
                ..NodeObject::default()
            },
        ),
        "Pod" => keep(
            registry,
            PodObject {
                metadata: metadata()?,
                spec: field(doc, "spec", &id)?,
                status: field(doc, "status", &id)?,
                ..PodObject::default()
            },
        ),
        "Service" => keep(
            registry,
            ServiceObject {
                metadata: metadata()?,
                spec: field(doc, "spec", &id)?,
                ..ServiceObject::default()
            },
        ),
        _ => keep(
            registry,
            EndpointSliceObject {
                metadata: metadata()?,
                endpoints: field(doc, "endpoints", &id)?.unwrap_or_default(),
                ports: field(doc, "ports", &id)?.unwrap_or_default(),
                ..EndpointSliceObject::default()
            },
        ),
    };
    Some(read(registry))
}

/// Settles a typed object into the registry, or says why it was rejected.
fn keep<K: Settle>(registry: &mut Registry, mut object: K) -> Result<(), Rejection> {
    object.settle();
    if let Some(kept) = object.settled().outcome().map_err(Rejection::clone)? {
        K::keep(kept, registry);
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

fn request_auth(
    object: &Object<'_>,
) -> Result<crate::policy::request_auth::RequestAuth, Rejection> {
    let spec: crate::policy::request_auth::RequestAuthenticationSpec = object
        .field("spec")?
        .ok_or_else(|| object.reject(Problem::Missing("spec")))?;
    crate::policy::request_auth::compile(&object.namespace, &object.name, spec)
        .map_err(|e| object.reject(e))
}

fn route(kind: &str, object: Object<'_>) -> Result<Route, Rejection> {
    let spec: super::routes::RouteSpec = object.field("spec")?.unwrap_or_default();
    let parents = spec
        .parent_refs
        .iter()
        .map(|p| match &p.namespace {
            Some(ns) if *ns != object.namespace => format!("{ns}/{}", p.name),
            _ => p.name.clone(),
        })
        .collect();
    Ok(Route {
        kind: kind.to_owned(),
        namespace: object.namespace,
        name: object.name,
        parents,
        hostnames: spec.hostnames.clone(),
        spec,
    })
}
