//! weftctl, Weft's inspection CLI, as a library: the command line ([`cli`], [`cli_parse`]),
//! the admin API client ([`client`]), playground node lookup ([`playground`]) and the tables
//! ([`render`]). The binary in `main.rs` wires them; the library form lets the fuzz target and
//! unit tests reach each part without a terminal or an agent.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cli_parse;
pub mod client;
pub mod explain;
pub mod graph;
pub mod graph_cmd;
pub mod playground;
pub mod render;
pub mod waypoint;
pub mod waypoint_render;
