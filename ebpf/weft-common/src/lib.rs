//! Types and constants shared by Weft's kernel programs and the agent: map keys and values,
//! well-known ports and counter slots. Everything here is `#[repr(C)]` with explicit padding so
//! both sides agree byte for byte.
#![no_std]
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]
#![cfg_attr(feature = "user", deny(unsafe_code))]

/// Agent listener for captured outbound connections (in each enrolled pod's netns, on loopback).
pub const OUTBOUND_PORT: u16 = 15001;
/// Agent listener for captured plaintext inbound connections (in each pod's netns, on loopback).
pub const INBOUND_PORT: u16 = 15006;
/// Agent HBONE listener (in each pod's netns, on the pod IP).
pub const HBONE_PORT: u16 = 15008;

/// Most ports an operator may exclude from capture; the kernel array has this many slots.
pub const MAX_EXCLUDED_PORTS: u32 = 64;

/// The destination a captured outbound connection originally dialed, keyed by [`OrigDstKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv4 address in network byte order, as the kernel stores it.
    pub ip_be: u32,
    /// Port in host byte order.
    pub port: u16,
    /// Zero; makes the layout explicit.
    pub pad: u16,
}

/// Identifies one captured connection from the agent's side: the pod's network namespace and
/// the client's ephemeral port (the client side of a captured socket is always 127.0.0.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDstKey {
    pub netns_cookie: u64,
    /// Port in host byte order.
    pub src_port: u16,
    /// Zero; makes the layout explicit.
    pub pad: [u8; 6],
}

/// An agent's own delivery connection into a pod, from the client's address: `sk_lookup`
/// lets these SYNs through to the application instead of capturing them again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    /// The client address the agent's socket is bound to, network byte order.
    pub client_ip_be: u32,
    /// The agent socket's port, host byte order.
    pub client_port: u16,
    /// The application port being dialed, host byte order.
    pub app_port: u16,
}

/// Per enrolled pod settings, keyed by the pod's network-namespace cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodConfig {
    /// The pod's IPv4 address in network byte order.
    pub pod_ip_be: u32,
    /// Bit set of `POD_FLAG_*`.
    pub flags: u32,
}

/// The agent holds listeners for this pod; without it, capture fails closed.
pub const POD_FLAG_ENROLLED: u32 = 1;

/// Slots of the per-CPU counter array the programs increment, read by the agent for metrics.
pub mod counter {
    /// Outbound connect redirected to the agent.
    pub const OUTBOUND_REDIRECTED: u32 = 0;
    /// Outbound connect left alone (loopback, own pod, excluded port, agent port).
    pub const OUTBOUND_EXEMPTED: u32 = 1;
    /// Inbound SYN steered to the agent's inbound listener.
    pub const INBOUND_REDIRECTED: u32 = 2;
    /// Inbound SYN left alone (loopback, agent ports, not our pod address).
    pub const INBOUND_EXEMPTED: u32 = 3;
    /// Inbound SYN dropped because the agent's listener is gone (fail closed).
    pub const INBOUND_NO_LISTENER: u32 = 4;
    /// IPv6 connection refused: capture covers IPv4 only.
    pub const IPV6_REFUSED: u32 = 5;
    /// Map update failed; the connection was refused rather than bypassing the agent.
    pub const MAP_ERRORS: u32 = 6;
    /// Connections seen by the harness probe program.
    pub const PROBE_SEEN: u32 = 7;
    /// Connections refused by the harness probe program.
    pub const PROBE_DENIED: u32 = 8;
    /// Number of slots.
    pub const COUNT: u32 = 9;

    /// Slot names, as exported in metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "outbound_redirected",
        "outbound_exempted",
        "inbound_redirected",
        "inbound_exempted",
        "inbound_no_listener",
        "ipv6_refused",
        "map_errors",
        "probe_seen",
        "probe_denied",
    ];
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding; every bit pattern is valid.
    #[expect(
        unsafe_code,
        reason = "aya::Pod is an unsafe marker trait for map values"
    )]
    mod impls {
        unsafe impl aya::Pod for super::super::OrigDst {}
        unsafe impl aya::Pod for super::super::OrigDstKey {}
        unsafe impl aya::Pod for super::super::PodConfig {}
        unsafe impl aya::Pod for super::super::DeliveryKey {}
    }
}
