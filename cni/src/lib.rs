//! Pod networking for r3s: a bridge with host-local IPAM per node and a VXLAN overlay between nodes,
//! programmed through netlink (the role flannel and the bridge/host-local CNI plugins play in k3s).
//!
//! Module map:
//! - [`ipam`]: host-local address store on disk (one file per lease), the podCIDR's `.1` is the gateway.
//! - [`nft`]: nf_tables over `NETLINK_NETFILTER` (expressions, sets, verdict maps, atomic batches).
//! - [`masq`]: masquerade of pod egress (not pod-to-pod) as one nftables table, built on [`nft`].
//! - [`netns`]: running code in, and opening netlink sockets bound to, a network namespace.
//! - [`nl`]: small rtnetlink helpers (link lookup, addresses, idempotent add/delete) and [`nl::NlError`].
//! - [`bridge`]: the node bridge (`r3s0`) with the gateway address.
//! - [`pod`]: one pod's veth pair: hairpin bridge port on the host, `eth0` + address + default route inside.
//! - [`network`]: [`network::BridgeNetwork`], bridge + IPAM + pod links as CNI ADD/DEL/CHECK in-process.
//! - [`plugin`]: the CNI spec 1.0 protocol (config, `CNI_*` env, result and error JSON) used by `r3s-cni`.
//! - [`vxlan`]: the overlay device (`r3s.1`, VNI 1, UDP 8472) with a persisted VTEP MAC ([`vxlan::mac`]),
//!   and [`vxlan::peers::sync`], which keeps one neighbour + FDB entry + route per remote node;
//!   [`vxlan::annotations`] publishes a VTEP and reads peers in flannel's Node annotation format;
//!   [`vxlan::watch`] reports deletions of the device so a sync can recreate it at once.
//!
//! - [`node`]: the agent's seam, trait [`node::NodeNetwork`] (add/del/check pod, sync peers), and
//!   [`node::KernelNetwork`], which starts bridge + overlay + masquerade in order.
//! - [`fake`]: [`fake::FakeNodeNetwork`], a recording double of that trait for agent tests.
//!
//! Boundary: only this crate opens netlink sockets; nothing here shells out to `ip` or `bridge`.
#![cfg(target_os = "linux")]

pub mod bridge;
pub mod conntrack;
pub mod fake;
pub mod ipam;
pub mod masq;
pub mod netns;
pub mod network;
pub mod nft;
pub mod nl;
pub mod node;
pub mod plugin;
pub mod pod;
pub mod vxlan;
