//! Configuration shared by `r3s-server` and `r3s-agent`: the machinery that turns a clap command,
//! the `R3S_*` environment and `/etc/r3s/config.yaml` (plus `config.yaml.d/*.yaml` drop-ins) into
//! one parsed command, with k3s's precedence (flag, then environment, then file, then default);
//! the value types both commands validate with (CIDRs, labels, taints, port ranges, file modes,
//! DNS names, advertised addresses, the join token); logging set-up; and the one-line error exit.
//!
//! Boundary: this crate knows no flag of either binary. Each binary declares its flags with clap's
//! derive API and calls [`resolve()`]; the binary then builds its own validated configuration.

pub mod cidr;
pub mod dns;
pub mod exit;
pub mod file;
pub mod file_mode;
pub mod kubelet_arg;
pub mod label;
pub mod logging;
pub mod node_ip;
pub mod port_range;
pub mod resolve;
pub mod taint;
pub mod token;
pub mod user_agent;

pub use cidr::Ipv4Cidr;
pub use dns::{DnsName, Host};
pub use file_mode::FileMode;
pub use kubelet_arg::KubeletArg;
pub use label::Label;
pub use node_ip::NodeIp;
pub use port_range::PortRange;
pub use resolve::{ConfigError, Resolved, Source, Sources, resolve};
pub use taint::{Taint, TaintEffect};
pub use token::{TokenError, read_token};
