//! The service proxy (kube-proxy's role): Services and Endpoints in, one nftables table out.
//!
//! [`run`] watches Services, Endpoints and Nodes with kube-runtime reflectors, turns them into
//! [`model::ServicePort`]s, computes the whole ruleset with the pure [`rules::desired`], and has
//! [`apply::Applier`] install it as table `ip r3s-proxy` over netlink (no `nft`, no iptables).
//! Changes are coalesced for [`MIN_SYNC`], then applied as one nf_tables transaction; the table
//! is re-applied every [`RESYNC`] so a table someone deleted or edited comes back. LoadBalancer
//! Services are served on their `port` at the node IPs; their `status.loadBalancer.ingress` (the
//! Ready nodes' IPs) is written by the server's `servicelb` controller, not here: nodes may not
//! patch `services/status`.
//!
//! Invariants: nothing is installed before the first complete list of Services and Endpoints
//! (no moment with half the Services); the table is deleted when [`run`] returns or its future
//! is dropped; once a UDP endpoint is no longer in the applied rules, the conntrack entries of
//! flows it answered are deleted ([`r3s_cni::conntrack`]), so an ongoing UDP flow moves to a
//! live backend. Not done: `externalIPs`, `loadBalancerSourceRanges`,
//! `internalTrafficPolicy` and IPv6 are not served.

pub mod apply;
pub mod model;
pub mod rules;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use r3s_cni::nft::NftError;
use tracing::{debug, info, warn};

use apply::Applier;

/// The table the proxy owns.
pub const DEFAULT_TABLE: &str = "r3s-proxy";
/// Changes arriving within this window are applied together.
pub const MIN_SYNC: Duration = Duration::from_millis(300);
/// Full re-apply period.
pub const RESYNC: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(2);

/// Errors that stop the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("service proxy: {0}")]
    Nft(#[from] NftError),
    #[error("service proxy: the {0} watch ended")]
    WatchEnded(&'static str),
}

/// What [`run`] needs besides the API client.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub node_name: String,
    /// Addresses NodePort and LoadBalancer Services are served on.
    pub node_ips: Vec<Ipv4Addr>,
    /// The pod network: traffic from outside it to a ClusterIP is masqueraded.
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    pub table: String,
    /// Network namespace to program (`None`: the caller's). Tests run the proxy for a
    /// simulated node this way.
    pub netns: Option<PathBuf>,
}

impl ProxyOptions {
    pub fn new(node_name: impl Into<String>, node_ips: Vec<Ipv4Addr>) -> ProxyOptions {
        ProxyOptions {
            node_name: node_name.into(),
            node_ips,
            cluster_cidr: "10.42.0.0/16".parse().ok(),
            table: DEFAULT_TABLE.to_string(),
            netns: None,
        }
    }

    fn config(&self) -> rules::Config {
        rules::Config {
            cluster_cidr: self.cluster_cidr,
            node_ips: self.node_ips.clone(),
        }
    }
}

/// The ruleset for these objects on this node (what [`run`] applies).
pub fn compute(
    services: &[Arc<Service>],
    endpoints: &[Arc<Endpoints>],
    opts: &ProxyOptions,
) -> rules::Ruleset {
    let ports = model::service_ports(services, endpoints, &opts.node_name);
    rules::desired(&ports, &opts.config())
}

/// Deletes the table when dropped, whichever way [`run`] ends.
struct RemoveOnDrop {
    table: String,
    netns: Option<PathBuf>,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let removed =
            Applier::open(&self.table, self.netns.as_deref()).and_then(|mut a| a.remove());
        match removed {
            Ok(()) => info!(table = %self.table, "service proxy table removed"),
            Err(e) => warn!("removing the service proxy table: {e}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services,
    Endpoints,
}

fn events<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    kind: Kind,
) -> impl Stream<Item = Result<(Kind, bool), watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .map(move |r| r.map(|e| (kind, matches!(e, watcher::Event::InitDone))))
}

/// Runs the proxy until `shutdown` completes, then deletes its table.
pub async fn run(
    client: kube::Client,
    opts: ProxyOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    let _remove = RemoveOnDrop {
        table: opts.table.clone(),
        netns: opts.netns.clone(),
    };
    let mut applier = Some(Applier::open(&opts.table, opts.netns.as_deref())?);
    let (services, svc_w) = reflector::store::<Service>();
    let (endpoints, ep_w) = reflector::store::<Endpoints>();
    let mut stream = futures::stream::select_all([
        events(Api::all(client.clone()), svc_w, Kind::Services).boxed(),
        events(Api::all(client.clone()), ep_w, Kind::Endpoints).boxed(),
    ]);
    let (mut svc_listed, mut ep_listed) = (false, false);
    let mut due: Option<tokio::time::Instant> = None;
    let mut force = false;
    // UDP backends the applied rules send traffic to.
    let mut served_udp: BTreeSet<(Ipv4Addr, u16)> = BTreeSet::new();
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    tokio::pin!(shutdown);
    info!(table = %opts.table, node = %opts.node_name, "service proxy starting");
    loop {
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            ev = stream.next() => match ev {
                Some(Ok((kind, init_done))) => {
                    if init_done {
                        match kind {
                            Kind::Services => svc_listed = true,
                            Kind::Endpoints => ep_listed = true,
                        }
                    }
                    if due.is_none() {
                        due = Some(tokio::time::Instant::now() + MIN_SYNC);
                    }
                }
                Some(Err(e)) => warn!("service proxy watch: {e}"),
                None => return Err(ProxyError::WatchEnded("services/endpoints")),
            },
            _ = resync.tick() => {
                force = true;
                due.get_or_insert_with(tokio::time::Instant::now);
            }
            _ = sleep => {
                due = None;
                if !(svc_listed && ep_listed) {
                    continue;
                }
                let ports = model::service_ports(&services.state(), &endpoints.state(), &opts.node_name);
                let udp = udp_backends(&ports);
                let rs = rules::desired(&ports, &opts.config());
                for c in &rs.conflicts {
                    warn!("service proxy: {c}");
                }
                let Some(mut a) = applier.take() else { continue };
                let f = std::mem::take(&mut force);
                let (a, result) = match tokio::task::spawn_blocking(move || {
                    let r = a.apply(&rs, f);
                    (a, r)
                })
                .await
                {
                    Ok(v) => v,
                    Err(e) => {
                        warn!("service proxy apply task failed: {e}");
                        applier = Some(Applier::open(&opts.table, opts.netns.as_deref())?);
                        due = Some(tokio::time::Instant::now() + RETRY);
                        continue;
                    }
                };
                applier = Some(a);
                match result {
                    Ok(true) => {
                        debug!("service proxy rules applied");
                        // Only now that no rule sends new flows to them: forget the UDP
                        // flows of endpoints that went (their conntrack entries would keep
                        // NATing to the old backend for as long as the client keeps sending).
                        let gone: BTreeSet<_> = served_udp.difference(&udp).copied().collect();
                        served_udp = udp;
                        let netns = opts.netns.clone();
                        flush_udp(gone, netns).await;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!("{e}; retrying");
                        due = Some(tokio::time::Instant::now() + RETRY);
                    }
                }
            }
        }
    }
    info!("service proxy stopping");
    Ok(())
}

/// The (ip, port) of every backend of a UDP Service port.
fn udp_backends(ports: &[model::ServicePort]) -> BTreeSet<(Ipv4Addr, u16)> {
    ports
        .iter()
        .filter(|p| p.proto == model::Proto::Udp)
        .flat_map(|p| p.backends.iter().map(|b| (b.ip, b.port)))
        .collect()
}

/// Deletes the conntrack entries of UDP flows answered by `gone`; failures are logged (the
/// entries then expire on their own once the client pauses).
async fn flush_udp(gone: BTreeSet<(Ipv4Addr, u16)>, netns: Option<PathBuf>) {
    if gone.is_empty() {
        return;
    }
    let result = tokio::task::spawn_blocking(move || {
        r3s_cni::conntrack::delete_udp_replies_from(netns.as_deref(), &gone)
    })
    .await;
    match result {
        Ok(Ok(n)) => debug!(
            entries = n,
            "flushed UDP conntrack entries of removed endpoints"
        ),
        Ok(Err(e)) => warn!("flushing UDP conntrack entries of removed endpoints: {e}"),
        Err(e) => warn!("conntrack flush task failed: {e}"),
    }
}

/// A proxy running as a task; dropping the handle aborts it (and so removes its table).
#[derive(Debug)]
pub struct ProxyHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ProxyError>>>,
}

/// Starts [`run`] on the current runtime.
pub fn spawn(client: kube::Client, opts: ProxyOptions) -> ProxyHandle {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(client, opts, async {
        let _ = rx.await;
    }));
    ProxyHandle {
        stop: Some(tx),
        task: Some(task),
    }
}

impl ProxyHandle {
    /// Stops the proxy and waits (at most 10 s) until its table is gone.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!("{e}"),
                Ok(Err(e)) => warn!("service proxy task failed: {e}"),
                Err(_) => abort.abort(),
            }
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Options for the agent's own node: its InternalIP and ExternalIP (IPv4 ones) as node addresses.
pub fn node_options(
    node_name: &str,
    ips: &[Option<std::net::IpAddr>],
    cluster_cidr: Option<ipnet::Ipv4Net>,
) -> ProxyOptions {
    let mut v4 = Vec::new();
    for ip in ips.iter().flatten() {
        if let std::net::IpAddr::V4(ip) = ip
            && !v4.contains(ip)
        {
            v4.push(*ip);
        }
    }
    let mut opts = ProxyOptions::new(node_name, v4);
    opts.cluster_cidr = cluster_cidr;
    opts
}
