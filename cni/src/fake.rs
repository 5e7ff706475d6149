//! A recording test double of [`NodeNetwork`] for agent tests that are not about networking (the
//! networking itself is tested against the real kernel). It records every call in order and hands
//! out addresses with the same rules as the real IPAM (gateway `.1`, first pod `.2`, idempotent
//! per (container id, ifname), released on DEL), but touches neither the kernel nor the disk.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

use crate::ipam::{IpamError, Owner, gateway_of};
use crate::network::NetworkError;
use crate::node::{NodeError, NodeNetwork};
use crate::pod::{PodLink, host_veth_name};
use crate::vxlan::peers::{Peer, SyncReport};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Add {
        container_id: String,
        netns: PathBuf,
        ifname: String,
    },
    Del {
        container_id: String,
        ifname: String,
    },
    Check {
        container_id: String,
        ifname: String,
    },
    Gc {
        keep: Vec<Owner>,
    },
    Sync {
        peers: Vec<Peer>,
    },
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    leases: BTreeMap<(String, String), Ipv4Addr>,
    peers: Vec<Peer>,
}

/// See the module doc.
#[derive(Debug)]
pub struct FakeNodeNetwork {
    subnet: Ipv4Net,
    state: Mutex<State>,
}

impl FakeNodeNetwork {
    pub fn new(subnet: Ipv4Net) -> FakeNodeNetwork {
        FakeNodeNetwork {
            subnet: subnet.trunc(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread poisons the lock; the recorded state is still what we want.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Current leases: ((container id, ifname), address).
    pub fn leases(&self) -> Vec<((String, String), Ipv4Addr)> {
        self.state()
            .leases
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The peers of the last sync.
    pub fn peers(&self) -> Vec<Peer> {
        self.state().peers.clone()
    }
}

impl NodeNetwork for FakeNodeNetwork {
    async fn add_pod(
        &self,
        container_id: &str,
        netns: &Path,
        ifname: &str,
    ) -> Result<PodLink, NodeError> {
        let mut st = self.state();
        st.calls.push(Call::Add {
            container_id: container_id.to_string(),
            netns: netns.to_path_buf(),
            ifname: ifname.to_string(),
        });
        let key = (container_id.to_string(), ifname.to_string());
        let gateway = gateway_of(self.subnet);
        let ip = match st.leases.get(&key) {
            Some(ip) => *ip,
            None => {
                let used: Vec<Ipv4Addr> = st.leases.values().copied().collect();
                let ip = self
                    .subnet
                    .hosts()
                    .find(|ip| *ip != gateway && !used.contains(ip))
                    .ok_or_else(|| {
                        NodeError::Network(NetworkError::Ipam(IpamError::Exhausted {
                            network: "fake".into(),
                            subnet: self.subnet,
                            used: used.len(),
                        }))
                    })?;
                st.leases.insert(key, ip);
                ip
            }
        };
        Ok(PodLink {
            host_veth: host_veth_name(container_id, ifname),
            host_mac: None,
            ifname: ifname.to_string(),
            mac: None,
            address: Ipv4Net::new(ip, self.subnet.prefix_len()).expect("prefix of a valid Ipv4Net"),
            gateway,
        })
    }

    async fn del_pod(&self, container_id: &str, ifname: &str) -> Result<(), NodeError> {
        let mut st = self.state();
        st.calls.push(Call::Del {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        });
        st.leases
            .remove(&(container_id.to_string(), ifname.to_string()));
        Ok(())
    }

    async fn check_pod(
        &self,
        container_id: &str,
        _netns: &Path,
        ifname: &str,
    ) -> Result<(), NodeError> {
        let mut st = self.state();
        st.calls.push(Call::Check {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        });
        let key = (container_id.to_string(), ifname.to_string());
        if st.leases.contains_key(&key) {
            Ok(())
        } else {
            Err(NodeError::Network(NetworkError::NoLease {
                network: "fake".into(),
                container_id: key.0,
                ifname: key.1,
            }))
        }
    }

    async fn gc_pods(&self, keep: &HashSet<Owner>) -> Result<Vec<Owner>, NodeError> {
        let mut st = self.state();
        let mut sorted: Vec<Owner> = keep.iter().cloned().collect();
        sorted.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        st.calls.push(Call::Gc { keep: sorted });
        let mut removed = Vec::new();
        st.leases.retain(|(id, ifname), _| {
            let owner = Owner::new(id.clone(), ifname.clone());
            let stays = keep.contains(&owner);
            if !stays {
                removed.push(owner);
            }
            stays
        });
        Ok(removed)
    }

    async fn sync_peers(&self, peers: &[Peer]) -> Result<SyncReport, NodeError> {
        let mut st = self.state();
        st.calls.push(Call::Sync {
            peers: peers.to_vec(),
        });
        let removed = st.peers.iter().filter(|p| !peers.contains(p)).count();
        st.peers = peers.to_vec();
        Ok(SyncReport {
            peers: peers.len(),
            removed_routes: removed,
            removed_neighbours: removed,
            removed_fdb: removed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_calls_and_follows_ipam_rules() {
        let fake = FakeNodeNetwork::new("10.42.3.0/24".parse().unwrap());
        let ns = Path::new("/run/netns/x");
        let a = fake.add_pod("a", ns, "eth0").await.unwrap();
        let again = fake.add_pod("a", ns, "eth0").await.unwrap();
        let b = fake.add_pod("b", ns, "eth0").await.unwrap();
        assert_eq!(a.address.to_string(), "10.42.3.2/24");
        assert_eq!(again, a);
        assert_eq!(b.address.to_string(), "10.42.3.3/24");
        fake.check_pod("a", ns, "eth0").await.unwrap();
        fake.del_pod("a", "eth0").await.unwrap();
        assert!(fake.check_pod("a", ns, "eth0").await.is_err());
        assert_eq!(fake.leases().len(), 1);
        assert_eq!(fake.calls().len(), 6);
        assert!(matches!(&fake.calls()[4], Call::Del { container_id, .. } if container_id == "a"));
        let removed = fake.gc_pods(&HashSet::new()).await.unwrap();
        assert_eq!(removed, vec![Owner::new("b", "eth0")]);
        assert!(fake.leases().is_empty());
    }
}
