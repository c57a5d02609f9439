//! The routing half of capture, inside each enrolled pod's netns. Policy rules make every TCP
//! packet the pod originates locally delivered, so its SYN meets `weft_sk_lookup` whatever the
//! destination; marks let the agent's own sockets out, and let the replies of the agent's
//! transparent deliveries come back to it. Routing only: no iptables, nothing per packet. The
//! rules and routes are changed over a netlink socket opened inside the pod's netns.

use std::{fmt, io, net::Ipv4Addr, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange},
    AddressFamily, IpProtocol, RouteNetlinkMessage,
};
use nix::errno::Errno;

use crate::netns::Netns;

/// Mark on the agent's delivery sockets (from the client's address into the pod). With
/// `tcp_fwmark_accept` the application's accepted socket inherits it, so its replies to that
/// foreign address are routed back to the agent over `lo`.
pub const DELIVERY_MARK: u32 = 0x5746;
/// Mark on the agent's outbound sockets in the pod: they use the pod's normal routes.
pub const EGRESS_MARK: u32 = 0x5747;
/// Table holding `local default dev lo`.
const TABLE: u32 = 22342;
/// `RT_TABLE_MAIN`.
const MAIN: u32 = 254;
/// The kernel gives every namespace's loopback this index (`LOOPBACK_IFINDEX`), so `lo` needs
/// no lookup.
const LOOPBACK_IFINDEX: u32 = 1;
/// Rule preferences this module owns (lower runs first; `local` is 0, `main` 32766).
const PREF_DELIVERY: u16 = 100;
const PREF_EGRESS: u16 = 101;
const PREF_EXCLUDED: u16 = 102;
const PREF_CAPTURE: u16 = 110;
/// The kernel answers a route or rule request at once; a reply this late means something is
/// wrong, and enrollment must not hang on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn address_family(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// What a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    FwMark(u32),
    /// TCP the pod sends (`iif lo ipproto tcp`).
    PodTcp,
    /// TCP the pod sends from or to one port (`iif lo ipproto tcp sport|dport PORT`).
    PodTcpPort {
        source: bool,
        port: u16,
    },
}

/// One policy-routing rule of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub pref: u16,
    pub selector: Selector,
    pub table: u32,
}

impl fmt::Display for Rule {
    /// As `ip rule` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule pref {}", self.family, self.pref)?;
        match self.selector {
            Selector::FwMark(mark) => write!(f, " fwmark {mark:#x}")?,
            Selector::PodTcp => f.write_str(" iif lo ipproto tcp")?,
            Selector::PodTcpPort { source, port } => {
                let side = if source { "sport" } else { "dport" };
                write!(f, " iif lo ipproto tcp {side} {port}")?;
            }
        }
        match self.table {
            MAIN => f.write_str(" lookup main"),
            table => write!(f, " lookup {table}"),
        }
    }
}

/// One netlink request, as the error names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `local default dev lo table 22342`, with `src` on IPv4.
    AddLocalRoute(Family, Option<Ipv4Addr>),
    AddRule(Rule),
    DeleteRule(Rule),
    ListRules(Family),
    DeleteRules(Family, u16),
    DeleteLocalRoute(Family),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddLocalRoute(family, src) => {
                write!(
                    f,
                    "adding {family} route local default dev lo table {TABLE}"
                )?;
                match src {
                    Some(src) => write!(f, " src {src}"),
                    None => Ok(()),
                }
            }
            Self::AddRule(rule) => write!(f, "adding {rule}"),
            Self::DeleteRule(rule) => write!(f, "deleting {rule}"),
            Self::ListRules(family) => write!(f, "listing {family} rules"),
            Self::DeleteRules(family, pref) => write!(f, "deleting {family} rules pref {pref}"),
            Self::DeleteLocalRoute(family) => {
                write!(f, "deleting {family} route local default table {TABLE}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("opening a netlink socket in the pod's netns: {0}")]
    Socket(#[source] io::Error),
    #[error("turning on net.ipv4.tcp_fwmark_accept in the pod's netns: {0}")]
    Sysctl(#[source] io::Error),
    #[error("{change} in the pod's netns: the kernel refused: {errno}")]
    Refused { change: Change, errno: Errno },
    #[error("{change} in the pod's netns: no answer over netlink: {source}")]
    Exchange {
        change: Change,
        #[source]
        source: io::Error,
    },
}

/// A route netlink socket of one pod's netns. Requests go one at a time, each acknowledged
/// before the next, so an error names the change the kernel refused.
struct Rtnl {
    socket: netlink_sys::Socket,
    sequence: u32,
    reply: Vec<u8>,
}

impl Rtnl {
    fn open(ns: &Netns) -> Result<Self, RoutingError> {
        // A netlink socket acts on the namespace it was created in, wherever it is used next.
        let socket = ns
            .enter(|| netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE))
            .and_then(|created| created)
            .map_err(RoutingError::Socket)?;
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs().cast_signed(), 0),
        )
        .map_err(|e| RoutingError::Socket(e.into()))?;
        Ok(Self {
            socket,
            sequence: 0,
            reply: Vec::with_capacity(8192),
        })
    }

    /// Sends one request under the next sequence number; the change comes back for the
    /// errors of its answer.
    fn send(
        &mut self,
        change: Change,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Change, RoutingError> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let kernel = netlink_sys::SocketAddr::new(0, 0);
        match self.socket.send_to(&bytes, &kernel, 0) {
            Ok(_) => Ok(change),
            Err(source) => Err(RoutingError::Exchange { change, source }),
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(
        &mut self,
        change: Change,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), RoutingError> {
        let change = self.send(change, message, NLM_F_ACK | flags)?;
        // Only this socket's own requests are answered on it, one at a time: anything else
        // (a stale answer) is skipped, a bounded number of times.
        for _ in 0..16 {
            self.reply.clear();
            if let Err(source) = self.socket.recv(&mut self.reply, 0) {
                return Err(RoutingError::Exchange { change, source });
            }
            let answer = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.reply) {
                Ok(answer) => answer,
                Err(e) => {
                    return Err(RoutingError::Exchange {
                        change,
                        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                    })
                }
            };
            if answer.header.sequence_number != self.sequence {
                continue;
            }
            if let NetlinkPayload::Error(error) = answer.payload {
                return match error.code {
                    None => Ok(()),
                    Some(code) => Err(RoutingError::Refused {
                        change,
                        errno: Errno::from_raw(-code.get()),
                    }),
                };
            }
        }
        Err(RoutingError::Exchange {
            change,
            source: io::Error::new(io::ErrorKind::InvalidData, "no acknowledgement"),
        })
    }

    fn local_route(family: Family, src: Option<Ipv4Addr>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = family.address_family();
        route.header.destination_prefix_length = 0;
        route.header.kind = RouteType::Local;
        route.header.scope = RouteScope::Host;
        route.header.protocol = RouteProtocol::Boot;
        // The header's table field is a byte: larger tables go in the attribute.
        route.attributes.push(RouteAttribute::Table(TABLE));
        route.attributes.push(RouteAttribute::Oif(LOOPBACK_IFINDEX));
        if let Some(src) = src {
            route
                .attributes
                .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
        }
        route
    }

    /// `route replace local default dev lo table 22342 [src SRC]`.
    fn replace_local_route(
        &mut self,
        family: Family,
        src: Option<Ipv4Addr>,
    ) -> Result<(), RoutingError> {
        let route = Self::local_route(family, src);
        self.request(
            Change::AddLocalRoute(family, src),
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    fn delete_local_route(&mut self, family: Family) -> Result<(), RoutingError> {
        let mut route = RouteMessage::default();
        route.header.address_family = family.address_family();
        // Scope "nowhere" and no type, protocol or device: whatever default route the table
        // holds matches.
        route.header.scope = RouteScope::NoWhere;
        route.attributes.push(RouteAttribute::Table(TABLE));
        self.request(
            Change::DeleteLocalRoute(family),
            RouteNetlinkMessage::DelRoute(route),
            0,
        )
    }

    /// `rule add`, where the same rule already there counts as added: an agent taking over
    /// from another finds its rules in place, and must not open a moment without them.
    fn add_rule(&mut self, rule: Rule) -> Result<(), RoutingError> {
        match self.request(
            Change::AddRule(rule),
            RouteNetlinkMessage::NewRule(Self::rule_message(rule)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(RoutingError::Refused {
                errno: Errno::EEXIST,
                ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Deletes exactly `rule` (the kernel matches on every attribute the request names).
    fn delete_exact(&mut self, rule: Rule) -> Result<(), RoutingError> {
        self.request(
            Change::DeleteRule(rule),
            RouteNetlinkMessage::DelRule(Self::rule_message(rule)),
            0,
        )
    }

    /// The excluded-port rules of `family` now in the netns (`ip rule show pref 102`).
    fn excluded_rules(&mut self, family: Family) -> Result<Vec<Rule>, RoutingError> {
        let mut query = RuleMessage::default();
        query.header.family = family.address_family();
        let change = self.send(
            Change::ListRules(family),
            RouteNetlinkMessage::GetRule(query),
            NLM_F_DUMP,
        )?;
        let mut found = Vec::new();
        // A pod netns holds a handful of rules; the bound stops a kernel that kept sending.
        for _ in 0..64 {
            self.reply.clear();
            if let Err(source) = self.socket.recv(&mut self.reply, 0) {
                return Err(RoutingError::Exchange { change, source });
            }
            let mut offset = 0;
            while offset < self.reply.len() {
                let message =
                    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.reply[offset..])
                    {
                        Ok(message) => message,
                        Err(e) => {
                            return Err(RoutingError::Exchange {
                                change,
                                source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                            })
                        }
                    };
                let length = usize::try_from(message.header.length).unwrap_or(usize::MAX);
                offset = offset.saturating_add(length.max(16).next_multiple_of(4));
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(error) => {
                        return Err(RoutingError::Refused {
                            change,
                            errno: Errno::from_raw(-error.code.map_or(0, std::num::NonZero::get)),
                        })
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRule(rule)) => {
                        found.extend(Self::excluded_rule(family, &rule));
                    }
                    _ => {}
                }
            }
        }
        Err(RoutingError::Exchange {
            change,
            source: io::Error::new(io::ErrorKind::InvalidData, "the rule dump did not end"),
        })
    }

    /// `message` as one of this module's excluded-port rules, if it is one: preference 102,
    /// `iif lo`, TCP, one port, to `main`. Anything else at that preference is not ours.
    fn excluded_rule(family: Family, message: &RuleMessage) -> Option<Rule> {
        let (mut pref, mut port, mut table) = (None, None, u32::from(message.header.table));
        let (mut from_lo, mut tcp) = (false, false);
        for attribute in &message.attributes {
            match attribute {
                RuleAttribute::Priority(p) => pref = Some(*p),
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Iifname(name) => from_lo = name == "lo",
                RuleAttribute::IpProtocol(IpProtocol::Tcp) => tcp = true,
                RuleAttribute::SourcePortRange(r) if r.start == r.end => {
                    port = Some((true, r.start));
                }
                RuleAttribute::DestinationPortRange(r) if r.start == r.end => {
                    port = Some((false, r.start));
                }
                _ => {}
            }
        }
        let (source, port) = port?;
        let ours = pref == Some(u32::from(PREF_EXCLUDED))
            && from_lo
            && tcp
            && table == MAIN
            && message.header.action == RuleAction::ToTable;
        ours.then_some(Rule {
            family,
            pref: PREF_EXCLUDED,
            selector: Selector::PodTcpPort { source, port },
            table: MAIN,
        })
    }

    fn rule_message(rule: Rule) -> RuleMessage {
        let mut message = RuleMessage::default();
        message.header.family = rule.family.address_family();
        message.header.action = RuleAction::ToTable;
        let attributes = &mut message.attributes;
        attributes.push(RuleAttribute::Priority(rule.pref.into()));
        match rule.selector {
            Selector::FwMark(mark) => attributes.push(RuleAttribute::FwMark(mark)),
            Selector::PodTcp => {
                attributes.push(RuleAttribute::Iifname("lo".into()));
                attributes.push(RuleAttribute::IpProtocol(IpProtocol::Tcp));
            }
            Selector::PodTcpPort { source, port } => {
                attributes.push(RuleAttribute::Iifname("lo".into()));
                attributes.push(RuleAttribute::IpProtocol(IpProtocol::Tcp));
                let range = RulePortRange {
                    start: port,
                    end: port,
                };
                attributes.push(if source {
                    RuleAttribute::SourcePortRange(range)
                } else {
                    RuleAttribute::DestinationPortRange(range)
                });
            }
        }
        // As `ip rule` does: a table below 256 in the header, any other in the attribute.
        match u8::try_from(rule.table) {
            Ok(table) => message.header.table = table,
            Err(_) => attributes.push(RuleAttribute::Table(rule.table)),
        }
        message
    }

    /// Deletes one rule of this preference (the kernel matches on what the request names).
    fn delete_rule(&mut self, family: Family, pref: u16) -> Result<(), RoutingError> {
        let mut message = RuleMessage::default();
        message.header.family = family.address_family();
        message
            .attributes
            .push(RuleAttribute::Priority(pref.into()));
        self.request(
            Change::DeleteRules(family, pref),
            RouteNetlinkMessage::DelRule(message),
            0,
        )
    }
}

/// Installs (or refreshes) the capture rules. IPv6 gets the same catch-all so its TCP meets
/// the program and is refused; a pod without IPv6 simply skips that part. Blocking (netlink
/// round trips, a sysctl write): call from a blocking context.
///
/// It converges on what is there instead of starting over: an agent taking over capture from
/// another finds the rules in place, and removing them first opened a moment in which the
/// pod's packets, those of its established connections included, took its normal routes (a
/// reset, a stall, or "Network is unreachable" for a Service address, seen in the upgrade
/// tests). The route is replaced in one step, present rules count as added, and only
/// excluded-port rules no longer wanted are removed, after the wanted ones are in.
pub fn install(ns: &Netns, pod_ip: Ipv4Addr, excluded_ports: &[u16]) -> Result<(), RoutingError> {
    let mut rtnl = Rtnl::open(ns)?;
    ns.write_sysctl("net.ipv4.tcp_fwmark_accept", "1")
        .map_err(RoutingError::Sysctl)?;
    install_family(&mut rtnl, Family::V4, Some(pod_ip), excluded_ports)?;
    if let Err(e) = install_family(&mut rtnl, Family::V6, None, excluded_ports) {
        tracing::info!(netns = %ns.path().display(), error = %e, "no IPv6 capture rules (IPv6 unavailable in the pod?)");
    }
    Ok(())
}

fn install_family(
    rtnl: &mut Rtnl,
    family: Family,
    pod_ip: Option<Ipv4Addr>,
    excluded_ports: &[u16],
) -> Result<(), RoutingError> {
    // Without `src`, a local route would make the destination its own source address.
    rtnl.replace_local_route(family, pod_ip)?;
    let rule = |pref, selector, table| Rule {
        family,
        pref,
        selector,
        table,
    };
    if pod_ip.is_some() {
        rtnl.add_rule(rule(PREF_DELIVERY, Selector::FwMark(DELIVERY_MARK), TABLE))?;
    }
    rtnl.add_rule(rule(PREF_EGRESS, Selector::FwMark(EGRESS_MARK), MAIN))?;
    // Excluded ports bypass capture both as destinations (the pod dials them) and as sources
    // (the pod serves them directly and replies from them). `iif lo` keeps these rules to
    // packets the pod sends: without it, port selectors also took part in routing received
    // packets and broke the replies of the HBONE listener (seen in
    // `excluded_ports_bypass_capture_in_both_directions`).
    let mut wanted = Vec::new();
    for &port in excluded_ports {
        for source in [false, true] {
            let excluded = rule(PREF_EXCLUDED, Selector::PodTcpPort { source, port }, MAIN);
            rtnl.add_rule(excluded)?;
            wanted.push(excluded);
        }
    }
    rtnl.add_rule(rule(PREF_CAPTURE, Selector::PodTcp, TABLE))?;
    for stale in rtnl
        .excluded_rules(family)?
        .into_iter()
        .filter(|r| !wanted.contains(r))
    {
        match rtnl.delete_exact(stale) {
            // Gone already (another agent's install raced this one): what was wanted.
            Ok(())
            | Err(RoutingError::Refused {
                errno: Errno::ENOENT,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes every rule and route `install` made; the pod's direct path is back. Best effort.
/// Blocking (netlink round trips): call from a blocking context.
pub fn remove(ns: &Netns) {
    match Rtnl::open(ns) {
        Ok(mut rtnl) => remove_with(&mut rtnl),
        Err(e) => {
            tracing::warn!(netns = %ns.path().display(), error = %e, "cannot remove capture routing");
        }
    }
}

fn remove_with(rtnl: &mut Rtnl) {
    for family in [Family::V4, Family::V6] {
        for pref in [PREF_DELIVERY, PREF_EGRESS, PREF_EXCLUDED, PREF_CAPTURE] {
            // Several rules may share a preference (excluded ports): delete until none is left.
            for _ in 0..256 {
                if rtnl.delete_rule(family, pref).is_err() {
                    break;
                }
            }
        }
        // `install` puts only the default route in this table; the bound guards against a
        // kernel that kept acknowledging.
        for _ in 0..16 {
            if rtnl.delete_local_route(family).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_rule_as_ip_would_and_the_errno() {
        let rule = Rule {
            family: Family::V4,
            pref: PREF_EXCLUDED,
            selector: Selector::PodTcpPort {
                source: false,
                port: 9000,
            },
            table: MAIN,
        };
        let error = RoutingError::Refused {
            change: Change::AddRule(rule),
            errno: Errno::EEXIST,
        };
        assert_eq!(
            error.to_string(),
            "adding IPv4 rule pref 102 iif lo ipproto tcp dport 9000 lookup main in the pod's netns: the kernel refused: EEXIST: File exists"
        );
        let route = Change::AddLocalRoute(Family::V4, Some(Ipv4Addr::new(10, 244, 1, 10)));
        assert_eq!(
            route.to_string(),
            "adding IPv4 route local default dev lo table 22342 src 10.244.1.10"
        );
    }
}
