//! The service proxy on the real kernel, as root: a simulated node (a network namespace with the
//! pod bridge and three pod namespaces running TCP and UDP echo servers), a "client" host on
//! 203.0.113.0/24, the real API server in-process (HTTPS, SQLite in a temp dir) holding Services
//! and Endpoints, and [`r3s_agent::proxy::run`] (the same code the agent runs) programming the
//! node's namespace over netlink. Checks ClusterIP spreading over TCP and UDP, hairpin
//! masquerade, NodePort with externalTrafficPolicy Cluster and Local, a LoadBalancer port,
//! internalTrafficPolicy Local, externalIPs, loadBalancerSourceRanges,
//! rejection without endpoints, session affinity, endpoint removal and Service
//! deletion leaving no trace, and the table gone after shutdown. `nft` (Debian `nftables`) only
//! inspects. Everything is removed by guards, on failure too; names start with `r3sp<pid>`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{client, start_api_server};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use r3s_agent::proxy::{self, ProxyOptions};
use r3s_cni::netns;
use r3s_cni::network::BridgeNetwork;
use serde_json::json;
use tokio::sync::oneshot;

const NODE: &str = "r3sp-node";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
const ECHO_PORT: u16 = 8080;
const UDP_ECHO_PORT: u16 = 5353;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces)");
    }
    if !have("ip") {
        missing.push("the `ip` command (Debian package iproute2)");
    }
    if !have("nft") {
        missing.push("the `nft` command (Debian package nftables), used to inspect rules");
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "missing prerequisite: {why}"
    );
    eprintln!("skipped: missing {why}");
    false
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with every link in it) on drop.
struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("r3sp{}{tag}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        must(&[
            "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
        ]);
        Netns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        }
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    fn must(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        must(&all)
    }

    /// The proxy's table as `nft` prints it, or `None` when it does not exist.
    fn table(&self) -> Option<String> {
        let out = self.exec(&["nft", "list", "table", "ip", "r3s-proxy"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// TCP and UDP echo servers inside a pod namespace that answer `<name> <peer ip>`; stopped on drop.
struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(name: &str, ns: &Path) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = netns::run_in(ns, || {
            let tcp = TcpListener::bind(("0.0.0.0", ECHO_PORT)).unwrap();
            let udp = UdpSocket::bind(("0.0.0.0", UDP_ECHO_PORT)).unwrap();
            (tcp, udp)
        })
        .unwrap();
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (s1, s2) = (stop.clone(), stop.clone());
        let (n1, n2) = (name.to_string(), name.to_string());
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::SeqCst) {
                match tcp.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(format!("{n1} {}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s2.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{n2} {}\n", peer.ip()).as_bytes(), peer);
                }
            }
        });
        Echo {
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP exchange from inside `ns`: Ok((backend name, peer the backend saw)).
fn tcp_ask(ns: &Path, to: SocketAddrV4) -> std::io::Result<(String, String)> {
    netns::run_in(ns, || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        s.read_to_string(&mut line)?;
        parse(&line)
    })
    .unwrap()
}

fn udp_ask(ns: &Path, to: SocketAddrV4) -> std::io::Result<(String, String)> {
    netns::run_in(ns, || {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send_to(b"hi", to)?;
        let mut buf = [0u8; 128];
        let n = s.recv(&mut buf)?;
        parse(&String::from_utf8_lossy(&buf[..n]))
    })
    .unwrap()
}

fn parse(line: &str) -> std::io::Result<(String, String)> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
        _ => Err(std::io::Error::other(format!("bad answer {line:?}"))),
    }
}

/// `n` TCP exchanges: backend name → peers it saw.
fn tcp_many(ns: &Path, to: SocketAddrV4, n: usize) -> BTreeMap<String, BTreeSet<String>> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for _ in 0..n {
        let (name, peer) = tcp_ask(ns, to).unwrap_or_else(|e| panic!("{to}: {e}"));
        seen.entry(name).or_default().insert(peer);
    }
    seen
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn endpoints(name: &str, addrs: &[(Ipv4Addr, &str)], ports: serde_json::Value) -> Endpoints {
    let addresses: Vec<_> = addrs
        .iter()
        .map(|(ip, node)| json!({"ip": ip.to_string(), "nodeName": node}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [{"addresses": addresses, "ports": ports}]
    }))
    .unwrap()
}

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_serves_services_on_a_simulated_node() {
    if !prerequisites() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("r3s_agent=debug")
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let node = Netns::new("n");
    let client_ns = Netns::new("c");
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("p{i}"))).collect();

    // The node: pod bridge + three pods, an uplink to the client host, forwarding on.
    let net = BridgeNetwork {
        name: "r3s".into(),
        bridge: "r3s0".into(),
        subnet: "10.42.0.0/24".parse().unwrap(),
        mtu: 1500,
        ipam_dir: dir.path().join("ipam"),
    };
    let mut pod_ips = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let ip = netns::block_on_in(&node.path, || async {
            let h = netns::connect(None).unwrap();
            net.add(&h, &format!("pod{i}"), &p.path, "eth0")
                .await
                .unwrap()
        })
        .unwrap()
        .address
        .addr();
        pod_ips.push(ip);
    }
    node.must(&[
        "ip",
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up0",
        "netns",
        &client_ns.name,
    ]);
    node.must(&["ip", "addr", "add", "203.0.113.1/24", "dev", "up0"]);
    node.must(&["ip", "link", "set", "up0", "up"]);
    node.must(&["ip", "route", "add", "default", "via", "203.0.113.2"]);
    node.must(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // Replies between pods on one bridge must pass conntrack to be un-NATed (as on a real node).
    node.must(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    client_ns.must(&["ip", "addr", "add", "203.0.113.2/24", "dev", "up0"]);
    client_ns.must(&["ip", "link", "set", "up0", "up"]);
    // An external IP the client's network routes to the node.
    client_ns.must(&[
        "ip",
        "route",
        "add",
        "198.51.100.7/32",
        "via",
        "203.0.113.1",
    ]);
    let _echo: Vec<Echo> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Echo::start(&format!("p{i}"), &p.path))
        .collect();

    // The API with the Services and their endpoints.
    let server = start_api_server(dir.path()).await;
    let kube = client(&server.kubeconfig).await;
    let svcs: Api<Service> = Api::namespaced(kube.clone(), "default");
    let eps: Api<Endpoints> = Api::namespaced(kube.clone(), "default");
    let pp = PostParams::default();
    let web_ports = json!([
        {"name": "http", "port": ECHO_PORT},
        {"name": "dns", "port": UDP_ECHO_PORT, "protocol": "UDP"}
    ]);
    svcs.create(&pp, &service(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.100.10", "ports": [
            {"name": "http", "port": 80, "targetPort": ECHO_PORT, "nodePort": 30080},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": UDP_ECHO_PORT, "nodePort": 30053}]}
    }))).await.unwrap();
    let all: Vec<(Ipv4Addr, &str)> = pod_ips.iter().map(|ip| (*ip, NODE)).collect();
    eps.create(&pp, &endpoints("web", &all, web_ports.clone()))
        .await
        .unwrap();
    svcs.create(&pp, &service(json!({
        "metadata": {"name": "local"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.100.11", "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "targetPort": ECHO_PORT, "nodePort": 30081}]}
    }))).await.unwrap();
    eps.create(
        &pp,
        &endpoints(
            "local",
            &[(pod_ips[0], NODE), (pod_ips[1], "some-other-node")],
            json!([{"name": "http", "port": ECHO_PORT}]),
        ),
    )
    .await
    .unwrap();
    svcs.create(&pp, &service(json!({
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.43.100.12",
                 "ports": [{"name": "http", "port": 8081, "targetPort": ECHO_PORT, "nodePort": 30082}]}
    }))).await.unwrap();
    eps.create(
        &pp,
        &endpoints(
            "lb",
            &[(pod_ips[1], NODE)],
            json!([{"name": "http", "port": ECHO_PORT}]),
        ),
    )
    .await
    .unwrap();
    svcs.create(&pp, &service(json!({
        "metadata": {"name": "empty"},
        "spec": {"clusterIP": "10.43.100.13", "ports": [{"name": "http", "port": 80, "targetPort": ECHO_PORT}]}
    }))).await.unwrap();
    svcs.create(
        &pp,
        &service(json!({
            "metadata": {"name": "sticky"},
            "spec": {"clusterIP": "10.43.100.14", "sessionAffinity": "ClientIP",
                     "ports": [{"name": "http", "port": 80, "targetPort": ECHO_PORT}]}
        })),
    )
    .await
    .unwrap();
    eps.create(
        &pp,
        &endpoints("sticky", &all, json!([{"name": "http", "port": ECHO_PORT}])),
    )
    .await
    .unwrap();

    svcs.create(
        &pp,
        &service(json!({
            "metadata": {"name": "itp"},
            "spec": {"clusterIP": "10.43.100.15", "internalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "targetPort": ECHO_PORT}]}
        })),
    )
    .await
    .unwrap();
    eps.create(
        &pp,
        &endpoints(
            "itp",
            &[(pod_ips[0], NODE), (pod_ips[1], "some-other-node")],
            json!([{"name": "http", "port": ECHO_PORT}]),
        ),
    )
    .await
    .unwrap();
    let p2_only = [(pod_ips[2], NODE)];
    for (name, spec) in [
        (
            "ext",
            json!({"clusterIP": "10.43.100.16", "externalIPs": ["198.51.100.7"],
            "ports": [{"name": "http", "port": 80, "targetPort": ECHO_PORT}]}),
        ),
        (
            "lb-deny",
            json!({"type": "LoadBalancer", "clusterIP": "10.43.100.17",
            "loadBalancerSourceRanges": ["198.51.100.0/24"],
            "ports": [{"name": "http", "port": 8083, "targetPort": ECHO_PORT, "nodePort": 30083}]}),
        ),
        (
            "lb-allow",
            json!({"type": "LoadBalancer", "clusterIP": "10.43.100.18",
            "loadBalancerSourceRanges": ["203.0.113.2/32"],
            "ports": [{"name": "http", "port": 8084, "targetPort": ECHO_PORT, "nodePort": 30084}]}),
        ),
    ] {
        svcs.create(
            &pp,
            &service(json!({"metadata": {"name": name}, "spec": spec})),
        )
        .await
        .unwrap();
        eps.create(
            &pp,
            &endpoints(name, &p2_only, json!([{"name": "http", "port": ECHO_PORT}])),
        )
        .await
        .unwrap();
    }

    // The proxy, programming the node's namespace.
    let mut opts = ProxyOptions::new(NODE, vec![NODE_IP]);
    opts.netns = Some(node.path.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let proxy_task = tokio::spawn(proxy::run(kube.clone(), opts, async {
        let _ = stop_rx.await;
    }));

    let web = SocketAddrV4::new(Ipv4Addr::new(10, 43, 100, 10), 80);
    let web_udp = SocketAddrV4::new(Ipv4Addr::new(10, 43, 100, 10), 53);
    let p0 = pods[0].path.clone();
    let p1 = pods[1].path.clone();
    blocking(|| wait_for("the ClusterIP to answer", || tcp_ask(&p0, web).is_ok()));
    let table = node.table().expect("table exists");
    assert!(table.contains("numgen random mod 3"), "{table}");
    assert!(
        table.contains("type nat hook prerouting priority dstnat"),
        "{table}"
    );

    // ClusterIP over TCP from a pod: every backend answers; pod-to-pod keeps the source address,
    // a pod reaching itself (hairpin) is masqueraded to the bridge address.
    let seen = blocking(|| tcp_many(&p0, web, 60));
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["p0", "p1", "p2"],
        "{seen:?}"
    );
    assert_eq!(
        seen["p1"],
        BTreeSet::from([pod_ips[0].to_string()]),
        "{seen:?}"
    );
    assert_eq!(
        seen["p0"],
        BTreeSet::from([GATEWAY.to_string()]),
        "hairpin: {seen:?}"
    );

    // UDP, each exchange from a fresh socket (a new conntrack entry).
    let udp: BTreeSet<String> =
        blocking(|| (0..40).map(|_| udp_ask(&p1, web_udp).unwrap().0).collect());
    assert!(udp.len() >= 2, "UDP answers only from {udp:?}");

    // NodePort from the client host, policy Cluster: spread and masqueraded.
    let np = SocketAddrV4::new(NODE_IP, 30080);
    let seen = blocking(|| tcp_many(&client_ns.path, np, 30));
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.values()
            .all(|peers| peers == &BTreeSet::from([GATEWAY.to_string()])),
        "{seen:?}"
    );
    let np_udp = SocketAddrV4::new(NODE_IP, 30053);
    assert!(blocking(|| udp_ask(&client_ns.path, np_udp)).is_ok());

    // externalTrafficPolicy Local: only the local endpoint, client address preserved; the
    // ClusterIP of the same Service still reaches both.
    let seen = blocking(|| tcp_many(&client_ns.path, SocketAddrV4::new(NODE_IP, 30081), 20));
    assert_eq!(
        seen,
        BTreeMap::from([("p0".to_string(), BTreeSet::from([CLIENT_IP.to_string()]))])
    );
    let seen = blocking(|| {
        tcp_many(
            &p1,
            SocketAddrV4::new(Ipv4Addr::new(10, 43, 100, 11), 80),
            40,
        )
    });
    assert_eq!(seen.len(), 2, "{seen:?}");

    // LoadBalancer: served on the node IP at its port. (Its status is the server's servicelb
    // controller's: server/tests/controllers_servicelb.rs.)
    let (name, _) =
        blocking(|| tcp_ask(&client_ns.path, SocketAddrV4::new(NODE_IP, 8081))).unwrap();
    assert_eq!(name, "p1");

    // internalTrafficPolicy Local: ClusterIP traffic only to this node's endpoint.
    let itp = SocketAddrV4::new(Ipv4Addr::new(10, 43, 100, 15), 80);
    let seen = blocking(|| tcp_many(&p1, itp, 20));
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["p0"],
        "{seen:?}"
    );

    // externalIPs: served at the external IP from outside, masqueraded like a NodePort.
    let ext = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 80);
    let seen = blocking(|| tcp_many(&client_ns.path, ext, 5));
    assert_eq!(
        seen,
        BTreeMap::from([("p2".to_string(), BTreeSet::from([GATEWAY.to_string()]))])
    );

    // loadBalancerSourceRanges: the load-balancer port answers only sources in range; the
    // NodePort of the same Service is not limited.
    assert!(blocking(|| tcp_ask(&client_ns.path, SocketAddrV4::new(NODE_IP, 8083))).is_err());
    let (name, _) =
        blocking(|| tcp_ask(&client_ns.path, SocketAddrV4::new(NODE_IP, 30083))).unwrap();
    assert_eq!(name, "p2");
    let (name, _) =
        blocking(|| tcp_ask(&client_ns.path, SocketAddrV4::new(NODE_IP, 8084))).unwrap();
    assert_eq!(name, "p2");

    // No endpoints: refused at once, not a timeout.
    let err = blocking(|| tcp_ask(&p0, SocketAddrV4::new(Ipv4Addr::new(10, 43, 100, 13), 80)))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let err = blocking(|| {
        tcp_ask(
            &client_ns.path,
            SocketAddrV4::new(Ipv4Addr::new(10, 43, 100, 13), 80),
        )
    });
    assert!(err.is_err());

    // Session affinity: one client keeps its backend.
    let sticky = SocketAddrV4::new(Ipv4Addr::new(10, 43, 100, 14), 80);
    let seen = blocking(|| tcp_many(&p1, sticky, 20));
    assert_eq!(seen.len(), 1, "{seen:?}");
    let seen_sticky = seen;

    // An endpoint goes: no connection reaches it any more, and its chain is gone.
    let mut two = eps.get("web").await.unwrap();
    two.subsets = endpoints("web", &[(pod_ips[1], NODE), (pod_ips[2], NODE)], web_ports).subsets;
    eps.replace("web", &pp, &two).await.unwrap();
    let gone = format!("default/web/tcp/http/{}:", pod_ips[0]);
    blocking(|| {
        wait_for("the removed endpoint's chain to go", || {
            node.table().is_some_and(|t| !t.contains(&gone))
        })
    });
    let seen = blocking(|| tcp_many(&p1, web, 40));
    // That update left other Services' affinity entries alone.
    assert_eq!(
        blocking(|| tcp_many(&p1, sticky, 10))
            .keys()
            .collect::<Vec<_>>(),
        seen_sticky.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["p1", "p2"],
        "{seen:?}"
    );

    // The Service goes: nothing of it stays in the table, and its address no longer answers.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eps.delete("web", &DeleteParams::default()).await.unwrap();
    blocking(|| {
        wait_for("the deleted Service to leave the table", || {
            node.table()
                .is_some_and(|t| !t.contains("default/web/") && !t.contains("10.43.100.10"))
        })
    });
    assert!(blocking(|| tcp_ask(&p0, web)).is_err());

    // Shutdown removes the table.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), proxy_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(node.table().is_none(), "table left after shutdown");
    drop(server);
}
