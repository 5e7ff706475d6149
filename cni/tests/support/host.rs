//! A simulated node: a network namespace with the pod bridge network and a VXLAN config, plus
//! helpers that run library code inside it and inspect it with `ip`/`bridge`.

use std::net::Ipv4Addr;
use std::path::Path;

use r3s_cni::netns;
use r3s_cni::network::BridgeNetwork;
use r3s_cni::nl;
use r3s_cni::vxlan::peers::{self, Peer};
use r3s_cni::vxlan::{self, Vtep, VxlanConfig};

use super::Netns;

pub struct Host {
    pub ns: Netns,
    pub net: BridgeNetwork,
    pub vx: VxlanConfig,
}

impl Host {
    pub fn new(tag: &str, node_ip: Ipv4Addr, pod_cidr: &str, dir: &Path) -> Host {
        let ns = Netns::new(tag);
        let pod_cidr = pod_cidr.parse().expect("pod cidr");
        Host {
            net: BridgeNetwork {
                name: "r3s".into(),
                bridge: "r3s0".into(),
                subnet: pod_cidr,
                mtu: 1450,
                ipam_dir: dir.join(format!("{tag}/ipam")),
            },
            vx: VxlanConfig::new(node_ip, pod_cidr, dir.join(format!("{tag}/vtep-mac"))),
            ns,
        }
    }

    /// Runs library code inside this host's namespace.
    pub fn run<T: Send, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce(rtnetlink::Handle) -> F + Send,
    ) -> T {
        netns::block_on_in(&self.ns.path, || async {
            let h = netns::connect(None).expect("netlink socket");
            f(h).await
        })
        .expect("enter host namespace")
    }

    pub fn add_pod(&self, id: &str, pod: &Netns) -> Ipv4Addr {
        self.run(|h| async move { self.net.add(&h, id, &pod.path, "eth0").await })
            .expect("CNI ADD")
            .address
            .addr()
    }

    pub fn vtep(&self) -> Vtep {
        self.run(|h| async move { vxlan::ensure(&h, &self.vx).await })
            .expect("VXLAN device")
    }

    /// This host as the others see it: through the Node annotations it would publish.
    pub fn peer(&self, vtep: &Vtep) -> Peer {
        let published = vxlan::annotations::for_vtep(vtep, self.vx.vni);
        vxlan::annotations::peer_from(&self.vx.pod_cidr.to_string(), &published, self.vx.vni)
            .expect("own annotations describe a peer")
    }

    pub fn sync(&self, peers: &[Peer]) -> peers::SyncReport {
        self.run(|h| async move { peers::sync(&h, &self.vx, peers).await })
            .expect("sync")
            .1
    }

    /// (rx, tx) packet counters of the VXLAN device.
    pub fn counters(&self) -> (u64, u64) {
        let link = self
            .run(|h| async move { nl::require_link(&h, vxlan::DEFAULT_DEVICE).await })
            .expect("VXLAN device present");
        (link.rx_packets, link.tx_packets)
    }

    pub fn show(&self, args: &[&str]) -> String {
        self.ns.ip(args)
    }

    pub fn fdb(&self) -> String {
        super::must(&[
            "bridge",
            "-n",
            &self.ns.name,
            "fdb",
            "show",
            "dev",
            vxlan::DEFAULT_DEVICE,
        ])
    }
}

/// Two hosts joined by a veth underlay (198.51.100.1/24 and .2/24), pod CIDRs 10.42.1.0/24 and
/// 10.42.2.0/24.
pub fn two_hosts(dir: &Path) -> (Host, Host) {
    let a = Host::new("A", Ipv4Addr::new(198, 51, 100, 1), "10.42.1.0/24", dir);
    let b = Host::new("B", Ipv4Addr::new(198, 51, 100, 2), "10.42.2.0/24", dir);
    a.ns.ip(&[
        "link", "add", "under", "type", "veth", "peer", "name", "under", "netns", &b.ns.name,
    ]);
    a.ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "under"]);
    b.ns.ip(&["addr", "add", "198.51.100.2/24", "dev", "under"]);
    a.ns.ip(&["link", "set", "under", "up"]);
    b.ns.ip(&["link", "set", "under", "up"]);
    (a, b)
}
