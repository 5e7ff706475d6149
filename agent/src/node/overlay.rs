//! The VXLAN overlay's control loop (flannel's role in k3s): this node publishes its VTEP as Node
//! annotations, and every other Node's podCIDR and annotations become one route, one permanent
//! neighbour and one FDB entry on this node's VXLAN device (`r3s_cni::vxlan`).
//!
//! [`start`] brings the node's networking up with the overlay and publishes the VTEP
//! (`flannel.alpha.coreos.com/{backend-type,backend-data,public-ip,kube-subnet-manager}`); before
//! that, a lost MAC file is restored from the MAC the Node still publishes, so peers' entries stay
//! valid across restarts (flannel #1795). [`run`] then watches Nodes and calls
//! [`NodeNetwork::sync_peers`] with the full peer set whenever it changes, every
//! [`RESYNC_INTERVAL`], at once when the VXLAN device is deleted (the sync recreates it with the
//! same MAC), and again after [`RETRY`] when a sync failed.
//!
//! Invariants: nothing is synced before the first complete Node listing (an agent restarting
//! against a slow API server keeps its peers' entries, and so established connections); a Node
//! without a podCIDR or annotations yet is not a peer yet (debug log, not an error); this node
//! re-publishes its annotations whenever its Node object lacks or differs from them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use r3s_cni::node::{KernelNetwork, NodeConfig, NodeError, NodeNetwork};
use r3s_cni::vxlan::annotations::{self, AnnotationError};
use r3s_cni::vxlan::peers::Peer;
use r3s_cni::vxlan::{self, Vtep, VxlanConfig};
use tracing::{debug, info, warn};

/// Periodic full sync, which also repairs anything changed behind the agent's back.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Delay before retrying a failed sync.
pub const RETRY: Duration = Duration::from_secs(2);

/// Errors bringing the overlay up.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("reading node {node}: {source}")]
    ReadNode {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("publishing the VTEP annotations of node {node}: {source}")]
    Publish {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("restoring the VTEP MAC from the node annotation: {0}")]
    Mac(#[source] vxlan::MacError),
    #[error(transparent)]
    Network(#[from] NodeError),
}

/// `--flannel-backend`: how pods on different nodes reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The VXLAN overlay (k3s's default).
    #[default]
    Vxlan,
    /// No overlay: only pods on the same node reach each other (or the user routes podCIDRs).
    None,
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "none" => Ok(Backend::None),
            other => Err(format!(
                "flannel backend {other:?} is not supported (supported: vxlan, none)"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Vxlan => "vxlan",
            Backend::None => "none",
        })
    }
}

/// The overlay settings for a node, or `None` when it gets no overlay: backend `none`, no cluster
/// network (no cluster CIDR), or a node IP other nodes cannot reach a VTEP at (IPv6 is not
/// supported yet; loopback means a single-machine cluster).
pub fn config(
    backend: Backend,
    cluster_network: bool,
    node_ip: IpAddr,
    pod_cidr: ipnet::Ipv4Net,
    mac_file: &Path,
) -> Option<VxlanConfig> {
    if backend == Backend::None || !cluster_network {
        return None;
    }
    match node_ip {
        IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
            Some(VxlanConfig::new(ip, pod_cidr, mac_file.to_path_buf()))
        }
        IpAddr::V4(ip) => {
            info!(%ip, "node IP is not reachable from other nodes: no VXLAN overlay");
            None
        }
        IpAddr::V6(ip) => {
            warn!(%ip, "the VXLAN overlay needs an IPv4 node IP: no overlay");
            None
        }
    }
}

/// The first IPv4 address of interface `iface` (`--flannel-iface`): the VTEP's address when the
/// overlay should use another interface than the one holding the node IP.
pub fn iface_ipv4(iface: &str) -> Option<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        (a.interface_name == iface)
            .then(|| a.address?.as_sockaddr_in().map(|s| s.ip()))
            .flatten()
    })
}

/// Brings the node's networking up (`KernelNetwork::start`) and, with an overlay, publishes the
/// VTEP as this Node's annotations. Returns the VTEP [`run`] keeps in sync.
pub async fn start(
    nodes: &Api<Node>,
    node_name: &str,
    cfg: NodeConfig,
) -> Result<(KernelNetwork, Option<Vtep>), OverlayError> {
    if let Some(vx) = &cfg.overlay {
        restore_mac(nodes, node_name, vx).await?;
    }
    let (net, vtep) = KernelNetwork::start(cfg).await?;
    if let (Some(v), Some(vx)) = (&vtep, &net.config().overlay) {
        publish(nodes, node_name, &annotations::for_vtep(v, vx.vni)).await?;
        info!(device = %vx.device, mac = %vxlan::mac::format_mac(&v.mac), ip = %v.node_ip, mtu = v.mtu, "VXLAN overlay up");
    }
    Ok((net, vtep))
}

/// When the MAC file is missing but the Node still publishes a MAC for our VNI, writes that MAC
/// to the file so the device keeps it.
async fn restore_mac(
    nodes: &Api<Node>,
    node_name: &str,
    vx: &VxlanConfig,
) -> Result<(), OverlayError> {
    if vx.mac_file.exists() {
        return Ok(());
    }
    let node = nodes
        .get_opt(node_name)
        .await
        .map_err(|source| OverlayError::ReadNode {
            node: node_name.to_owned(),
            source,
        })?;
    let published = node
        .and_then(|n| n.metadata.annotations)
        .and_then(|a| annotations::published_mac(&a, vx.vni));
    if let Some(mac) = published {
        info!(mac = %vxlan::mac::format_mac(&mac), "VTEP MAC file missing; reusing the MAC the node publishes");
        vxlan::mac::store(&vx.mac_file, &mac).map_err(OverlayError::Mac)?;
    }
    Ok(())
}

/// Merge-patches `wanted` into this Node's annotations.
async fn publish(
    nodes: &Api<Node>,
    node_name: &str,
    wanted: &BTreeMap<String, String>,
) -> Result<(), OverlayError> {
    let patch = serde_json::json!({"metadata": {"annotations": wanted}});
    nodes
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| OverlayError::Publish {
            node: node_name.to_owned(),
            source,
        })?;
    Ok(())
}

/// The peer a Node describes, `None` (with the reason logged) when it is not one yet.
fn peer_of(node: &Node, vni: u32) -> Option<Peer> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) else {
        debug!(
            node = name,
            "node has no podCIDR yet: not an overlay peer yet"
        );
        return None;
    };
    let empty = BTreeMap::new();
    let ann = node.metadata.annotations.as_ref().unwrap_or(&empty);
    match annotations::peer_from(cidr, ann, vni) {
        Ok(p) => Some(p),
        Err(e @ AnnotationError::Missing { .. }) => {
            debug!(node = name, "{e}: not an overlay peer yet");
            None
        }
        Err(e) => {
            warn!(node = name, "{e}: not an overlay peer");
            None
        }
    }
}

/// Aborts the overlay loop when dropped (the agent stopping, or its future dropped). The kernel
/// entries stay, so pod traffic keeps flowing while the agent is down.
#[derive(Debug)]
pub struct OverlayTask(tokio::task::JoinHandle<()>);

impl Drop for OverlayTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs [`run`] as a task on the current runtime until the returned guard is dropped.
pub fn spawn(nodes: Api<Node>, node_name: String, net: KernelNetwork, vtep: Vtep) -> OverlayTask {
    OverlayTask(tokio::spawn(run(
        nodes,
        node_name,
        net,
        vtep,
        RESYNC_INTERVAL,
        std::future::pending(),
    )))
}

/// What the loop knows about the cluster's Nodes.
#[derive(Default)]
struct View {
    /// Other nodes that are peers, by name.
    peers: BTreeMap<String, Peer>,
    /// During a (re)list: the peers seen so far; replaces `peers` at `InitDone`.
    relist: Option<BTreeMap<String, Peer>>,
    /// A complete listing has been seen; before that nothing is synced.
    listed: bool,
}

impl View {
    fn apply(&mut self, node: &Node, vni: u32) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let peer = peer_of(node, vni);
        for map in [Some(&mut self.peers), self.relist.as_mut()]
            .into_iter()
            .flatten()
        {
            match &peer {
                Some(p) => map.insert(name.clone(), p.clone()),
                None => map.remove(&name),
            };
        }
    }

    fn wanted(&self) -> Vec<Peer> {
        self.peers.values().cloned().collect()
    }
}

/// Keeps the overlay in sync with the cluster's Nodes until `shutdown` completes. Errors are
/// logged and retried; this never gives up while the agent runs. The thread's network namespace
/// must be the one `net` programs (the device watch listens in the calling thread's namespace).
pub async fn run(
    nodes: Api<Node>,
    node_name: String,
    net: KernelNetwork,
    vtep: Vtep,
    resync: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let Some(vx) = net.config().overlay.clone() else {
        warn!("overlay loop started without an overlay configured");
        return;
    };
    let published = annotations::for_vtep(&vtep, vx.vni);
    let mut events = watcher(nodes.clone(), watcher::Config::default()).boxed();
    let mut deletions = match vxlan::watch::device_deletions(&vx.device) {
        Ok(s) => s.boxed(),
        Err(e) => {
            warn!("cannot watch the VXLAN device for deletion (periodic sync only): {e}");
            futures::stream::pending().boxed()
        }
    };
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry, shutdown);
    let mut retrying = false;
    let mut view = View::default();
    // The peer set last programmed successfully.
    let mut synced: Option<Vec<Peer>> = None;

    loop {
        let mut force = false;
        tokio::select! {
            _ = &mut shutdown => break,
            ev = events.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    Ok(watcher::Event::Init) => view.relist = Some(BTreeMap::new()),
                    Ok(watcher::Event::InitApply(n)) | Ok(watcher::Event::Apply(n)) => {
                        if n.metadata.name.as_deref() == Some(node_name.as_str()) {
                            republish_if_needed(&nodes, &node_name, &n, &published).await;
                        } else {
                            view.apply(&n, vx.vni);
                        }
                    }
                    Ok(watcher::Event::Delete(n)) => {
                        let name = n.metadata.name.unwrap_or_default();
                        view.peers.remove(&name);
                        if let Some(r) = view.relist.as_mut() {
                            r.remove(&name);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(r) = view.relist.take() {
                            view.peers = r;
                        }
                        view.listed = true;
                    }
                    Err(e) => {
                        // The watcher re-lists by itself; the kernel keeps the last peers meanwhile.
                        warn!("node watch: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Some(()) = deletions.next() => {
                info!(device = %vx.device, "VXLAN device deleted; recreating it");
                force = true;
            }
            _ = tick.tick() => force = true,
            _ = &mut retry, if retrying => force = true,
        }
        if !view.listed {
            continue;
        }
        let wanted = view.wanted();
        if !force && synced.as_ref() == Some(&wanted) {
            continue;
        }
        match net.sync_peers(&wanted).await {
            Ok(report) => {
                let removed =
                    report.removed_routes + report.removed_neighbours + report.removed_fdb;
                if synced.as_ref() != Some(&wanted) || removed > 0 {
                    info!(
                        peers = report.peers,
                        removed_routes = report.removed_routes,
                        removed_neighbours = report.removed_neighbours,
                        removed_fdb = report.removed_fdb,
                        "overlay peers synced"
                    );
                }
                synced = Some(wanted);
                retrying = false;
            }
            Err(e) => {
                warn!("syncing overlay peers (retrying in {RETRY:?}): {e}");
                synced = None;
                retrying = true;
                retry.as_mut().reset(tokio::time::Instant::now() + RETRY);
            }
        }
    }
}

/// Patches this node's VTEP annotations back when its Node object lacks them or differs.
async fn republish_if_needed(
    nodes: &Api<Node>,
    node_name: &str,
    node: &Node,
    published: &BTreeMap<String, String>,
) {
    let empty = BTreeMap::new();
    let have = node.metadata.annotations.as_ref().unwrap_or(&empty);
    if published.iter().all(|(k, v)| have.get(k) == Some(v)) {
        return;
    }
    info!("node's VTEP annotations are missing or changed; publishing them again");
    if let Err(e) = publish(nodes, node_name, published).await {
        warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ann: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "annotations": ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            },
            "spec": {"podCIDR": cidr},
        }))
        .expect("valid node")
    }

    fn published(mac: &str, ip: &str) -> Vec<(&'static str, String)> {
        vec![
            (annotations::BACKEND_TYPE, "vxlan".into()),
            (
                annotations::BACKEND_DATA,
                format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
            ),
            (annotations::PUBLIC_IP, ip.into()),
        ]
    }

    fn with(cidr: &str, ann: &[(&'static str, String)], name: &str) -> Node {
        let pairs: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (*k, v.as_str())).collect();
        node(name, Some(cidr), &pairs)
    }

    #[test]
    fn nodes_without_cidr_or_annotations_are_not_peers_yet() {
        assert_eq!(peer_of(&node("x", None, &[]), 1), None);
        assert_eq!(peer_of(&node("x", Some("10.42.1.0/24"), &[]), 1), None);
        let ann = published("02:00:00:00:00:01", "198.51.100.1");
        let p = peer_of(&with("10.42.1.0/24", &ann, "x"), 1).expect("a peer");
        assert_eq!(p.node_ip, std::net::Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(
            peer_of(&with("10.42.1.0/24", &ann, "x"), 2),
            None,
            "other VNI"
        );
    }

    #[test]
    fn relist_replaces_peers_and_changes_apply_in_place() {
        let mut view = View::default();
        let a = published("02:00:00:00:00:0a", "198.51.100.1");
        let b = published("02:00:00:00:00:0b", "198.51.100.2");
        view.apply(&with("10.42.1.0/24", &a, "a"), 1);
        view.apply(&with("10.42.2.0/24", &b, "b"), 1);
        assert_eq!(view.wanted().len(), 2);
        // A relist that no longer holds `b` drops it at its end.
        view.relist = Some(BTreeMap::new());
        view.apply(&with("10.42.1.0/24", &a, "a"), 1);
        view.peers = view.relist.take().expect("relist in progress");
        assert_eq!(view.wanted().len(), 1);
        // Losing the annotations stops a node being a peer.
        view.apply(&node("a", Some("10.42.1.0/24"), &[]), 1);
        assert!(view.wanted().is_empty());
    }

    #[test]
    fn overlay_only_for_a_cluster_network_on_a_routable_ipv4() {
        let cidr: ipnet::Ipv4Net = "10.42.1.0/24".parse().expect("cidr");
        let mac = Path::new("/nonexistent/vtep-mac");
        let ip: IpAddr = "198.51.100.1".parse().expect("ip");
        let vx = config(Backend::Vxlan, true, ip, cidr, mac).expect("overlay");
        assert_eq!(
            (vx.device.as_str(), vx.vni, vx.port),
            (vxlan::DEFAULT_DEVICE, 1, 8472)
        );
        assert!(config(Backend::None, true, ip, cidr, mac).is_none());
        assert!(config(Backend::Vxlan, false, ip, cidr, mac).is_none());
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(config(Backend::Vxlan, true, lo, cidr, mac).is_none());
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert!(config(Backend::Vxlan, true, v6, cidr, mac).is_none());
        assert_eq!("vxlan".parse::<Backend>(), Ok(Backend::Vxlan));
        assert_eq!("none".parse::<Backend>(), Ok(Backend::None));
        assert!("host-gw".parse::<Backend>().is_err());
        assert_eq!(iface_ipv4("lo"), Some(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(iface_ipv4("r3s-no-such-iface"), None);
    }
}
