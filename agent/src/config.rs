//! The resolved, validated configuration of the node agent.
//!
//! [`crate::cli::Cli`] checks each value on its own; [`AgentConfig::from_cli`] checks what must be
//! present (a server URL and a token: a standalone agent has nothing to do without them) and fills
//! in derived values (node name from the host name). Every error is one line naming the flag and,
//! when the value came from the environment or a file, where from.
//!
//! Invariants of an [`AgentConfig`]: paths are absolute; everything the agent writes lives under
//! `data_dir`, so several agents can run side by side on one machine.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use r3s_config::{DnsName, Host, KubeletArg, Label, Source, Sources, Taint, TokenError};

use crate::cli::Cli;

/// The server to join, `https://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    host: Host,
    port: u16,
}

/// Why a server URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServerUrlError(String);

impl ServerUrl {
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for ServerUrl {
    type Err = ServerUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| ServerUrlError(why.to_owned());
        // As k3s's installer insists: the join secret must never travel in clear text.
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| err("the server URL must start with https://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(err("expected https://host[:port] with no path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed [ in the host"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| err("expected :port after ]"))?,
                ),
            };
            let ip: std::net::Ipv6Addr = host
                .parse()
                .map_err(|_| err("not an IPv6 address inside [ ]"))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            let host: Host = host
                .to_ascii_lowercase()
                .parse()
                .map_err(|e: r3s_config::dns::DnsNameError| err(&e.to_string()))?;
            (host, port)
        };
        // Without a port, URL rules apply (443), as in k3s; r3s servers listen on 6443 by default.
        let port = match port {
            None => 443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(err("the port must be 1-65535")),
            },
        };
        Ok(Self { host, port })
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "https://[{ip}]:{}", self.port),
            host => write!(f, "https://{host}:{}", self.port),
        }
    }
}

/// Why the flags do not make a usable agent configuration.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("--server (R3S_URL) is required: the https:// URL of the r3s server to join")]
    NoServer,
    #[error("a join token is required: give --token (R3S_TOKEN) or --token-file (R3S_TOKEN_FILE)")]
    NoToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("{flag}: cannot make {} absolute: {source}", path.display())]
    Path {
        flag: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag}: {} is a directory, not a registries file", path.display())]
    RegistryIsDir { flag: String, path: PathBuf },
    #[error("{flag}: {} not found", path.display())]
    RegistryMissing { flag: String, path: PathBuf },
    #[error("cannot choose a node name: {0}")]
    NodeName(r3s_config::dns::DnsNameError),
}

/// Everything the agent needs to start, checked.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub config_files: Vec<PathBuf>,
    pub debug: bool,
    pub server: ServerUrl,
    pub token: String,
    pub data_dir: PathBuf,
    pub node_name: DnsName,
    pub node_ip: Option<IpAddr>,
    pub node_external_ip: Option<IpAddr>,
    pub node_labels: Vec<Label>,
    pub node_taints: Vec<Taint>,
    /// `--kubelet-arg` settings, in order (a later one wins).
    pub kubelet_args: Vec<KubeletArg>,
    /// The registries file; it may be absent when left at its default.
    pub private_registry: PathBuf,
    pub with_node_id: bool,
    /// `vxlan` or `none` (checked by the flag parser).
    pub flannel_backend: String,
    pub flannel_iface: Option<String>,
    pub disable_kube_proxy: bool,
    pub sources: Sources,
}

impl AgentConfig {
    /// Checks the parsed flags together and derives the rest. Reads `--token-file` and, without
    /// `--node-name`, the host name.
    pub fn from_cli(
        cli: Cli,
        sources: Sources,
        config_files: Vec<PathBuf>,
    ) -> Result<Self, AgentConfigError> {
        let server = cli.server.ok_or(AgentConfigError::NoServer)?;
        let token =
            r3s_config::read_token(cli.token.as_deref(), cli.token_file.as_deref(), &sources)?
                .ok_or(AgentConfigError::NoToken)?;
        let absolute = |flag: &str, path: &Path| {
            std::path::absolute(path).map_err(|source| AgentConfigError::Path {
                flag: sources.describe(flag),
                path: path.to_owned(),
                source,
            })
        };
        let data_dir = absolute("data-dir", &cli.data_dir)?;
        let private_registry = absolute("private-registry", &cli.private_registry)?;
        check_registry_file(&private_registry, &sources)?;
        let node_name = match cli.node_name {
            Some(name) => name,
            None => DnsName::from_hostname().map_err(AgentConfigError::NodeName)?,
        };
        Ok(Self {
            config_files,
            debug: cli.debug,
            server,
            token,
            data_dir,
            node_name,
            node_ip: cli.node_ip.map(|ip| ip.addr()),
            node_external_ip: cli.node_external_ip.map(|ip| ip.addr()),
            node_labels: cli.node_label,
            node_taints: cli.node_taint,
            kubelet_args: cli.kubelet_arg,
            private_registry,
            with_node_id: cli.with_node_id,
            flannel_backend: cli.flannel_backend,
            flannel_iface: cli.flannel_iface,
            disable_kube_proxy: cli.disable_kube_proxy,
            sources,
        })
    }

    /// Each setting as `(flag name, value)`, for the log. The token is never shown.
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
            ("server", self.server.to_string()),
            ("token", "(set)".into()),
            ("data-dir", self.data_dir.display().to_string()),
            ("node-name", self.node_name.to_string()),
            ("node-ip", opt(&self.node_ip)),
            ("node-external-ip", opt(&self.node_external_ip)),
            ("node-label", list(&self.node_labels)),
            ("node-taint", list(&self.node_taints)),
            ("kubelet-arg", list(&self.kubelet_args)),
            (
                "private-registry",
                self.private_registry.display().to_string(),
            ),
            ("with-node-id", self.with_node_id.to_string()),
            ("flannel-backend", self.flannel_backend.clone()),
            ("flannel-iface", opt(&self.flannel_iface)),
            ("disable-kube-proxy", self.disable_kube_proxy.to_string()),
            ("debug", self.debug.to_string()),
        ]
    }
}

/// The registries file is optional at its default place (as in k3s), but one the user named must
/// exist: a typo there would otherwise silently mean "no mirrors, no credentials".
fn check_registry_file(path: &Path, sources: &Sources) -> Result<(), AgentConfigError> {
    let flag = || sources.describe("private-registry");
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(AgentConfigError::RegistryIsDir {
            flag: flag(),
            path: path.to_owned(),
        }),
        Ok(_) => Ok(()),
        Err(_) if *sources.get("private-registry") == Source::Default => Ok(()),
        Err(_) => Err(AgentConfigError::RegistryMissing {
            flag: flag(),
            path: path.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn server_urls() {
        let url: ServerUrl = "https://pi-1.lan:6443".parse().unwrap();
        assert_eq!(
            (url.to_string().as_str(), url.port()),
            ("https://pi-1.lan:6443", 6443)
        );
        assert_eq!(
            "https://10.0.0.1/"
                .parse::<ServerUrl>()
                .unwrap()
                .to_string(),
            "https://10.0.0.1:443"
        );
        assert_eq!(
            "https://[fd00::1]:6443"
                .parse::<ServerUrl>()
                .unwrap()
                .to_string(),
            "https://[fd00::1]:6443"
        );
        assert_eq!(
            "https://Pi-1:6443".parse::<ServerUrl>().unwrap().host(),
            &Host::Dns("pi-1".parse().unwrap())
        );
        for (bad, want) in [
            ("http://pi:6443", "must start with https://"),
            ("pi:6443", "must start with https://"),
            ("https://", "no path"),
            ("https://pi:6443/api", "no path"),
            ("https://user:pw@pi:6443", "no path"),
            ("https://pi:0", "port must be"),
            ("https://pi:http", "port must be"),
            ("https://pi_1:6443", "neither an IP address nor a DNS name"),
            ("https://[fd00::1:6443", "unclosed"),
        ] {
            let err = bad.parse::<ServerUrl>().unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    fn config(args: &[&str]) -> Result<AgentConfig, AgentConfigError> {
        let mut argv = vec!["r3s-agent", "--node-name", "n1"];
        argv.extend_from_slice(args);
        AgentConfig::from_cli(
            Cli::try_parse_from(argv).unwrap(),
            Sources::default(),
            Vec::new(),
        )
    }

    #[test]
    fn server_and_token_are_required() {
        let err = config(&["--token", "t"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "--server (R3S_URL) is required: the https:// URL of the r3s server to join"
        );
        let err = config(&["--server", "https://s:6443"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "a join token is required: give --token (R3S_TOKEN) or --token-file (R3S_TOKEN_FILE)"
        );
        let cfg = config(&[
            "--server",
            "https://s:6443",
            "--token",
            "t",
            "-d",
            "/tmp/r3s-unit-agent",
        ])
        .unwrap();
        assert_eq!(cfg.token, "t");
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/r3s-unit-agent"));
        assert!(
            cfg.settings()
                .contains(&("server", "https://s:6443".into()))
        );
    }

    #[test]
    fn named_registry_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("registries.yaml");
        let cli = Cli::try_parse_from([
            "r3s-agent",
            "--node-name",
            "n1",
            "-s",
            "https://s:6443",
            "-t",
            "x",
            "--private-registry",
            missing.to_str().unwrap(),
        ])
        .unwrap();
        let mut sources = Sources::default();
        sources.insert("private-registry", Source::Flag);
        let err = AgentConfig::from_cli(cli.clone(), sources.clone(), Vec::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!("--private-registry: {} not found", missing.display())
        );
        // At its default place, a missing file just means no mirrors and no credentials.
        assert!(AgentConfig::from_cli(cli.clone(), Sources::default(), Vec::new()).is_ok());
        std::fs::create_dir(&missing).unwrap();
        let err = AgentConfig::from_cli(cli, sources, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("is a directory, not a registries file"),
            "{err}"
        );
    }
}
