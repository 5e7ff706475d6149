//! Making the cluster DNS address local to every node, so the node's own DNS server answers the
//! pods there without any Service, DNAT rule or pod: a pod's packet to 10.43.0.10 leaves its veth,
//! reaches the host through the bridge, and is delivered locally (as kube-proxy's IPVS mode does
//! with its `kube-ipvs0` dummy, and node-local-dns with its `nodelocaldns` one).
//!
//! Where the address goes ([`Placement`]): on a dummy link r3s owns (`r3s-dns`, the address as a
//! /32), so it is easy to see and to remove whole; on a kernel built without the dummy driver
//! (`CONFIG_DUMMY` unset, as on some minimal VM kernels) on the loopback link instead, which
//! every kernel has, again as a /32.
//!
//! Invariants after [`ensure`]: the address is on exactly the returned placement, which is up. An
//! existing link of another kind with the dummy's name is an error, never replaced. [`remove`]
//! takes away only what [`ensure`] placed (the dummy link, or the one address on `lo`); a missing
//! one is success. Netlink sockets come from [`r3s_cni::netns::connect`] and lookups from
//! [`r3s_cni::nl`], so the cni crate's netlink conventions hold here too.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::link::InfoKind;
use r3s_cni::nl::{self, NlError};
use rtnetlink::{Handle, LinkDummy};

/// The link name r3s uses unless configured otherwise.
pub const DEFAULT_LINK: &str = "r3s-dns";

/// Where [`ensure`] put the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On its own dummy link of this name.
    Dummy(String),
    /// On `lo`, the kernel having no dummy driver.
    Loopback(Ipv4Addr),
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the cluster DNS address {0} is IPv6; only IPv4 is supported on the DNS link")]
    Ipv6(IpAddr),
    #[error("link {name:?} exists and is not a dummy device")]
    WrongKind { name: String },
    #[error("creating dummy link {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("removing {addr}/32 from lo: {source}")]
    DelAddr {
        addr: Ipv4Addr,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Netlink(#[from] NlError),
}

/// Whether a netlink error says the kernel does not know the link kind.
fn unsupported_kind(e: &rtnetlink::Error) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error() == Some(libc::EOPNOTSUPP),
        _ => false,
    }
}

/// Puts `ip/32` on the dummy link `name` (created, or repaired, up), or on `lo` when the kernel
/// cannot make dummy links.
pub async fn ensure(h: &Handle, name: &str, ip: IpAddr) -> Result<Placement, LinkError> {
    let IpAddr::V4(v4) = ip else {
        return Err(LinkError::Ipv6(ip));
    };
    let link = match nl::link_by_name(h, name).await? {
        Some(link) => link,
        None => {
            let added = h.link().add(LinkDummy::new(name).build()).execute().await;
            match added {
                Ok(()) => {}
                Err(e) if unsupported_kind(&e) => {
                    let lo = nl::require_link(h, "lo").await?;
                    nl::ensure_addr(h, &lo, v4, 32).await?;
                    if !lo.up {
                        nl::set_up(h, &lo).await?;
                    }
                    return Ok(Placement::Loopback(v4));
                }
                // Someone made it between the lookup and the add: checked below.
                Err(_) if nl::link_by_name(h, name).await?.is_some() => {}
                Err(source) => {
                    return Err(LinkError::Create {
                        name: name.to_string(),
                        source,
                    });
                }
            }
            nl::require_link(h, name).await?
        }
    };
    if link.kind != Some(InfoKind::Dummy) {
        return Err(LinkError::WrongKind {
            name: name.to_string(),
        });
    }
    nl::ensure_addr(h, &link, v4, 32).await?;
    if !link.up {
        nl::set_up(h, &link).await?;
    }
    Ok(Placement::Dummy(name.to_string()))
}

/// Takes away what [`ensure`] placed.
pub async fn remove(h: &Handle, placement: &Placement) -> Result<(), LinkError> {
    match placement {
        Placement::Dummy(name) => Ok(nl::delete_link(h, name).await?),
        Placement::Loopback(addr) => {
            let Some(lo) = nl::link_by_name(h, "lo").await? else {
                return Ok(());
            };
            let del = |source| LinkError::DelAddr {
                addr: *addr,
                source,
            };
            let msgs: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(lo.index)
                .set_address_filter(IpAddr::V4(*addr))
                .set_prefix_length_filter(32)
                .execute()
                .try_collect()
                .await
                .map_err(del)?;
            for m in msgs.into_iter().filter(|m| m.header.index == lo.index) {
                h.address().del(m).execute().await.map_err(del)?;
            }
            Ok(())
        }
    }
}
