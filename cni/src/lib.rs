//! Pod networking for r3s: a bridge with host-local IPAM per node and a VXLAN overlay between nodes,
//! programmed through netlink (the role flannel and the bridge/host-local CNI plugins play in k3s).
//!
//! Not built yet: see issue 7. The crate exists so the workspace layout matches ARCHITECTURE.md.
