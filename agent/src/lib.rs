//! The Weft node agent: captures enrolled pods' TCP traffic with eBPF and carries it between
//! nodes. `main` builds a [`config::Config`] and hands it to [`app::build`].

pub mod app;
pub mod capture;
pub mod config;
