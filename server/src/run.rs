//! Running the server: prepare the data directory, start the components, wait for a stop signal.
//!
//! Start-up reads as a linear script (each step wraps its error with what it was doing); shutdown
//! on SIGINT or SIGTERM returns `Ok`, so the process exits 0 and systemd sees a clean stop. Anything
//! the configuration asks for that the server cannot do yet fails here with a clear error rather
//! than being ignored (an etcd datastore), or is warned about (the in-process agent).
//!
//! Order: directories → store → certificates → join token (`<data-dir>/server/token`) →
//! kubeconfig → API listener with the join endpoints beside it (READY=1 to systemd) →
//! controllers and scheduler → the in-process node agent (unless `--disable-agent`) → wait for a
//! signal → stop the agent (its pods get their grace period) → stop the control loops → stop the
//! API (no new writes) → close the store (its last group commit is flushed when the writer thread
//! ends). The control loops and the agent reach the API through in-process clients built on the
//! same `ApiState` the HTTPS listener serves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};

use tokio::sync::watch;

use crate::api::{self, ApiState, ServiceNetwork, TokenIssuer};
use crate::client::{self, CONTROLLER_MANAGER_USER, SCHEDULER_USER};
use crate::config::{Datastore, ServerConfig};
use crate::controllers::{self, ControllerOptions};
use crate::scheduler::{self, SchedulerOptions};
use crate::store::{SqliteStore, Store, StoreError, StoreOptions};
use crate::tls::{self, CertOptions, TlsError};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error(
        "--datastore-endpoint {endpoints}: running on etcd is not implemented yet; leave --datastore-endpoint empty for the embedded SQLite store"
    )]
    EtcdNotImplemented { endpoints: String },
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("opening the datastore: {0}")]
    Store(#[source] StoreError),
    #[error("preparing the TLS certificates: {0}")]
    Tls(#[source] TlsError),
    #[error("writing the kubeconfig: {0}")]
    Kubeconfig(#[source] crate::kubeconfig::KubeconfigError),
    #[error("the service-account signing key: {0}")]
    ServiceAccountKey(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the API server stopped: {0}")]
    Api(#[source] api::ServeError),
    #[error("the API server stopped unexpectedly")]
    ApiEnded,
    #[error("the API server task failed: {0}")]
    ApiTask(#[source] tokio::task::JoinError),
    #[error("the in-process agent: {0}")]
    Agent(#[source] r3s_agent::AgentError),
    #[error("the in-process agent stopped unexpectedly")]
    AgentEnded,
    #[error("reading {path}: {reason}", path = path.display())]
    Registries { path: PathBuf, reason: String },
    #[error(transparent)]
    Token(#[from] crate::join::token::ServerTokenError),
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(cfg: ServerConfig) -> Result<(), RunError> {
    let db_path = match &cfg.datastore {
        Datastore::Sqlite { path } => path.clone(),
        Datastore::Etcd { endpoints } => {
            return Err(RunError::EtcdNotImplemented {
                endpoints: endpoints.join(","),
            });
        }
    };
    // Install the handlers before anything else is announced: a stop signal that arrives while
    // we start up must still end in a clean shutdown, not the default "killed by signal".
    let mut sigterm = stop_signal(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = stop_signal(tokio::signal::unix::SignalKind::interrupt(), "SIGINT")?;

    // Directories first: a data directory that cannot be used is a start-up error and should be
    // the only line the user sees, not the last of twenty.
    create_dir(&cfg.db_dir())?;
    if let Some(parent) = db_path.parent() {
        create_dir(parent)?;
    }

    for file in &cfg.config_files {
        info!(file = %file.display(), "read config file");
    }
    for (name, value) in cfg.settings() {
        info!("setting {name}={value} (from {})", cfg.sources.get(name));
    }

    info!(path = %db_path.display(), "datastore: embedded SQLite");
    let store = {
        let path = db_path.clone();
        tokio::task::spawn_blocking(move || SqliteStore::open(&path, StoreOptions::default()))
            .await
            .map_err(|e| RunError::Store(StoreError::Backend(e.to_string())))?
            .map_err(RunError::Store)?
    };
    let store: Arc<dyn Store> = Arc::new(store);

    let advertise_ip = advertise_ip(&cfg);
    let services = Arc::new(ServiceNetwork::new(
        cfg.service_cidr.network(),
        cfg.service_cidr.prefix(),
        cfg.service_node_port_range.first()..=cfg.service_node_port_range.last(),
    ));
    let mut extra_sans: Vec<String> = vec![cfg.node_name.to_string(), advertise_ip.to_string()];
    if let Some(ip) = cfg.node_ip {
        extra_sans.push(ip.to_string());
    }
    extra_sans.extend(cfg.tls_san.iter().map(ToString::to_string));
    let certs = tls::ensure_certificates(
        &cfg.data_dir,
        &CertOptions {
            extra_sans,
            cluster_domain: cfg.cluster_domain.to_string(),
            service_ip: IpAddr::V4(services.first_ip()),
        },
    )
    .map_err(RunError::Tls)?;
    let tls_config = tls::server_config(&certs).map_err(RunError::Tls)?;
    let tokens = TokenIssuer::from_pem(&certs.service_account_key_pem)
        .map_err(RunError::ServiceAccountKey)?;
    let join_token = crate::join::token::ensure(
        &cfg.data_dir,
        cfg.token.as_deref(),
        certs.server_ca_pem.as_bytes(),
    )?;
    info!(
        path = %crate::join::token::token_path(&cfg.data_dir).display(),
        "join token ready"
    );

    let local_server = format!("https://127.0.0.1:{}", cfg.https_listen_port);
    crate::kubeconfig::write(
        &cfg.write_kubeconfig,
        cfg.write_kubeconfig_mode.bits(),
        &local_server,
        &certs,
    )
    .map_err(RunError::Kubeconfig)?;
    info!(path = %cfg.write_kubeconfig.display(), "wrote the admin kubeconfig");

    let listen = SocketAddr::new(cfg.bind_address, cfg.https_listen_port);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: listen,
            source,
        })?;
    let state = ApiState {
        store: store.clone(),
        advertise_address: SocketAddr::new(advertise_ip, cfg.https_listen_port).to_string(),
        services,
        tokens: Some(Arc::new(tokens)),
        metrics: Arc::default(),
        custom: Default::default(),
        kubelet: Some(Arc::new(kubelet_client(&cfg, &certs)?)),
    };
    api::prepare(&state).await.map_err(RunError::Api)?;
    let (stop_api, api_stopped) = watch::channel(false);
    if !cfg.disable_agent {
        remember_own_node_password(&cfg, store.as_ref()).await;
    }
    let join_state = crate::join::JoinState {
        store: store.clone(),
        secret: join_token.secret.clone().into(),
        ca_pem: certs.server_ca_pem.clone().into(),
        data_dir: cfg.data_dir.clone(),
        settings: Arc::new(cluster_settings(&cfg)),
    };
    // The join endpoints (`/cacerts`, `/v1-r3s/*`) share the port with the API, as in k3s.
    let router = crate::join::routes(join_state).merge(api::app(state.clone()));
    info!(%listen, "serving the Kubernetes API and the join endpoints over HTTPS");
    let mut api_task = tokio::spawn(async move {
        tls::serve_tls(listener, tls_config, router, stopped(api_stopped)).await;
        Ok::<(), api::ServeError>(())
    });
    notify_ready();

    let (stop_loops, loops_stopped) = watch::channel(false);
    let controller_opts = ControllerOptions {
        cluster_cidr: cfg.cluster_cidr.to_string(),
        root_ca_pem: Some(certs.server_ca_pem.clone()),
        local_storage: (!cfg.disable_local_storage).then(|| controllers::localpath::LocalPath {
            path: cfg.default_local_storage_path.clone(),
            own_node: (!cfg.disable_agent).then(|| cfg.node_name.to_string()),
        }),
        servicelb: !cfg.disable_servicelb,
        ..ControllerOptions::default()
    };
    for name in cfg
        .disabled
        .iter()
        .filter(|n| ["traefik", "runtimes"].contains(&n.as_str()))
    {
        tracing::info!("--disable={name}: r3s ships no {name}, nothing to disable");
    }
    let controller_client =
        client::in_process(state.clone(), client::identity(CONTROLLER_MANAGER_USER));
    // One Pod and one Node cache for every control loop and the scheduler.
    let informers = controllers::informer::Informers::start(&controller_client);
    let controllers_task = tokio::spawn(controllers::run(
        controller_client,
        controller_opts,
        informers.clone(),
        stopped(loops_stopped.clone()),
    ));
    let scheduler_task = tokio::spawn(scheduler::run(
        client::in_process(state.clone(), client::identity(SCHEDULER_USER)),
        SchedulerOptions::default(),
        informers,
        stopped(loops_stopped),
    ));

    let (stop_agent, agent_stopped) = watch::channel(false);
    let mut agent_task = if cfg.disable_agent {
        info!("--disable-agent: this server runs no pods");
        None
    } else {
        let mut opts = node_options(&cfg)?;
        opts.kubelet = Some(kubelet_options(&cfg, &certs));
        let identity = client::node_identity(&cfg.node_name.to_string());
        Some(tokio::spawn(r3s_agent::run_node(
            client::in_process(state.clone(), identity),
            opts,
            stopped(agent_stopped),
        )))
    };

    info!("r3s-server started; waiting for SIGINT or SIGTERM");
    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        res = &mut api_task => {
            // The API server ended on its own: that is always an error for the server.
            return match res {
                Ok(Ok(())) => Err(RunError::ApiEnded),
                Ok(Err(e)) => Err(RunError::Api(e)),
                Err(e) => Err(RunError::ApiTask(e)),
            };
        }
        res = async { agent_task.as_mut()?.await.ok() }, if agent_task.is_some() => {
            return match res {
                Some(Err(e)) => Err(RunError::Agent(e)),
                _ => Err(RunError::AgentEnded),
            };
        }
    };
    info!("received {signal}, shutting down");
    let _ = stop_agent.send(true);
    if let Some(task) = agent_task {
        // The agent stops its pods first, each within its grace period.
        match bounded(AGENT_STOP, task).await {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => warn!("the in-process agent stopped with an error: {e}"),
            Some(Err(e)) => warn!("the in-process agent task failed: {e}"),
            None => warn!("the in-process agent did not stop within {AGENT_STOP:?}; abandoned"),
        }
    }
    let _ = stop_loops.send(true);
    for (name, task) in [
        ("controllers", controllers_task),
        ("scheduler", scheduler_task),
    ] {
        match bounded(LOOPS_STOP, task).await {
            Some(Ok(())) => {}
            Some(Err(e)) => warn!("the {name} task failed: {e}"),
            None => warn!("the {name} did not stop within {LOOPS_STOP:?}; abandoned"),
        }
    }
    let _ = stop_api.send(true);
    match bounded(LOOPS_STOP, api_task).await {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => warn!("the API server stopped with an error: {e}"),
        Some(Err(e)) => warn!("the API server task failed: {e}"),
        None => warn!("the API server did not stop within {LOOPS_STOP:?}; abandoned"),
    }
    // Last references: the store's writer thread finishes its batch and closes the database.
    drop(state);
    drop(store);
    info!("r3s-server stopped");
    Ok(())
}

/// How long shutdown waits for the agent (its pods' grace periods) and for the other components.
/// A stop must end: systemd and the tests wait on it, and the store must still be closed cleanly.
const AGENT_STOP: std::time::Duration = std::time::Duration::from_secs(90);
const LOOPS_STOP: std::time::Duration = std::time::Duration::from_secs(10);

/// Awaits `task` for at most `limit`; aborts it and returns `None` when the time is up.
async fn bounded<T>(
    limit: std::time::Duration,
    mut task: tokio::task::JoinHandle<T>,
) -> Option<Result<T, tokio::task::JoinError>> {
    match tokio::time::timeout(limit, &mut task).await {
        Ok(res) => Some(res),
        Err(_) => {
            task.abort();
            None
        }
    }
}

/// Resolves once `true` has been sent on the channel (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The API server's side of the kubelet connection (see [`api::kubelet_proxy`]).
fn kubelet_client(
    cfg: &ServerConfig,
    certs: &tls::Certificates,
) -> Result<api::kubelet_proxy::KubeletClient, RunError> {
    let (cert, key) = tls::kubelet::ensure_kubelet_client(&cfg.data_dir).map_err(RunError::Tls)?;
    api::kubelet_proxy::KubeletClient::new(&certs.server_ca_pem, &cert, &key)
        .map_err(|e| RunError::Tls(tls::TlsError::Config(format!("kubelet client: {e}"))))
}

/// The in-process agent's kubelet API: its serving certificate comes straight from the server CA.
fn kubelet_options(
    cfg: &ServerConfig,
    certs: &tls::Certificates,
) -> r3s_agent::kubelet::KubeletOptions {
    let data_dir = cfg.data_dir.clone();
    let serving =
        r3s_agent::kubelet::ServingSource(Arc::new(move |node: String, ips: Vec<IpAddr>| {
            let data_dir = data_dir.clone();
            Box::pin(async move {
                tls::kubelet::issue_kubelet_serving(&data_dir, &node, &ips)
                    .map_err(|e| e.to_string())
            })
        }));
    r3s_agent::kubelet::KubeletOptions {
        port: r3s_agent::kubelet::DEFAULT_PORT,
        serving,
        client_ca_pem: certs.client_ca_pem.clone(),
    }
}

/// The in-process agent's settings, from the server's flags (k3s's server takes the agent's).
fn node_options(cfg: &ServerConfig) -> Result<r3s_agent::NodeOptions, RunError> {
    let mut opts = r3s_agent::NodeOptions::new(cfg.node_name.to_string(), cfg.data_dir.clone());
    // Runtime state (sandbox namespaces, container state) also under the data dir, so that
    // several servers can run side by side on one machine.
    opts.run_dir = cfg.data_dir.join("agent").join("run");
    opts.node_ip = cfg.node_ip;
    opts.labels = cfg.node_labels.clone();
    opts.taints = cfg.node_taints.clone();
    opts.apply_kubelet_args(&cfg.kubelet_args);
    opts.control_plane = true;
    opts.flannel_backend =
        cfg.flannel_backend
            .parse()
            .map_err(|reason: String| RunError::Flag {
                flag: "flannel-backend",
                reason,
            })?;
    opts.flannel_iface = cfg.flannel_iface.clone();
    opts.service_proxy = !cfg.disable_kube_proxy;
    opts.cluster_dns = Some(IpAddr::V4(cfg.cluster_dns));
    opts.cluster_domain = cfg.cluster_domain.to_string();
    opts.cluster_cidr = format!(
        "{}/{}",
        cfg.cluster_cidr.network(),
        cfg.cluster_cidr.prefix()
    )
    .parse()
    .ok();
    opts.registries = r3s_images::RegistriesConfig::load(&cfg.private_registry).map_err(|e| {
        RunError::Registries {
            path: cfg.private_registry.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(opts)
}

/// What joining agents are told about the cluster.
fn cluster_settings(cfg: &ServerConfig) -> r3s_agent::join::ClusterSettings {
    let cidr = |c: &r3s_config::Ipv4Cidr| format!("{}/{}", c.network(), c.prefix());
    r3s_agent::join::ClusterSettings {
        cluster_cidr: cidr(&cfg.cluster_cidr),
        service_cidr: cidr(&cfg.service_cidr),
        cluster_dns: cfg.cluster_dns.to_string(),
        cluster_domain: cfg.cluster_domain.to_string(),
    }
}

/// Claims the server's own node name with the in-process agent's node password, as k3s does, so
/// an agent elsewhere cannot join under the server's name. Only warns: the server still starts.
async fn remember_own_node_password(cfg: &ServerConfig, store: &dyn Store) {
    let node = cfg.node_name.to_string();
    match r3s_agent::join::identity::node_password(&cfg.data_dir) {
        Ok(password) => {
            if let Err(e) = crate::join::password::verify_or_remember(store, &node, &password).await
            {
                warn!("{e}");
            }
        }
        Err(e) => warn!("the node password of {node}: {e}"),
    }
}

/// The address other nodes and pods reach this server at: `--advertise-address`, else `--node-ip`,
/// else the first global IPv4 address of an interface that is up, else loopback.
fn advertise_ip(cfg: &ServerConfig) -> IpAddr {
    if let Some(ip) = cfg.advertise_address.or(cfg.node_ip) {
        return ip;
    }
    if !cfg.bind_address.is_unspecified() && !cfg.bind_address.is_loopback() {
        return cfg.bind_address;
    }
    first_host_ipv4().map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4)
}

fn first_host_ipv4() -> Option<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter(|a| {
            a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                && !a
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .find(|ip| !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
}

/// Tells systemd (when it started us with `Type=notify`) that the API is accepting connections.
fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        warn!("could not notify systemd of readiness: {e}");
    }
}

fn stop_signal(
    kind: tokio::signal::unix::SignalKind,
    signal: &'static str,
) -> Result<tokio::signal::unix::Signal, RunError> {
    tokio::signal::unix::signal(kind).map_err(|source| RunError::Signal { signal, source })
}

fn create_dir(path: &std::path::Path) -> Result<(), RunError> {
    std::fs::create_dir_all(path).map_err(|source| RunError::CreateDir {
        path: path.to_owned(),
        source,
    })
}
