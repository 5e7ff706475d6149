//! The node agent's entry point, [`run_node`]: registers this machine as a Node, keeps its Lease
//! and status fresh, and runs the pods bound to it, until told to stop.
//!
//! Start-up reads as a script (each step wraps its error): preflight (warnings) → directories →
//! image store → leftovers of a previous run removed, except what pods' state files name (kept
//! for re-adoption, see [`crate::restart`]) → Node registered → pod network and VXLAN
//! overlay loop (when the Node has a podCIDR) → heartbeats → pod manager → service proxy.
//! Shutdown order: stop the overlay loop (its kernel entries stay) → stop the service proxy (its
//! nftables table is deleted) → stop the pod manager (which stops every pod, or with
//! `keep_pods_on_stop` leaves them running for the next start) → stop heartbeats.
//!
//! Module map: [`info`] (host facts), [`preflight`] (host checks), [`register`] (Node object and
//! status), [`lease`] (the heartbeat Lease), [`overlay`] (VTEP annotations and the VXLAN peer loop).

pub mod info;
pub mod lease;
pub mod overlay;
pub mod preflight;
pub mod register;

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use r3s_config::{Label, Taint};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::layout::Layout;
use crate::pods::{self, Ctx};
use crate::runtime::Runtime;

/// How often the Node status is recomputed (kubelet's `nodeStatusUpdateFrequency`). It is written
/// only when it changed (a condition, an address, capacity: [`register::changed`]) or when
/// [`STATUS_REPORT_INTERVAL`] has passed since the last write.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// The longest time between two Node status writes (kubelet's `nodeStatusReportFrequency`). The
/// liveness signal is the Lease, renewed every 10 s; rewriting an unchanged status every minute only
/// cost database writes (a few kB each on the server's disk).
pub const STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(300);

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("registering node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of node {node}: {source}")]
    NodeStatus {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("renewing the lease of node {node}: {source}")]
    Lease {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("building an API object: {0}")]
    Json(#[source] serde_json::Error),
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the image store: {0}")]
    Images(#[source] r3s_images::ImageError),
    #[error("node {node} has an invalid spec.podCIDR {cidr:?}")]
    PodCidr { node: String, cidr: String },
    #[error("starting pod networking: {0}")]
    Network(#[source] overlay::OverlayError),
    #[error("--flannel-iface {iface}: the interface has no IPv4 address")]
    FlannelIface { iface: String },
    #[error("cannot determine the node IP; give --node-ip")]
    NoNodeIp,
    #[error("watching pods: {0}")]
    Watch(#[source] kube::Error),
}

/// Everything [`run_node`] needs besides the API client.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_name: String,
    /// `--data-dir`; the agent uses `<data-dir>/agent/`.
    pub data_dir: PathBuf,
    /// Runtime state and namespace mounts (default `/run/r3s/agent`).
    pub run_dir: PathBuf,
    pub node_ip: Option<IpAddr>,
    pub node_external_ip: Option<IpAddr>,
    pub labels: Vec<Label>,
    pub taints: Vec<Taint>,
    /// The server's own node: adds the control-plane role labels.
    pub control_plane: bool,
    /// Parsed `--private-registry` file.
    pub registries: r3s_images::RegistriesConfig,
    /// Cluster DNS for ClusterFirst pods (k3s: 10.43.0.10); `None` gives pods the host's resolv.conf.
    pub cluster_dns: Option<IpAddr>,
    pub cluster_domain: String,
    /// Upstream resolvers of the cluster DNS for other names; `None` reads the host's resolv.conf.
    pub dns_upstreams: Option<Vec<std::net::SocketAddr>>,
    /// The cluster CIDR masqueraded on egress when pod networking is on (10.42.0.0/16).
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// Absolute cgroup under which pods live (`/r3s`).
    pub cgroup_root: PathBuf,
    /// The pod bridge (`r3s0`), made when the Node has a podCIDR.
    pub bridge: String,
    pub max_pods: u32,
    /// `--flannel-backend`: the VXLAN overlay between nodes (made with the pod network when there
    /// is a cluster CIDR and a non-loopback IPv4 node IP), or none.
    pub flannel_backend: overlay::Backend,
    /// `--flannel-iface`: the interface whose IPv4 address the VTEP uses instead of the node IP.
    pub flannel_iface: Option<String>,
    /// Run the service proxy (kube-proxy's role; k3s `--disable-kube-proxy` turns it off).
    pub service_proxy: bool,
    /// Serve the kubelet API (logs, exec, attach, port-forward for the API server); `None`
    /// serves nothing.
    pub kubelet: Option<crate::kubelet::KubeletOptions>,
    /// The binary that runs each container's shim (`<bin> shim …`); `None` runs containers as
    /// children of this process, which then cannot survive it (see [`crate::restart`]).
    pub shim: Option<PathBuf>,
    /// On shutdown leave the pods running, to be re-adopted by the next start (kubelet's
    /// behaviour; needs `shim`). Otherwise shutdown stops them.
    pub keep_pods_on_stop: bool,
    /// kubelet's `--sync-frequency`: how often mounted configMap and secret volumes are compared
    /// with the API and updated (kubelet's default, one minute).
    pub sync_frequency: std::time::Duration,
}

impl NodeOptions {
    /// Applies `--kubelet-arg` settings in order.
    pub fn apply_kubelet_args(&mut self, args: &[r3s_config::KubeletArg]) {
        for arg in args {
            match arg {
                r3s_config::KubeletArg::SyncFrequency(d) => self.sync_frequency = *d,
                r3s_config::KubeletArg::MaxPods(n) => self.max_pods = *n,
            }
        }
    }

    /// k3s's defaults for everything but the name and data directory.
    pub fn new(node_name: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: node_name.into(),
            data_dir: data_dir.into(),
            run_dir: PathBuf::from("/run/r3s/agent"),
            node_ip: None,
            node_external_ip: None,
            labels: Vec::new(),
            taints: Vec::new(),
            control_plane: false,
            registries: r3s_images::RegistriesConfig::default(),
            cluster_dns: Some(IpAddr::from([10, 43, 0, 10])),
            cluster_domain: "cluster.local".into(),
            dns_upstreams: None,
            cluster_cidr: "10.42.0.0/16".parse().ok(),
            cgroup_root: PathBuf::from("/r3s"),
            bridge: r3s_cni::bridge::DEFAULT_BRIDGE.into(),
            max_pods: 110,
            flannel_backend: overlay::Backend::Vxlan,
            flannel_iface: None,
            service_proxy: true,
            kubelet: None,
            shim: crate::restart::default_shim(),
            keep_pods_on_stop: false,
            sync_frequency: crate::pods::DEFAULT_SYNC_FREQUENCY,
        }
    }
}

fn mkdir(path: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(path).map_err(|source| AgentError::Dir {
        path: path.to_path_buf(),
        source,
    })
}

/// Aborts the pod manager (and so every pod worker, without stopping containers) when
/// `run_node`'s future is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), kube::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the node agent until `shutdown` completes, then stops every pod it runs and returns.
/// Dropping the future instead abandons the pods as a crash would: containers keep running and
/// the next start re-adopts them (under shims) or removes them (see [`crate::restart`]).
pub async fn run_node(
    client: kube::Client,
    opts: NodeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    for line in preflight::check() {
        warn!("preflight: {line}");
    }
    let layout = Layout::new(&opts.data_dir, &opts.run_dir);
    for dir in [
        layout.agent_dir.clone(),
        layout.pods(),
        layout.containers(),
        layout.runtime_state(),
        layout.sandboxes(),
    ] {
        mkdir(&dir)?;
    }
    let mut images_cfg = r3s_images::ImageServiceConfig::new(layout.images());
    images_cfg.registries = opts.registries.clone();
    let images = r3s_images::ImageService::open(images_cfg).map_err(AgentError::Images)?;
    images.import_airgap(&layout.airgap_images()).await;

    // Containers of a previous run that pods' state files name are kept for re-adoption;
    // everything else it left is removed (see crate::restart).
    let runtime = Runtime::new(layout.runtime_state()).with_shim(opts.shim.clone());
    let adopted = crate::restart::clean_previous_run(&layout, &runtime, &images).await;
    mkdir(&layout.sandboxes())?;

    let host_ip = opts
        .node_ip
        .or_else(info::detect_node_ip)
        .ok_or(AgentError::NoNodeIp)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = register::register(&nodes, &opts).await?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    info!(node = %opts.node_name, ip = %host_ip, "node registered");

    let capacity = info::capacity(&opts.data_dir, opts.max_pods);
    let system = info::system_info();
    let hostname = info::hostname();
    let mut prev_status: Value = serde_json::to_value(&node.status).unwrap_or(Value::Null);
    let write_status = |prev: &Value, network_ready: bool| {
        let input = register::StatusInput {
            internal_ip: host_ip,
            external_ip: opts.node_external_ip,
            hostname: &hostname,
            capacity: &capacity,
            system: &system,
            pressure: info::pressure(&opts.data_dir),
            network_ready,
            now: &crate::pods::worker::now(),
        };
        register::status(&input, prev)
    };
    let st = write_status(&prev_status, opts.cluster_cidr.is_none());
    let node = register::write_status(&nodes, &opts.node_name, &st).await?;
    prev_status = st;

    let network = std::sync::OnceLock::new();
    // The VXLAN peer loop, aborted when this function returns.
    let mut overlay_task: Option<overlay::OverlayTask> = None;
    match node.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
        Some(cidr) => {
            let (net, task) =
                start_network(&opts, &layout, &nodes, host_ip, &cidr, &adopted).await?;
            let _ = network.set(net);
            overlay_task = task;
            // Ready at once, not at the next status tick.
            if opts.cluster_cidr.is_some() {
                let st = write_status(&prev_status, true);
                register::write_status(&nodes, &opts.node_name, &st).await?;
                prev_status = st;
            }
        }
        None => info!(
            "node has no spec.podCIDR yet: pods get a loopback-only network namespace until it has"
        ),
    }

    let lease_api: Api<Lease> = Api::namespaced(client.clone(), lease::NAMESPACE);
    lease::renew(&lease_api, &opts.node_name, &node_uid).await?;

    let ctx: Arc<Ctx> = Arc::new(Ctx {
        client: client.clone(),
        node_name: opts.node_name.clone(),
        host_ip,
        layout,
        runtime,
        images,
        network,
        cluster_dns: opts.cluster_dns,
        cluster_domain: opts.cluster_domain.clone(),
        cgroup_root: opts.cgroup_root.clone(),
        node_milli_cpu: (capacity.cpu * 1000) as i64,
        node_memory_bytes: (capacity.memory_kib * 1024) as i64,
        keep_pods_on_stop: opts.keep_pods_on_stop && opts.shim.is_some(),
        sync_frequency: opts.sync_frequency,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Cluster DNS on this node's copy of the cluster DNS address (see crate::dns).
    let dns = crate::dns::spawn_for_node(client.clone(), &opts, stop_rx.clone());
    let kubelet = opts.kubelet.clone().map(|k| {
        let (ctx, stop) = (ctx.clone(), stop_rx.clone());
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::kubelet::server::serve(ctx, k, host_ip, stop).await {
                warn!("kubelet API not served: {}", r3s_config::exit::chain(&e));
            }
            Ok(())
        }))
    });
    let mut manager = AbortOnDrop(tokio::spawn(pods::manage(ctx.clone(), stop_rx)));
    let ips = [Some(host_ip), opts.node_external_ip];
    let proxy = (opts.service_proxy).then(|| {
        let proxy_opts = crate::proxy::node_options(&opts.node_name, &ips, opts.cluster_cidr);
        crate::proxy::spawn(client.clone(), proxy_opts)
    });
    // Until the Node has a podCIDR (allocated by the server), look for it every 2 s.
    let mut cidr_tick = tokio::time::interval(Duration::from_secs(2));

    let mut lease_tick = tokio::time::interval(lease::RENEW_INTERVAL);
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    lease_tick.tick().await;
    status_tick.tick().await;
    // The writes before the loop (registration, Ready) count as reports.
    let mut status_written = tokio::time::Instant::now();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = lease_tick.tick() => {
                if let Err(e) = lease::renew(&lease_api, &opts.node_name, &node_uid).await {
                    warn!("{}", r3s_config::exit::chain(&e));
                }
            }
            _ = cidr_tick.tick(), if ctx.network.get().is_none() => {
                let cidr = nodes
                    .get_opt(&opts.node_name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|n| n.spec.and_then(|s| s.pod_cidr));
                if let Some(cidr) = cidr {
                    match start_network(&opts, &ctx.layout, &nodes, host_ip, &cidr, &adopted).await {
                        Ok((net, task)) => {
                            let _ = ctx.network.set(net);
                            overlay_task = task;
                            // Ready at once, not at the next status tick.
                            let st = write_status(&prev_status, true);
                            match register::write_status(&nodes, &opts.node_name, &st).await {
                                Ok(_) => prev_status = st,
                                Err(e) => warn!("{}", r3s_config::exit::chain(&e)),
                            }
                        }
                        Err(e) => warn!("{}", r3s_config::exit::chain(&e)),
                    }
                }
            }
            _ = status_tick.tick() => {
                let network_ready = ctx.network.get().is_some() || opts.cluster_cidr.is_none();
                let st = write_status(&prev_status, network_ready);
                if status_written.elapsed() < STATUS_REPORT_INTERVAL
                    && !register::changed(&prev_status, &st)
                {
                    continue;
                }
                match register::write_status(&nodes, &opts.node_name, &st).await {
                    Ok(_) => {
                        prev_status = st;
                        status_written = tokio::time::Instant::now();
                    }
                    Err(e) => warn!("{}", r3s_config::exit::chain(&e)),
                }
            }
        }
    }
    info!("node agent stopping");
    drop(overlay_task);
    if let Some(proxy) = proxy {
        proxy.stop().await; // deletes its nftables table
    }
    let _ = stop_tx.send(true);
    drop(kubelet);
    if let Some(dns) = dns {
        dns.join().await;
    }
    match (&mut manager.0).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AgentError::Watch(e)),
        Err(e) => {
            warn!("pod manager task failed: {e}");
            Ok(())
        }
    }
}

/// Starts pod networking (bridge, IPAM, masquerade and, between nodes, the VXLAN overlay, whose
/// peer loop is returned as a task).
async fn start_network(
    opts: &NodeOptions,
    layout: &Layout,
    nodes: &Api<Node>,
    host_ip: IpAddr,
    cidr: &str,
    adopted: &std::collections::HashSet<String>,
) -> Result<(r3s_cni::node::KernelNetwork, Option<overlay::OverlayTask>), AgentError> {
    let subnet: ipnet::Ipv4Net = cidr.parse().map_err(|_| AgentError::PodCidr {
        node: opts.node_name.clone(),
        cidr: cidr.to_owned(),
    })?;
    let vtep_ip = match &opts.flannel_iface {
        Some(iface) => {
            IpAddr::V4(
                overlay::iface_ipv4(iface).ok_or_else(|| AgentError::FlannelIface {
                    iface: iface.clone(),
                })?,
            )
        }
        None => host_ip,
    };
    let cfg = r3s_cni::node::NodeConfig {
        pods: r3s_cni::network::BridgeNetwork {
            name: "r3s".into(),
            bridge: opts.bridge.clone(),
            subnet,
            mtu: 1500,
            ipam_dir: layout.cni(),
        },
        overlay: overlay::config(
            opts.flannel_backend,
            opts.cluster_cidr.is_some(),
            vtep_ip,
            subnet,
            &layout.agent_dir.join("vtep-mac"),
        ),
        masquerade: opts.cluster_cidr,
    };
    let (net, vtep) = overlay::start(nodes, &opts.node_name, cfg)
        .await
        .map_err(AgentError::Network)?;
    let task = vtep.map(|v| overlay::spawn(nodes.clone(), opts.node_name.clone(), net.clone(), v));
    // No pod is attached yet but those of a previous run kept for re-adoption: every other
    // lease is stale.
    use r3s_cni::node::NodeNetwork;
    let keep = adopted
        .iter()
        .map(|uid| r3s_cni::ipam::Owner::new(uid.clone(), "eth0".to_owned()))
        .collect();
    match net.gc_pods(&keep).await {
        Ok(freed) if !freed.is_empty() => {
            info!(leases = freed.len(), "released stale pod addresses")
        }
        Ok(_) => {}
        Err(e) => warn!("releasing stale pod addresses: {e}"),
    }
    info!(%subnet, "pod network ready");
    Ok((net, task))
}
