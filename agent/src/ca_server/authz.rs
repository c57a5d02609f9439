//! Who may have which SVID: the caller proves it is a Weft agent with its service-account token
//! (TokenReview), the token names the node its pod runs on, and the CA signs only identities of
//! pods scheduled on that node, from its own watch of the cluster's pods.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::Pod,
};
use kube::{
    api::PostParams,
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, ResourceExt as _,
};

use weft_mesh::identity::SpiffeId;

/// The node a bound service-account token was issued for (Kubernetes 1.30 and later).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Why a signing request was refused; the text goes back to the agent and into the CA's log.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("no bearer token: send the agent's projected service-account token")]
    NoToken,
    #[error("the token was not accepted by the API server{0}")]
    Unauthenticated(String),
    #[error("{0} is not the Weft agent's service account ({1}), nor a waypoint's asking for its own identity")]
    NotAgent(String, String),
    #[error("no waypoint pod of service account {namespace}/{service_account} (label gateway.networking.k8s.io/gateway-name: {service_account}) runs on node {node}")]
    NotWaypoint {
        node: String,
        namespace: String,
        service_account: String,
    },
    #[error("the token names no node (needs a pod-bound projected token, Kubernetes 1.30+)")]
    NoNode,
    #[error("trust domain of {0} is not {1}")]
    TrustDomain(String, String),
    #[error("no pod of service account {namespace}/{service_account} runs on node {node}")]
    NoPodOnNode {
        node: String,
        namespace: String,
        service_account: String,
    },
    #[error("TokenReview failed: {0}")]
    Review(String),
    #[error("the CA has not listed the cluster's pods yet")]
    NotSynced,
}

/// What the index keeps of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEntry {
    node: String,
    namespace: String,
    service_account: String,
    /// A waypoint's pod: labelled with its Gateway's name, which is its service account.
    waypoint: bool,
}

/// Pods by name, with only the fields authorization reads.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_pod: HashMap<String, PodEntry>,
    synced: bool,
}

impl PodIndex {
    /// Whether the first listing has completed.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn has(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.by_pod.values().any(|p| {
            p.node == node && p.namespace == namespace && p.service_account == service_account
        })
    }

    /// Whether a waypoint pod of `namespace/service_account` runs on `node`.
    pub fn has_waypoint(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.by_pod.values().any(|p| {
            p.waypoint
                && p.node == node
                && p.namespace == namespace
                && p.service_account == service_account
        })
    }

    fn key(pod: &Pod) -> String {
        format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
    }

    /// What the index keeps of a pod; `None` for a pod that gives no right to an identity:
    /// not scheduled yet, or finished (a completed Job's service account is not on the node
    /// any more).
    fn entry(pod: &Pod) -> Option<(String, PodEntry)> {
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| matches!(phase, "Succeeded" | "Failed"));
        if finished {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        let node = spec.node_name.clone()?;
        let namespace = pod.namespace()?;
        let service_account = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let waypoint = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(weft_mesh::registry::waypoints::GATEWAY_NAME))
            .is_some_and(|gateway| *gateway == service_account);
        Some((
            Self::key(pod),
            PodEntry {
                node,
                namespace,
                service_account,
                waypoint,
            },
        ))
    }
}

/// Watches every pod (resuming from its resourceVersion, with backoff) into `index`.
pub fn watch_pods(client: Client, index: Arc<Mutex<PodIndex>>) {
    tokio::spawn(async move {
        let mut config = watcher::Config::default().any_semantic();
        // Unpaged, so resourceVersion=0 is sent and the API server answers from its watch
        // cache (a paged list bypasses it and reads etcd).
        config.page_size = None;
        let mut events = watcher(Api::<Pod>::all(client), config)
            .default_backoff()
            .boxed();
        let mut relist: HashMap<String, PodEntry> = HashMap::new();
        while let Some(event) = events.next().await {
            let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
            match event {
                Ok(watcher::Event::Init) => relist.clear(),
                Ok(watcher::Event::InitApply(pod)) => relist.extend(PodIndex::entry(&pod)),
                Ok(watcher::Event::InitDone) => {
                    index.by_pod = std::mem::take(&mut relist);
                    index.synced = true;
                }
                Ok(watcher::Event::Apply(pod)) => match PodIndex::entry(&pod) {
                    Some((key, entry)) => {
                        index.by_pod.insert(key, entry);
                    }
                    None => {
                        index.by_pod.remove(&PodIndex::key(&pod));
                    }
                },
                Ok(watcher::Event::Delete(pod)) => {
                    index.by_pod.remove(&PodIndex::key(&pod));
                }
                Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying with backoff"),
            }
        }
    });
}

/// The checks in order; `Ok` means the caller may have an SVID for `requested`.
#[derive(Clone)]
pub struct Authorizer {
    pub client: Client,
    pub pods: Arc<Mutex<PodIndex>>,
    pub trust_domain: String,
    /// `namespace/name` of the agents' service account.
    pub agent_service_account: String,
    pub audience: String,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("trust_domain", &self.trust_domain)
            .field("agent_service_account", &self.agent_service_account)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    pub async fn authorize(
        &self,
        token: Option<&str>,
        requested: &SpiffeId,
    ) -> Result<String, Denied> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Denied::NoToken)?;
        if requested.trust_domain != self.trust_domain {
            return Err(Denied::TrustDomain(
                requested.to_string(),
                self.trust_domain.clone(),
            ));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied::Review(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(Denied::Unauthenticated(why));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (ns, name) = self
            .agent_service_account
            .split_once('/')
            .unwrap_or(("weft-system", "weft-agent"));
        // An agent asks for the pods of its node; a waypoint (its own pod-bound token) only
        // for its own identity, checked below against the waypoint pods on its node.
        let is_agent = username == format!("system:serviceaccount:{ns}:{name}");
        let is_own = username
            == format!(
                "system:serviceaccount:{}:{}",
                requested.namespace, requested.service_account
            );
        if !is_agent && !is_own {
            return Err(Denied::NotAgent(
                username,
                self.agent_service_account.clone(),
            ));
        }
        let node = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_EXTRA))
            .and_then(|values| values.first())
            .cloned()
            .ok_or(Denied::NoNode)?;
        let pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        if !pods.synced {
            return Err(Denied::NotSynced);
        }
        if !is_agent {
            if !pods.has_waypoint(&node, &requested.namespace, &requested.service_account) {
                return Err(Denied::NotWaypoint {
                    node,
                    namespace: requested.namespace.clone(),
                    service_account: requested.service_account.clone(),
                });
            }
            return Ok(node);
        }
        if !pods.has(&node, &requested.namespace, &requested.service_account) {
            return Err(Denied::NoPodOnNode {
                node,
                namespace: requested.namespace.clone(),
                service_account: requested.service_account.clone(),
            });
        }
        Ok(node)
    }
}
