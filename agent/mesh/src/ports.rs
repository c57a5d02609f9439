//! The ports a Weft proxy serves itself (SPEC), in one place so that both the capture path
//! and the HBONE server can refuse traffic that would loop back into the proxy.

pub use weft_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};

/// Admin API (127.0.0.1 only).
pub const ADMIN_PORT: u16 = 15000;
/// Prometheus metrics.
pub const METRICS_PORT: u16 = 15020;
/// Readiness and liveness.
pub const READINESS_PORT: u16 = 15021;

/// The ports the agent itself serves: capture 15001 and 15006, HBONE 15008, admin 15000,
/// metrics 15020, readiness 15021. A captured connection or a CONNECT to one of them at a
/// pod's address is refused: carried on, it would reach the agent again, and each round would
/// open another connection until file descriptors run out.
pub const AGENT_PORTS: [u16; 6] = [
    OUTBOUND_PORT,
    INBOUND_PORT,
    HBONE_PORT,
    ADMIN_PORT,
    METRICS_PORT,
    READINESS_PORT,
];
