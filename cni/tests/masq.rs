//! Masquerade on the real kernel: a simulated host with the bridge and a pod, and an "outside"
//! namespace on 203.0.113.0/24 that has no route back to the pod network. The pod reaches it only
//! when its egress is masqueraded; the rules are installed and removed through netlink alone.
#![cfg(target_os = "linux")]

mod support;

use std::net::Ipv4Addr;

use r3s_cni::masq::Masquerade;
use r3s_cni::netns;
use r3s_cni::network::BridgeNetwork;
use support::Netns;

#[test]
fn pod_egress_is_masqueraded_and_rules_are_atomic_and_removable() {
    if !support::prerequisites_with_nft() {
        return;
    }
    let host = Netns::new("h");
    let outside = Netns::new("o");
    let pod = Netns::new("p");
    host.ip(&[
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up0",
        "netns",
        &outside.name,
    ]);
    host.ip(&["addr", "add", "203.0.113.1/24", "dev", "up0"]);
    outside.ip(&["addr", "add", "203.0.113.2/24", "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    outside.ip(&["link", "set", "up0", "up"]);

    let dir = tempfile::tempdir().unwrap();
    let net = BridgeNetwork {
        name: "r3s".into(),
        bridge: "r3s0".into(),
        subnet: "10.42.5.0/24".parse().unwrap(),
        mtu: 1450,
        ipam_dir: dir.path().to_path_buf(),
    };
    netns::block_on_in(&host.path, || async {
        let h = netns::connect(None).unwrap();
        net.add(&h, "ctr-m", &pod.path, "eth0").await.unwrap()
    })
    .unwrap();
    let masq = Masquerade::new("10.42.0.0/16".parse().unwrap());
    let nft = |args: &[&str]| {
        let mut all = vec!["ip", "netns", "exec", &host.name, "nft"];
        all.extend_from_slice(args);
        support::run(&all)
    };

    // Without masquerade the outside host cannot answer (it has no route to 10.42.0.0/16).
    assert!(
        !pod.ping_once("203.0.113.2"),
        "reachable without masquerade?"
    );

    // Applied twice: exactly one table with the two rules.
    for _ in 0..2 {
        netns::run_in(&host.path, || masq.apply()).unwrap().unwrap();
    }
    let listing =
        String::from_utf8_lossy(&nft(&["list", "table", "ip", "r3s-masq"]).stdout).into_owned();
    assert!(
        listing.contains("type nat hook postrouting priority srcnat"),
        "{listing}"
    );
    assert!(
        listing.contains("ip saddr 10.42.0.0/16 ip daddr 10.42.0.0/16 return"),
        "{listing}"
    );
    assert!(
        listing.contains("ip saddr 10.42.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"),
        "{listing}"
    );
    assert_eq!(listing.matches("masquerade").count(), 1, "{listing}");
    assert_eq!(
        String::from_utf8_lossy(&nft(&["list", "tables"]).stdout)
            .matches("r3s-masq")
            .count(),
        1
    );

    // Now the pod reaches the outside, which sees the host's address, not the pod's.
    assert!(pod.ping("203.0.113.2"), "pod -> outside with masquerade");
    let seen = support::tcp_roundtrip(&outside, &pod, Ipv4Addr::new(203, 0, 113, 2), 8081);
    assert_eq!(
        seen.map(|s| s.ip()),
        Some(Ipv4Addr::new(203, 0, 113, 1).into())
    );

    // Removal (twice: idempotent) takes the table away.
    for _ in 0..2 {
        netns::run_in(&host.path, || masq.remove())
            .unwrap()
            .unwrap();
    }
    assert!(!nft(&["list", "table", "ip", "r3s-masq"]).status.success());
}
