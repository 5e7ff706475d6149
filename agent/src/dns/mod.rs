//! Cluster DNS, served by every agent for the pods of its node (CoreDNS's role in k3s).
//!
//! [`run`] makes the cluster DNS address (`--cluster-dns`, 10.43.0.10) local on a dummy link
//! ([`link`]), binds UDP and TCP port 53 on it, keeps an in-memory [`view::View`] of Services,
//! Endpoints and Pods current with watchers, and answers: names under the cluster domain by the
//! rules of the Kubernetes DNS specification ([`zone`]), everything else through upstream
//! resolvers with a small cache ([`forward`]); [`server`] is the protocol side. On shutdown the
//! link is deleted. (Kernels without the dummy driver get the address on `lo`: see [`link`].)
//!
//! Why a local address on each node rather than a `kube-dns` Service with pods behind it: pods'
//! resolv.conf already names 10.43.0.10, and making it local means each node answers its own
//! pods with no DNAT rule, no DNS pod to schedule, and no cross-node hop; a node whose control
//! plane link is down still answers from its last view. No Service object is needed for this.
//!
//! Invariants: a DNS failure never stops the node agent (it is logged); the address is removed only
//! by the run that bound it (another server already on it keeps it), on shutdown or, if
//! the task is aborted, by a guard on its drop.

pub mod forward;
pub mod link;
pub mod server;
pub mod view;
pub mod zone;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use self::forward::Forwarder;
use self::server::{Handler, Sockets};
use self::view::View;
use self::zone::Zone;

/// CoreDNS's default TTL for the kubernetes plugin's records, in seconds.
pub const DEFAULT_TTL: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cluster domain {0:?} is not a valid DNS name")]
    Domain(String),
    #[error("setting up the DNS link {name}: {source}")]
    Link {
        name: String,
        #[source]
        source: link::LinkError,
    },
    #[error("opening a netlink socket: {0}")]
    Netns(#[source] r3s_cni::netns::NetnsError),
    #[error(
        "binding the DNS server to {addr} (UDP and TCP): {source} (is another DNS server, such as \
         dnsmasq, bound to port 53 on all addresses?)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What [`run`] serves and where.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// The cluster DNS address and port (`10.43.0.10:53`).
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// Upstream resolvers for other names; `None` reads the host's ([`forward::host_upstreams`]).
    pub upstreams: Option<Vec<SocketAddr>>,
    /// The dummy link that makes `listen`'s address local; `None` when the address already is
    /// (a loopback address in tests).
    pub link: Option<String>,
    pub ttl: u32,
}

impl DnsOptions {
    /// Port 53 on `cluster_dns` through the default link, CoreDNS's TTL, the host's upstreams.
    pub fn new(cluster_dns: IpAddr, domain: impl Into<String>) -> DnsOptions {
        DnsOptions {
            listen: SocketAddr::new(cluster_dns, 53),
            domain: domain.into(),
            upstreams: None,
            link: Some(link::DEFAULT_LINK.to_string()),
            ttl: DEFAULT_TTL,
        }
    }

    /// The options of a node agent, or `None` when it has no cluster DNS address.
    pub fn for_node(node: &crate::NodeOptions) -> Option<DnsOptions> {
        let mut opts = DnsOptions::new(node.cluster_dns?, node.cluster_domain.clone());
        opts.upstreams = node.dns_upstreams.clone();
        Some(opts)
    }
}

/// Takes the DNS address away if the run that placed it ends without doing so (task aborted).
struct LinkGuard {
    placed: Option<link::Placement>,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let Some(placed) = self.placed.take() else {
            return;
        };
        // A thread with its own runtime: this may run inside (and while) a runtime is dropping.
        // It is spawned from the dropping thread, so it is in the same network namespace.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let h = r3s_cni::netns::connect(None).ok()?;
                link::remove(&h, &placed).await.ok()
            })
        })
        .join();
    }
}

/// Serves cluster DNS until `shutdown` completes: link, sockets, watchers, then answers.
pub async fn run(
    client: kube::Client,
    opts: DnsOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let zone = Zone::new(&opts.domain, opts.ttl, Some(opts.listen.ip()))
        .ok_or_else(|| DnsError::Domain(opts.domain.clone()))?;
    let netlink = match &opts.link {
        Some(name) => {
            let h = r3s_cni::netns::connect(None).map_err(DnsError::Netns)?;
            let placed = link::ensure(&h, name, opts.listen.ip())
                .await
                .map_err(|source| DnsError::Link {
                    name: name.clone(),
                    source,
                })?;
            if let link::Placement::Loopback(ip) = &placed {
                warn!("this kernel has no dummy links: cluster DNS address {ip}/32 is on lo");
            }
            Some((h, placed))
        }
        None => None,
    };
    let sockets = Sockets::bind(opts.listen)
        .await
        .map_err(|source| DnsError::Bind {
            addr: opts.listen,
            source,
        })?;
    let mut guard = LinkGuard {
        placed: netlink.as_ref().map(|(_, p)| p.clone()),
    };
    let upstreams = opts.upstreams.clone().unwrap_or_else(|| {
        forward::host_upstreams(
            Path::new("/etc/resolv.conf"),
            Path::new("/run/systemd/resolve/resolv.conf"),
            opts.listen.ip(),
        )
    });
    if upstreams.is_empty() {
        warn!("cluster DNS: no upstream resolver; names outside the cluster get SERVFAIL");
    }
    info!(listen = %opts.listen, domain = %opts.domain, ?upstreams, "cluster DNS serving");
    serve_on(client, sockets, zone, upstreams, shutdown).await;
    if let Some((h, placed)) = netlink {
        guard.placed = None;
        if let Err(e) = link::remove(&h, &placed).await {
            warn!("removing the cluster DNS address ({placed:?}): {e}");
        }
    }
    Ok(())
}

/// Serves `zone` on already bound `sockets` with watchers on `client` until `shutdown`.
pub async fn serve_on(
    client: kube::Client,
    sockets: Sockets,
    zone: Zone,
    upstreams: Vec<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) {
    let view = Arc::new(RwLock::new(View::default()));
    let mut watchers = JoinSet::new();
    watchers.spawn(view::follow::<Service>(client.clone(), view.clone()));
    watchers.spawn(view::follow::<Endpoints>(client.clone(), view.clone()));
    watchers.spawn(view::follow::<Pod>(client, view.clone()));
    let handler = Arc::new(Handler::new(zone, view, Forwarder::new(upstreams)));
    server::serve(handler, sockets, shutdown).await;
    watchers.shutdown().await;
}

/// The DNS server task of a node agent; aborted (link removed by its guard) when dropped.
pub struct DnsTask(tokio::task::JoinHandle<()>);

impl Drop for DnsTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DnsTask {
    /// Waits (a bounded time) for the task to finish after its stop signal was sent.
    pub async fn join(mut self) {
        if tokio::time::timeout(Duration::from_secs(10), &mut self.0)
            .await
            .is_err()
        {
            warn!("cluster DNS did not stop within 10 s; aborting it");
        }
    }
}

/// Starts the node's DNS server, stopping when `stop` turns true; `None` if the node has no
/// cluster DNS address. Errors are logged: the agent runs on without DNS.
pub fn spawn_for_node(
    client: kube::Client,
    node: &crate::NodeOptions,
    mut stop: watch::Receiver<bool>,
) -> Option<DnsTask> {
    let opts = DnsOptions::for_node(node)?;
    Some(DnsTask(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = run(client, opts, shutdown).await {
            error!("cluster DNS is not served on this node: {e}");
        }
    })))
}
