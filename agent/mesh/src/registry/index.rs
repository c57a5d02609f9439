//! The lookups the data path makes on every connection, built once per snapshot: pods by
//! address and by name, Services by VIP:port, EndpointSlices per Service, the slices an address
//! appears in, the TrafficPolicy of each Service and the AuthorizationPolicies of each
//! namespace. Each lookup is one hash probe or one binary search, whatever the cluster's size.
//!
//! The name indexes hold a hash of `namespace/name` and a position, not copies of the names:
//! at 10,000 pods, string keys cost megabytes the registry otherwise does not spend. Every
//! candidate a hash finds is checked against the object itself, so a collision (the hasher is
//! keyed per process) yields one more candidate to check, never a wrong answer.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash as _, Hasher as _, RandomState},
    net::{Ipv4Addr, SocketAddrV4},
};

use super::Registry;

#[derive(Clone, Debug, Default)]
pub(super) struct Indexes {
    hasher: RandomState,
    pub pods_by_ip: HashMap<Ipv4Addr, u32>,
    /// (hash of namespace/name, pod), sorted.
    pods_by_name: Vec<(u64, u32)>,
    /// VIP:port → (Service, port of that Service).
    pub services_by_vip: HashMap<SocketAddrV4, (u32, u32)>,
    /// (hash of the Service's namespace/name, slice), sorted.
    slices_by_service: Vec<(u64, u32)>,
    /// (endpoint address, slice), sorted.
    slices_by_address: Vec<(Ipv4Addr, u32)>,
    /// (hash of the Service's namespace/name, TrafficPolicy), sorted; the first per Service
    /// by namespace and name applies.
    traffic_by_service: Vec<(u64, u32)>,
    pub policies_by_namespace: HashMap<String, Vec<u32>>,
}

/// Positions fit in `u32`: the registry is bounded far below 4 billion objects.
fn position(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// The positions `sorted` holds for `key`.
fn all_of<K: Ord + Copy>(sorted: &[(K, u32)], key: K) -> impl Iterator<Item = usize> + '_ {
    let start = sorted.partition_point(|(k, _)| *k < key);
    sorted[start..]
        .iter()
        .take_while(move |(k, _)| *k == key)
        .map(|&(_, i)| i as usize)
}

impl Indexes {
    pub fn name_hash(&self, namespace: &str, name: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        namespace.hash(&mut hasher);
        name.hash(&mut hasher);
        hasher.finish()
    }

    /// Builds every index over `registry`'s (already sorted) lists.
    pub fn build(registry: &Registry) -> Self {
        let mut index = Self::default();
        // Reversed so that, should two pods claim one address, the first one listed wins. A
        // hostNetwork pod's address is its node's: looking it up must not find a mesh peer.
        for (i, pod) in registry.pods.iter().enumerate().rev() {
            if let (Some(ip), false) = (pod.ip, pod.host_network) {
                index.pods_by_ip.insert(ip, position(i));
            }
        }
        index.pods_by_name = registry
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (index.name_hash(&p.namespace, &p.name), position(i)))
            .collect();
        for (s, service) in registry.services.iter().enumerate().rev() {
            let Some(vip) = service.cluster_ip else {
                continue;
            };
            for (p, port) in service.ports.iter().enumerate().rev() {
                index.services_by_vip.insert(
                    SocketAddrV4::new(vip, port.port),
                    (position(s), position(p)),
                );
            }
        }
        for (i, slice) in registry.endpoint_slices.iter().enumerate() {
            let service = index.name_hash(&slice.namespace, &slice.service_name);
            index.slices_by_service.push((service, position(i)));
            for address in slice.endpoints.iter().flat_map(|e| &e.addresses) {
                index.slices_by_address.push((*address, position(i)));
            }
        }
        for (i, traffic) in registry.traffic_policies.iter().enumerate() {
            for service in &traffic.services {
                let key = index.name_hash(&traffic.namespace, service);
                index.traffic_by_service.push((key, position(i)));
            }
        }
        for (i, policy) in registry.policies.iter().enumerate() {
            index
                .policies_by_namespace
                .entry(policy.namespace.clone())
                .or_default()
                .push(position(i));
        }
        // Stable sorts keep list order among equal keys: "first listed wins" holds.
        index.pods_by_name.sort_by_key(|&(k, _)| k);
        index.slices_by_service.sort_by_key(|&(k, _)| k);
        index.slices_by_address.sort_by_key(|&(k, _)| k);
        index.traffic_by_service.sort_by_key(|&(k, _)| k);
        index.slices_by_address.dedup();
        index
    }

    pub fn pods_named(&self, namespace: &str, name: &str) -> impl Iterator<Item = usize> + '_ {
        all_of(&self.pods_by_name, self.name_hash(namespace, name))
    }

    pub fn slices_of(&self, namespace: &str, service: &str) -> impl Iterator<Item = usize> + '_ {
        all_of(&self.slices_by_service, self.name_hash(namespace, service))
    }

    pub fn slices_at(&self, address: Ipv4Addr) -> impl Iterator<Item = usize> + '_ {
        all_of(&self.slices_by_address, address)
    }

    pub fn traffic_of(&self, namespace: &str, service: &str) -> impl Iterator<Item = usize> + '_ {
        all_of(&self.traffic_by_service, self.name_hash(namespace, service))
    }
}
