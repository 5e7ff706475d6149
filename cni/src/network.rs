//! The node's pod network as one object: bridge + host-local IPAM + per-pod veth. This is the
//! in-process API the agent calls for CNI ADD/DEL/CHECK, and the one the `r3s-cni` binary wraps.
//!
//! Invariants: an address is allocated before any link is made and released if the attachment
//! fails, so a failed first ADD leaks neither (a failed repeated ADD leaves the pod as it was); DEL releases the address even when the namespace or the
//! links are already gone; both are safe to repeat.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use rtnetlink::Handle;

use crate::bridge;
use crate::ipam::{Ipam, IpamError, Owner};
use crate::nl::{Link, NlError};
use crate::pod::{self, AttachSpec, PodLink};

/// Errors of pod network operations.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("pod {container_id} interface {ifname} holds no address in network {network}")]
    NoLease {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error("enabling IPv4 forwarding ({path})")]
    Forwarding {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Configuration of the node's pod network.
#[derive(Debug, Clone)]
pub struct BridgeNetwork {
    /// Name of the network; also the IPAM subdirectory.
    pub name: String,
    /// The bridge device (default [`bridge::DEFAULT_BRIDGE`]).
    pub bridge: String,
    /// The node's podCIDR (e.g. `10.42.3.0/24`); `.1` is the gateway.
    pub subnet: Ipv4Net,
    /// MTU of the bridge and every veth: the underlay MTU − 50 when a VXLAN overlay is used.
    pub mtu: u32,
    /// Directory of the IPAM store (e.g. `/var/lib/r3s/agent/cni/networks`).
    pub ipam_dir: PathBuf,
}

impl BridgeNetwork {
    pub fn ipam(&self) -> Result<Ipam, IpamError> {
        Ipam::open(&self.ipam_dir, &self.name, self.subnet)
    }

    /// The gateway address with the subnet's prefix, as the bridge carries it.
    pub fn gateway(&self) -> Ipv4Net {
        Ipv4Net::new(
            crate::ipam::gateway_of(self.subnet),
            self.subnet.prefix_len(),
        )
        .expect("prefix length taken from a valid Ipv4Net")
    }

    /// Creates or repairs the bridge and turns on IPv4 forwarding in the current namespace.
    pub async fn setup(&self, h: &Handle) -> Result<Link, NetworkError> {
        enable_ip_forward()?;
        enable_bridge_netfilter();
        Ok(bridge::ensure(h, &self.bridge, self.gateway(), self.mtu).await?)
    }

    /// CNI ADD: allocates (or finds) the pod's address and builds its link.
    pub async fn add(
        &self,
        h: &Handle,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<PodLink, NetworkError> {
        let ipam = self.ipam()?;
        let owner = Owner::new(container_id, ifname);
        // A repeated ADD for a pod that is already wired must not tear it down on failure.
        let existed = ipam.lookup(&owner)?.is_some();
        let ip = ipam.allocate(&owner)?;
        let result = async {
            let bridge = self.setup(h).await?;
            let spec = self.spec(container_id, netns, ifname, ip);
            Ok::<_, NetworkError>(pod::attach(h, &bridge, &spec).await?)
        }
        .await;
        if result.is_err() && !existed {
            // Undo in reverse; the original error is the one worth reporting.
            let _ = pod::detach(h, container_id, ifname).await;
            let _ = ipam.release(&owner);
        }
        result
    }

    /// CNI DEL: removes the pod's link and releases its address. Repeating it is harmless.
    pub async fn del(
        &self,
        h: &Handle,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), NetworkError> {
        pod::detach(h, container_id, ifname).await?;
        self.ipam()?.release(&Owner::new(container_id, ifname))?;
        Ok(())
    }

    /// Garbage collection (CNI 1.1's GC, for the agent after a crash or restart): runs DEL for
    /// every lease whose owner `keep` rejects, i.e. pods the agent no longer knows. Returns the
    /// owners removed.
    pub async fn gc(
        &self,
        h: &Handle,
        keep: impl Fn(&Owner) -> bool,
    ) -> Result<Vec<Owner>, NetworkError> {
        let mut removed = Vec::new();
        for (_, owner) in self.ipam()?.leases()? {
            if !keep(&owner) {
                self.del(h, &owner.container_id, &owner.ifname).await?;
                removed.push(owner);
            }
        }
        Ok(removed)
    }

    /// CNI CHECK: the pod holds a lease and its link is as ADD left it.
    pub async fn check(
        &self,
        h: &Handle,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<(), NetworkError> {
        let ip = self
            .ipam()?
            .lookup(&Owner::new(container_id, ifname))?
            .ok_or_else(|| NetworkError::NoLease {
                network: self.name.clone(),
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            })?;
        let bridge = crate::nl::require_link(h, &self.bridge).await?;
        Ok(pod::check(h, &bridge, &self.spec(container_id, netns, ifname, ip)).await?)
    }

    fn spec<'a>(
        &self,
        container_id: &'a str,
        netns: &'a Path,
        ifname: &'a str,
        ip: Ipv4Addr,
    ) -> AttachSpec<'a> {
        AttachSpec {
            container_id,
            netns,
            ifname,
            address: Ipv4Net::new(ip, self.subnet.prefix_len())
                .expect("prefix length taken from a valid Ipv4Net"),
            gateway: crate::ipam::gateway_of(self.subnet),
            mtu: self.mtu,
        }
    }
}

/// Sets `net.bridge.bridge-nf-call-iptables = 1` where the kernel has br_netfilter: without it a
/// pod's reply to another pod on the same bridge, reached through a Service's ClusterIP, bypasses
/// conntrack and is never un-NATed, so the connection hangs. Absent sysctl: a warning, since
/// everything but same-node Service traffic still works.
pub fn enable_bridge_netfilter() {
    let path = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !path.exists() {
        tracing::warn!(
            "br_netfilter is not loaded: pods cannot reach Services whose endpoints are on the same node; run 'modprobe br_netfilter'"
        );
        return;
    }
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(path, b"1") {
        tracing::warn!("enabling {}: {e}", path.display());
    }
}

/// Sets `net.ipv4.ip_forward = 1` for the calling thread's network namespace (the sysctl is per
/// namespace and resolved against the opening thread). Pods on other nodes are reached by routing.
pub fn enable_ip_forward() -> Result<(), NetworkError> {
    let path = PathBuf::from("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(b"1"))
        .map_err(|source| NetworkError::Forwarding { path, source })
}
