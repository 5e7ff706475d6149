//! Connection tracking entries, over ctnetlink (`NETLINK_NETFILTER`, subsystem
//! `NFNL_SUBSYS_CTNETLINK`): what the service proxy needs when a UDP endpoint goes away. A UDP
//! "connection" has no end the kernel can see, so its conntrack entry (and the DNAT to the old
//! backend recorded in it) lives on as long as packets keep coming: a client talking to a
//! Service would keep sending to a backend that no longer exists. [`delete_udp_replies_from`]
//! removes those entries, so the next packet is NATed afresh by the current rules.
//!
//! How: one dump of the IPv4 table, then a delete per matching entry by its original tuple
//! (copied from the dump). No crate in the lockfile speaks ctnetlink (`netlink-packet-netfilter`
//! covers only nflog), and the messages are small, so they are built here by hand as the
//! nf_tables layer ([`crate::nft`]) builds its own. An entry that vanished between the dump and
//! the delete (`ENOENT`) is not an error.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const AF_INET: u8 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
const UDP: u8 = 17;

/// Errors talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("opening a conntrack socket in a network namespace: {0}")]
    Netns(#[source] crate::netns::NetnsError),
    #[error("{what}: the kernel answered {source}")]
    Kernel {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed ctnetlink answer")]
    Malformed,
}

/// One conntrack entry, as far as this module cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub proto: u8,
    /// Source of the reply direction: the backend a DNATed flow was sent to.
    pub reply_src: Option<(Ipv4Addr, u16)>,
    /// The raw `CTA_TUPLE_ORIG` attribute (header included), sent back to delete the entry.
    orig: Vec<u8>,
    /// The raw `CTA_ZONE` attribute, if any.
    zone: Option<Vec<u8>>,
}

/// Deletes every UDP conntrack entry whose reply comes from one of `backends` (ip, port), in
/// the network namespace at `netns` (`None`: the caller's). Returns how many were deleted.
pub fn delete_udp_replies_from(
    netns: Option<&Path>,
    backends: &BTreeSet<(Ipv4Addr, u16)>,
) -> Result<usize, ConntrackError> {
    if backends.is_empty() {
        return Ok(0);
    }
    let work = || -> Result<usize, ConntrackError> {
        let mut conn = Ctnl::open()?;
        let mut deleted = 0;
        for e in conn.dump()? {
            let hit = e.proto == UDP && e.reply_src.is_some_and(|b| backends.contains(&b));
            if hit && conn.delete(&e)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    };
    match netns {
        None => work(),
        Some(p) => crate::netns::run_in(p, work).map_err(ConntrackError::Netns)?,
    }
}

/// Every IPv4 conntrack entry of the caller's namespace.
pub fn dump() -> Result<Vec<Entry>, ConntrackError> {
    Ctnl::open()?.dump()
}

struct Ctnl {
    socket: Socket,
    seq: u32,
}

impl Ctnl {
    fn open() -> Result<Ctnl, ConntrackError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        socket.bind_auto().map_err(ConntrackError::Socket)?;
        let tv = nix::libc::timeval {
            tv_sec: Duration::from_secs(10).as_secs() as nix::libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a live timeval of the size passed; the fd is owned by `socket`.
        let rc = unsafe {
            nix::libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_RCVTIMEO,
                (&tv as *const nix::libc::timeval).cast(),
                std::mem::size_of::<nix::libc::timeval>() as nix::libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ConntrackError::Socket(std::io::Error::last_os_error()));
        }
        Ok(Ctnl { socket, seq: 1 })
    }

    fn message(&mut self, msg_type: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + body.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version, resource id (big-endian).
        m.extend_from_slice(&[AF_INET, 0, 0, 0]);
        m.extend_from_slice(body);
        m
    }

    fn send(&self, m: &[u8]) -> Result<(), ConntrackError> {
        self.socket.send(m, 0).map_err(ConntrackError::Socket)?;
        Ok(())
    }

    fn dump(&mut self) -> Result<Vec<Entry>, ConntrackError> {
        let m = self.message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, &[]);
        self.send(&m)?;
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(ConntrackError::Socket)?;
            for msg in messages(&buf[..n]).ok_or(ConntrackError::Malformed)? {
                match msg.ty {
                    NLMSG_DONE => return Ok(entries),
                    NLMSG_ERROR => {
                        let code = error_code(msg.payload).ok_or(ConntrackError::Malformed)?;
                        if code != 0 {
                            return Err(ConntrackError::Kernel {
                                what: "listing conntrack entries",
                                source: std::io::Error::from_raw_os_error(-code),
                            });
                        }
                    }
                    _ => {
                        let attrs = msg.payload.get(4..).ok_or(ConntrackError::Malformed)?;
                        if let Some(e) = parse_entry(attrs) {
                            entries.push(e);
                        }
                    }
                }
            }
        }
    }

    /// Deletes `e`; false if it was already gone.
    fn delete(&mut self, e: &Entry) -> Result<bool, ConntrackError> {
        let mut body = e.orig.clone();
        if let Some(z) = &e.zone {
            body.extend_from_slice(z);
        }
        let m = self.message(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, &body);
        let seq = self.seq;
        self.send(&m)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(ConntrackError::Socket)?;
            for msg in messages(&buf[..n]).ok_or(ConntrackError::Malformed)? {
                if msg.ty != NLMSG_ERROR || msg.seq != seq {
                    continue;
                }
                return match error_code(msg.payload).ok_or(ConntrackError::Malformed)? {
                    0 => Ok(true),
                    c if -c == nix::libc::ENOENT => Ok(false),
                    c => Err(ConntrackError::Kernel {
                        what: "deleting a conntrack entry",
                        source: std::io::Error::from_raw_os_error(-c),
                    }),
                };
            }
        }
    }
}

struct Msg<'a> {
    ty: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The netlink messages of one datagram; `None` if malformed.
fn messages(mut data: &[u8]) -> Option<Vec<Msg<'_>>> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        if len < 16 || len > data.len() {
            return None;
        }
        out.push(Msg {
            ty: u16::from_ne_bytes(data[4..6].try_into().ok()?),
            seq: u32::from_ne_bytes(data[8..12].try_into().ok()?),
            payload: &data[16..len],
        });
        data = data.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Some(out)
}

fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

/// (type without flags, payload, the whole attribute) of each attribute in `data`.
fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((ty, &data[4..len], &data[..len]));
        data = data.get((len + 3) & !3..).unwrap_or(&[]);
    }
    out
}

fn find(data: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(data)
        .into_iter()
        .find(|(t, _, _)| *t == ty)
        .map(|(_, p, _)| p)
}

fn parse_entry(data: &[u8]) -> Option<Entry> {
    let all = attrs(data);
    let orig = all.iter().find(|(t, _, _)| *t == CTA_TUPLE_ORIG)?;
    let proto = *find(find(orig.1, CTA_TUPLE_PROTO)?, CTA_PROTO_NUM)?.first()?;
    let reply_src = all
        .iter()
        .find(|(t, _, _)| *t == CTA_TUPLE_REPLY)
        .and_then(|(_, reply, _)| {
            let ip: [u8; 4] = find(find(reply, CTA_TUPLE_IP)?, CTA_IP_V4_SRC)?
                .try_into()
                .ok()?;
            let port: [u8; 2] = find(find(reply, CTA_TUPLE_PROTO)?, CTA_PROTO_SRC_PORT)?
                .try_into()
                .ok()?;
            Some((Ipv4Addr::from(ip), u16::from_be_bytes(port)))
        });
    let zone = all
        .iter()
        .find(|(t, _, _)| *t == CTA_ZONE)
        .map(|(_, _, whole)| whole.to_vec());
    let mut orig_raw = orig.2.to_vec();
    orig_raw.resize(orig_raw.len().next_multiple_of(4), 0);
    Some(Entry {
        proto,
        reply_src,
        orig: orig_raw,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let len = 4 + payload.len();
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }

    fn tuple(ty: u16, src: [u8; 4], sport: u16) -> Vec<u8> {
        let ip = attr(CTA_TUPLE_IP | 0x8000, &attr(CTA_IP_V4_SRC, &src));
        let mut p = attr(CTA_PROTO_NUM, &[UDP]);
        p.extend(attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()));
        let mut body = ip;
        body.extend(attr(CTA_TUPLE_PROTO | 0x8000, &p));
        attr(ty | 0x8000, &body)
    }

    #[test]
    fn parses_proto_and_reply_source() {
        let mut data = tuple(CTA_TUPLE_ORIG, [10, 42, 0, 5], 40000);
        data.extend(tuple(CTA_TUPLE_REPLY, [10, 42, 1, 7], 53));
        let e = parse_entry(&data).expect("entry");
        assert_eq!(e.proto, UDP);
        assert_eq!(e.reply_src, Some((Ipv4Addr::new(10, 42, 1, 7), 53)));
        assert_eq!(e.orig, tuple(CTA_TUPLE_ORIG, [10, 42, 0, 5], 40000));
        assert!(parse_entry(&[1, 0]).is_none());
    }
}
