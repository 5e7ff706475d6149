//! The dummy link that makes the cluster DNS address local to every node (`r3s-dns` holding
//! `10.43.0.10/32`), so the node's own DNS server answers the pods there without any Service,
//! DNAT rule or pod: a pod's packet to 10.43.0.10 leaves its veth, reaches the host through the
//! bridge, and is delivered locally like kube-proxy's IPVS mode does with its `kube-ipvs0` dummy.
//!
//! Invariants after [`ensure`]: a link of kind dummy with the name exists, is up and carries the
//! address as a /32 (other addresses on it are left alone). An existing link of another kind with
//! that name is an error, never replaced. [`remove`] deletes the link; a missing one is success.
//! Netlink sockets come from [`r3s_cni::netns::connect`] and the lookups from [`r3s_cni::nl`], so
//! the cni crate's netlink conventions hold here too; only the dummy kind is created here.

use std::net::IpAddr;

use netlink_packet_route::link::InfoKind;
use r3s_cni::nl::{self, NlError};
use rtnetlink::{Handle, LinkDummy};

/// The link name r3s uses unless configured otherwise.
pub const DEFAULT_LINK: &str = "r3s-dns";

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
    #[error(transparent)]
    Netlink(#[from] NlError),
}

/// Creates or repairs the dummy link `name` holding `ip/32`, up.
pub async fn ensure(h: &Handle, name: &str, ip: IpAddr) -> Result<(), LinkError> {
    let IpAddr::V4(v4) = ip else {
        return Err(LinkError::Ipv6(ip));
    };
    let link = match nl::link_by_name(h, name).await? {
        Some(link) => link,
        None => {
            let added = h.link().add(LinkDummy::new(name).build()).execute().await;
            if let Err(source) = added {
                // Someone made it between the lookup and the add: check it below.
                if nl::link_by_name(h, name).await?.is_none() {
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
    Ok(())
}

/// Deletes the link `name` (and so its address).
pub async fn remove(h: &Handle, name: &str) -> Result<(), LinkError> {
    Ok(nl::delete_link(h, name).await?)
}
