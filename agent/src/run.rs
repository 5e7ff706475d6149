//! Running the standalone node agent: join the server, then be a node until SIGTERM or SIGINT.
//!
//! Order: stop-signal handlers → join ([`crate::join`]; a server that is not reachable yet is
//! retried every 5 s, a refused token or CA mismatch ends the agent at once) → a `kube::Client`
//! from the written `kubelet.kubeconfig` → [`crate::run_node`] with options mapped from the
//! configuration and the cluster settings the server sent → `READY=1` to systemd once the Node
//! object exists → on a signal, `run_node` stops the pods and returns.
//!
//! Runtime state (namespace mounts, container state) goes to `<data-dir>/agent/run`, as for the
//! server's in-process agent, so several agents with different data directories never meet.

use std::time::Duration;

use tracing::{debug, info, warn};

use crate::config::AgentConfig;
use crate::join::{self, JoinError, JoinOptions};

/// How long to wait between join attempts while the server is unreachable.
const JOIN_RETRY: Duration = Duration::from_secs(5);

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Every join error names the server already.
    #[error(transparent)]
    Join(JoinError),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("the kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("reading {path}: {reason}")]
    Registries { path: String, reason: String },
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[cfg(target_os = "linux")]
    #[error(transparent)]
    Agent(#[from] crate::AgentError),
    #[cfg(not(target_os = "linux"))]
    #[error("r3s-agent runs pods on Linux only")]
    NotLinux,
}

/// Joins and runs the node until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig) -> Result<(), RunError> {
    for file in &cfg.config_files {
        debug!(file = %file.display(), "read config file");
    }
    for (name, value) in cfg.settings() {
        debug!("setting {name}={value} (from {})", cfg.sources.get(name));
    }
    // The kube client and the join requests share one crypto provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut sigterm = stop_signal(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = stop_signal(tokio::signal::unix::SignalKind::interrupt(), "SIGINT")?;

    let opts = JoinOptions {
        server: cfg.server.clone(),
        token: cfg.token.clone(),
        data_dir: cfg.data_dir.clone(),
        node_name: cfg.node_name.to_string(),
        with_node_id: cfg.with_node_id,
    };
    let joined = tokio::select! {
        joined = join_retrying(&opts) => joined?,
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    };
    info!(node = %joined.node_name, server = %cfg.server, "joined");
    // The client's certificate is renewed while the node runs (join::renew); dropping the guard
    // when run_node returns stops that.
    let (client, _renewal) =
        join::renewing_client(&joined)
            .await
            .map_err(|e| RunError::Kubeconfig {
                path: e.path,
                reason: e.reason,
            })?;
    run_node(&cfg, joined, client, async move {
        tokio::select! {
            _ = sigterm.recv() => info!("received SIGTERM, stopping"),
            _ = sigint.recv() => info!("received SIGINT, stopping"),
        }
    })
    .await
}

/// [`join::join`], tried again every [`JOIN_RETRY`] while the failure is transient.
async fn join_retrying(opts: &JoinOptions) -> Result<join::Joined, RunError> {
    loop {
        match join::join(opts).await {
            Ok(joined) => return Ok(joined),
            Err(e) if e.is_transient() => {
                warn!("{e}; retrying in {}s", JOIN_RETRY.as_secs());
                tokio::time::sleep(JOIN_RETRY).await;
            }
            Err(e) => return Err(RunError::Join(e)),
        }
    }
}

/// A client acting as this node, from the kubeconfig the join wrote.
pub async fn client(path: &std::path::Path) -> Result<kube::Client, RunError> {
    let err = |reason: String| RunError::Kubeconfig {
        path: path.display().to_string(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    if let Ok(agent) = http::HeaderValue::from_str(&r3s_config::user_agent::user_agent("kubelet")) {
        config.headers.push((http::header::USER_AGENT, agent));
    }
    kube::Client::try_from(config).map_err(|e| err(e.to_string()))
}

#[cfg(not(target_os = "linux"))]
async fn run_node(
    _cfg: &AgentConfig,
    _joined: join::Joined,
    _client: kube::Client,
    _shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    Err(RunError::NotLinux)
}

#[cfg(target_os = "linux")]
async fn run_node(
    cfg: &AgentConfig,
    joined: join::Joined,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let opts = node_options(cfg, &joined)?;
    let node_name = opts.node_name.clone();
    let ready = tokio::spawn(notify_when_registered(client.clone(), node_name));
    let result = crate::run_node(client, opts, shutdown).await;
    ready.abort();
    Ok(result?)
}

/// The node's options from the agent's configuration and the server's cluster settings.
#[cfg(target_os = "linux")]
pub fn node_options(
    cfg: &AgentConfig,
    joined: &join::Joined,
) -> Result<crate::NodeOptions, RunError> {
    let mut opts = crate::NodeOptions::new(joined.node_name.clone(), cfg.data_dir.clone());
    opts.run_dir = cfg.data_dir.join("agent").join("run");
    opts.node_ip = cfg.node_ip;
    opts.node_external_ip = cfg.node_external_ip;
    opts.labels = cfg.node_labels.clone();
    opts.taints = cfg.node_taints.clone();
    opts.apply_kubelet_args(&cfg.kubelet_args);
    opts.flannel_backend =
        cfg.flannel_backend
            .parse()
            .map_err(|reason: String| RunError::Flag {
                flag: "flannel-backend",
                reason,
            })?;
    opts.flannel_iface = cfg.flannel_iface.clone();
    opts.service_proxy = !cfg.disable_kube_proxy;
    // As kubelet: stopping (or upgrading) the agent leaves its pods running; the next start
    // re-adopts them (see crate::restart).
    opts.keep_pods_on_stop = true;
    let serving = joined.serving.clone();
    opts.kubelet = Some(crate::kubelet::KubeletOptions {
        port: crate::kubelet::DEFAULT_PORT,
        serving: crate::kubelet::ServingSource(std::sync::Arc::new(move |_node, ips| {
            let serving = serving.clone();
            Box::pin(async move {
                join::fetch_serving_certificate(&serving, &ips)
                    .await
                    .map_err(|e| e.to_string())
            })
        })),
        client_ca_pem: joined.client_ca_pem.clone(),
    });
    let s = &joined.settings;
    match s.cluster_dns.parse() {
        Ok(ip) => opts.cluster_dns = Some(ip),
        Err(_) => warn!(
            "the server sent an unusable cluster DNS address {:?}; pods get the host's resolv.conf",
            s.cluster_dns
        ),
    }
    if !s.cluster_domain.is_empty() {
        opts.cluster_domain = s.cluster_domain.clone();
    }
    opts.cluster_cidr = s.cluster_cidr.parse().ok();
    opts.registries = r3s_images::RegistriesConfig::load(&cfg.private_registry).map_err(|e| {
        RunError::Registries {
            path: cfg.private_registry.display().to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok(opts)
}

/// Sends `READY=1` to systemd once the Node object exists (the agent registered it).
#[cfg(target_os = "linux")]
async fn notify_when_registered(client: kube::Client, node: String) {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    loop {
        if let Ok(Some(_)) = nodes.get_opt(&node).await {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                warn!("could not notify systemd of readiness: {e}");
            }
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn stop_signal(
    kind: tokio::signal::unix::SignalKind,
    signal: &'static str,
) -> Result<tokio::signal::unix::Signal, RunError> {
    tokio::signal::unix::signal(kind).map_err(|source| RunError::Signal { signal, source })
}
