//! The routing half of capture, inside each enrolled pod's netns. Policy rules make every TCP
//! packet the pod originates locally delivered, so its SYN meets `weft_sk_lookup` whatever the
//! destination; marks let the agent's own sockets out, and let the replies of the agent's
//! transparent deliveries come back to it. Routing only: no iptables, nothing per packet.

use std::net::Ipv4Addr;

use crate::netns::Netns;

/// Mark on the agent's delivery sockets (from the client's address into the pod). With
/// `tcp_fwmark_accept` the application's accepted socket inherits it, so its replies to that
/// foreign address are routed back to the agent over `lo`.
pub const DELIVERY_MARK: u32 = 0x5746;
/// Mark on the agent's outbound sockets in the pod: they use the pod's normal routes.
pub const EGRESS_MARK: u32 = 0x5747;
/// Table holding `local default dev lo`.
const TABLE: &str = "22342";
/// Rule preferences this module owns (lower runs first; `local` is 0, `main` 32766).
const PREF_DELIVERY: u16 = 100;
const PREF_EGRESS: u16 = 101;
const PREF_EXCLUDED: u16 = 102;
const PREF_CAPTURE: u16 = 110;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("running ip in the pod's netns: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("`ip {args}` in the pod's netns failed: {stderr}")]
    Ip { args: String, stderr: String },
}

fn ip(ns: &Netns, args: &[&str]) -> Result<(), RoutingError> {
    let out = ns.run("ip", args)?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(RoutingError::Ip {
            args: args.join(" "),
            stderr,
        })
    }
}

/// Runs `ip <family> <command…>`, the command given as one space-separated string.
fn ip_words(ns: &Netns, family: &str, command: &str) -> Result<(), RoutingError> {
    let mut args = vec![family];
    args.extend(command.split_whitespace());
    ip(ns, &args)
}

/// Installs (or refreshes) the capture rules. IPv6 gets the same catch-all so its TCP meets
/// the program and is refused; a pod without IPv6 simply skips that part.
pub fn install(ns: &Netns, pod_ip: Ipv4Addr, excluded_ports: &[u16]) -> Result<(), RoutingError> {
    remove(ns);
    ns.write_sysctl("net.ipv4.tcp_fwmark_accept", "1")?;
    install_family(ns, "-4", Some(pod_ip), excluded_ports)?;
    if let Err(e) = install_family(ns, "-6", None, excluded_ports) {
        tracing::info!(netns = %ns.path().display(), error = %e, "no IPv6 capture rules (IPv6 unavailable in the pod?)");
    }
    Ok(())
}

fn install_family(
    ns: &Netns,
    family: &str,
    pod_ip: Option<Ipv4Addr>,
    excluded_ports: &[u16],
) -> Result<(), RoutingError> {
    // Without `src`, a local route would make the destination its own source address.
    let route = match pod_ip {
        Some(ip) => format!("route replace local 0.0.0.0/0 dev lo table {TABLE} src {ip}"),
        None => format!("route replace local ::/0 dev lo table {TABLE}"),
    };
    ip_words(ns, family, &route)?;
    if pod_ip.is_some() {
        ip_words(
            ns,
            family,
            &format!("rule add pref {PREF_DELIVERY} fwmark {DELIVERY_MARK} lookup {TABLE}"),
        )?;
    }
    ip_words(
        ns,
        family,
        &format!("rule add pref {PREF_EGRESS} fwmark {EGRESS_MARK} lookup main"),
    )?;
    // Excluded ports bypass capture both as destinations (the pod dials them) and as sources
    // (the pod serves them directly and replies from them). `iif lo` keeps these rules to
    // packets the pod sends: without it, port selectors also took part in routing received
    // packets and broke the replies of the HBONE listener (seen in
    // `excluded_ports_bypass_capture_in_both_directions`).
    for port in excluded_ports {
        for side in ["dport", "sport"] {
            ip_words(
                ns,
                family,
                &format!(
                    "rule add pref {PREF_EXCLUDED} iif lo ipproto tcp {side} {port} lookup main"
                ),
            )?;
        }
    }
    ip_words(
        ns,
        family,
        &format!("rule add pref {PREF_CAPTURE} iif lo ipproto tcp lookup {TABLE}"),
    )
}

/// Removes every rule and route `install` made; the pod's direct path is back. Best effort.
pub fn remove(ns: &Netns) {
    for family in ["-4", "-6"] {
        for pref in [PREF_DELIVERY, PREF_EGRESS, PREF_EXCLUDED, PREF_CAPTURE] {
            // Several rules may share a preference (excluded ports): delete until none is left.
            for _ in 0..256 {
                if ip_words(ns, family, &format!("rule del pref {pref}")).is_err() {
                    break;
                }
            }
        }
        let _ = ip_words(ns, family, &format!("route flush table {TABLE}"));
    }
}
