//! The lookups the data path makes on every connection, built once per snapshot: pods by
//! address and by name, Services by VIP:port, EndpointSlices per Service, the Services an
//! address backs, the TrafficPolicy of each Service and the AuthorizationPolicies of each
//! namespace. Every per-connection lookup is then one hash probe, whatever the cluster's size.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use super::Registry;

/// `(namespace, name)` of an object.
type Key = (String, String);

#[derive(Clone, Debug, Default)]
pub(super) struct Indexes {
    pub pods_by_ip: HashMap<Ipv4Addr, usize>,
    pub pods_by_name: HashMap<Key, usize>,
    /// VIP:port → (Service, port of that Service).
    pub services_by_vip: HashMap<SocketAddrV4, (usize, usize)>,
    pub slices_by_service: HashMap<Key, Vec<usize>>,
    /// (namespace, endpoint address) → names of the Services whose slices hold it.
    pub services_by_endpoint: HashMap<(String, Ipv4Addr), Vec<String>>,
    pub traffic_by_service: HashMap<Key, usize>,
    pub policies_by_namespace: HashMap<String, Vec<usize>>,
}

impl Indexes {
    /// Builds every index over `registry`'s (already sorted) lists.
    pub fn build(registry: &Registry) -> Self {
        let mut index = Self::default();
        // Reversed so that, should two pods claim one address or name, the first one listed
        // wins. A hostNetwork pod's address is its node's: looking it up must not find a mesh
        // peer.
        for (i, pod) in registry.pods.iter().enumerate().rev() {
            index
                .pods_by_name
                .insert((pod.namespace.clone(), pod.name.clone()), i);
            if let (Some(ip), false) = (pod.ip, pod.host_network) {
                index.pods_by_ip.insert(ip, i);
            }
        }
        for (s, service) in registry.services.iter().enumerate().rev() {
            let Some(vip) = service.cluster_ip else {
                continue;
            };
            for (p, port) in service.ports.iter().enumerate().rev() {
                index
                    .services_by_vip
                    .insert(SocketAddrV4::new(vip, port.port), (s, p));
            }
        }
        for (i, slice) in registry.endpoint_slices.iter().enumerate() {
            index
                .slices_by_service
                .entry((slice.namespace.clone(), slice.service_name.clone()))
                .or_default()
                .push(i);
            for address in slice.endpoints.iter().flat_map(|e| &e.addresses) {
                let names = index
                    .services_by_endpoint
                    .entry((slice.namespace.clone(), *address))
                    .or_default();
                if !names.contains(&slice.service_name) {
                    names.push(slice.service_name.clone());
                }
            }
        }
        // Sorted by namespace and name already: the first policy targeting a Service wins.
        for (i, traffic) in registry.traffic_policies.iter().enumerate().rev() {
            for service in &traffic.services {
                index
                    .traffic_by_service
                    .insert((traffic.namespace.clone(), service.clone()), i);
            }
        }
        for (i, policy) in registry.policies.iter().enumerate() {
            index
                .policies_by_namespace
                .entry(policy.namespace.clone())
                .or_default()
                .push(i);
        }
        index
    }
}
