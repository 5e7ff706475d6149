//! The node's networking as the agent sees it: one seam, [`NodeNetwork`], with the kernel-backed
//! [`KernelNetwork`] (bridge + IPAM + veths, VXLAN overlay, masquerade) and the recording
//! [`crate::fake::FakeNodeNetwork`] for agent tests that are not about networking.
//!
//! Start-up order in [`KernelNetwork::start`]: netlink socket → VXLAN device (its VTEP is what the
//! agent publishes as node annotations; its MTU caps the pods') → bridge (+ IPv4 forwarding) →
//! masquerade table.
//! Every later call is idempotent, so the agent may call [`NodeNetwork::sync_peers`] whenever
//! Nodes change and also on a timer (which recreates a deleted VXLAN device).

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;

use ipnet::Ipv4Net;
use rtnetlink::Handle;

use crate::ipam::Owner;
use crate::masq::{MasqError, Masquerade};
use crate::netns::{self, NetnsError};
use crate::network::{BridgeNetwork, NetworkError};
use crate::pod::PodLink;
use crate::vxlan::peers::{self, Peer, SyncReport};
use crate::vxlan::{self, Vtep, VxlanConfig, VxlanError};

/// Errors of node-level networking.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Vxlan(#[from] VxlanError),
    #[error(transparent)]
    Masq(#[from] MasqError),
    #[error("masquerade task failed to run")]
    MasqTask(#[source] tokio::task::JoinError),
    #[error("this node has no VXLAN overlay configured")]
    NoOverlay,
}

/// Everything the node's networking needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub pods: BridgeNetwork,
    /// `None` on a single-node cluster: no VXLAN device is made.
    pub overlay: Option<VxlanConfig>,
    /// The cluster CIDR (k3s default 10.42.0.0/16); `None` disables masquerading.
    pub masquerade: Option<Ipv4Net>,
}

/// The operations the agent performs on the node's networking.
pub trait NodeNetwork: Send + Sync {
    /// CNI ADD for a pod sandbox.
    fn add_pod(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<PodLink, NodeError>> + Send;
    /// CNI DEL; repeating it, or calling it after the namespace is gone, is fine.
    fn del_pod(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// CNI CHECK.
    fn check_pod(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> impl Future<Output = Result<(), NodeError>> + Send;
    /// DEL for every pod address whose owner is not in `keep` (after a crash or restart).
    fn gc_pods(
        &self,
        keep: &HashSet<Owner>,
    ) -> impl Future<Output = Result<Vec<Owner>, NodeError>> + Send;
    /// Makes the overlay hold exactly `peers` (other nodes; this node is skipped if present).
    fn sync_peers(
        &self,
        peers: &[Peer],
    ) -> impl Future<Output = Result<SyncReport, NodeError>> + Send;
}

/// The real thing, programming the kernel of the namespace it was started in.
#[derive(Debug, Clone)]
pub struct KernelNetwork {
    handle: Handle,
    cfg: NodeConfig,
}

impl KernelNetwork {
    /// Sets the node up; returns the VTEP to publish when an overlay is configured.
    /// With an overlay, the pods' MTU is capped at the VXLAN device's (underlay − 50), so a pod
    /// never sends frames the tunnel would have to fragment or drop.
    pub async fn start(mut cfg: NodeConfig) -> Result<(KernelNetwork, Option<Vtep>), NodeError> {
        let handle = netns::connect(None)?;
        let vtep = match &cfg.overlay {
            Some(vx) => Some(vxlan::ensure(&handle, vx).await?),
            None => None,
        };
        if let Some(v) = &vtep {
            cfg.pods.mtu = cfg.pods.mtu.min(v.mtu);
        }
        cfg.pods.setup(&handle).await?;
        if let Some(cidr) = cfg.masquerade {
            // Blocking netlink round trip; it must run in this thread's namespace, so not
            // spawn_blocking (another thread could sit in another namespace in tests).
            Masquerade::new(cidr).apply()?;
        }
        Ok((KernelNetwork { handle, cfg }, vtep))
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl NodeNetwork for KernelNetwork {
    async fn add_pod(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<PodLink, NodeError> {
        Ok(self
            .cfg
            .pods
            .add(&self.handle, container_id, netns, ifname)
            .await?)
    }

    async fn del_pod(&self, container_id: &str, ifname: &str) -> Result<(), NodeError> {
        Ok(self
            .cfg
            .pods
            .del(&self.handle, container_id, ifname)
            .await?)
    }

    async fn check_pod(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<(), NodeError> {
        Ok(self
            .cfg
            .pods
            .check(&self.handle, container_id, netns, ifname)
            .await?)
    }

    async fn gc_pods(&self, keep: &HashSet<Owner>) -> Result<Vec<Owner>, NodeError> {
        Ok(self.cfg.pods.gc(&self.handle, |o| keep.contains(o)).await?)
    }

    async fn sync_peers(&self, peers: &[Peer]) -> Result<SyncReport, NodeError> {
        let vx = self.cfg.overlay.as_ref().ok_or(NodeError::NoOverlay)?;
        Ok(peers::sync(&self.handle, vx, peers).await?.1)
    }
}
