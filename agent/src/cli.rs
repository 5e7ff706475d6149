//! The `r3s-agent` command line: every flag, its `R3S_*` environment variable and its default.
//!
//! Names, short forms and defaults follow k3s's `agent` command with `r3s` for `k3s`: `--server`
//! takes `R3S_URL`, `--token` `R3S_TOKEN`, `--token-file` `R3S_TOKEN_FILE`, `--node-name`
//! `R3S_NODE_NAME`, `--config` `R3S_CONFIG_FILE`, `--debug` `R3S_DEBUG`; flags k3s gives no variable
//! get `R3S_<FLAG_NAME>`. Every flag can also be a key of the config file (see `r3s_config::resolve`).
//! Nothing is `required` here, so that a value from the environment or the file can satisfy it;
//! [`crate::config::AgentConfig`] checks what must be present.
//!
//! Subcommands (k3s's `check-config`, and `images ...` in [`crate::images_cli`]) are recognised in
//! `main` before this parse, so the root flags stay the run command's flags; the images commands
//! resolve their `--data-dir`/`--private-registry` through this same struct (same env and file).

use std::path::PathBuf;

use clap::Parser;
use r3s_config::{DnsName, KubeletArg, Label, NodeIp, Taint};

use crate::config::ServerUrl;

/// r3s agent: the node agent that runs pods for an r3s server.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "r3s-agent",
    version,
    about,
    max_term_width = 100,
    after_help = "Commands (instead of running the agent):\n  \
        check-config                   check that this host can run pods\n  \
        images pull|list|rm|import     manage this node's images (see `r3s-agent images --help`)"
)]
pub struct Cli {
    /// Load configuration from FILE (keys are flag names; FILE.d/*.yaml drop-ins are read too)
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "R3S_CONFIG_FILE",
        default_value = "/etc/r3s/config.yaml"
    )]
    pub config: PathBuf,

    /// Turn on debug logs (RUST_LOG overrides)
    #[arg(long, env = "R3S_DEBUG")]
    pub debug: bool,

    /// Server to connect to (https://host:port), required
    #[arg(long, short = 's', value_name = "URL", env = "R3S_URL")]
    pub server: Option<ServerUrl>,

    /// Token to use for authentication
    #[arg(long, short = 't', env = "R3S_TOKEN")]
    pub token: Option<String>,

    /// File containing the token
    #[arg(long, value_name = "FILE", env = "R3S_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Folder to hold state
    #[arg(
        long,
        short = 'd',
        value_name = "DIR",
        env = "R3S_DATA_DIR",
        default_value = "/var/lib/r3s"
    )]
    pub data_dir: PathBuf,

    /// Node name (default: the host name)
    #[arg(long, value_name = "NAME", env = "R3S_NODE_NAME")]
    pub node_name: Option<DnsName>,

    /// IP address to advertise for the node
    #[arg(long, short = 'i', value_name = "IP", env = "R3S_NODE_IP")]
    pub node_ip: Option<NodeIp>,

    /// External IP address to advertise for the node
    #[arg(long, value_name = "IP", env = "R3S_NODE_EXTERNAL_IP")]
    pub node_external_ip: Option<NodeIp>,

    /// Register the node with this label, key=value (repeatable, or comma-separated)
    #[arg(
        long,
        value_name = "LABEL",
        env = "R3S_NODE_LABEL",
        value_delimiter = ','
    )]
    pub node_label: Vec<Label>,

    /// Register the node with this taint, key=value:Effect (repeatable, or comma-separated)
    #[arg(
        long,
        value_name = "TAINT",
        env = "R3S_NODE_TAINT",
        value_delimiter = ','
    )]
    pub node_taint: Vec<Taint>,

    /// kubelet setting, key=value (repeatable): sync-frequency (how often configMap and secret
    /// volumes are refreshed, default 1m) or max-pods (default 110)
    #[arg(long, value_name = "ARG")]
    pub kubelet_arg: Vec<KubeletArg>,

    /// Private registry configuration file (mirrors and credentials)
    #[arg(
        long,
        value_name = "FILE",
        env = "R3S_PRIVATE_REGISTRY",
        default_value = "/etc/r3s/registries.yaml"
    )]
    pub private_registry: PathBuf,

    /// Append a unique suffix to the node name, kept under the data dir (for cloned SD cards
    /// whose host names clash)
    #[arg(long, env = "R3S_WITH_NODE_ID")]
    pub with_node_id: bool,

    /// How pods on different nodes reach each other: vxlan, or none (no overlay)
    #[arg(
        long,
        value_name = "BACKEND",
        env = "R3S_FLANNEL_BACKEND",
        default_value = "vxlan",
        value_parser = ["vxlan", "none"]
    )]
    pub flannel_backend: String,

    /// Interface whose IPv4 address carries the VXLAN overlay (default: the node IP's)
    #[arg(long, value_name = "IFACE", env = "R3S_FLANNEL_IFACE")]
    pub flannel_iface: Option<String>,

    /// Do not run the service proxy (ClusterIP/NodePort rules) on this node
    #[arg(long, env = "R3S_DISABLE_KUBE_PROXY")]
    pub disable_kube_proxy: bool,
}
