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
        Err(RoutingError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Installs (or refreshes) the capture rules. IPv6 gets the same catch-all so its TCP meets
/// the program and is refused; a pod without IPv6 simply skips that part.
pub fn install(ns: &Netns, pod_ip: Ipv4Addr, excluded_ports: &[u16]) -> Result<(), RoutingError> {
    remove(ns);
    ns.write_sysctl("net.ipv4.tcp_fwmark_accept", "1")?;
    let delivery = DELIVERY_MARK.to_string();
    let egress = EGRESS_MARK.to_string();
    for family in ["-4", "-6"] {
        let result = (|| {
            // Without `src`, a local route would make the destination its own source address.
            let pod_ip = pod_ip.to_string();
            let route: &[&str] = if family == "-4" {
                &[
                    "-4",
                    "route",
                    "replace",
                    "local",
                    "0.0.0.0/0",
                    "dev",
                    "lo",
                    "table",
                    TABLE,
                    "src",
                    &pod_ip,
                ]
            } else {
                &[
                    "-6", "route", "replace", "local", "::/0", "dev", "lo", "table", TABLE,
                ]
            };
            ip(ns, route)?;
            if family == "-4" {
                ip(
                    ns,
                    &[
                        family,
                        "rule",
                        "add",
                        "pref",
                        &PREF_DELIVERY.to_string(),
                        "fwmark",
                        &delivery,
                        "lookup",
                        TABLE,
                    ],
                )?;
            }
            ip(
                ns,
                &[
                    family,
                    "rule",
                    "add",
                    "pref",
                    &PREF_EGRESS.to_string(),
                    "fwmark",
                    &egress,
                    "lookup",
                    "main",
                ],
            )?;
            // Excluded ports bypass capture both as destinations (the pod dials them) and as
            // sources (the pod serves them directly and replies from them).
            for port in excluded_ports {
                let port = port.to_string();
                for side in ["dport", "sport"] {
                    ip(
                        ns,
                        &[
                            family,
                            "rule",
                            "add",
                            "pref",
                            &PREF_EXCLUDED.to_string(),
                            "ipproto",
                            "tcp",
                            side,
                            &port,
                            "lookup",
                            "main",
                        ],
                    )?;
                }
            }
            ip(
                ns,
                &[
                    family,
                    "rule",
                    "add",
                    "pref",
                    &PREF_CAPTURE.to_string(),
                    "iif",
                    "lo",
                    "ipproto",
                    "tcp",
                    "lookup",
                    TABLE,
                ],
            )
        })();
        match (family, result) {
            (_, Ok(())) => {}
            ("-6", Err(e)) => {
                tracing::info!(netns = %ns.path().display(), error = %e, "no IPv6 capture rules (IPv6 unavailable in the pod?)")
            }
            (_, Err(e)) => return Err(e),
        }
    }
    Ok(())
}

/// Removes every rule and route `install` made; the pod's direct path is back. Best effort.
pub fn remove(ns: &Netns) {
    for family in ["-4", "-6"] {
        for pref in [PREF_DELIVERY, PREF_EGRESS, PREF_EXCLUDED, PREF_CAPTURE] {
            // Several rules may share a preference (excluded ports): delete until none is left.
            for _ in 0..256 {
                if ip(ns, &[family, "rule", "del", "pref", &pref.to_string()]).is_err() {
                    break;
                }
            }
        }
        let _ = ip(ns, &[family, "route", "flush", "table", TABLE]);
    }
}
