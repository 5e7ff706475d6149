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

const BYTES: usize = 1 << 30;

/// Sends BYTES from `client` to a sink in `server`; returns MB/s.
fn throughput(server: &Netns, client: &Netns, addr: Ipv4Addr, port: u16) -> f64 {
    let sa = SocketAddr::from((addr, port));
    let listener = netns::run_in(&server.path, || TcpListener::bind(sa))
        .expect("enter server ns")
        .expect("bind");
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        while total < BYTES {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n;
        }
        s.write_all(b"k").expect("ack");
        total
    });
    let secs = netns::run_in(&client.path, || {
        let mut s = TcpStream::connect(sa).expect("connect");
        let buf = vec![7u8; 1 << 20];
        let start = Instant::now();
        for _ in 0..(BYTES >> 20) {
            s.write_all(&buf).expect("write");
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).expect("read ack");
        start.elapsed().as_secs_f64()
    })
    .expect("enter client ns");
    assert_eq!(sink.join().expect("sink thread"), BYTES);
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

    // Interleaved rounds and medians: the machine is shared, single runs are noisy.
    let (mut underlay, mut overlay) = (Vec::new(), Vec::new());
    for round in 0..5 {
        underlay.push(throughput(
            &b.ns,
            &a.ns,
            Ipv4Addr::new(198, 51, 100, 2),
            9001 + round * 2,
        ));
        overlay.push(throughput(&pod_b, &pod_a, ip_b, 9002 + round * 2));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (underlay, overlay) = (median(&mut underlay), median(&mut overlay));
    println!(
        "host-to-host (veth underlay, MTU 1500): {underlay:.0} MB/s; \
         pod-to-pod (VXLAN, MTU 1450): {overlay:.0} MB/s; ratio {:.2}",
        overlay / underlay
    );
}
