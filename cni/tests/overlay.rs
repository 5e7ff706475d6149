//! The VXLAN overlay on the real kernel: two simulated hosts (network namespaces joined by a veth
//! underlay, 198.51.100.1/24 and .2/24), each with the bridge, the VXLAN device and one pod. After
//! `sync` on both, a pod on host A reaches a pod on host B through the tunnel; removing the peer
//! removes its route, neighbour and FDB entry; a deleted device is recreated with the same MAC.
#![cfg(target_os = "linux")]

mod support;

use std::net::Ipv4Addr;

use r3s_cni::masq::Masquerade;
use r3s_cni::netns;
use r3s_cni::node::{KernelNetwork, NodeConfig, NodeNetwork};
use r3s_cni::vxlan::peers::Peer;
use r3s_cni::vxlan::{self, VxlanConfig};
use support::Netns;
use support::host::two_hosts;

fn mac_str(mac: &[u8; 6]) -> String {
    vxlan::mac::format_mac(mac)
}

#[test]
fn pods_on_two_hosts_talk_over_vxlan_and_peers_sync() {
    if !support::prerequisites(true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_hosts(dir.path());

    let pod_a = Netns::new("pa");
    let pod_b = Netns::new("pb");
    let ip_a = a.add_pod("ctr-a", &pod_a);
    let ip_b = b.add_pod("ctr-b", &pod_b);
    assert_eq!(ip_a, Ipv4Addr::new(10, 42, 1, 2));
    assert_eq!(ip_b, Ipv4Addr::new(10, 42, 2, 2));

    let vtep_a = a.vtep();
    let vtep_b = b.vtep();
    // Ensuring again reuses the compatible device (same ifindex), it does not recreate it.
    assert_eq!(a.vtep().index, vtep_a.index);
    assert_eq!(vtep_a.mtu, 1450, "underlay 1500 - 50");
    let dev = a.show(&["-d", "link", "show", vxlan::DEFAULT_DEVICE]);
    for want in [
        "vxlan id 1",
        "local 198.51.100.1",
        "dev under",
        "dstport 8472",
        "nolearning",
        "mtu 1450",
        &mac_str(&vtep_a.mac),
    ] {
        assert!(dev.contains(want), "missing {want:?} in {dev}");
    }
    let addr = a.show(&["-o", "addr", "show", "dev", vxlan::DEFAULT_DEVICE]);
    assert!(addr.contains("10.42.1.0/32"), "{addr}");

    // Peers include the node itself, as a node list would; sync skips it. Twice: idempotent.
    let all = [a.peer(&vtep_a), b.peer(&vtep_b)];
    for _ in 0..2 {
        let ra = a.sync(&all);
        let rb = b.sync(&all);
        assert_eq!(
            (
                ra.peers,
                ra.removed_routes,
                ra.removed_neighbours,
                ra.removed_fdb
            ),
            (1, 0, 0, 0)
        );
        assert_eq!(
            (
                rb.peers,
                rb.removed_routes,
                rb.removed_neighbours,
                rb.removed_fdb
            ),
            (1, 0, 0, 0)
        );
    }
    let route = a.show(&["route", "show", "dev", vxlan::DEFAULT_DEVICE]);
    assert!(
        route.contains("10.42.2.0/24 via 10.42.2.0") && route.contains("onlink"),
        "{route}"
    );
    assert_eq!(route.lines().count(), 1, "{route}");
    let neigh = a.show(&["neigh", "show", "dev", vxlan::DEFAULT_DEVICE]);
    assert!(
        neigh.contains(&format!("10.42.2.0 lladdr {}", mac_str(&vtep_b.mac)))
            && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let fdb = a.fdb();
    assert!(
        fdb.contains(&format!("{} dst 198.51.100.2", mac_str(&vtep_b.mac)))
            && fdb.contains("permanent"),
        "{fdb}"
    );
    assert_eq!(
        fdb.lines().filter(|l| l.contains(" dst ")).count(),
        1,
        "{fdb}"
    );

    // Masquerade on both hosts, as the agent runs it: pod-to-pod must keep its source address.
    for host in [&a, &b] {
        netns::run_in(&host.ns.path, || {
            Masquerade::new("10.42.0.0/16".parse().unwrap()).apply()
        })
        .unwrap()
        .unwrap();
    }

    // Pod A -> pod B across the tunnel, ICMP and TCP; the device counters grew on both sides.
    let (rx_a0, tx_a0) = a.counters();
    let (rx_b0, tx_b0) = b.counters();
    assert!(pod_a.ping(&ip_b.to_string()), "pod a -> pod b over VXLAN");
    assert!(pod_b.ping(&ip_a.to_string()), "pod b -> pod a over VXLAN");
    let seen = support::tcp_roundtrip(&pod_b, &pod_a, ip_b, 8080);
    assert_eq!(
        seen.map(|s| s.ip()),
        Some(ip_a.into()),
        "TCP a -> b, not masqueraded"
    );
    let (rx_a1, tx_a1) = a.counters();
    let (rx_b1, tx_b1) = b.counters();
    assert!(
        tx_a1 > tx_a0 && rx_a1 > rx_a0,
        "A counters {rx_a0}/{tx_a0} -> {rx_a1}/{tx_a1}"
    );
    assert!(
        tx_b1 > tx_b0 && rx_b1 > rx_b0,
        "B counters {rx_b0}/{tx_b0} -> {rx_b1}/{tx_b1}"
    );

    // A peer whose VTEP MAC changed (e.g. it lost its data dir) is updated in place.
    let moved = Peer {
        vtep_mac: [0x02, 0, 0, 0, 0, 0x42],
        ..b.peer(&vtep_b)
    };
    let r = a.sync(std::slice::from_ref(&moved));
    assert_eq!(
        (r.removed_routes, r.removed_neighbours, r.removed_fdb),
        (0, 0, 1)
    );
    let fdb = a.fdb();
    assert!(fdb.contains("02:00:00:00:00:42 dst 198.51.100.2"), "{fdb}");
    assert!(!fdb.contains(&mac_str(&vtep_b.mac)), "{fdb}");
    assert!(
        a.show(&["neigh", "show", "dev", vxlan::DEFAULT_DEVICE])
            .contains("02:00:00:00:00:42")
    );
    a.sync(&all);

    // Removing the peer removes its route, neighbour and FDB entry.
    let r = a.sync(&[]);
    assert_eq!(
        (
            r.peers,
            r.removed_routes,
            r.removed_neighbours,
            r.removed_fdb
        ),
        (0, 1, 1, 1)
    );
    assert_eq!(
        a.show(&["route", "show", "dev", vxlan::DEFAULT_DEVICE])
            .trim(),
        ""
    );
    assert!(
        !a.show(&["neigh", "show", "dev", vxlan::DEFAULT_DEVICE])
            .contains("10.42.2.0")
    );
    assert!(!a.fdb().contains(" dst "), "{}", a.fdb());

    // Someone deletes the device: the next sync recreates it with the same MAC and entries.
    a.ns.ip(&["link", "del", vxlan::DEFAULT_DEVICE]);
    a.sync(&all);
    let dev = a.show(&["-d", "link", "show", vxlan::DEFAULT_DEVICE]);
    assert!(
        dev.contains(&mac_str(&vtep_a.mac)),
        "same MAC after recreation: {dev}"
    );
    assert!(
        a.show(&["route", "show", "dev", vxlan::DEFAULT_DEVICE])
            .contains("10.42.2.0/24")
    );
    assert!(
        pod_a.ping(&ip_b.to_string()),
        "pod a -> pod b after the device was recreated"
    );

    // A "restart" (fresh config, same data dir) keeps the MAC peers know.
    let restarted = VxlanConfig::new(a.vx.node_ip, a.vx.pod_cidr, a.vx.mac_file.clone());
    let again = a
        .run(|h| async move { vxlan::ensure(&h, &restarted).await })
        .unwrap();
    assert_eq!(again.mac, vtep_a.mac);
}

#[test]
fn established_connections_survive_an_agent_restart() {
    if !support::prerequisites(true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_hosts(dir.path());
    let pod_a = Netns::new("pa");
    let pod_b = Netns::new("pb");
    let config = |h: &support::host::Host| NodeConfig {
        pods: h.net.clone(),
        overlay: Some(h.vx.clone()),
        masquerade: Some("10.42.0.0/16".parse().unwrap()),
    };
    // "Agent" start on both hosts, a pod on each, peers from each other's annotations.
    let start = |h: &support::host::Host, pod: &Netns, id: &'static str, peers: Vec<Peer>| {
        h.run(|_| async move {
            let (node, vtep) = KernelNetwork::start(config(h)).await.unwrap();
            let link = node.add_pod(id, &pod.path, "eth0").await.unwrap();
            if !peers.is_empty() {
                node.sync_peers(&peers).await.unwrap();
            }
            (vtep.unwrap(), link)
        })
    };
    let (vtep_a, link_a) = start(&a, &pod_a, "ctr-a", vec![]);
    let (vtep_b, link_b) = start(&b, &pod_b, "ctr-b", vec![]);
    let peers = vec![a.peer(&vtep_a), b.peer(&vtep_b)];
    a.sync(&peers);
    b.sync(&peers);

    // A long-lived connection from pod a to an echo server in pod b.
    let echo = support::EchoServer::start(&pod_b, link_b.address.addr(), 7000);
    let mut conn = support::connect_in(&pod_a, link_b.address.addr(), 7000);
    assert!(support::echo(&mut conn, b"before"), "echo before restart");

    // Both agents restart: same data dirs, same kernel state.
    let (vtep_a2, link_a2) = start(&a, &pod_a, "ctr-a", peers.clone());
    let (vtep_b2, link_b2) = start(&b, &pod_b, "ctr-b", peers.clone());
    assert_eq!((vtep_a2.mac, vtep_a2.index), (vtep_a.mac, vtep_a.index));
    assert_eq!((vtep_b2.mac, vtep_b2.index), (vtep_b.mac, vtep_b.index));
    assert_eq!(link_a2, link_a);
    assert_eq!(link_b2, link_b);
    assert!(
        support::echo(&mut conn, b"after"),
        "same connection after restart"
    );
    assert_eq!(
        echo.peer(),
        Some(link_a.address.addr().into()),
        "not masqueraded"
    );
}
