//! The VXLAN overlay between nodes, programmed as flannel's vxlan backend does (anchors.md §6):
//! one VXLAN device per node (default name `r3s.1`, after flannel's `flannel.<VNI>`), VNI 1 on UDP
//! 8472, learning off, bound to the interface that holds the node IP with that IP as the source
//! address, MTU = underlay MTU − 50, a stable VTEP MAC ([`mac`]) and the address
//! `<podCIDR network>/32` (the /32 adds no broadcast or prefix route; it only gives host→pod
//! traffic a source). Per remote node [`peers::sync`] keeps one neighbour, one FDB entry and one
//! route.
//!
//! Invariants after [`ensure`]: the device exists with exactly these parameters (an existing
//! device with other parameters is deleted and recreated, so a changed node IP takes effect), has
//! the persisted MAC and the address, and is up. No miss notifications are used: every entry is
//! programmed ahead of traffic.

pub mod annotations;
pub mod mac;
pub mod peers;
pub mod watch;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

use crate::nl::{self, Link, NlContext, NlError, ok_if_exists};

pub use mac::MacError;

/// Default device name: `r3s.<VNI>`.
pub const DEFAULT_DEVICE: &str = "r3s.1";
/// Default VNI (flannel's and k3s's).
pub const DEFAULT_VNI: u32 = 1;
/// Default UDP port (the Linux kernel's VXLAN port, flannel's default).
pub const DEFAULT_PORT: u16 = 8472;
/// VXLAN over IPv4 costs 50 bytes: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD: u32 = 50;

/// Errors of the overlay.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error(transparent)]
    Mac(#[from] MacError),
    #[error("no interface holds the node IP {ip}; the VXLAN device must be bound to it")]
    NoUnderlay { ip: Ipv4Addr },
}

/// The node's side of the overlay.
#[derive(Debug, Clone)]
pub struct VxlanConfig {
    pub device: String,
    pub vni: u32,
    pub port: u16,
    /// The node IP: the VTEP's source address; the device is bound to the link holding it.
    pub node_ip: Ipv4Addr,
    /// This node's podCIDR; the device gets `<network>/32`.
    pub pod_cidr: Ipv4Net,
    /// Where the VTEP MAC is kept (e.g. `/var/lib/r3s/agent/vtep-mac`).
    pub mac_file: PathBuf,
    /// MTU of the device; `None` means the underlay MTU − [`OVERHEAD`].
    pub mtu: Option<u32>,
}

impl VxlanConfig {
    /// k3s defaults for a node: device `r3s.1`, VNI 1, port 8472.
    pub fn new(node_ip: Ipv4Addr, pod_cidr: Ipv4Net, mac_file: PathBuf) -> VxlanConfig {
        VxlanConfig {
            device: DEFAULT_DEVICE.to_string(),
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            node_ip,
            pod_cidr: pod_cidr.trunc(),
            mac_file,
            mtu: None,
        }
    }
}

/// What a node publishes about its VTEP (flannel's backend-data + public-ip annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub node_ip: Ipv4Addr,
}

/// Finds the link that holds `ip`.
pub async fn link_with_ip(h: &Handle, ip: Ipv4Addr) -> Result<Option<Link>, NlError> {
    let addrs: Vec<_> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .op(|| "listing addresses".to_string())?;
    let index = addrs.iter().find_map(|m| {
        m.attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == ip))
            .then_some(m.header.index)
    });
    match index {
        Some(i) => nl::link_by_index(h, i).await,
        None => Ok(None),
    }
}

/// Whether an existing device matches what we would create.
fn compatible(link: &Link, cfg: &VxlanConfig, underlay: u32) -> bool {
    if link.kind != Some(InfoKind::Vxlan) {
        return false;
    }
    let Some(InfoData::Vxlan(infos)) = link.info_data() else {
        return false;
    };
    let has = |want: &InfoVxlan| infos.iter().any(|i| i == want);
    has(&InfoVxlan::Id(cfg.vni))
        && has(&InfoVxlan::Port(cfg.port))
        && has(&InfoVxlan::Local(cfg.node_ip))
        && has(&InfoVxlan::Link(underlay))
        && has(&InfoVxlan::Learning(false))
}

/// Creates or repairs the VXLAN device; returns the VTEP to publish.
pub async fn ensure(h: &Handle, cfg: &VxlanConfig) -> Result<Vtep, VxlanError> {
    let mac = mac::load_or_create(&cfg.mac_file)?;
    let underlay = link_with_ip(h, cfg.node_ip)
        .await?
        .ok_or(VxlanError::NoUnderlay { ip: cfg.node_ip })?;
    let mtu = cfg
        .mtu
        .unwrap_or_else(|| underlay.mtu.unwrap_or(1500).saturating_sub(OVERHEAD));

    let mut existing = nl::link_by_name(h, &cfg.device).await?;
    if let Some(link) = &existing
        && !compatible(link, cfg, underlay.index)
    {
        tracing::info!(device = %cfg.device, "VXLAN device has other parameters; recreating it");
        nl::delete_link(h, &cfg.device).await?;
        existing = None;
    }
    if existing.is_none() {
        let msg = LinkVxlan::new(&cfg.device, cfg.vni)
            .dev(underlay.index)
            .local(cfg.node_ip)
            .port(cfg.port)
            .learning(false)
            .mtu(mtu)
            .address(mac.to_vec())
            .build();
        ok_if_exists(h.link().add(msg).execute().await)
            .op(|| format!("creating VXLAN device {}", cfg.device))?;
        disable_ipv6(&cfg.device);
    }
    let link = nl::require_link(h, &cfg.device).await?;
    if link.mac != Some(mac) {
        h.link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .op(|| format!("setting VTEP MAC on {}", cfg.device))?;
    }
    nl::ensure_mtu(h, &link, mtu).await?;
    nl::ensure_addr(h, &link, cfg.pod_cidr.network(), 32).await?;
    if !link.up {
        nl::set_up(h, &link).await?;
    }
    Ok(Vtep {
        index: link.index,
        mac,
        mtu,
        node_ip: cfg.node_ip,
    })
}

/// The overlay carries IPv4 only; without this the kernel would autoconfigure IPv6 and send
/// router solicitations into the tunnel (flannel does the same). Best effort: IPv6 may be off.
fn disable_ipv6(device: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, b"1") {
        tracing::debug!(%path, error = %e, "could not disable IPv6 on the VXLAN device");
    }
}
