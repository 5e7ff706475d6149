//! Cluster DNS figures: heap bytes of the DNS view per 1,000 Services (each with 5 ready
//! endpoints and their 5 pods), and queries per second, both through the answering code alone
//! (one thread, no sockets) per kind of question and end to end over UDP on 127.0.0.1 with
//! concurrent clients. Run with `cargo bench -p r3s-agent --bench dns` (or `--profile dev` for a
//! quick look: the memory figures do not depend on the profile, the rates do).
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use r3s_agent::dns::forward::Forwarder;
use r3s_agent::dns::server::{Handler, Sockets, Transport, serve};
use r3s_agent::dns::view::{Address, PodEntry, Port, ServiceEntry, ServiceKind, View};
use r3s_agent::dns::zone::Zone;

/// Counts live heap bytes, to measure what the view holds.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 5;

fn ip(i: usize, j: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        42,
        (i / 50) as u8,
        ((i % 50) * ENDPOINTS + j) as u8,
    ))
}

/// 1,000 Services in 10 namespaces: 900 ClusterIP, 100 headless; 5 endpoints and pods each.
fn view() -> View {
    let mut v = View::synced();
    for i in 0..SERVICES {
        let ns = format!("ns{}", i % 10);
        let name = format!("svc{i}");
        let ports = vec![
            Port {
                name: "http".into(),
                protocol: "tcp".into(),
                port: 80,
            },
            Port {
                name: "metrics".into(),
                protocol: "tcp".into(),
                port: 9090,
            },
        ];
        let kind = if i % 10 == 0 {
            ServiceKind::Headless
        } else {
            ServiceKind::ClusterIp(vec![IpAddr::V4(Ipv4Addr::new(
                10,
                43,
                (i / 250) as u8 + 1,
                (i % 250) as u8,
            ))])
        };
        v.services.insert(
            (ns.clone(), name.clone()),
            ServiceEntry {
                kind,
                ports: ports.clone(),
            },
        );
        let addrs = (0..ENDPOINTS)
            .map(|j| Address {
                ip: ip(i, j),
                hostname: None,
                pod: Some(format!("{name}-{j}")),
                ports: ports.clone(),
            })
            .collect();
        v.endpoints.insert((ns.clone(), name.clone()), addrs);
        for j in 0..ENDPOINTS {
            v.pods.insert(
                (ns.clone(), format!("{name}-{j}")),
                PodEntry {
                    ips: vec![ip(i, j)],
                    hostname: None,
                    subdomain: None,
                },
            );
        }
    }
    v
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(1, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn main() {
    // `cargo test --benches` runs this too: only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("skipped: run with `cargo bench` to measure");
        return;
    }
    let before = LIVE.load(Ordering::Relaxed);
    let v = view();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "view: {SERVICES} Services, {} endpoints, {} pods: {:.0} KiB ({:.0} bytes per Service with its endpoints and pods)",
        SERVICES * ENDPOINTS,
        SERVICES * ENDPOINTS,
        bytes as f64 / 1024.0,
        bytes as f64 / SERVICES as f64
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let zone = Zone::new("cluster.local", 5, None).unwrap();
    let handler = Arc::new(Handler::new(
        zone,
        Arc::new(RwLock::new(v)),
        Forwarder::new(vec![]),
    ));
    let cases = [
        (
            "A ClusterIP",
            query("svc501.ns1.svc.cluster.local.", RecordType::A),
        ),
        (
            "A headless (5)",
            query("svc500.ns0.svc.cluster.local.", RecordType::A),
        ),
        (
            "SRV port",
            query("_http._tcp.svc501.ns1.svc.cluster.local.", RecordType::SRV),
        ),
        (
            "NXDOMAIN",
            query("nope.ns1.svc.cluster.local.", RecordType::A),
        ),
        (
            "PTR ClusterIP",
            query("251.2.43.10.in-addr.arpa.", RecordType::PTR),
        ),
        (
            "A pod",
            query("10-42-10-5.ns1.pod.cluster.local.", RecordType::A),
        ),
    ];
    for (what, q) in &cases {
        let h = handler.clone();
        let n = rt.block_on(async move {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(1) {
                for _ in 0..100 {
                    std::hint::black_box(h.handle(q, Transport::Udp).await.unwrap());
                }
                n += 100;
            }
            n as f64 / start.elapsed().as_secs_f64()
        });
        println!("handler, one thread, {what}: {n:.0} queries/s");
    }

    // End to end over UDP: 8 clients, each one query in flight, for 3 s.
    let qps = rt.block_on(async move {
        let sockets = Sockets::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr: SocketAddr = sockets.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(handler, sockets, async {
            let _ = stopped.await;
        }));
        let done = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..8 {
            let done = done.clone();
            let q = query("svc501.ns1.svc.cluster.local.", RecordType::A);
            clients.push(tokio::spawn(async move {
                let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                s.connect(addr).await.unwrap();
                let mut buf = [0u8; 1500];
                while start.elapsed() < Duration::from_secs(3) {
                    s.send(&q).await.unwrap();
                    if tokio::time::timeout(Duration::from_secs(1), s.recv(&mut buf))
                        .await
                        .is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        let qps = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        let _ = stop.send(());
        server.await.unwrap();
        qps
    });
    println!("UDP on 127.0.0.1, 8 clients, 2 runtime threads: {qps:.0} queries/s");
}
