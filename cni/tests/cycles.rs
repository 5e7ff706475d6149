//! 1,000 ADD/DEL cycles (issue 7's bar) through the real kernel path (veth, bridge port, netlink
//! sockets in the pod namespace, IPAM files) leak nothing: no leases, no links, no file
//! descriptors. Alone in its own test binary so the descriptor count is not disturbed by other
//! tests.
#![cfg(target_os = "linux")]

mod support;

use r3s_cni::netns;
use r3s_cni::network::BridgeNetwork;
use support::Netns;

const CYCLES: usize = 1_000;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn add_del_cycles_leak_no_leases_links_or_descriptors() {
    if !support::prerequisites(false) {
        return;
    }
    let host = Netns::new("h");
    let pod = Netns::new("p");
    let dir = tempfile::tempdir().unwrap();
    let net = BridgeNetwork {
        name: "r3s".into(),
        bridge: "r3s0".into(),
        subnet: "10.42.6.0/24".parse().unwrap(),
        mtu: 1450,
        ipam_dir: dir.path().to_path_buf(),
    };
    let (before, after) = netns::block_on_in(&host.path, || async {
        let h = netns::connect(None).unwrap();
        // One warm-up cycle creates the bridge and the IPAM lock file, which stay.
        net.add(&h, "warmup", &pod.path, "eth0").await.unwrap();
        net.del(&h, "warmup", "eth0").await.unwrap();
        tokio::task::yield_now().await;
        let before = open_fds();
        for i in 0..CYCLES {
            let id = format!("cycle-{i}");
            let link = net.add(&h, &id, &pod.path, "eth0").await.unwrap();
            assert_eq!(link.address.prefix_len(), 24);
            net.del(&h, &id, "eth0").await.unwrap();
        }
        // Let the per-pod netlink connection tasks observe their handles are gone.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        (before, open_fds())
    })
    .unwrap();
    assert_eq!(
        after, before,
        "file descriptors leaked over {CYCLES} cycles"
    );
    assert!(net.ipam().unwrap().leases().unwrap().is_empty());
    let links = host.ip(&["-o", "link", "show"]);
    assert!(
        !links.contains("r3sv") && !links.contains("r3sp"),
        "{links}"
    );
    assert!(!pod.ip_try(&["link", "show", "eth0"]).status.success());
}
