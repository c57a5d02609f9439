//! Weft's kernel programs: transparent capture of enrolled pods' TCP traffic with one
//! `sk_lookup` program attached to each enrolled pod's network namespace. This object is what
//! the agent embeds, so it holds capture and nothing else; the harness's test-only probe is in
//! `ebpf/weft-ebpf-probe`.
//!
//! Capture needs the agent's routing rules in the pod's netns: they make every TCP packet the
//! pod originates locally delivered, so its SYN meets this program whatever its destination.
//! The program then picks the agent's outbound listener (for connections the pod makes) or its
//! inbound listener (for connections made to the pod). Nothing is attached in the node's root
//! netns, to the root cgroup or to any interface, so a CNI's programs are never touched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::sk_action,
    macros::{map, sk_lookup},
    maps::{Array, HashMap, PerCpuArray, SockHash},
    programs::SkLookupContext,
};
use weft_common::{
    counter, owner, DeliveryKey, PodConfig, HBONE_PORT, INBOUND_PORT, MAX_EXCLUDED_PORTS,
    OUTBOUND_PORT, POD_FLAG_ENROLLED,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const LOOPBACK_IFINDEX: u32 = 1;
const MAX_PODS: u32 = 4096;
const MAX_DELIVERIES: u32 = 65_536;
/// `bpf_sk_assign` flag: take the chosen socket itself, not a member of its `SO_REUSEPORT`
/// group. During an upgrade the old and the new agent's listeners share their ports, and only
/// the one in the map (the newest) may receive the SYN.
const NO_REUSEPORT: u64 = 2;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// Enrolled pods by IP (network order). Outlives the agent, so capture knows a pod is
/// enrolled (and fails closed) while its listeners are gone.
#[map]
static PODS: HashMap<u32, PodConfig> = HashMap::pinned(MAX_PODS, 0);

/// Ports never captured inbound (host byte order). Outbound exclusions are routing rules.
#[map]
static EXCLUDED_PORTS: HashMap<u16, u8> = HashMap::pinned(MAX_EXCLUDED_PORTS, 0);

/// The agent's delivery connections in flight (see [`DeliveryKey`]).
#[map]
static DELIVERIES: HashMap<DeliveryKey, u8> = HashMap::pinned(MAX_DELIVERIES, 0);

/// The agent's inbound listener of each enrolled pod, keyed by pod IP (network order).
#[map]
static INBOUND_LISTENERS: SockHash<u32> = SockHash::pinned(MAX_PODS, 0);

/// The agent's outbound listener of each enrolled pod, keyed by pod IP (network order).
#[map]
static OUTBOUND_LISTENERS: SockHash<u32> = SockHash::pinned(MAX_PODS, 0);

/// The agent's HBONE listener of each enrolled pod, keyed by pod IP (network order): a new
/// agent that replaces the entry receives every new tunnel from then on, while the old one's
/// listener (bound to the same port with `SO_REUSEPORT`) keeps what it accepted.
#[map]
static HBONE_LISTENERS: SockHash<u32> = SockHash::pinned(MAX_PODS, 0);

/// Which agent owns capture on this node (slots in `weft_common::owner`). The program never
/// reads it; it is pinned here so it lives and dies with the other pins, and an agent that
/// finds a newer generation than its own reconciles nothing (see the agent's
/// `capture::owner`).
#[map]
static OWNER: Array<u64> = Array::pinned(owner::COUNT, 0);

#[inline(always)]
fn count(slot: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, so no other CPU writes it concurrently.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn is_enrolled(ip_be: u32) -> bool {
    // SAFETY: read-only copy of the value.
    unsafe { PODS.get(&ip_be).copied() }.is_some_and(|p| p.flags & POD_FLAG_ENROLLED != 0)
}

#[inline(always)]
fn is_excluded(port: u16) -> bool {
    // SAFETY: presence check only.
    unsafe { EXCLUDED_PORTS.get(&port).is_some() }
}

#[inline(always)]
fn is_loopback_be(ip_be: u32) -> bool {
    // The first octet of a network-order address is the lowest byte on little endian.
    ip_be.to_le_bytes()[0] == 127
}

/// Steers an enrolled pod's TCP SYNs to the agent's listeners in the pod's netns. SK_DROP makes
/// the kernel answer RST: a pod whose agent is gone gets refused connections, never a bypass.
#[sk_lookup]
pub fn weft_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands sk_lookup programs a valid context.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.protocol != IPPROTO_TCP {
        return sk_action::SK_PASS;
    }
    if lookup.family == AF_INET6 {
        let ip = lookup.local_ip6;
        if ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 1u32.to_be() {
            return sk_action::SK_PASS;
        }
        // Capture is IPv4 only: refuse rather than let IPv6 around the agent.
        count(counter::IPV6_REFUSED);
        return sk_action::SK_DROP;
    }
    if lookup.family != AF_INET || is_loopback_be(lookup.local_ip4) {
        return sk_action::SK_PASS;
    }
    let local_port = lookup.local_port as u16;
    // The agent's catch-all route is `local default dev lo`, so a SYN the pod sent to a foreign
    // address reports lo as its device; one from the network reports the pod's interface.
    // (PODS is node-wide: the device, not the addresses, tells whose netns this is.)
    if lookup.ingress_ifindex == LOOPBACK_IFINDEX && is_enrolled(lookup.remote_ip4) {
        return match OUTBOUND_LISTENERS.redirect_sk_lookup(&ctx, lookup.remote_ip4, NO_REUSEPORT) {
            Ok(()) => {
                count(counter::OUTBOUND_REDIRECTED);
                sk_action::SK_PASS
            }
            Err(_) => {
                count(counter::OUTBOUND_NO_LISTENER);
                sk_action::SK_DROP
            }
        };
    }
    if is_enrolled(lookup.local_ip4) {
        let client_port = u16::from_be(lookup.remote_port);
        return inbound(
            &ctx,
            lookup.local_ip4,
            lookup.remote_ip4,
            client_port,
            local_port,
        );
    }
    sk_action::SK_PASS
}

#[inline(always)]
fn inbound(ctx: &SkLookupContext, pod_ip: u32, client_ip: u32, client_port: u16, port: u16) -> u32 {
    let delivery = DeliveryKey {
        client_ip_be: client_ip,
        client_port,
        app_port: port,
    };
    if port == HBONE_PORT {
        // Without an entry (the pod is being enrolled) the normal lookup finds the listener.
        if HBONE_LISTENERS
            .redirect_sk_lookup(ctx, pod_ip, NO_REUSEPORT)
            .is_ok()
        {
            count(counter::HBONE_REDIRECTED);
        } else {
            count(counter::INBOUND_EXEMPTED);
        }
        return sk_action::SK_PASS;
    }
    // SAFETY: presence check only.
    if unsafe { DELIVERIES.get(&delivery).is_some() } || is_excluded(port) {
        count(counter::INBOUND_EXEMPTED);
        return sk_action::SK_PASS;
    }
    if port == OUTBOUND_PORT || port == INBOUND_PORT {
        // Capture listeners are never reachable from the network: no open relay.
        return sk_action::SK_DROP;
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(ctx, pod_ip, NO_REUSEPORT) {
        Ok(()) => {
            count(counter::INBOUND_REDIRECTED);
            sk_action::SK_PASS
        }
        Err(_) => {
            count(counter::INBOUND_NO_LISTENER);
            sk_action::SK_DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
