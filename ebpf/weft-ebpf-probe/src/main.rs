//! The harness probe: a cgroup connect4 program that counts connects per cgroup and refuses
//! listed ports, so the harness test proves toolchain, loader, verifier and the pods' cgroups
//! end to end on the real kernel.
//!
//! It lives in its own crate, and so its own object, because it is test-only: the object the
//! agent embeds (`weft-ebpf`) carries the capture programs and nothing else, and `cargo xtask
//! build` fails if it ever carries more.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::bpf_get_current_cgroup_id,
    macros::{cgroup_sock_addr, map},
    maps::HashMap,
    programs::SockAddrContext,
};

/// Ports whose connect is refused in the cgroups the probe is attached to (host byte order).
/// Not pinned: the harness test owns the object and its maps go with it.
#[map]
static PROBE_DENY_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(16, 0);

/// Connects seen per cgroup id. The probe keeps no counter array of its own: a failed update
/// shows as a count the harness test does not expect.
#[map]
static PROBE_SEEN_BY_CGROUP: HashMap<u64, u64> = HashMap::with_max_entries(64, 0);

/// Counts connects from the cgroup it is attached to and refuses listed ports.
#[cgroup_sock_addr(connect4)]
pub fn weft_probe_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands sock_addr programs a valid context.
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let port = u16::from_be(sa.user_port as u16);
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: read-only copy of the value.
    let seen = unsafe { PROBE_SEEN_BY_CGROUP.get(&cgroup).copied().unwrap_or(0) };
    // A failed update is seen by the test as a wrong count; the connect is decided regardless.
    let _ = PROBE_SEEN_BY_CGROUP.insert(&cgroup, &(seen + 1), 0);
    // SAFETY: presence check only.
    if unsafe { PROBE_DENY_PORTS.get(&port).is_some() } {
        return 0;
    }
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
