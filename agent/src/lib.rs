//! The Weft node agent: captures enrolled pods' TCP traffic with eBPF and carries it between
//! nodes. `main` builds a [`config::Config`] and hands it to [`app::run`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod ca_server;
pub mod capture;
pub mod cli_parse;
pub mod conditions;
pub mod config;
pub mod connections;
pub mod drain;
pub mod enrollment;
#[cfg(any(test, feature = "testing"))]
pub mod fake_api;
pub mod flows;
pub mod hbone;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod netns;
pub mod podns;
pub mod policy;
pub mod proxy;
pub mod registry;
