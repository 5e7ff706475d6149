//! r3s-agent: the node agent (kubelet's role, plus the service proxy and node-local DNS).
//!
//! Entry point for embedding: [`run_node`] with [`NodeOptions`] and a `kube::Client` (the server
//! runs it in-process; the standalone binary after [`join`]ing a server).
//!
//! Module map: [`node`] (registration, heartbeats, preflight, `run_node`), [`pods`] (pod manager
//! and per-pod workers), [`proxy`] (the service proxy: Services → one nftables table), [`dns`]
//! (cluster DNS on every node), [`runtime`] (the only module linking libcontainer: containers, CRI
//! logs, cgroup cleanup, streaming exec), [`kubelet`] (the kubelet API the API server calls for
//! logs, exec, attach and port-forward), [`layout`] (directories), [`restart`] (design for surviving agent
//! restarts), [`join`] (token, CA check, node password, client certificate),
//! [`cli`]/[`config`]/[`run`] (the standalone binary), [`images_cli`] (the operator's
//! `r3s-agent images ...` commands).

pub mod cli;
pub mod config;
#[cfg(target_os = "linux")]
pub mod dns;
pub mod images_cli;
pub mod join;
#[cfg(target_os = "linux")]
pub mod kubelet;
pub mod layout;
#[cfg(target_os = "linux")]
pub mod node;
#[cfg(target_os = "linux")]
pub mod pods;
#[cfg(target_os = "linux")]
pub mod proxy;
pub mod restart;
pub mod run;
#[cfg(target_os = "linux")]
pub mod runtime;

#[cfg(target_os = "linux")]
pub use node::{AgentError, NodeOptions, run_node};
