//! Thin helpers over an rtnetlink [`Handle`]: look links up, read their state, add addresses and
//! turn "already there"/"already gone" answers into success where the caller wants idempotence.
//!
//! Invariant: this module and the modules that use it are the only code in r3s that speaks
//! netlink; nothing here shells out to `ip` or `bridge`.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec};

use crate::netns::NetnsError;

/// Errors of netlink operations, with the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error("netlink: {op}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("link {name:?} exists but is not a {want} device")]
    WrongKind { name: String, want: &'static str },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

/// Attaches the failed operation to an rtnetlink error.
pub(crate) trait NlContext<T> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T, NlError>;
}

impl<T> NlContext<T> for Result<T, rtnetlink::Error> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T, NlError> {
        self.map_err(|source| NlError::Netlink { op: op(), source })
    }
}

/// The errno of a netlink error answer, if it is one.
pub(crate) fn errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error().map(Errno::from_raw),
        _ => None,
    }
}

/// Maps `EEXIST` to success (for adds that may be repeated).
pub(crate) fn ok_if_exists(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
        other => other,
    }
}

/// Maps "no such thing" answers to success (for deletes that may be repeated).
pub(crate) fn ok_if_gone(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e)
            if matches!(
                errno(&e),
                Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// What r3s needs to know about a link.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// The bridge (or other controller) this link is attached to.
    pub controller: Option<u32>,
    pub kind: Option<InfoKind>,
    pub rx_packets: u64,
    pub tx_packets: u64,
    msg: LinkMessage,
}

impl Link {
    fn from_msg(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: None,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
            rx_packets: 0,
            tx_packets: 0,
            msg: msg.clone(),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                LinkAttribute::Address(a) => link.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::Stats64(s) => {
                    link.rx_packets = s.rx_packets;
                    link.tx_packets = s.tx_packets;
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The kind-specific data (`IFLA_INFO_DATA`) the kernel reported, if any.
    pub fn info_data(&self) -> Option<&InfoData> {
        self.msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(d) => Some(d),
                _ => None,
            }),
            _ => None,
        })
    }
}

/// Looks a link up by name; `None` if there is no such link.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>, NlError> {
    let mut stream = h.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(msg) => Ok(msg.map(Link::from_msg)),
        Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(source) => Err(NlError::Netlink {
            op: format!("looking up link {name}"),
            source,
        }),
    }
}

/// Looks a link up by index; `None` if there is no such link.
pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<Link>, NlError> {
    let mut stream = h.link().get().match_index(index).execute();
    match stream.try_next().await {
        Ok(msg) => Ok(msg.map(Link::from_msg)),
        Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(source) => Err(NlError::Netlink {
            op: format!("looking up link #{index}"),
            source,
        }),
    }
}

/// Like [`link_by_name`] but a missing link is an error.
pub async fn require_link(h: &Handle, name: &str) -> Result<Link, NlError> {
    link_by_name(h, name)
        .await?
        .ok_or_else(|| NlError::NotFound {
            what: "link",
            name: name.to_string(),
        })
}

/// Sets a link up.
pub async fn set_up(h: &Handle, link: &Link) -> Result<(), NlError> {
    h.link()
        .set(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .op(|| format!("setting {} up", link.name))
}

/// Sets a link's MTU if it differs.
pub async fn ensure_mtu(h: &Handle, link: &Link, mtu: u32) -> Result<(), NlError> {
    if link.mtu == Some(mtu) {
        return Ok(());
    }
    h.link()
        .set(LinkUnspec::new_with_index(link.index).mtu(mtu).build())
        .execute()
        .await
        .op(|| format!("setting MTU {mtu} on {}", link.name))
}

/// The IPv4 addresses (with prefix length) on a link.
pub async fn ipv4_addrs(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NlError> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .op(|| format!("listing addresses of link #{index}"))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            let prefix = m.header.prefix_len;
            m.attributes.into_iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((ip, prefix)),
                _ => None,
            })
        })
        .collect())
}

/// Ensures `addr/prefix` is on the link (adding it if missing; other addresses are left alone).
pub async fn ensure_addr(
    h: &Handle,
    link: &Link,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), NlError> {
    if ipv4_addrs(h, link.index).await?.contains(&(addr, prefix)) {
        return Ok(());
    }
    ok_if_exists(
        h.address()
            .add(link.index, IpAddr::V4(addr), prefix)
            .execute()
            .await,
    )
    .op(|| format!("adding {addr}/{prefix} to {}", link.name))
}

/// Deletes a link by name; a missing link is success.
pub async fn delete_link(h: &Handle, name: &str) -> Result<(), NlError> {
    let Some(link) = link_by_name(h, name).await? else {
        return Ok(());
    };
    ok_if_gone(h.link().del(link.index).execute().await).op(|| format!("deleting link {name}"))
}
