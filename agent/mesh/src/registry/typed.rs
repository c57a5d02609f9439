//! The Kubernetes core objects Weft reads, as typed partial objects: each inherits
//! k8s-openapi's `Resource` (kind, group, version, plural) but declares only the fields Weft
//! uses, so kube-runtime's watch stores and local mode's YAML parse into the same types. An
//! object settles once, when it arrives, into the registry's validated form, which the store
//! and every snapshot then share by `Arc` (namespaces are copied: few and small); what
//! settling used is cut away (see ARCHITECTURE.md, "Kubernetes mode", for why not the whole
//! k8s-openapi structs).

use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{self as core, PodReadinessGate},
        discovery::v1::{self as discovery, EndpointConditions},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::Resource;
use serde::Deserialize;

use super::Registry;

use super::objects::{
    Endpoint, EndpointPort, EndpointSlice, Labels, Namespace, Node, Pod, Problem, Rejection,
    Service, ServicePort,
};

/// What an object became in the registry's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Settled<T> {
    /// Not settled yet: fresh from the API server or a file.
    #[default]
    Unread,
    Kept(Arc<T>),
    /// Read, and deliberately not kept (a finished pod).
    Skipped,
    Rejected(Arc<Rejection>),
}

impl<T> Settled<T> {
    /// What a snapshot does with it: keep it (`Ok(Some)`), pass over it (`Ok(None)`: skipped,
    /// or never settled), or report it.
    pub fn outcome(&self) -> Result<Option<&Arc<T>>, &Rejection> {
        match self {
            Self::Kept(kept) => Ok(Some(kept)),
            Self::Skipped | Self::Unread => Ok(None),
            Self::Rejected(rejection) => Err(rejection),
        }
    }
}

/// A typed object that settles into a registry object.
pub trait Settle: Resource<DynamicType = ()> + Clone {
    type Kept;
    /// Validates the object into its registry form and cuts away what that used.
    fn settle(&mut self);
    fn settled(&self) -> &Settled<Self::Kept>;
    /// Puts a settled object into a snapshot being built.
    fn keep(kept: &Arc<Self::Kept>, registry: &mut Registry);
}

/// `Kind namespace/name`, the way reports name an object.
fn id_of<K: Resource<DynamicType = ()>>(meta: &ObjectMeta) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        namespace_of(meta),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

fn reject<K: Resource<DynamicType = ()>>(meta: &ObjectMeta, problem: Problem) -> Rejection {
    Rejection {
        object: id_of::<K>(meta),
        problem,
    }
}

fn ipv4<K: Resource<DynamicType = ()>>(
    meta: &ObjectMeta,
    text: &str,
    what: &'static str,
) -> Result<Ipv4Addr, Rejection> {
    text.parse().map_err(|_| {
        reject::<K>(
            meta,
            Problem::NotIpv4 {
                what,
                text: text.to_owned(),
            },
        )
    })
}

fn labels(meta: &mut ObjectMeta) -> Labels {
    meta.labels.take().map(Labels::from).unwrap_or_default()
}

/// Only Weft's own annotations (`weft.io/…`) are ever read.
fn weft_annotations(meta: &mut ObjectMeta) -> Labels {
    meta.annotations
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| key.starts_with("weft.io/"))
        .collect()
}

/// Keeps what the watch store needs to key the object (name and namespace), nothing else.
fn cut(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        ..ObjectMeta::default()
    };
}

fn settle_with<K, T>(
    meta: &mut ObjectMeta,
    read: impl FnOnce(&mut ObjectMeta) -> Result<Option<T>, Rejection>,
) -> Settled<T>
where
    K: Resource<DynamicType = ()>,
{
    let settled = if meta.name.as_deref().unwrap_or_default().is_empty() {
        Settled::Rejected(Arc::new(reject::<K>(
            meta,
            Problem::Missing("metadata.name"),
        )))
    } else {
        match read(meta) {
            Ok(Some(kept)) => Settled::Kept(Arc::new(kept)),
            Ok(None) => Settled::Skipped,
            Err(rejection) => Settled::Rejected(Arc::new(rejection)),
        }
    };
    cut(meta);
    settled
}

#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = core::Namespace)]
pub struct NamespaceObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(skip)]
    pub settled: Settled<Namespace>,
}

impl Settle for NamespaceObject {
    type Kept = Namespace;

    fn settle(&mut self) {
        self.settled = settle_with::<Self, _>(&mut self.metadata, |meta| {
            Ok(Some(Namespace {
                name: meta.name.clone().unwrap_or_default(),
                labels: labels(meta),
                annotations: weft_annotations(meta),
            }))
        });
    }

    fn settled(&self) -> &Settled<Namespace> {
        &self.settled
    }

    fn keep(kept: &Arc<Namespace>, registry: &mut Registry) {
        registry
            .namespaces
            .insert(kept.name.clone(), Namespace::clone(kept));
    }
}

/// A node: only its name and its topology labels are kept.
#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = core::Node)]
pub struct NodeObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(skip)]
    pub settled: Settled<Node>,
}

/// The node labels that place a node (well-known labels of Kubernetes).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

impl Settle for NodeObject {
    type Kept = Node;

    fn settle(&mut self) {
        self.settled = settle_with::<Self, _>(&mut self.metadata, |meta| {
            let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).cloned();
            Ok(Some(Node {
                name: meta.name.clone().unwrap_or_default(),
                region: label(REGION_LABEL),
                zone: label(ZONE_LABEL),
            }))
        });
    }

    fn settled(&self) -> &Settled<Node> {
        &self.settled
    }

    fn keep(kept: &Arc<Node>, registry: &mut Registry) {
        registry.nodes.insert(kept.name.clone(), Node::clone(kept));
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecIn {
    pub node_name: Option<String>,
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub readiness_gates: Vec<PodReadinessGate>,
    #[serde(default)]
    pub host_network: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatusIn {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    pub phase: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = core::Pod)]
pub struct PodObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    // Boxed: after settling they are gone, and the store's object is smaller without them.
    pub spec: Option<Box<PodSpecIn>>,
    pub status: Option<Box<PodStatusIn>>,
    #[serde(skip)]
    pub settled: Settled<Pod>,
}

impl Settle for PodObject {
    type Kept = Pod;

    fn settle(&mut self) {
        let (spec, status) = (self.spec.take(), self.status.take().unwrap_or_default());
        self.settled = settle_with::<Self, _>(&mut self.metadata, |meta| {
            // A finished pod (a completed Job) serves nothing, and its address may already be
            // another pod's: it is neither a destination nor an identity to sign.
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                return Ok(None);
            }
            let ip = status
                .pod_ip
                .as_deref()
                .map(|text| ipv4::<Self>(meta, text, "status.podIP"))
                .transpose()?;
            let spec = spec.unwrap_or_default();
            Ok(Some(Pod {
                enrollment_gate: spec
                    .readiness_gates
                    .iter()
                    .any(|g| g.condition_type == super::ENROLLED_CONDITION),
                namespace: namespace_of(meta).to_owned(),
                name: meta.name.clone().unwrap_or_default(),
                uid: meta.uid.take(),
                labels: labels(meta),
                annotations: weft_annotations(meta),
                node_name: spec.node_name,
                service_account: spec
                    .service_account_name
                    .unwrap_or_else(|| "default".into()),
                ip,
                host_network: spec.host_network,
            }))
        });
    }

    fn settled(&self) -> &Settled<Pod> {
        &self.settled
    }

    fn keep(kept: &Arc<Pod>, registry: &mut Registry) {
        registry.pods.push(Arc::clone(kept));
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortIn {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: Option<IntOrString>,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpecIn {
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<ServicePortIn>,
}

#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = core::Service)]
pub struct ServiceObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<Box<ServiceSpecIn>>,
    #[serde(skip)]
    pub settled: Settled<Service>,
}

impl Settle for ServiceObject {
    type Kept = Service;

    fn settle(&mut self) {
        let spec = self.spec.take();
        self.settled = settle_with::<Self, _>(&mut self.metadata, |meta| {
            let spec = spec.ok_or_else(|| reject::<Self>(meta, Problem::Missing("spec")))?;
            let cluster_ip = match spec.cluster_ip.as_deref() {
                None | Some("None" | "") => None,
                Some(text) => Some(ipv4::<Self>(meta, text, "spec.clusterIP")?),
            };
            let ports = spec
                .ports
                .into_iter()
                .map(|p| {
                    let target_port = match p.target_port {
                        None => Some(p.port),
                        Some(IntOrString::Int(n)) => Some(u16::try_from(n).map_err(|_| {
                            reject::<Self>(meta, Problem::BadTargetPort(n.to_string()))
                        })?),
                        // A named targetPort is resolved through the EndpointSlice's port names.
                        Some(IntOrString::String(_)) => None,
                    };
                    Ok(ServicePort {
                        name: p.name.unwrap_or_default(),
                        port: p.port,
                        target_port,
                        app_protocol: p.app_protocol,
                    })
                })
                .collect::<Result<_, Rejection>>()?;
            Ok(Some(Service {
                namespace: namespace_of(meta).to_owned(),
                name: meta.name.clone().unwrap_or_default(),
                labels: labels(meta),
                annotations: weft_annotations(meta),
                cluster_ip,
                ports,
            }))
        });
    }

    fn settled(&self) -> &Settled<Service> {
        &self.settled
    }

    fn keep(kept: &Arc<Service>, registry: &mut Registry) {
        registry.services.push(Arc::clone(kept));
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct EndpointIn {
    pub addresses: Vec<String>,
    pub conditions: Option<EndpointConditions>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct EndpointPortIn {
    pub name: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, Deserialize, Resource)]
#[resource(inherit = discovery::EndpointSlice)]
pub struct EndpointSliceObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub endpoints: Vec<EndpointIn>,
    #[serde(default)]
    pub ports: Vec<EndpointPortIn>,
    #[serde(skip)]
    pub settled: Settled<EndpointSlice>,
}

impl Settle for EndpointSliceObject {
    type Kept = EndpointSlice;

    fn settle(&mut self) {
        let (endpoints, ports) = (
            std::mem::take(&mut self.endpoints),
            std::mem::take(&mut self.ports),
        );
        self.settled = settle_with::<Self, _>(&mut self.metadata, |meta| {
            let service_name = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
                .cloned()
                .ok_or_else(|| {
                    reject::<Self>(meta, Problem::Missing("label kubernetes.io/service-name"))
                })?;
            let endpoints = endpoints
                .into_iter()
                .map(|e| {
                    let addresses = e
                        .addresses
                        .iter()
                        .map(|a| ipv4::<Self>(meta, a, "endpoint address"))
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
            Ok(Some(EndpointSlice {
                namespace: namespace_of(meta).to_owned(),
                name: meta.name.clone().unwrap_or_default(),
                service_name,
                endpoints,
                ports,
            }))
        });
    }

    fn settled(&self) -> &Settled<EndpointSlice> {
        &self.settled
    }

    fn keep(kept: &Arc<EndpointSlice>, registry: &mut Registry) {
        registry.endpoint_slices.push(Arc::clone(kept));
    }
}
