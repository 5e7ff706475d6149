//! Masquerade of pod egress with nftables, spoken directly over `NETLINK_NETFILTER` (no `nft`, no
//! iptables, no libnftnl: the Pi fleet's iptables-legacy-vs-nft trouble cannot reach us).
//!
//! The table r3s owns (equivalent `nft` syntax; `<cluster>` is e.g. 10.42.0.0/16):
//! ```text
//! table ip r3s-masq {
//!   chain postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr <cluster> ip daddr <cluster> return          # pod-to-pod keeps its source
//!     ip saddr <cluster> ip daddr != 224.0.0.0/4 masquerade fully-random # egress as the node
//!   }
//! }
//! ```
//! Invariants: [`Masquerade::apply`] replaces the whole table in one nf_tables transaction (a
//! batch of add-table, delete-table, add-table, chain, rules), so the rules are never seen half
//! written and repeating it leaves exactly one copy; [`Masquerade::remove`] deletes the table and
//! succeeds when it is already gone. Both act on the calling thread's network namespace.

mod wire;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use wire::{Batch, Expr};

/// Table name r3s owns for masquerading.
pub const DEFAULT_TABLE: &str = "r3s-masq";

/// Errors talking to nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("netfilter netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("nf_tables rejected {what}: {source}")]
    Rejected {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed netlink answer from nf_tables")]
    Malformed,
}

/// The masquerade rules for one cluster CIDR.
#[derive(Debug, Clone)]
pub struct Masquerade {
    pub table: String,
    pub cluster_cidr: Ipv4Net,
}

const NFPROTO_IPV4: u8 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
/// `srcnat` priority.
const NF_IP_PRI_NAT_SRC: i32 = 100;
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;

fn match_cidr(offset: u32, net: Ipv4Net, eq: bool) -> [Expr; 3] {
    [
        Expr::Payload { offset, len: 4 },
        Expr::Mask(net.netmask().octets()),
        Expr::Cmp {
            eq,
            data: net.network().octets(),
        },
    ]
}

impl Masquerade {
    pub fn new(cluster_cidr: Ipv4Net) -> Masquerade {
        Masquerade {
            table: DEFAULT_TABLE.to_string(),
            cluster_cidr: cluster_cidr.trunc(),
        }
    }

    /// Installs (or atomically replaces) the table.
    pub fn apply(&self) -> Result<(), MasqError> {
        let multicast = Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("4 <= 32");
        let mut pod_to_pod = Vec::new();
        pod_to_pod.extend(match_cidr(IPV4_SADDR, self.cluster_cidr, true));
        pod_to_pod.extend(match_cidr(IPV4_DADDR, self.cluster_cidr, true));
        pod_to_pod.push(Expr::Return);
        let mut egress = Vec::new();
        egress.extend(match_cidr(IPV4_SADDR, self.cluster_cidr, true));
        egress.extend(match_cidr(IPV4_DADDR, multicast, false));
        egress.push(Expr::Masquerade);

        let mut batch = Batch::new(NFPROTO_IPV4);
        // Add-then-delete makes the delete succeed whether or not the table existed.
        batch.new_table(&self.table);
        batch.del_table(&self.table);
        batch.new_table(&self.table);
        batch.new_nat_chain(
            &self.table,
            "postrouting",
            NF_INET_POST_ROUTING,
            NF_IP_PRI_NAT_SRC,
        );
        batch.new_rule(&self.table, "postrouting", &pod_to_pod);
        batch.new_rule(&self.table, "postrouting", &egress);
        send(batch, "the masquerade table")
    }

    /// Deletes the table; absent is success.
    pub fn remove(&self) -> Result<(), MasqError> {
        let mut batch = Batch::new(NFPROTO_IPV4);
        batch.new_table(&self.table);
        batch.del_table(&self.table);
        send(batch, "deleting the masquerade table")
    }
}

/// Sends one transaction and waits for every acknowledgement; the first error wins.
fn send(batch: Batch, what: &'static str) -> Result<(), MasqError> {
    let (bytes, expected) = batch.finish();
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(MasqError::Socket)?;
    socket.bind_auto().map_err(MasqError::Socket)?;
    socket.send(&bytes, 0).map_err(MasqError::Socket)?;
    let mut acks = 0;
    let mut first_error = None;
    let mut buf = vec![0u8; 65536];
    while acks < expected {
        // After an error the kernel may not acknowledge the rest: drain without blocking.
        let flags = if first_error.is_some() {
            libc_dontwait()
        } else {
            0
        };
        let n = match socket.recv(&mut &mut buf[..], flags) {
            Ok(n) => n,
            Err(e) if first_error.is_some() && e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(MasqError::Socket(e)),
        };
        for code in wire::parse_acks(&buf[..n]).ok_or(MasqError::Malformed)? {
            acks += 1;
            if code != 0 && first_error.is_none() {
                first_error = Some(std::io::Error::from_raw_os_error(-code));
            }
        }
    }
    match first_error {
        Some(source) => Err(MasqError::Rejected { what, source }),
        None => Ok(()),
    }
}

/// `MSG_DONTWAIT` (0x40 on every Linux architecture).
fn libc_dontwait() -> i32 {
    0x40
}
