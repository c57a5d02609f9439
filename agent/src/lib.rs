//! The Weft node agent: captures enrolled pods' TCP traffic with eBPF and carries it between
//! nodes. `main` builds a [`config::Config`] and hands it to [`app::run`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod ca_server;
pub mod capture;
pub mod conditions;
#[cfg(test)]
mod conditions_tests;
pub mod config;
pub mod enrollment;
pub mod netns;
pub mod podns;
pub mod proxy;
pub mod waypoint_controller;
#[cfg(test)]
mod waypoint_controller_tests;
