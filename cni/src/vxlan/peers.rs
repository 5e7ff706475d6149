//! Per-peer overlay state, level-triggered: [`sync`] makes the kernel hold exactly one neighbour,
//! one FDB entry and one route per remote node given, and nothing else on the VXLAN device.
//!
//! For a peer with podCIDR `10.42.2.0/24`, VTEP MAC `M` and node IP `P` (anchors.md §6):
//! - neighbour `10.42.2.0 lladdr M nud permanent` on the device (no ARP across the tunnel);
//! - FDB `M dst P self permanent` (which underlay host gets frames for `M`);
//! - route `10.42.2.0/24 via 10.42.2.0 dev <device> onlink`, added last so the kernel never has to
//!   resolve the gateway before the neighbour exists.
//!
//! Every desired entry is written with replace semantics (so a changed MAC or node IP is applied
//! in place and a repeat changes nothing); entries on the device that no desired peer accounts for
//! are deleted, route first. The device itself is ensured first, so a deleted device is recreated
//! (with the same MAC) and fully reprogrammed by the next sync.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{Vtep, VxlanConfig, VxlanError, ensure};
use crate::nl::{NlContext, NlError, ok_if_gone};

/// A remote node as the overlay needs it (from its podCIDR and flannel-style annotations).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub pod_cidr: Ipv4Net,
    pub vtep_mac: [u8; 6],
    pub node_ip: Ipv4Addr,
}

impl Peer {
    /// The peer's VTEP address on the overlay: its podCIDR's network address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }
}

/// What a sync changed (deletions), for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub peers: usize,
    pub removed_routes: usize,
    pub removed_neighbours: usize,
    pub removed_fdb: usize,
}

fn route_dst(r: &RouteMessage) -> Option<Ipv4Net> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            Ipv4Net::new(*ip, r.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn neigh_dst(n: &NeighbourMessage) -> Option<Ipv4Addr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn neigh_lladdr(n: &NeighbourMessage) -> Option<[u8; 6]> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => l.as_slice().try_into().ok(),
        _ => None,
    })
}

/// Makes the overlay match `peers` (this node's own entry, if present, is ignored).
pub async fn sync(
    h: &Handle,
    cfg: &VxlanConfig,
    peers: &[Peer],
) -> Result<(Vtep, SyncReport), VxlanError> {
    let vtep = ensure(h, cfg).await?;
    let peers: Vec<&Peer> = peers
        .iter()
        .filter(|p| p.node_ip != cfg.node_ip && p.pod_cidr.trunc() != cfg.pod_cidr)
        .collect();
    let mut report = SyncReport {
        peers: peers.len(),
        ..SyncReport::default()
    };

    // Add or change, in flannel's order: neighbour, FDB, route.
    for p in &peers {
        h.neighbours()
            .add(vtep.index, IpAddr::V4(p.gateway()))
            .link_layer_address(&p.vtep_mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .op(|| format!("neighbour {} -> {:?}", p.gateway(), p.vtep_mac))?;
        h.neighbours()
            .add_bridge(vtep.index, &p.vtep_mac)
            .destination(IpAddr::V4(p.node_ip))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .op(|| format!("FDB {:?} -> {}", p.vtep_mac, p.node_ip))?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(p.pod_cidr.network(), p.pod_cidr.prefix_len())
                    .gateway(p.gateway())
                    .output_interface(vtep.index)
                    .onlink()
                    .build(),
            )
            .replace()
            .execute()
            .await
            .op(|| format!("route {} via {}", p.pod_cidr, p.gateway()))?;
    }

    // Remove what no peer accounts for: routes, then neighbours, then FDB entries.
    let want_routes: HashSet<Ipv4Net> = peers.iter().map(|p| p.pod_cidr.trunc()).collect();
    let want_neigh: HashSet<Ipv4Addr> = peers.iter().map(|p| p.gateway()).collect();
    let want_fdb: HashSet<[u8; 6]> = peers.iter().map(|p| p.vtep_mac).collect();

    for r in overlay_routes(h, vtep.index).await? {
        if route_dst(&r).is_some_and(|d| !want_routes.contains(&d)) {
            ok_if_gone(h.route().del(r).execute().await)
                .op(|| "deleting stale route".to_string())?;
            report.removed_routes += 1;
        }
    }
    for n in device_neighbours(h, vtep.index, AddressFamily::Inet).await? {
        let permanent = n.header.state == NeighbourState::Permanent;
        if permanent && neigh_dst(&n).is_some_and(|d| !want_neigh.contains(&d)) {
            ok_if_gone(h.neighbours().del(n).execute().await)
                .op(|| "deleting stale neighbour".to_string())?;
            report.removed_neighbours += 1;
        }
    }
    for n in device_neighbours(h, vtep.index, AddressFamily::Bridge).await? {
        // Only unicast entries with a remote are ours; the kernel may list its own
        // all-zeros/multicast default entries, which we leave alone.
        let ours = neigh_lladdr(&n).is_some_and(|m| m[0] & 0x01 == 0 && m != [0; 6]);
        if ours && neigh_lladdr(&n).is_some_and(|m| !want_fdb.contains(&m)) {
            ok_if_gone(h.neighbours().del(n).execute().await)
                .op(|| "deleting stale FDB entry".to_string())?;
            report.removed_fdb += 1;
        }
    }
    Ok((vtep, report))
}

/// Routes in the main table that leave through the overlay device.
pub async fn overlay_routes(h: &Handle, index: u32) -> Result<Vec<RouteMessage>, NlError> {
    let routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .op(|| "listing routes".to_string())?;
    Ok(routes
        .into_iter()
        .filter(|r| r.header.table == RouteHeader::RT_TABLE_MAIN)
        .filter(|r| route_oif(r) == Some(index))
        .collect())
}

/// Neighbour (Inet) or FDB (Bridge) entries of one device.
pub async fn device_neighbours(
    h: &Handle,
    index: u32,
    family: AddressFamily,
) -> Result<Vec<NeighbourMessage>, NlError> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .op(|| format!("listing {family:?} neighbours"))?;
    Ok(all
        .into_iter()
        .filter(|n| n.header.ifindex == index)
        .collect())
}
