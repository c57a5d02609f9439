//! Weft's kernel programs: transparent capture of enrolled pods' TCP traffic (cgroup connect4,
//! sockops, getpeername4 and connect6 on the pod's cgroup; sk_lookup in the pod's netns) and the
//! harness probe that proves the toolchain end to end.
//!
//! Every program here acts only inside a pod the agent enrolled: cgroup programs are attached to
//! the pod's own cgroup, and sk_lookup to the pod's own network namespace. Nothing is attached to
//! the node's root netns or root cgroup, so a CNI's programs there are never touched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_sock_addr, bpf_sock_ops, sk_action},
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map, sk_lookup, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext},
    EbpfContext as _,
};
use weft_common::{
    counter, DeliveryKey, OrigDst, OrigDstKey, PodConfig, HBONE_PORT, INBOUND_PORT,
    MAX_EXCLUDED_PORTS, OUTBOUND_PORT, POD_FLAG_ENROLLED,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
const SOCK_STREAM: u32 = 1;
const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const LOCALHOST_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// Pending captured connections; LRU so a crashed agent can never fill it for good.
const ORIG_DST_ENTRIES: u32 = 65_536;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

/// Enrolled pods by network-namespace cookie.
#[map]
static PODS: HashMap<u64, PodConfig> = HashMap::pinned(4096, 0);

/// Original destination by socket cookie, written at connect and read by sockops/getpeername.
#[map]
static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(ORIG_DST_ENTRIES, 0);

/// Original destination by (netns, client port): what the agent reads after accept.
#[map]
static ORIG_DST: LruHashMap<OrigDstKey, OrigDst> = LruHashMap::pinned(ORIG_DST_ENTRIES, 0);

/// Ports never captured, in either direction (host byte order).
#[map]
static EXCLUDED_PORTS: HashMap<u16, u8> = HashMap::pinned(MAX_EXCLUDED_PORTS, 0);

/// The agent's delivery connections in flight (see [`DeliveryKey`]).
#[map]
static DELIVERIES: HashMap<DeliveryKey, u8> = HashMap::pinned(ORIG_DST_ENTRIES, 0);

/// The agent's inbound listener for each enrolled pod, keyed by the pod IP (network order).
#[map]
static INBOUND_LISTENERS: SockHash<u32> = SockHash::pinned(4096, 0);

/// Probe: ports whose connect is refused in the cgroups the probe is attached to.
#[map]
static PROBE_DENY_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(16, 0);

/// Probe: connects seen per cgroup id.
#[map]
static PROBE_SEEN_BY_CGROUP: HashMap<u64, u64> = HashMap::with_max_entries(64, 0);

#[inline(always)]
fn count(slot: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, so no other CPU writes it concurrently.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn is_excluded(port: u16) -> bool {
    // SAFETY: the value is only read for presence.
    unsafe { EXCLUDED_PORTS.get(&port).is_some() }
}

#[inline(always)]
fn is_loopback_be(ip_be: u32) -> bool {
    // The first octet of a network-order address is the lowest byte on little endian.
    ip_be.to_le_bytes()[0] == 127
}

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Harness probe: counts connects from the cgroup it is attached to and refuses listed ports.
#[cgroup_sock_addr(connect4)]
pub fn weft_probe_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the pointer comes from the map and is only used here.
    let seen = unsafe { PROBE_SEEN_BY_CGROUP.get(&cgroup).copied().unwrap_or(0) };
    if PROBE_SEEN_BY_CGROUP
        .insert(&cgroup, &(seen + 1), 0)
        .is_err()
    {
        count(counter::MAP_ERRORS);
    }
    count(counter::PROBE_SEEN);
    // SAFETY: presence check only.
    if unsafe { PROBE_DENY_PORTS.get(&port).is_some() } {
        count(counter::PROBE_DENIED);
        return REFUSE;
    }
    ALLOW
}

/// Outbound capture: send an enrolled pod's TCP connect to the agent's listener in the pod's own
/// netns, remembering where it was going.
#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid, writable context.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: read-only copy of the value.
    let Some(pod) = (unsafe { PODS.get(&netns).copied() }) else {
        return ALLOW;
    };
    let dst_ip_be = sa.user_ip4;
    let dst_port = u16::from_be(sa.user_port as u16);
    if pod.flags & POD_FLAG_ENROLLED == 0
        || is_loopback_be(dst_ip_be)
        || dst_ip_be == pod.pod_ip_be
        || dst_ip_be == 0
        || is_excluded(dst_port)
    {
        count(counter::OUTBOUND_EXEMPTED);
        return ALLOW;
    }
    // SAFETY: valid context pointer for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst {
        ip_be: dst_ip_be,
        port: dst_port,
        pad: 0,
    };
    if ORIG_DST_BY_COOKIE.insert(&cookie, &orig, 0).is_err() {
        // Refuse rather than let the connection bypass the agent.
        count(counter::MAP_ERRORS);
        return REFUSE;
    }
    sa.user_ip4 = LOCALHOST_BE;
    sa.user_port = u32::from(OUTBOUND_PORT.to_be());
    count(counter::OUTBOUND_REDIRECTED);
    ALLOW
}

/// IPv4 only for now: an enrolled pod's IPv6 TCP connect is refused (counted), never let past
/// the agent in plaintext.
#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: presence check only.
    if unsafe { PODS.get(&netns).is_none() } {
        return ALLOW;
    }
    let ip = sa.user_ip6;
    let loopback = ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 1u32.to_be();
    if loopback || is_excluded(u16::from_be(sa.user_port as u16)) {
        return ALLOW;
    }
    count(counter::IPV6_REFUSED);
    REFUSE
}

/// Records, once the client port is chosen, the original destination under (netns, port): the
/// key the agent can compute from the socket it accepted.
#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB || ctx.family() != AF_INET {
        return 1;
    }
    // SAFETY: valid context pointer for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only copy of the value.
    let Some(orig) = (unsafe { ORIG_DST_BY_COOKIE.get(&cookie).copied() }) else {
        return 1;
    };
    // SAFETY: valid context pointer for this helper.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let ops: &bpf_sock_ops = unsafe { &*ctx.ops };
    let key = OrigDstKey {
        netns_cookie: netns,
        src_port: ops.local_port as u16,
        pad: [0; 6],
    };
    if ORIG_DST.insert(&key, &orig, 0).is_err() {
        count(counter::MAP_ERRORS);
    }
    1
}

/// The client keeps seeing the address it dialed, not the agent's listener.
#[cgroup_sock_addr(getpeername4)]
pub fn weft_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid, writable context.
    let sa: &mut bpf_sock_addr = unsafe { &mut *ctx.sock_addr };
    if sa.user_ip4 != LOCALHOST_BE || u16::from_be(sa.user_port as u16) != OUTBOUND_PORT {
        return ALLOW;
    }
    // SAFETY: valid context pointer for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only copy of the value.
    if let Some(orig) = unsafe { ORIG_DST_BY_COOKIE.get(&cookie).copied() } {
        sa.user_ip4 = orig.ip_be;
        sa.user_port = u32::from(orig.port.to_be());
    }
    ALLOW
}

/// Inbound capture: a TCP SYN that arrives at an enrolled pod from the network goes to the
/// agent's inbound listener in that pod's netns. Fails closed when that listener is gone.
#[sk_lookup]
pub fn weft_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands sk_lookup programs a valid context.
    let lookup = unsafe { &*ctx.lookup };
    // Traffic to 127.0.0.0/8 stays inside the pod. (ingress_ifindex cannot tell a pod's own
    // connections to its pod IP apart: the kernel reports the address's device, not lo.)
    if lookup.protocol != IPPROTO_TCP
        || (lookup.family == AF_INET && is_loopback_be(lookup.local_ip4))
    {
        count(counter::INBOUND_EXEMPTED);
        return sk_action::SK_PASS;
    }
    if lookup.family == AF_INET6 {
        let ip = lookup.local_ip6;
        if ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 1u32.to_be() {
            return sk_action::SK_PASS;
        }
        count(counter::IPV6_REFUSED);
        return sk_action::SK_DROP;
    }
    if lookup.family != AF_INET {
        return sk_action::SK_PASS;
    }
    let port = lookup.local_port as u16;
    if port == HBONE_PORT || is_excluded(port) {
        count(counter::INBOUND_EXEMPTED);
        return sk_action::SK_PASS;
    }
    let delivery = DeliveryKey {
        client_ip_be: lookup.remote_ip4,
        client_port: u16::from_be(lookup.remote_port),
        app_port: port,
    };
    // SAFETY: presence check only.
    if unsafe { DELIVERIES.get(&delivery).is_some() } {
        count(counter::INBOUND_EXEMPTED);
        return sk_action::SK_PASS;
    }
    if port == OUTBOUND_PORT || port == INBOUND_PORT {
        // Capture listeners are never reachable from the network: no open relay.
        return sk_action::SK_DROP;
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(&ctx, lookup.local_ip4, 0) {
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
