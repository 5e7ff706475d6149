//! Bridge + host-local IPAM + pod veths on the real kernel: a simulated host namespace with the
//! `r3s0` bridge and two pod namespaces; traffic between the pods, hairpin on the ports, DEL cleanup.
#![cfg(target_os = "linux")]

mod support;

use std::net::Ipv4Addr;

use r3s_cni::ipam::Owner;
use r3s_cni::netns;
use r3s_cni::network::BridgeNetwork;
use support::Netns;

fn network(ipam_dir: &std::path::Path) -> BridgeNetwork {
    BridgeNetwork {
        name: "r3s".into(),
        bridge: "r3s0".into(),
        subnet: "10.42.3.0/24".parse().expect("subnet"),
        mtu: 1450,
        ipam_dir: ipam_dir.to_path_buf(),
    }
}

#[test]
fn two_pods_on_one_bridge_talk_and_del_cleans_up() {
    if !support::prerequisites(false) {
        return;
    }
    let host = Netns::new("h");
    let pod_a = Netns::new("a");
    let pod_b = Netns::new("b");
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path());

    let (a, b, a_again) = netns::block_on_in(&host.path, || async {
        let h = netns::connect(None).unwrap();
        let bridge_mac = net.setup(&h).await.unwrap().mac;
        let a = net.add(&h, "ctr-a", &pod_a.path, "eth0").await.unwrap();
        let b = net.add(&h, "ctr-b", &pod_b.path, "eth0").await.unwrap();
        // A repeated ADD for the same container returns the same attachment.
        let a_again = net.add(&h, "ctr-a", &pod_a.path, "eth0").await.unwrap();
        net.check(&h, "ctr-a", &pod_a.path, "eth0").await.unwrap();
        net.check(&h, "ctr-b", &pod_b.path, "eth0").await.unwrap();
        // The gateway's MAC does not follow the ports.
        let after = r3s_cni::nl::require_link(&h, "r3s0").await.unwrap().mac;
        assert_eq!(after, bridge_mac);
        (a, b, a_again)
    })
    .unwrap();
    assert_eq!(a.address.to_string(), "10.42.3.2/24");
    assert_eq!(b.address.to_string(), "10.42.3.3/24");
    assert_eq!(a_again, a);
    assert_eq!(a.gateway, Ipv4Addr::new(10, 42, 3, 1));

    // The bridge: gateway address, up, MTU.
    let br = host.ip(&["-o", "addr", "show", "dev", "r3s0"]);
    assert!(br.contains("10.42.3.1/24"), "{br}");
    let br = host.ip(&["-d", "link", "show", "r3s0"]);
    assert!(br.contains("mtu 1450") && br.contains("bridge"), "{br}");
    // Host ends: bridge ports with hairpin on.
    for p in [&a, &b] {
        let port = host.ip(&["-d", "link", "show", &p.host_veth]);
        assert!(port.contains("master r3s0"), "{port}");
        assert!(port.contains("hairpin on"), "{port}");
        assert!(port.contains("mtu 1450"), "{port}");
    }
    // Pod ends: eth0 with the address and MTU, lo up, default route via the gateway.
    let eth = pod_a.ip(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(eth.contains("10.42.3.2/24"), "{eth}");
    assert!(pod_a.ip(&["link", "show", "eth0"]).contains("mtu 1450"));
    assert!(pod_a.ip(&["link", "show", "lo"]).contains("UP"));
    let routes = pod_a.ip(&["route", "show", "default"]);
    assert!(routes.contains("via 10.42.3.1 dev eth0"), "{routes}");

    // Traffic: ICMP and TCP between the pods, and each pod to its gateway.
    assert!(pod_a.ping("10.42.3.3"), "pod a -> pod b");
    assert!(pod_b.ping("10.42.3.2"), "pod b -> pod a");
    assert!(pod_a.ping("10.42.3.1"), "pod a -> gateway");
    let seen = support::tcp_roundtrip(&pod_b, &pod_a, Ipv4Addr::new(10, 42, 3, 3), 8080);
    assert_eq!(
        seen.map(|s| s.ip()),
        Some(Ipv4Addr::new(10, 42, 3, 2).into())
    );

    // DEL: the veth goes, the address is released; a second DEL is fine; CHECK now fails.
    let check_after = netns::block_on_in(&host.path, || async {
        let h = netns::connect(None).unwrap();
        net.del(&h, "ctr-a", "eth0").await.unwrap();
        net.del(&h, "ctr-a", "eth0").await.unwrap();
        net.check(&h, "ctr-a", &pod_a.path, "eth0").await
    })
    .unwrap();
    assert!(check_after.is_err());
    assert!(
        !host
            .ip_try(&["link", "show", &a.host_veth])
            .status
            .success()
    );
    assert!(!pod_a.ip_try(&["link", "show", "eth0"]).status.success());
    let ipam = net.ipam().unwrap();
    assert_eq!(ipam.lookup(&Owner::new("ctr-a", "eth0")).unwrap(), None);
    assert_eq!(ipam.leases().unwrap().len(), 1);
    // Pod b is unaffected.
    assert!(pod_b.ping("10.42.3.1"), "pod b -> gateway after a's DEL");

    // GC keeping nothing removes pod b's link and lease too.
    let removed = netns::block_on_in(&host.path, || async {
        let h = netns::connect(None).unwrap();
        net.gc(&h, |_| false).await.unwrap()
    })
    .unwrap();
    assert_eq!(removed, vec![Owner::new("ctr-b", "eth0")]);
    assert!(net.ipam().unwrap().leases().unwrap().is_empty());
    assert!(
        !host
            .ip_try(&["link", "show", &b.host_veth])
            .status
            .success()
    );
}

#[test]
fn failed_add_leaves_no_lease_and_no_links() {
    if !support::prerequisites(false) {
        return;
    }
    let host = Netns::new("h");
    let pod = Netns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path());
    let (missing_ns, bad_name) = netns::block_on_in(&host.path, || async {
        let h = netns::connect(None).unwrap();
        let missing = net
            .add(
                &h,
                "ctr-x",
                std::path::Path::new("/run/netns/r3st-no-such-ns"),
                "eth0",
            )
            .await;
        // Fails late: the pair exists and is in the pod before the rename is refused.
        let bad = net.add(&h, "ctr-y", &pod.path, "an-ifname-too-long").await;
        (missing, bad)
    })
    .unwrap();
    assert!(missing_ns.is_err());
    assert!(bad_name.is_err());
    assert!(net.ipam().unwrap().leases().unwrap().is_empty());
    let links = host.ip(&["-o", "link", "show"]);
    assert!(
        !links.contains("r3sv") && !links.contains("r3sp"),
        "{links}"
    );
    let pod_links = pod.ip(&["-o", "link", "show"]);
    assert_eq!(pod_links.lines().count(), 1, "only lo: {pod_links}");
}

#[test]
fn del_after_the_namespace_is_gone_still_releases() {
    if !support::prerequisites(false) {
        return;
    }
    let host = Netns::new("h");
    let pod = Netns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path());
    let link = netns::block_on_in(&host.path, || async {
        let h = netns::connect(None).unwrap();
        net.add(&h, "ctr-gone", &pod.path, "eth0").await.unwrap()
    })
    .unwrap();
    drop(pod); // the runtime tore the sandbox down before DEL
    netns::block_on_in(&host.path, || async {
        let h = netns::connect(None).unwrap();
        net.del(&h, "ctr-gone", "eth0").await.unwrap();
    })
    .unwrap();
    assert!(
        !host
            .ip_try(&["link", "show", &link.host_veth])
            .status
            .success()
    );
    assert!(net.ipam().unwrap().leases().unwrap().is_empty());
}
