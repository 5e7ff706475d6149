//! The agent's seam on the real kernel: `KernelNetwork::start` sets up bridge, VXLAN device and
//! masquerade in a simulated host; pods are added and removed through the trait; a restart (a new
//! `KernelNetwork` over the same data) keeps the VTEP MAC and the pods' addresses and links.
#![cfg(target_os = "linux")]

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;

use r3s_cni::ipam::Owner;
use r3s_cni::netns;
use r3s_cni::network::BridgeNetwork;
use r3s_cni::node::{KernelNetwork, NodeConfig, NodeNetwork};
use r3s_cni::vxlan::VxlanConfig;
use r3s_cni::vxlan::peers::Peer;
use r3s_cni::vxlan::watch::device_deletions;
use support::Netns;

#[test]
fn start_add_sync_restart_keeps_state() {
    if !support::prerequisites(true) {
        return;
    }
    let host = Netns::new("h");
    // The node's underlay link: a dummy-free setup, a veth whose peer stays in the host.
    host.ip(&[
        "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
    ]);
    host.ip(&["addr", "add", "198.51.100.7/24", "dev", "eth9"]);
    host.ip(&["link", "set", "eth9", "mtu", "1400", "up"]);
    host.ip(&["link", "set", "eth9p", "up"]);
    let pod = Netns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let pod_cidr = "10.42.8.0/24".parse().unwrap();
    let cfg = NodeConfig {
        pods: BridgeNetwork {
            name: "r3s".into(),
            bridge: "r3s0".into(),
            subnet: pod_cidr,
            mtu: 1450,
            ipam_dir: dir.path().join("ipam"),
        },
        overlay: Some(VxlanConfig::new(
            Ipv4Addr::new(198, 51, 100, 7),
            pod_cidr,
            dir.path().join("vtep-mac"),
        )),
        masquerade: Some("10.42.0.0/16".parse().unwrap()),
    };
    let peer = Peer {
        pod_cidr: "10.42.9.0/24".parse().unwrap(),
        vtep_mac: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
        node_ip: Ipv4Addr::new(198, 51, 100, 8),
    };

    let (vtep1, link1) = netns::block_on_in(&host.path, || async {
        let (node, vtep) = KernelNetwork::start(cfg.clone()).await.unwrap();
        let link = node.add_pod("ctr-n", &pod.path, "eth0").await.unwrap();
        node.check_pod("ctr-n", &pod.path, "eth0").await.unwrap();
        let report = node.sync_peers(std::slice::from_ref(&peer)).await.unwrap();
        assert_eq!(report.peers, 1);

        // Someone deletes the device: the watcher says so, and a sync restores it and the peer.
        let mut deletions = Box::pin(device_deletions("r3s.1").unwrap());
        host.ip(&["link", "del", "r3s.1"]);
        // A guard against hanging forever if no event comes, not a timing assertion.
        tokio::time::timeout(Duration::from_secs(60), deletions.next())
            .await
            .expect("deletion event")
            .expect("stream open");
        node.sync_peers(std::slice::from_ref(&peer)).await.unwrap();
        (vtep.unwrap(), link)
    })
    .unwrap();
    assert_eq!(link1.address.to_string(), "10.42.8.2/24");
    // Underlay MTU 1400: VXLAN device 1350, and the pods (configured 1450) are capped to it.
    assert_eq!(vtep1.mtu, 1350);
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1350"));
    assert!(host.ip(&["link", "show", "r3s0"]).contains("mtu 1350"));
    let routes = host.ip(&["route", "show", "dev", "r3s.1"]);
    assert!(routes.contains("10.42.9.0/24 via 10.42.9.0"), "{routes}");
    assert!(pod.ping("10.42.8.1"), "pod -> gateway");

    // Restart: a new instance over the same data dir and kernel state.
    let (vtep2, link2) = netns::block_on_in(&host.path, || async {
        let (node, vtep) = KernelNetwork::start(cfg.clone()).await.unwrap();
        node.check_pod("ctr-n", &pod.path, "eth0").await.unwrap();
        let link = node.add_pod("ctr-n", &pod.path, "eth0").await.unwrap();
        let report = node.sync_peers(&[]).await.unwrap();
        assert_eq!(
            (
                report.removed_routes,
                report.removed_neighbours,
                report.removed_fdb
            ),
            (1, 1, 1)
        );
        // GC keeping this pod changes nothing; the explicit DEL then removes it.
        let keep = HashSet::from([Owner::new("ctr-n", "eth0")]);
        assert!(node.gc_pods(&keep).await.unwrap().is_empty());
        node.del_pod("ctr-n", "eth0").await.unwrap();
        (vtep.unwrap(), link)
    })
    .unwrap();
    assert_eq!(vtep2.mac, vtep1.mac, "VTEP MAC survives a restart");
    assert_eq!(link2, link1, "the pod keeps its address and link");
    assert!(!pod.ip_try(&["link", "show", "eth0"]).status.success());
    assert_eq!(host.ip(&["route", "show", "dev", "r3s.1"]).trim(), "");
}
