//! Which Services go through a waypoint, and where that waypoint's pods are (SPEC,
//! Waypoints): `weft.io/use-waypoint: <name>` on a Service or its namespace (`none` on a
//! Service opts it out of its namespace's), and waypoint pods found by the Gateway API label
//! `gateway.networking.k8s.io/gateway-name`, never captured by the agent: they speak HBONE
//! themselves.

use std::net::Ipv4Addr;

use super::{Pod, Registry, Service};

/// Label or annotation naming the waypoint a Service's traffic goes through.
pub const USE_WAYPOINT: &str = "weft.io/use-waypoint";
/// The label a waypoint's pods carry, naming their Gateway.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// The `gatewayClassName` of a waypoint's Gateway.
pub const WAYPOINT_CLASS: &str = "weft-waypoint";

/// A waypoint by its Gateway: `namespace/name`, and its identity's service account (`name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether `pod` is a waypoint's (its traffic is its own HBONE, never captured).
pub fn is_waypoint_pod(pod: &Pod) -> bool {
    pod.labels.contains_key(GATEWAY_NAME)
}

impl Registry {
    /// The waypoint `service`'s traffic goes through, if any.
    pub fn waypoint_for(&self, service: &Service) -> Option<WaypointRef> {
        let own = service
            .labels
            .get(USE_WAYPOINT)
            .or_else(|| service.annotations.get(USE_WAYPOINT));
        let name = match own {
            Some("none") => return None,
            Some(name) => name,
            None => self
                .namespaces
                .get(&service.namespace)
                .and_then(|ns| ns.labels.get(USE_WAYPOINT))
                .filter(|name| *name != "none")?,
        };
        Some(WaypointRef {
            namespace: service.namespace.clone(),
            name: name.to_owned(),
        })
    }

    /// The addresses of `waypoint`'s pods that have one.
    pub fn waypoint_pods(&self, waypoint: &WaypointRef) -> Vec<Ipv4Addr> {
        self.pods
            .iter()
            .filter(|p| {
                p.namespace == waypoint.namespace
                    && p.labels.get(GATEWAY_NAME) == Some(waypoint.name.as_str())
                    && !p.host_network
            })
            .filter_map(|p| p.ip)
            .collect()
    }

    /// Of `services` (names in `namespace`), those whose waypoint is `client`: a connection
    /// from it carries requests it has already authorized against the policies that target
    /// those Services.
    pub fn served_by_waypoint(
        &self,
        namespace: &str,
        services: &[String],
        client: &crate::identity::SpiffeId,
    ) -> Vec<String> {
        services
            .iter()
            .filter(|name| {
                self.service(namespace, name)
                    .and_then(|s| self.waypoint_for(s))
                    .is_some_and(|w| {
                        w.namespace == client.namespace && w.name == client.service_account
                    })
            })
            .cloned()
            .collect()
    }

    /// Where `policy` is enforced: `agent` (the destination pods' node agents) and
    /// `waypoint NS/NAME` for each waypoint whose Gateway it targets or that serves a Service
    /// it targets; a waypoint-served Service's policy is also the agent's for connections that
    /// bypass the waypoint.
    pub fn enforcement(&self, policy: &crate::policy::Policy) -> Vec<String> {
        let mut places: Vec<String> = Vec::new();
        let mut add = |place: String| {
            if !places.contains(&place) {
                places.push(place);
            }
        };
        if policy.spec.target_refs.is_empty() {
            add("agent".into());
        }
        for target in &policy.spec.target_refs {
            match target.kind.as_str() {
                "Gateway" => add(format!("waypoint {}/{}", policy.namespace, target.name)),
                "Service" => {
                    if let Some(waypoint) = self
                        .service(&policy.namespace, &target.name)
                        .and_then(|s| self.waypoint_for(s))
                    {
                        add(format!("waypoint {waypoint}"));
                    }
                    add("agent".into());
                }
                _ => {}
            }
        }
        places
    }

    /// The Service named `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .map(AsRef::as_ref)
            .find(|s| s.namespace == namespace && s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(yaml: &str) -> Registry {
        Registry::from_objects(
            yaml.split("\n---\n")
                .map(|d| ("test".to_owned(), serde_yaml::from_str(d).expect("yaml"))),
        )
    }

    const OBJECTS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    weft.io/mesh: enabled\n    weft.io/use-waypoint: wp\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: inherits\n  namespace: demo\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: opted-out\n  namespace: demo\n  labels:\n    weft.io/use-waypoint: none\nspec:\n  clusterIP: 10.96.0.2\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: other\n  namespace: demo\n  labels:\n    weft.io/use-waypoint: special\nspec:\n  clusterIP: 10.96.0.3\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: wp-0\n  namespace: demo\n  labels:\n    gateway.networking.k8s.io/gateway-name: wp\nspec:\n  nodeName: n\n  serviceAccountName: wp\nstatus:\n  podIP: 10.244.1.50\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: demo\nspec:\n  nodeName: n\nstatus:\n  podIP: 10.244.1.51\n";

    #[test]
    fn a_service_inherits_its_namespaces_waypoint_unless_it_names_its_own_or_none() {
        let r = registry(OBJECTS);
        let of = |name: &str| {
            r.waypoint_for(r.service("demo", name).expect("service"))
                .map(|w| w.to_string())
        };
        assert_eq!(of("inherits").as_deref(), Some("demo/wp"));
        assert_eq!(of("opted-out"), None);
        assert_eq!(of("other").as_deref(), Some("demo/special"));
        let wp = WaypointRef {
            namespace: "demo".into(),
            name: "wp".into(),
        };
        assert_eq!(r.waypoint_pods(&wp), [Ipv4Addr::new(10, 244, 1, 50)]);
    }

    #[test]
    fn waypoint_pods_are_never_captured() {
        let r = registry(OBJECTS);
        let captured: Vec<&str> = r.enrolled_pods_on("n").map(|p| p.name.as_str()).collect();
        assert_eq!(captured, ["app"]);
    }
}
