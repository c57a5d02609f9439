//! Types and constants shared by Weft's kernel programs and the agent: map keys and values,
//! well-known ports and counter slots. Everything here is `#[repr(C)]` with explicit padding so
//! both sides agree byte for byte.
#![no_std]
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]
#![cfg_attr(feature = "user", deny(unsafe_code))]

/// Agent listener for captured outbound connections (in each enrolled pod's netns, on loopback,
/// transparent so it can own connections to any destination).
pub const OUTBOUND_PORT: u16 = 15001;
/// Agent listener for captured plaintext inbound connections (in each pod's netns, on loopback).
pub const INBOUND_PORT: u16 = 15006;
/// Agent HBONE listener (in each pod's netns, on the pod IP).
pub const HBONE_PORT: u16 = 15008;

/// Most ports an operator may exclude from capture; the kernel array has this many slots.
pub const MAX_EXCLUDED_PORTS: u32 = 64;

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

/// Per enrolled pod settings, keyed by the pod's IPv4 address (network byte order).
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

/// Slots of the pinned `OWNER` array, written by user space only: which agent owns capture on
/// the node (see the agent's `capture::owner`).
pub mod owner {
    /// The generation of the agent that owns capture; each starting agent claims the next.
    pub const GENERATION: u32 = 0;
    /// The connections the owner carries, as it last published them (0 after a clean exit):
    /// what an agent that finds the owner dead reports as lost.
    pub const CARRIED: u32 = 1;
    /// The inode of the owner's network namespace: an agent it superseded hands its admin
    /// ports over only when they share one.
    pub const NETNS: u32 = 2;
    /// Number of slots.
    pub const COUNT: u32 = 3;
}

/// Slots of the per-CPU counter array the capture program increments, read by the agent for
/// metrics. A slot keeps its number: an agent adopts the array an older agent pinned and reads
/// its first `COUNT` slots, so slots are only appended or dropped from the end.
pub mod counter {
    /// Outbound SYN steered to the agent's outbound listener.
    pub const OUTBOUND_REDIRECTED: u32 = 0;
    /// Outbound SYN dropped because the agent's listener is gone (fail closed).
    pub const OUTBOUND_NO_LISTENER: u32 = 1;
    /// Inbound SYN steered to the agent's inbound listener.
    pub const INBOUND_REDIRECTED: u32 = 2;
    /// Inbound SYN left alone (HBONE, excluded port, the agent's own delivery).
    pub const INBOUND_EXEMPTED: u32 = 3;
    /// Inbound SYN dropped because the agent's listener is gone (fail closed).
    pub const INBOUND_NO_LISTENER: u32 = 4;
    /// IPv6 connection refused: capture covers IPv4 only.
    pub const IPV6_REFUSED: u32 = 5;
    /// A map update failed in a program. The capture program updates no map today; the slot
    /// stays so the layout and the exported metric do not change.
    pub const MAP_ERRORS: u32 = 6;
    /// Inbound HBONE SYN steered to the HBONE listener of the agent that owns capture.
    pub const HBONE_REDIRECTED: u32 = 7;
    /// Number of slots.
    pub const COUNT: u32 = 8;

    /// Slot names, as exported in metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "outbound_redirected",
        "outbound_no_listener",
        "inbound_redirected",
        "inbound_exempted",
        "inbound_no_listener",
        "ipv6_refused",
        "map_errors",
        "hbone_redirected",
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
        unsafe impl aya::Pod for super::super::PodConfig {}
        unsafe impl aya::Pod for super::super::DeliveryKey {}
    }
}
