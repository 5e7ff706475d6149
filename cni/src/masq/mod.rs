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

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::nft::{Conn, Expr, FAMILY_IP, Hook, NftError, Verdict, expr::m, hooks};

/// Table name r3s owns for masquerading.
pub const DEFAULT_TABLE: &str = "r3s-masq";

/// Errors talking to nf_tables.
pub type MasqError = NftError;

/// The masquerade rules for one cluster CIDR.
#[derive(Debug, Clone)]
pub struct Masquerade {
    pub table: String,
    pub cluster_cidr: Ipv4Net,
}

const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;

fn match_cidr(offset: u32, net: Ipv4Net, eq: bool) -> Vec<Expr> {
    m::ip_in(offset, net.network().octets(), net.prefix_len(), eq)
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
        pod_to_pod.push(Expr::Verdict(Verdict::Return));
        let mut egress = Vec::new();
        egress.extend(match_cidr(IPV4_SADDR, self.cluster_cidr, true));
        egress.extend(match_cidr(IPV4_DADDR, multicast, false));
        egress.push(Expr::Masquerade);

        let mut conn = Conn::open()?;
        let mut batch = conn.batch(FAMILY_IP);
        batch.reset_table(&self.table);
        batch.add_table(&self.table);
        let hook = Hook {
            kind: "nat",
            hooknum: hooks::POSTROUTING,
            priority: hooks::PRI_SRCNAT,
        };
        batch.add_chain(&self.table, "postrouting", Some(hook));
        batch.add_rule(&self.table, "postrouting", &pod_to_pod);
        batch.add_rule(&self.table, "postrouting", &egress);
        conn.commit(batch, "the masquerade table")
    }

    /// Deletes the table; absent is success.
    pub fn remove(&self) -> Result<(), MasqError> {
        let mut conn = Conn::open()?;
        let mut batch = conn.batch(FAMILY_IP);
        batch.reset_table(&self.table);
        conn.commit(batch, "deleting the masquerade table")
    }
}
