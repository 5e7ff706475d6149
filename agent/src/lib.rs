//! r3s-agent: the node agent (kubelet's role, plus the service proxy and node-local DNS).

pub mod cli;
pub mod config;
pub mod run;
