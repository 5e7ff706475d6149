//! Measurement, not a check (ignored by default; run with `-- --ignored --nocapture`): TCP
//! throughput pod-to-pod across the VXLAN overlay beside host-to-host on the same veth underlay.
#![cfg(target_os = "linux")]

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

use r3s_cni::netns;
use support::Netns;
use support::host::two_hosts;

const BYTES: usize = 512 << 20;

/// Sends BYTES from `client` to a sink in `server`; returns MB/s.
fn throughput(server: &Netns, client: &Netns, addr: Ipv4Addr, port: u16) -> f64 {
    let sa = SocketAddr::from((addr, port));
    let listener = netns::run_in(&server.path, || TcpListener::bind(sa))
        .unwrap()
        .unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        while total < BYTES {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        s.write_all(b"k").unwrap();
        total
    });
    let secs = netns::run_in(&client.path, || {
        let mut s = TcpStream::connect(sa).unwrap();
        let buf = vec![7u8; 1 << 20];
        let start = Instant::now();
        for _ in 0..(BYTES >> 20) {
            s.write_all(&buf).unwrap();
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).unwrap();
        start.elapsed().as_secs_f64()
    })
    .unwrap();
    assert_eq!(sink.join().unwrap(), BYTES);
    BYTES as f64 / secs / 1e6
}

#[test]
#[ignore = "measurement; run explicitly"]
fn vxlan_vs_underlay_tcp_throughput() {
    if !support::prerequisites(true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_hosts(dir.path());
    let pod_a = Netns::new("pa");
    let pod_b = Netns::new("pb");
    a.add_pod("ctr-a", &pod_a);
    let ip_b = b.add_pod("ctr-b", &pod_b);
    let peers = [a.peer(&a.vtep()), b.peer(&b.vtep())];
    a.sync(&peers);
    b.sync(&peers);
    assert!(pod_a.ping(&ip_b.to_string()));

    let underlay = throughput(&b.ns, &a.ns, Ipv4Addr::new(198, 51, 100, 2), 9001);
    let overlay = throughput(&pod_b, &pod_a, ip_b, 9002);
    println!(
        "host-to-host (veth underlay, MTU 1500): {underlay:.0} MB/s; \
         pod-to-pod (VXLAN, MTU 1450): {overlay:.0} MB/s; ratio {:.2}",
        overlay / underlay
    );
}
