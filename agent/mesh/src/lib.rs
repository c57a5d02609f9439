//! Weft's mesh core: everything the node agent and the waypoint both run. Identity and the CA
//! client, HBONE (server, client, pool), the registry and policy, telemetry (connections,
//! flows, metrics, access log), the admin server's plumbing, and the serve/accept/drain
//! helpers every listener goes through. Nothing here loads eBPF or knows about capture: the
//! agent plugs its pod network namespaces in through [`socket::SocketFactory`] and
//! [`hbone::server::Tunnels`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod connections;
pub mod copy;
pub mod drain;
pub mod flows;
pub mod hbone;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod ports;
pub mod registry;
pub mod ring;
pub mod route;
pub mod serve;
pub mod socket;
pub mod trace;
