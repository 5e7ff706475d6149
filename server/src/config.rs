//! The resolved, validated configuration the rest of the server runs on.
//!
//! [`crate::cli::Cli`] checks each value on its own (a CIDR is a CIDR); [`ServerConfig::from_cli`]
//! checks how they fit together (the DNS address lies inside the service network, pod and service
//! networks are disjoint, at most one of token and token file) and fills in derived values (node
//! name from the host name, the SQLite path under the data directory). Every error is one line that
//! names the flags at fault and, when they came from the environment or a file, where from.
//!
//! Invariants of a [`ServerConfig`]: paths are absolute; everything the server writes lives under
//! `data_dir` or a path given by a flag (`write_kubeconfig`, a `sqlite://` datastore), so several
//! servers can run side by side on one machine.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use r3s_config::{
    DnsName, FileMode, Host, Ipv4Cidr, KubeletArg, Label, PortRange, Source, Sources, Taint,
    TokenError,
};

use crate::cli::Cli;

/// `--datastore-endpoint` as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatastoreEndpoint {
    /// The empty string: the embedded SQLite store at its default place.
    Embedded,
    /// `sqlite:///absolute/path/state.db`.
    Sqlite(PathBuf),
    /// One or more `http(s)://host[:port]` etcd endpoints, comma-separated.
    Etcd(Vec<String>),
}

/// Why a datastore endpoint was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DatastoreEndpointError(String);

impl FromStr for DatastoreEndpoint {
    type Err = DatastoreEndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |msg: String| Err(DatastoreEndpointError(msg));
        if s.is_empty() {
            return Ok(Self::Embedded);
        }
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.contains('?') {
                return err(
                    "SQLite options (?...) are not supported; r3s tunes SQLite itself".to_owned(),
                );
            }
            if !path.starts_with('/') {
                return err(
                    "the SQLite path must be absolute, like sqlite:///var/lib/r3s/state.db"
                        .to_owned(),
                );
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        let mut endpoints = Vec::new();
        for endpoint in s.split(',') {
            let Some(rest) = endpoint
                .strip_prefix("https://")
                .or_else(|| endpoint.strip_prefix("http://"))
            else {
                let scheme = endpoint
                    .split_once("://")
                    .map_or(endpoint, |(scheme, _)| scheme);
                return err(format!(
                    "{scheme:?}: unsupported datastore; use nothing (embedded SQLite), sqlite:///path or etcd http(s)://host:port endpoints"
                ));
            };
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            if authority.is_empty() || authority.contains('/') || authority.contains('@') {
                return err(format!(
                    "{endpoint}: an etcd endpoint is scheme://host[:port] with no path or credentials"
                ));
            }
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) if !port.contains(']') => (host, Some(port)),
                _ => (authority, None),
            };
            if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
                return err(format!("{endpoint}: not a valid host:port"));
            }
            endpoints.push(endpoint.trim_end_matches('/').to_owned());
        }
        Ok(Self::Etcd(endpoints))
    }
}

impl fmt::Display for DatastoreEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => Ok(()),
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Etcd(endpoints) => f.write_str(&endpoints.join(",")),
        }
    }
}

/// Where the cluster state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datastore {
    /// The embedded SQLite store in this file.
    Sqlite { path: PathBuf },
    /// External etcd: parsed, but the server cannot run on it yet (`run` refuses it).
    Etcd { endpoints: Vec<String> },
}

impl fmt::Display for Datastore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { path } => write!(f, "sqlite {}", path.display()),
            Self::Etcd { endpoints } => write!(f, "etcd {}", endpoints.join(",")),
        }
    }
}

/// Why the flags do not make a usable configuration.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    #[error("{flag}: cannot make {} absolute: {source}", path.display())]
    Path {
        flag: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{cluster} and {service} overlap")]
    NetworksOverlap { cluster: String, service: String },
    #[error("{cluster}: the pod network must be /24 or larger, since each node gets a /24 of it")]
    ClusterCidrTooSmall { cluster: String },
    #[error("{service}: the service network must be between /12 and /30")]
    ServiceCidrSize { service: String },
    #[error("{dns} is not a usable address in {service}: {why}")]
    DnsOutsideServices {
        dns: String,
        service: String,
        why: &'static str,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot choose a node name: {0}")]
    NodeName(r3s_config::dns::DnsNameError),
    #[error("{flag}: {} does not exist", path.display())]
    RegistryMissing { flag: String, path: PathBuf },
}

/// Everything the server needs to start, checked.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub config_files: Vec<PathBuf>,
    pub debug: bool,
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub https_listen_port: u16,
    pub advertise_address: Option<IpAddr>,
    pub tls_san: Vec<Host>,
    /// `None`: no token given; the server will generate one on first start.
    pub token: Option<String>,
    pub write_kubeconfig: PathBuf,
    pub write_kubeconfig_mode: FileMode,
    pub cluster_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
    pub cluster_dns: Ipv4Addr,
    pub cluster_domain: DnsName,
    pub service_node_port_range: PortRange,
    pub datastore: Datastore,
    pub disable_agent: bool,
    /// `vxlan` or `none` (checked by the flag parser).
    pub flannel_backend: String,
    pub flannel_iface: Option<String>,
    pub disable_kube_proxy: bool,
    pub node_name: DnsName,
    pub node_ip: Option<IpAddr>,
    pub node_labels: Vec<Label>,
    pub node_taints: Vec<Taint>,
    /// `--kubelet-arg` settings of the embedded agent, in order (a later one wins).
    pub kubelet_args: Vec<KubeletArg>,
    /// `registries.yaml` for the in-process agent's image pulls.
    pub private_registry: PathBuf,
    /// `--disable=local-storage`: no `local-path` StorageClass or provisioner.
    pub disable_local_storage: bool,
    /// `--disable=servicelb`: no ServiceLB controller.
    pub disable_servicelb: bool,
    /// Every `--disable` value as given, for the log.
    pub disabled: Vec<String>,
    /// `--default-local-storage-path`: where local-path volumes live (`<data-dir>/storage`).
    pub default_local_storage_path: PathBuf,
    /// Where each setting came from, by flag name, for logs and error messages.
    pub sources: Sources,
}

impl ServerConfig {
    /// Checks the parsed flags together and derives the rest. Reads `--token-file` and, without
    /// `--node-name`, the host name.
    pub fn from_cli(
        cli: Cli,
        sources: Sources,
        config_files: Vec<PathBuf>,
    ) -> Result<Self, ServerConfigError> {
        let absolute = |flag: &str, path: &Path| {
            std::path::absolute(path).map_err(|source| ServerConfigError::Path {
                flag: sources.describe(flag),
                path: path.to_owned(),
                source,
            })
        };
        let data_dir = absolute("data-dir", &cli.data_dir)?;
        let write_kubeconfig = absolute("write-kubeconfig", &cli.write_kubeconfig)?;
        let private_registry = absolute("private-registry", &cli.private_registry)?;
        let default_local_storage_path = match &cli.default_local_storage_path {
            Some(p) => absolute("default-local-storage-path", p)?,
            None => data_dir.join("storage"),
        };
        // The default file may be absent (no mirrors, no credentials); a file the user named may not.
        if !private_registry.exists() && *sources.get("private-registry") != Source::Default {
            return Err(ServerConfigError::RegistryMissing {
                flag: sources.describe("private-registry"),
                path: private_registry,
            });
        }

        if cli.cluster_cidr.overlaps(&cli.service_cidr) {
            return Err(ServerConfigError::NetworksOverlap {
                cluster: sources.show("cluster-cidr", cli.cluster_cidr),
                service: sources.show("service-cidr", cli.service_cidr),
            });
        }
        if cli.cluster_cidr.prefix() > 24 {
            return Err(ServerConfigError::ClusterCidrTooSmall {
                cluster: sources.show("cluster-cidr", cli.cluster_cidr),
            });
        }
        if !(12..=30).contains(&cli.service_cidr.prefix()) {
            return Err(ServerConfigError::ServiceCidrSize {
                service: sources.show("service-cidr", cli.service_cidr),
            });
        }
        check_dns_address(&cli, &sources)?;

        let token =
            r3s_config::read_token(cli.token.as_deref(), cli.token_file.as_deref(), &sources)?;
        let node_name = match cli.node_name {
            Some(name) => name,
            None => DnsName::from_hostname().map_err(ServerConfigError::NodeName)?,
        };
        let datastore = match cli
            .datastore_endpoint
            .unwrap_or(DatastoreEndpoint::Embedded)
        {
            DatastoreEndpoint::Embedded => Datastore::Sqlite {
                path: data_dir.join("server/db/state.db"),
            },
            DatastoreEndpoint::Sqlite(path) => Datastore::Sqlite { path },
            DatastoreEndpoint::Etcd(endpoints) => Datastore::Etcd { endpoints },
        };

        Ok(Self {
            config_files,
            debug: cli.debug,
            data_dir,
            bind_address: cli.bind_address,
            https_listen_port: cli.https_listen_port,
            advertise_address: cli.advertise_address.map(|ip| ip.addr()),
            tls_san: cli.tls_san,
            token,
            write_kubeconfig,
            write_kubeconfig_mode: cli.write_kubeconfig_mode,
            cluster_cidr: cli.cluster_cidr,
            service_cidr: cli.service_cidr,
            cluster_dns: cli.cluster_dns,
            cluster_domain: cli.cluster_domain,
            service_node_port_range: cli.service_node_port_range,
            datastore,
            disable_agent: cli.disable_agent,
            flannel_backend: cli.flannel_backend,
            flannel_iface: cli.flannel_iface,
            disable_kube_proxy: cli.disable_kube_proxy,
            node_name,
            node_ip: cli.node_ip.map(|ip| ip.addr()),
            node_labels: cli.node_label,
            node_taints: cli.node_taint,
            kubelet_args: cli.kubelet_arg,
            private_registry,
            disable_local_storage: cli.disable.iter().any(|c| c == "local-storage"),
            disable_servicelb: cli.disable.iter().any(|c| c == "servicelb"),
            disabled: cli.disable.clone(),
            default_local_storage_path,
            sources,
        })
    }

    /// `<data-dir>/server/db`, the directory of the embedded store (as in k3s).
    pub fn db_dir(&self) -> PathBuf {
        self.data_dir.join("server/db")
    }

    /// Each setting as `(flag name, value)`, for the start-up log. The token is never shown.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        fn list<T: fmt::Display>(items: &[T]) -> String {
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
        fn opt<T: fmt::Display>(item: &Option<T>) -> String {
            item.as_ref().map(ToString::to_string).unwrap_or_default()
        }
        vec![
            ("data-dir", self.data_dir.display().to_string()),
            ("bind-address", self.bind_address.to_string()),
            ("https-listen-port", self.https_listen_port.to_string()),
            ("advertise-address", opt(&self.advertise_address)),
            ("tls-san", list(&self.tls_san)),
            (
                "token",
                if self.token.is_some() {
                    "(set)".into()
                } else {
                    "(not set)".into()
                },
            ),
            (
                "write-kubeconfig",
                self.write_kubeconfig.display().to_string(),
            ),
            (
                "write-kubeconfig-mode",
                self.write_kubeconfig_mode.to_string(),
            ),
            ("cluster-cidr", self.cluster_cidr.to_string()),
            ("service-cidr", self.service_cidr.to_string()),
            ("cluster-dns", self.cluster_dns.to_string()),
            ("cluster-domain", self.cluster_domain.to_string()),
            (
                "service-node-port-range",
                self.service_node_port_range.to_string(),
            ),
            ("datastore-endpoint", self.datastore.to_string()),
            ("disable-agent", self.disable_agent.to_string()),
            ("flannel-backend", self.flannel_backend.clone()),
            ("flannel-iface", opt(&self.flannel_iface)),
            ("disable-kube-proxy", self.disable_kube_proxy.to_string()),
            ("node-name", self.node_name.to_string()),
            ("node-ip", opt(&self.node_ip)),
            ("node-label", list(&self.node_labels)),
            ("node-taint", list(&self.node_taints)),
            ("kubelet-arg", list(&self.kubelet_args)),
            (
                "private-registry",
                self.private_registry.display().to_string(),
            ),
            ("disable", self.disabled.join(",")),
            (
                "default-local-storage-path",
                self.default_local_storage_path.display().to_string(),
            ),
            ("debug", self.debug.to_string()),
        ]
    }
}

/// The DNS service address must be a host address of the service network other than its first,
/// which the `kubernetes` service takes.
fn check_dns_address(cli: &Cli, sources: &Sources) -> Result<(), ServerConfigError> {
    let (net, dns) = (cli.service_cidr, cli.cluster_dns);
    let first = Ipv4Addr::from(u32::from(net.network()) + 1);
    let why = if !net.contains(dns) {
        Some("outside the network")
    } else if dns == net.network() || dns == net.last() {
        Some("the network or broadcast address")
    } else if dns == first {
        Some("the first address is the kubernetes service's")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(ServerConfigError::DnsOutsideServices {
            dns: sources.show("cluster-dns", dns),
            service: sources.show("service-cidr", net),
            why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<ServerConfig, ServerConfigError> {
        let mut argv = vec![
            "r3s-server",
            "--node-name",
            "n1",
            "--data-dir",
            "/tmp/r3s-unit",
        ];
        argv.extend_from_slice(args);
        ServerConfig::from_cli(
            Cli::try_parse_from(argv).unwrap(),
            Sources::default(),
            Vec::new(),
        )
    }

    #[test]
    fn defaults_are_k3s_defaults() {
        let cfg = config(&[]).unwrap();
        assert_eq!(
            cfg.datastore,
            Datastore::Sqlite {
                path: PathBuf::from("/tmp/r3s-unit/server/db/state.db")
            }
        );
        assert_eq!(cfg.db_dir(), PathBuf::from("/tmp/r3s-unit/server/db"));
        assert_eq!(cfg.cluster_dns, Ipv4Addr::new(10, 43, 0, 10));
        assert_eq!(cfg.write_kubeconfig_mode.bits(), 0o600);
        assert_eq!(cfg.https_listen_port, 6443);
        assert!(cfg.token.is_none() && !cfg.disable_agent);
        let settings = cfg.settings();
        assert!(settings.contains(&("cluster-cidr", "10.42.0.0/16".into())));
        assert!(!cfg.disable_local_storage);
        assert!(cfg.default_local_storage_path.ends_with("storage"));
        assert!(cfg.default_local_storage_path.starts_with(&cfg.data_dir));
        assert!(settings.contains(&("service-node-port-range", "30000-32767".into())));
    }

    #[test]
    fn local_storage_flags() {
        let cfg = config(&[
            "--disable",
            "local-storage",
            "--default-local-storage-path",
            "/srv/volumes",
        ])
        .unwrap();
        assert!(cfg.disable_local_storage);
        assert_eq!(cfg.default_local_storage_path, Path::new("/srv/volumes"));
        // k3s's component names: servicelb turns ServiceLB off; traefik (which r3s does not
        // ship) changes nothing; an unknown name is refused.
        let cfg = config(&["--disable", "traefik,servicelb"]).unwrap();
        assert!(cfg.disable_servicelb && !cfg.disable_local_storage);
        assert_eq!(cfg.disabled, ["traefik", "servicelb"]);
        assert!(Cli::try_parse_from(["r3s-server", "--disable", "coredns"]).is_err());
        assert!(Cli::try_parse_from(["r3s-server", "--disable", "bogus"]).is_err());
    }

    #[test]
    fn networks_must_fit_together() {
        let err = config(&["--service-cidr", "10.42.128.0/17"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--cluster-cidr 10.42.0.0/16 and --service-cidr 10.42.128.0/17 overlap"
        );
        let err = config(&["--cluster-dns", "10.44.0.10"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "--cluster-dns 10.44.0.10 is not a usable address in --service-cidr 10.43.0.0/16"
            ),
            "{err}"
        );
        assert!(config(&["--cluster-dns", "10.43.0.1"]).is_err());
        assert!(config(&["--cluster-cidr", "10.42.0.0/25"]).is_err());
        assert!(
            config(&[
                "--service-cidr",
                "10.0.0.0/8",
                "--cluster-dns",
                "10.0.0.10",
                "--cluster-cidr",
                "172.16.0.0/16"
            ])
            .is_err()
        );
        let cfg = config(&[
            "--service-cidr",
            "10.96.0.0/12",
            "--cluster-dns",
            "10.96.0.10",
        ])
        .unwrap();
        assert_eq!(cfg.service_cidr.to_string(), "10.96.0.0/12");
    }

    #[test]
    fn datastore_endpoints() {
        let parse = |s: &str| s.parse::<DatastoreEndpoint>();
        assert_eq!(parse("").unwrap(), DatastoreEndpoint::Embedded);
        assert_eq!(
            parse("sqlite:///srv/r3s/state.db").unwrap(),
            DatastoreEndpoint::Sqlite("/srv/r3s/state.db".into())
        );
        assert_eq!(
            parse("https://10.0.0.1:2379,http://[fd00::1]:2379/").unwrap(),
            DatastoreEndpoint::Etcd(vec![
                "https://10.0.0.1:2379".into(),
                "http://[fd00::1]:2379".into()
            ])
        );
        for (bad, want) in [
            ("mysql://user:pw@tcp(db:3306)/k3s", "unsupported datastore"),
            ("postgres://db/k3s", "unsupported datastore"),
            ("sqlite://state.db", "must be absolute"),
            ("sqlite:///x.db?_journal=WAL", "not supported"),
            ("https://", "no path"),
            ("https://etcd:99999", "not a valid host:port"),
            ("https://etcd:2379/v3", "no path"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
        let cfg = config(&["--datastore-endpoint", "https://etcd1:2379"]).unwrap();
        assert_eq!(
            cfg.datastore,
            Datastore::Etcd {
                endpoints: vec!["https://etcd1:2379".into()]
            }
        );
    }

    #[test]
    fn relative_paths_become_absolute() {
        let cli = Cli::try_parse_from([
            "r3s-server",
            "--node-name",
            "n1",
            "-d",
            "rel/dir",
            "-o",
            "kube.yaml",
        ])
        .unwrap();
        let cfg = ServerConfig::from_cli(cli, Sources::default(), Vec::new()).unwrap();
        assert!(cfg.data_dir.is_absolute() && cfg.data_dir.ends_with("rel/dir"));
        assert!(cfg.write_kubeconfig.is_absolute() && cfg.write_kubeconfig.ends_with("kube.yaml"));
    }
}
