//! One pod's link: a veth pair whose host end is a hairpin port of the bridge and whose other end
//! is the pod's interface (normally `eth0`) inside the pod's network namespace, with the pod's
//! address, `lo` up and a default route via the bridge's gateway address.
//!
//! The host end's name is derived from (container id, ifname), so DEL finds it even when the pod's
//! namespace is already gone, and a repeated ADD finds the half-built pair of an earlier attempt.
//! Every step checks before it acts, so [`attach`] and [`detach`] are idempotent.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns;
use crate::nl::{self, Link, NlContext, NlError, ok_if_exists};

/// What [`attach`] built: enough for a CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub host_veth: String,
    pub host_mac: Option<[u8; 6]>,
    pub ifname: String,
    pub mac: Option<[u8; 6]>,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// FNV-1a: a stable, dependency-free hash for interface names (not for security).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The host-side veth name for a pod interface: `r3sv` + 11 hex digits (15 bytes, IFNAMSIZ − 1).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "r3sv{:011x}",
        fnv1a(&format!("{container_id}/{ifname}")) & 0xfff_ffff_ffff
    )
}

/// The temporary name of the pod end while it is still in the host namespace.
fn temp_peer_name(container_id: &str, ifname: &str) -> String {
    format!(
        "r3sp{:011x}",
        fnv1a(&format!("{container_id}/{ifname}")) & 0xfff_ffff_ffff
    )
}

/// Parameters of one attachment.
#[derive(Debug, Clone)]
pub struct AttachSpec<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// The pod's address with the subnet's prefix length (e.g. `10.42.3.2/24`).
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Creates (or completes) the pod's veth pair and configures both ends.
pub async fn attach(h: &Handle, bridge: &Link, spec: &AttachSpec<'_>) -> Result<PodLink, NlError> {
    let host_name = host_veth_name(spec.container_id, spec.ifname);
    let peer_name = temp_peer_name(spec.container_id, spec.ifname);
    let pod = netns::connect(Some(spec.netns))?;

    if nl::link_by_name(h, &host_name).await?.is_none() {
        h.link()
            .add(LinkVeth::new(&host_name, &peer_name).mtu(spec.mtu).build())
            .execute()
            .await
            .op(|| format!("creating veth pair {host_name}/{peer_name}"))?;
    }
    // Move the pod end into the pod's namespace if an earlier step has not done so yet.
    if let Some(peer) = nl::link_by_name(h, &peer_name).await? {
        let ns = netns::open(spec.netns)?;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer.index)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .op(|| format!("moving {peer_name} into {}", spec.netns.display()))?;
    }
    // Inside the pod: rename to the requested interface name (only possible while down).
    if let Some(peer) = nl::link_by_name(&pod, &peer_name).await? {
        pod.link()
            .set(
                LinkUnspec::new_with_index(peer.index)
                    .down()
                    .name(spec.ifname.to_string())
                    .build(),
            )
            .execute()
            .await
            .op(|| format!("renaming {peer_name} to {}", spec.ifname))?;
    }

    let host = nl::require_link(h, &host_name).await?;
    nl::ensure_mtu(h, &host, spec.mtu).await?;
    if host.controller != Some(bridge.index) {
        h.link()
            .set(
                LinkUnspec::new_with_index(host.index)
                    .controller(bridge.index)
                    .build(),
            )
            .execute()
            .await
            .op(|| format!("attaching {host_name} to {}", bridge.name))?;
    }
    // Hairpin lets a pod reach itself through a Service address that maps back to it.
    h.link()
        .set_port(LinkBridgePort::new(host.index).hairpin(true).build())
        .execute()
        .await
        .op(|| format!("enabling hairpin on {host_name}"))?;
    nl::set_up(h, &host).await?;

    let eth = nl::require_link(&pod, spec.ifname).await?;
    nl::ensure_mtu(&pod, &eth, spec.mtu).await?;
    nl::ensure_addr(&pod, &eth, spec.address.addr(), spec.address.prefix_len()).await?;
    nl::set_up(&pod, &eth).await?;
    if let Some(lo) = nl::link_by_name(&pod, "lo").await? {
        nl::set_up(&pod, &lo).await?;
    }
    ok_if_exists(
        pod.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                    .gateway(spec.gateway)
                    .output_interface(eth.index)
                    .build(),
            )
            .execute()
            .await,
    )
    .op(|| format!("adding default route via {} in the pod", spec.gateway))?;

    let host = nl::require_link(h, &host_name).await?;
    let eth = nl::require_link(&pod, spec.ifname).await?;
    Ok(PodLink {
        host_veth: host_name,
        host_mac: host.mac,
        ifname: spec.ifname.to_string(),
        mac: eth.mac,
        address: spec.address,
        gateway: spec.gateway,
    })
}

/// Removes the pod's veth pair (deleting the host end deletes both). Missing is success.
pub async fn detach(h: &Handle, container_id: &str, ifname: &str) -> Result<(), NlError> {
    nl::delete_link(h, &host_veth_name(container_id, ifname)).await?;
    // A pod end stranded in the host namespace by an interrupted ADD goes too.
    nl::delete_link(h, &temp_peer_name(container_id, ifname)).await
}

/// Verifies that the attachment is as [`attach`] left it (CNI CHECK).
pub async fn check(h: &Handle, bridge: &Link, spec: &AttachSpec<'_>) -> Result<(), NlError> {
    let host_name = host_veth_name(spec.container_id, spec.ifname);
    let host = nl::require_link(h, &host_name).await?;
    if host.controller != Some(bridge.index) {
        return Err(NlError::NotFound {
            what: "bridge port",
            name: format!("{host_name} on {}", bridge.name),
        });
    }
    let pod = netns::connect(Some(spec.netns))?;
    let eth = nl::require_link(&pod, spec.ifname).await?;
    let addrs = nl::ipv4_addrs(&pod, eth.index).await?;
    if !addrs.contains(&(spec.address.addr(), spec.address.prefix_len())) {
        return Err(NlError::NotFound {
            what: "pod address",
            name: format!("{} on {}", spec.address, spec.ifname),
        });
    }
    let routes: Vec<_> = pod
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .op(|| "listing pod routes".to_string())?;
    let has_default = routes.iter().any(|r| {
        r.header.destination_prefix_length == 0
            && r.attributes.iter().any(|a| {
                matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(g)) if *g == spec.gateway)
            })
    });
    if !has_default {
        return Err(NlError::NotFound {
            what: "default route",
            name: format!("via {}", spec.gateway),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, temp_peer_name("abc", "eth0"));
    }
}
