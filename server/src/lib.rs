//! r3s-server: the Kubernetes API server, its SQLite-backed store, the controllers and the scheduler.
//! See ARCHITECTURE.md for how the modules fit together.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod controllers;
pub mod cron;
pub mod join;
pub mod kubeconfig;
pub mod run;
pub mod scheduler;
pub mod store;
pub mod tls;
