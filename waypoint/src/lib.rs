//! `weft-waypoint`: the L7 proxy of the Services that use it. It accepts HBONE tunnels whose
//! `:authority` is one of those Services' VIP:port, serves HTTP inside them, routes each request
//! by the Services' Gateway API routes, and sends it on through HBONE to a backend endpoint
//! under its own identity.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod attempts;
pub mod authz;
pub mod config;
pub mod forward;
pub mod jwks;
pub mod metrics;
pub mod mirror;
pub mod protocol;
pub mod resilience;
pub mod rewrite;
pub mod route_check;
pub mod route_status;
pub mod routing;
pub mod telemetry;
pub mod trace;
pub mod tunnels;
pub mod upgrade;
pub mod upstream;
