//! The `r3s-server` command line: every flag, its `R3S_*` environment variable and its default.
//!
//! Names, short forms and defaults follow k3s's `server` command with `r3s` for `k3s`. Where k3s
//! gives a flag an environment variable (`--token` → `K3S_TOKEN`, `--write-kubeconfig` →
//! `K3S_KUBECONFIG_OUTPUT`, `--config` → `K3S_CONFIG_FILE`, ...) the same name with `R3S_` is
//! used; every other flag gets `R3S_<FLAG_NAME>` so that every flag has one. Every flag can also be
//! a key of the config file (see `r3s_config::resolve`).
//!
//! This struct only parses; [`crate::config::ServerConfig`] checks how the values fit together.
//! Only flags that do something are declared ("unimplemented flags are not advertised").
//!
//! Subcommands: k3s has `k3s server` plus `k3s token create|list|...` and so on. Here the root
//! command is the server itself; `r3s-server token ...` has its own parser
//! ([`crate::join::command::TokenCli`]), picked in `main` before these flags are parsed.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use r3s_config::{DnsName, FileMode, Host, Ipv4Cidr, KubeletArg, Label, NodeIp, PortRange, Taint};

use crate::config::DatastoreEndpoint;

/// r3s server: the Kubernetes API server on embedded SQLite, controllers and scheduler.
#[derive(Parser, Debug, Clone)]
#[command(name = "r3s-server", version, about, max_term_width = 100)]
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

    /// Folder to hold state
    #[arg(
        long,
        short = 'd',
        value_name = "DIR",
        env = "R3S_DATA_DIR",
        default_value = "/var/lib/r3s"
    )]
    pub data_dir: PathBuf,

    /// Address to listen on
    #[arg(
        long,
        value_name = "IP",
        env = "R3S_BIND_ADDRESS",
        default_value = "0.0.0.0"
    )]
    pub bind_address: IpAddr,

    /// HTTPS listen port
    #[arg(long, value_name = "PORT", env = "R3S_HTTPS_LISTEN_PORT", default_value_t = 6443,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub https_listen_port: u16,

    /// Address the API server advertises to the cluster (default: node-ip)
    #[arg(long, value_name = "IP", env = "R3S_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<NodeIp>,

    /// Extra host name or IP for the server certificate (repeatable, or comma-separated)
    #[arg(long, value_name = "HOST", env = "R3S_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<Host>,

    /// Shared secret used to join servers and agents to the cluster
    #[arg(long, short = 't', env = "R3S_TOKEN")]
    pub token: Option<String>,

    /// File containing the token
    #[arg(long, value_name = "FILE", env = "R3S_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Write the admin kubeconfig to this file
    #[arg(
        long,
        short = 'o',
        value_name = "FILE",
        env = "R3S_KUBECONFIG_OUTPUT",
        default_value = "/etc/r3s/r3s.yaml"
    )]
    pub write_kubeconfig: PathBuf,

    /// Write the kubeconfig with this mode (octal)
    #[arg(
        long,
        value_name = "MODE",
        env = "R3S_KUBECONFIG_MODE",
        default_value = "0600"
    )]
    pub write_kubeconfig_mode: FileMode,

    /// IPv4 network for pod IPs
    #[arg(
        long,
        value_name = "CIDR",
        env = "R3S_CLUSTER_CIDR",
        default_value = "10.42.0.0/16"
    )]
    pub cluster_cidr: Ipv4Cidr,

    /// IPv4 network for service IPs
    #[arg(
        long,
        value_name = "CIDR",
        env = "R3S_SERVICE_CIDR",
        default_value = "10.43.0.0/16"
    )]
    pub service_cidr: Ipv4Cidr,

    /// Cluster IP of the cluster DNS service (inside service-cidr)
    #[arg(
        long,
        value_name = "IP",
        env = "R3S_CLUSTER_DNS",
        default_value = "10.43.0.10"
    )]
    pub cluster_dns: std::net::Ipv4Addr,

    /// Cluster domain
    #[arg(
        long,
        value_name = "DOMAIN",
        env = "R3S_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: DnsName,

    /// Port range reserved for NodePort services
    #[arg(
        long,
        value_name = "RANGE",
        env = "R3S_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: PortRange,

    /// Datastore: empty for the embedded SQLite store, sqlite:///path/state.db, or etcd endpoints (https://host:2379,...)
    #[arg(long, value_name = "ENDPOINT", env = "R3S_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: Option<DatastoreEndpoint>,

    /// Do not run the in-process agent
    #[arg(long, env = "R3S_DISABLE_AGENT")]
    pub disable_agent: bool,

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

    /// Do not run the service proxy (ClusterIP/NodePort rules) on the server's node
    #[arg(long, env = "R3S_DISABLE_KUBE_PROXY")]
    pub disable_kube_proxy: bool,

    /// Node name (default: the host name)
    #[arg(long, value_name = "NAME", env = "R3S_NODE_NAME")]
    pub node_name: Option<DnsName>,

    /// IP address to advertise for the node
    #[arg(long, short = 'i', value_name = "IP", env = "R3S_NODE_IP")]
    pub node_ip: Option<NodeIp>,

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

    /// Do not deploy a packaged component (repeatable, or comma-separated): local-storage (the
    /// local-path StorageClass and provisioner), servicelb; traefik and runtimes are accepted for
    /// k3s configs and change nothing (r3s ships neither)
    #[arg(
        long,
        value_name = "COMPONENT",
        env = "R3S_DISABLE",
        value_delimiter = ',',
        value_parser = ["local-storage", "servicelb", "traefik", "runtimes"]
    )]
    pub disable: Vec<String>,

    /// Directory of local-path volumes (default: <data-dir>/storage)
    #[arg(long, value_name = "DIR", env = "R3S_DEFAULT_LOCAL_STORAGE_PATH")]
    pub default_local_storage_path: Option<PathBuf>,

    /// Private registry configuration file (mirrors and credentials) for the in-process agent
    #[arg(
        long,
        value_name = "FILE",
        env = "R3S_PRIVATE_REGISTRY",
        default_value = "/etc/r3s/registries.yaml"
    )]
    pub private_registry: PathBuf,
}

/// `r3s-server certificate rotate`: re-issue the leaf certificates now (k3s: `k3s certificate
/// rotate`), keeping the CAs, so joined agents and issued client certificates keep working. Run it
/// while the server is stopped; the next start serves the new certificates and rewrites the admin
/// kubeconfig.
#[derive(Parser, Debug, Clone)]
#[command(name = "r3s-server certificate", max_term_width = 100)]
pub struct CertificateCli {
    #[command(subcommand)]
    pub command: CertificateCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum CertificateCommand {
    /// Re-issue leaf certificates from the cluster CAs (all of them unless --service names some)
    Rotate {
        /// Folder holding the server's state
        #[arg(
            long,
            short = 'd',
            value_name = "DIR",
            env = "R3S_DATA_DIR",
            default_value = "/var/lib/r3s"
        )]
        data_dir: PathBuf,
        /// Certificate to rotate: a file name under server/tls without .crt, or admin / api-server
        /// (repeatable, or comma-separated)
        #[arg(long, short = 's', value_name = "NAME", value_delimiter = ',')]
        service: Vec<String>,
    },
}
