//! The agent's VXLAN overlay loop end to end, as root, on three simulated hosts: network namespaces
//! A, B and C (198.51.100.1–3) plugged into a bridge in a fourth "switch" namespace, which also
//! holds the real r3s API server (HTTPS on 198.51.100.254, SQLite in a temp dir). Each host runs
//! the agent's own code — [`overlay::start`] (bridge, IPAM, masquerade, VXLAN device, VTEP
//! annotations) and [`overlay::run`] (Node watch → peers) — on a thread that joined the host's
//! namespace, with its own kube client, so its API traffic crosses the simulated underlay like a
//! real agent's. Pods are network namespaces attached through `NodeNetwork::add_pod`.
//!
//! Checked: annotations published (and again after someone strips them) and a Node without them
//! skipped; one route, permanent neighbour and FDB entry per peer, following a peer's annotations
//! as they appear, change and go; pods on every host ping each other and TCP crosses the VXLAN device
//! (counters) with the pod IP as source (no masquerade) while egress to a host is masqueraded;
//! deleting Node C removes its entries on A and B; deleting A's device gets it recreated with the
//! same MAC and traffic resumes; a restarted loop whose MAC file is gone keeps the MAC, and a TCP
//! connection open across the restart keeps working.
//!
//! A second test runs the whole agent (`run_node`) on two such hosts: once the Nodes get their
//! podCIDRs, each publishes its VTEP and programs the other, and host A reaches B's pod bridge.
//!
//! The test's own thread joins the switch namespace, so nothing is created in the machine's
//! namespace; every namespace is deleted by a guard (with its links), on failure too.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ApiServer, client, start_api_server_on};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use r3s_agent::node::overlay::{self, Backend};
use r3s_cni::netns;
use r3s_cni::network::BridgeNetwork;
use r3s_cni::node::{NodeConfig, NodeNetwork};
use r3s_cni::vxlan::{self, Vtep, annotations, mac::format_mac};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

const API_IP: &str = "198.51.100.254";
const DEV: &str = vxlan::DEFAULT_DEVICE;

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when the test can run; panics under CI=true when something is missing.
fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces)".to_string());
    }
    for (cmd, pkg) in [
        ("ip", "iproute2"),
        ("bridge", "iproute2"),
        ("ping", "iputils-ping"),
    ] {
        if !have(cmd) {
            missing.push(format!("the `{cmd}` command (Debian package {pkg})"));
        }
    }
    if !Path::new("/sys/module/vxlan").exists()
        && !Command::new("modprobe")
            .arg("vxlan")
            .status()
            .is_ok_and(|s| s.success())
    {
        missing.push("the vxlan kernel module".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("missing prerequisite: {why}");
    }
    eprintln!("skipped: missing {why}");
    false
}

/// A named network namespace `r3so<pid><tag><n>`, deleted (with every link in it) on drop.
struct Ns {
    name: String,
    path: PathBuf,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!(
            "r3so{}{tag}{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        }
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        must(&all)
    }

    fn fdb(&self) -> String {
        must(&["bridge", "-n", &self.name, "fdb", "show", "dev", DEV])
    }

    /// One ping (a few tries: the first packet may wait on neighbour resolution).
    fn ping(&self, target: Ipv4Addr) -> bool {
        let t = target.to_string();
        (0..3).any(|_| {
            run(&[
                "ip", "netns", "exec", &self.name, "ping", "-c", "1", "-W", "2", &t,
            ])
            .status
            .success()
        })
    }

    /// The VXLAN device's (rx, tx) packet counters.
    fn counters(&self) -> (u64, u64) {
        let link = netns::block_on_in(&self.path, || async {
            let h = netns::connect(None).unwrap();
            r3s_cni::nl::require_link(&h, DEV).await
        })
        .unwrap()
        .unwrap();
        (link.rx_packets, link.tx_packets)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// The simulated underlay: a switch namespace with bridge `br0` (198.51.100.254/24) and three
/// hosts on it, each with `eth0` = 198.51.100.<n>/24.
struct World {
    switch: Ns,
    hosts: Vec<Ns>,
}

impl World {
    fn new() -> World {
        let switch = Ns::new("sw");
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["addr", "add", &format!("{API_IP}/24"), "dev", "br0"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for (i, tag) in ["A", "B", "C"].into_iter().enumerate() {
            let host = Ns::new(tag);
            let port = format!("p{}", i + 1);
            switch.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.name,
            ]);
            switch.ip(&["link", "set", &port, "master", "br0", "up"]);
            host.ip(&[
                "addr",
                "add",
                &format!("198.51.100.{}/24", i + 1),
                "dev",
                "eth0",
            ]);
            host.ip(&["link", "set", "eth0", "up"]);
            hosts.push(host);
        }
        World { switch, hosts }
    }
}

/// Polls `f` until it returns `Some`; panics with `what` after a generous bound (a failure
/// bound, not a timing assertion).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the API server on `API_IP:6443` of the calling thread's namespace; it stops when the
/// returned guard is dropped.
async fn start_server(dir: &Path) -> ApiServer {
    let addr: SocketAddr = format!("{API_IP}:6443").parse().unwrap();
    start_api_server_on(dir, addr, vec![API_IP.to_string()]).await
}

type AddPod = (
    String,
    PathBuf,
    std::sync::mpsc::Sender<Result<Ipv4Addr, String>>,
);

/// One host's agent networking: `overlay::start` + `overlay::run` on a thread inside the host's
/// namespace with its own runtime and kube client. Stopped (and joined) on drop.
struct Agent {
    vtep: Vtep,
    pods: mpsc::UnboundedSender<AddPod>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(host: &Ns, kubeconfig: &Path, node: &str, index: u8, dir: &Path) -> Agent {
        let ns = host.path.clone();
        let kubeconfig = kubeconfig.to_path_buf();
        let node = node.to_string();
        let dir = dir.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Vtep, String>>();
        let (pods_tx, mut pods_rx) = mpsc::unbounded_channel::<AddPod>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let ns2 = ns.clone();
            let res = netns::block_on_in(&ns2, || async move {
                let nodes: Api<Node> = Api::all(client(&kubeconfig).await);
                let subnet: ipnet::Ipv4Net = format!("10.42.{index}.0/24").parse().unwrap();
                let node_ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, index));
                let cfg = NodeConfig {
                    pods: BridgeNetwork {
                        name: "r3s".into(),
                        bridge: "r3s0".into(),
                        subnet,
                        mtu: 1500,
                        ipam_dir: dir.join("cni"),
                    },
                    overlay: overlay::config(
                        Backend::Vxlan,
                        true,
                        node_ip,
                        subnet,
                        &dir.join("vtep-mac"),
                    ),
                    masquerade: "10.42.0.0/16".parse().ok(),
                };
                let (net, vtep) = match overlay::start(&nodes, &node, cfg).await {
                    Ok((net, Some(vtep))) => (net, vtep),
                    Ok((_, None)) => {
                        let _ = ready_tx.send(Err("no VTEP".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(vtep.clone()));
                let pods_net = net.clone();
                let serve_pods = async move {
                    while let Some((id, path, reply)) = pods_rx.recv().await {
                        let r = pods_net.add_pod(&id, &path, "eth0").await;
                        let _ = reply.send(r.map(|l| l.address.addr()).map_err(|e| e.to_string()));
                    }
                    std::future::pending::<()>().await;
                };
                let looping =
                    overlay::run(nodes, node, net, vtep, overlay::RESYNC_INTERVAL, async {
                        let _ = stop_rx.await;
                    });
                tokio::select! {
                    _ = looping => {}
                    _ = serve_pods => {}
                }
            });
            if let Err(e) = res {
                eprintln!("agent thread in {}: {e}", ns.display());
            }
        });
        let vtep = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("agent started")
            .unwrap_or_else(|e| panic!("overlay::start on {}: {e}", host.name));
        Agent {
            vtep,
            pods: pods_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// CNI ADD of a pod namespace through the agent's `NodeNetwork`.
    fn add_pod(&self, id: &str, pod: &Ns) -> Ipv4Addr {
        let (tx, rx) = std::sync::mpsc::channel();
        self.pods
            .send((id.to_string(), pod.path.clone(), tx))
            .expect("agent thread alive");
        rx.recv_timeout(Duration::from_secs(60))
            .expect("agent answered")
            .expect("CNI ADD")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An echo server on `addr:port` inside `ns` that reports the first client's address.
fn echo_server(ns: &Ns, addr: Ipv4Addr, port: u16) -> std::sync::mpsc::Receiver<IpAddr> {
    let sa = SocketAddr::from((addr, port));
    let listener = netns::run_in(&ns.path, || std::net::TcpListener::bind(sa))
        .unwrap()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, peer)) = listener.accept() else {
            return;
        };
        let _ = tx.send(peer.ip());
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    rx
}

/// Connects from inside `ns`, echoes a message, returns the source address the server saw.
fn tcp_source(client: &Ns, server: &Ns, addr: Ipv4Addr, port: u16) -> IpAddr {
    let seen = echo_server(server, addr, port);
    let sa = SocketAddr::from((addr, port));
    let mut s = netns::run_in(&client.path, || {
        std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("TCP to {sa} from {}: {e}", client.name));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"over vxlan").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"over vxlan");
    seen.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn has_route(host: &Ns, cidr: &str) -> bool {
    host.ip(&["route", "show", "dev", DEV])
        .lines()
        .any(|l| l.starts_with(cidr))
}

/// Route, permanent neighbour and FDB entry for the peer with podCIDR `10.42.<n>.0/24`.
fn peer_entries(host: &Ns, n: u8, peer: &Vtep) -> [bool; 3] {
    let mac = format_mac(&peer.mac);
    let route = host
        .ip(&["route", "show", "dev", DEV])
        .lines()
        .any(|l| l.starts_with(&format!("10.42.{n}.0/24 via 10.42.{n}.0")) && l.contains("onlink"));
    let neigh = host.ip(&["neigh", "show", "dev", DEV]).lines().any(|l| {
        l.starts_with(&format!("10.42.{n}.0 ")) && l.contains(&mac) && l.contains("PERMANENT")
    });
    let fdb = host
        .fdb()
        .lines()
        .any(|l| l.starts_with(&mac) && l.contains(&format!("dst {}", peer.node_ip)));
    [route, neigh, fdb]
}

#[test]
fn three_hosts_overlay_follows_nodes() {
    if !prerequisites() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "r3s_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
    let world = World::new();
    let tmp = tempfile::tempdir().unwrap();
    // Everything else runs on a thread inside the switch namespace (its runtime's worker threads
    // inherit it), so the API server and the test's client live on the simulated underlay.
    std::thread::scope(|s| {
        s.spawn(|| {
            let sw = netns::open(&world.switch.path).unwrap();
            nix::sched::setns(&sw, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(scenario(&world, tmp.path()));
        });
    });
}

async fn scenario(world: &World, tmp: &Path) {
    let [a, b, c] = [&world.hosts[0], &world.hosts[1], &world.hosts[2]];
    let server = start_server(&tmp.join("server")).await;
    let kubeconfig = server.kubeconfig.clone();
    let api = client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(api.clone());
    eventually("the API server", || async {
        nodes.list(&Default::default()).await.ok()
    })
    .await;

    // The Nodes, as registration and the node IPAM controller would leave them; D never runs an
    // agent and so never publishes a VTEP: it must be skipped, not break the others.
    let name = |n: &str| format!("r3so{}-{n}", std::process::id());
    for (n, cidr) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name(n)},
            "spec": {"podCIDR": format!("10.42.{cidr}.0/24"), "podCIDRs": [format!("10.42.{cidr}.0/24")]},
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }

    let agent_a = Agent::start(a, &kubeconfig, &name("a"), 1, &tmp.join("a"));
    let agent_b = Agent::start(b, &kubeconfig, &name("b"), 2, &tmp.join("b"));
    let agent_c = Agent::start(c, &kubeconfig, &name("c"), 3, &tmp.join("c"));
    let vteps = [
        agent_a.vtep.clone(),
        agent_b.vtep.clone(),
        agent_c.vtep.clone(),
    ];

    // Device parameters: VNI 1, UDP 8472, bound to eth0 with the node IP, MTU 1500 - 50.
    let dev = a.ip(&["-d", "link", "show", DEV]);
    for want in [
        "vxlan id 1",
        "local 198.51.100.1",
        "dev eth0",
        "dstport 8472",
        "nolearning",
        "mtu 1450",
        &format_mac(&agent_a.vtep.mac),
    ] {
        assert!(dev.contains(want), "missing {want:?} in {dev}");
    }
    assert_eq!(agent_a.vtep.mtu, 1450);

    // Published annotations, in flannel's keys.
    let node_a = nodes.get(&name("a")).await.unwrap();
    let ann = node_a.metadata.annotations.unwrap_or_default();
    assert_eq!(ann[annotations::BACKEND_TYPE], "vxlan");
    assert_eq!(ann[annotations::PUBLIC_IP], "198.51.100.1");
    assert_eq!(
        ann[annotations::BACKEND_DATA],
        format!(
            r#"{{"VNI":1,"VtepMAC":"{}"}}"#,
            format_mac(&agent_a.vtep.mac)
        )
    );

    // Every host gets exactly its two peers (D is skipped).
    for (i, host) in [a, b, c].into_iter().enumerate() {
        eventually(&format!("peers programmed on {}", host.name), || async {
            let all = (0..3)
                .filter(|&j| j != i)
                .all(|j| peer_entries(host, j as u8 + 1, &vteps[j]) == [true; 3]);
            all.then_some(())
        })
        .await;
        assert!(!has_route(host, "10.42.4.0/24"), "node D has no VTEP yet");
        assert!(
            !has_route(host, &format!("10.42.{}.0/24", i + 1)),
            "no route to itself"
        );
    }

    // Pods on every host, attached by the agent's NodeNetwork; their MTU follows the tunnel's.
    let pod_a = Ns::new("pa");
    let pod_b = Ns::new("pb");
    let pod_c = Ns::new("pc");
    let ip_a = agent_a.add_pod("pod-a", &pod_a);
    let ip_b = agent_b.add_pod("pod-b", &pod_b);
    let ip_c = agent_c.add_pod("pod-c", &pod_c);
    assert_eq!(ip_b, Ipv4Addr::new(10, 42, 2, 2));
    assert!(pod_a.ip(&["link", "show", "eth0"]).contains("mtu 1450"));

    let (_, tx_before) = a.counters();
    let (rx_before_b, _) = b.counters();
    for (from, to) in [
        (&pod_a, ip_b),
        (&pod_a, ip_c),
        (&pod_b, ip_c),
        (&pod_c, ip_a),
    ] {
        assert!(from.ping(to), "{} cannot ping {to} over VXLAN", from.name);
    }
    // Pod-to-pod TCP keeps the pod's source address; egress to a host is masqueraded.
    assert_eq!(tcp_source(&pod_a, &pod_b, ip_b, 7000), IpAddr::V4(ip_a));
    assert_eq!(
        tcp_source(&pod_a, b, Ipv4Addr::new(198, 51, 100, 2), 7001),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        "pod egress outside the cluster CIDR is masqueraded"
    );
    let (_, tx_after) = a.counters();
    let (rx_after_b, _) = b.counters();
    assert!(
        tx_after >= tx_before + 4,
        "A's VXLAN tx {tx_before} -> {tx_after}"
    );
    assert!(
        rx_after_b >= rx_before_b + 2,
        "B's VXLAN rx {rx_before_b} -> {rx_after_b}"
    );

    // Node D publishes a VTEP (by hand: it runs no agent), then moves to another IP, then goes:
    // A and B follow each change.
    let mac_d = [0x02, 0, 0, 0, 0, 0x0d];
    let vtep_d = |ip: Ipv4Addr| Vtep {
        index: 0,
        mac: mac_d,
        mtu: 1450,
        node_ip: ip,
    };
    for ip in [
        Ipv4Addr::new(198, 51, 100, 4),
        Ipv4Addr::new(198, 51, 100, 5),
    ] {
        let patch = json!({"metadata": {"annotations": annotations::for_vtep(&vtep_d(ip), 1)}});
        nodes
            .patch(&name("d"), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        for host in [a, b] {
            eventually(&format!("node D at {ip} on {}", host.name), || async {
                (peer_entries(host, 4, &vtep_d(ip)) == [true; 3]).then_some(())
            })
            .await;
        }
    }
    assert!(
        !a.fdb().contains("dst 198.51.100.4"),
        "D's old FDB entry is replaced, not kept"
    );
    nodes
        .delete(&name("d"), &DeleteParams::default())
        .await
        .unwrap();
    for host in [a, b] {
        eventually(
            &format!("node D's entries gone on {}", host.name),
            || async {
                (peer_entries(host, 4, &vtep_d(Ipv4Addr::new(198, 51, 100, 5))) == [false; 3])
                    .then_some(())
            },
        )
        .await;
    }

    // Someone strips A's annotations: its agent publishes them again.
    let strip = json!({"metadata": {"annotations": {annotations::BACKEND_DATA: null}}});
    nodes
        .patch(&name("a"), &PatchParams::default(), &Patch::Merge(&strip))
        .await
        .unwrap();
    eventually("A's annotations published again", || async {
        let n = nodes.get(&name("a")).await.ok()?;
        n.metadata
            .annotations?
            .get(annotations::BACKEND_DATA)?
            .contains(&format_mac(&vteps[0].mac))
            .then_some(())
    })
    .await;

    // Node C goes: its route, neighbour and FDB entry go on A and B, and C becomes unreachable.
    drop(agent_c);
    nodes
        .delete(&name("c"), &DeleteParams::default())
        .await
        .unwrap();
    for host in [a, b] {
        eventually(
            &format!("node C's entries gone on {}", host.name),
            || async { (peer_entries(host, 3, &vteps[2]) == [false; 3]).then_some(()) },
        )
        .await;
    }
    assert_eq!(peer_entries(a, 2, &vteps[1]), [true; 3], "B's entries stay");
    assert!(
        !run(&[
            "ip",
            "netns",
            "exec",
            &pod_a.name,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            &ip_c.to_string()
        ])
        .status
        .success(),
        "node C is gone from the overlay"
    );

    // Someone deletes A's VXLAN device: it comes back with the same MAC and traffic resumes.
    let mac_a = format_mac(&agent_a.vtep.mac);
    a.ip(&["link", "del", DEV]);
    eventually("A's VXLAN device recreated and reprogrammed", || async {
        let dev = a.ip(&["link", "show"]);
        (dev.contains(&format!("{DEV}:"))
            && dev.contains(&mac_a)
            && peer_entries(a, 2, &vteps[1]) == [true; 3])
            .then_some(())
    })
    .await;
    assert!(
        pod_a.ping(ip_b),
        "traffic resumes after the device is recreated"
    );

    // The loop stops (traffic keeps flowing without it) and restarts with its MAC file gone:
    // the MAC the Node publishes is reused, so B's entries stay valid.
    // A connection across the overlay, open while A's loop restarts.
    let _seen = echo_server(&pod_a, ip_a, 7003);
    let sa = SocketAddr::from((ip_a, 7003));
    let mut conn = netns::run_in(&pod_b.path, || {
        std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5))
    })
    .unwrap()
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut echo = |msg: &[u8]| {
        let mut back = vec![0u8; msg.len()];
        conn.write_all(msg).is_ok() && conn.read_exact(&mut back).is_ok() && back == msg
    };
    assert!(echo(b"before restart"));
    drop(agent_a);
    assert!(
        pod_a.ping(ip_b),
        "the kernel keeps forwarding while the agent is down"
    );
    std::fs::remove_file(tmp.join("a/vtep-mac")).unwrap();
    let agent_a = Agent::start(a, &kubeconfig, &name("a"), 1, &tmp.join("a"));
    assert_eq!(
        format_mac(&agent_a.vtep.mac),
        mac_a,
        "VTEP MAC kept across a restart"
    );
    let ann = nodes
        .get(&name("a"))
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default();
    assert!(ann[annotations::BACKEND_DATA].contains(&mac_a));
    assert!(pod_a.ping(ip_b), "traffic after the restart");
    assert!(
        echo(b"after restart"),
        "the established connection survives the restart"
    );
    assert_eq!(tcp_source(&pod_b, &pod_a, ip_a, 7002), IpAddr::V4(ip_b));
    drop(agent_a);
    drop(agent_b);
}

/// The whole agent (`run_node`) on a host thread: registration, then the pod network and the
/// overlay once the Node gets a podCIDR. Stopped through its shutdown future and joined on drop.
struct WholeAgent {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WholeAgent {
    fn start(host: &Ns, kubeconfig: &Path, node: &str, index: u8, dir: &Path) -> WholeAgent {
        let ns = host.path.clone();
        let kubeconfig = kubeconfig.to_path_buf();
        let mut opts = r3s_agent::NodeOptions::new(node, dir.join("data"));
        opts.run_dir = dir.join("run");
        opts.node_ip = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, index)));
        opts.cgroup_root = PathBuf::from(format!("/r3so{}{node}", std::process::id()));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let res = netns::block_on_in(&ns, || async move {
                let client = client(&kubeconfig).await;
                r3s_agent::run_node(client, opts, async {
                    let _ = stop_rx.await;
                })
                .await
            });
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("run_node in {}: {e}", ns.display()),
                Err(e) => panic!("agent thread in {}: {e}", ns.display()),
            }
        });
        WholeAgent {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops the agent and reports whether it ended cleanly.
    fn stop(mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread.take().is_some_and(|t| t.join().is_ok())
    }
}

impl Drop for WholeAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn run_node_brings_up_the_overlay() {
    if !prerequisites() {
        return;
    }
    let world = World::new();
    let tmp = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let sw = netns::open(&world.switch.path).unwrap();
            nix::sched::setns(&sw, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(whole_agents(&world, tmp.path()));
        });
    });
}

async fn whole_agents(world: &World, tmp: &Path) {
    let [a, b] = [&world.hosts[0], &world.hosts[1]];
    let server = start_server(&tmp.join("server")).await;
    let kubeconfig = server.kubeconfig.clone();
    let nodes: Api<Node> = Api::all(client(&kubeconfig).await);
    eventually("the API server", || async {
        nodes.list(&Default::default()).await.ok()
    })
    .await;
    let name = |n: &str| format!("r3sow{}-{n}", std::process::id());
    let agent_a = WholeAgent::start(a, &kubeconfig, &name("a"), 1, &tmp.join("a"));
    let agent_b = WholeAgent::start(b, &kubeconfig, &name("b"), 2, &tmp.join("b"));

    // Registered without a podCIDR; the test plays the node IPAM controller.
    for (n, i) in [("a", 1), ("b", 2)] {
        eventually(&format!("node {n} registered"), || async {
            nodes.get_opt(&name(n)).await.ok().flatten()
        })
        .await;
        let cidr = format!("10.42.{i}.0/24");
        let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        nodes
            .patch(&name(n), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    // Each agent publishes its VTEP; each host gets the other as its one peer.
    let mut vteps = Vec::new();
    for n in ["a", "b"] {
        let vtep = eventually(&format!("node {n}'s VTEP annotations"), || async {
            let node = nodes.get(&name(n)).await.ok()?;
            let cidr = node.spec.as_ref()?.pod_cidr.clone()?;
            let ann = node.metadata.annotations?;
            let peer = annotations::peer_from(&cidr, &ann, 1).ok()?;
            Some(Vtep {
                index: 0,
                mac: peer.vtep_mac,
                mtu: 1450,
                node_ip: peer.node_ip,
            })
        })
        .await;
        vteps.push(vtep);
    }
    assert_eq!(vteps[0].node_ip, Ipv4Addr::new(198, 51, 100, 1));
    eventually("A and B programmed with each other", || async {
        (peer_entries(a, 2, &vteps[1]) == [true; 3] && peer_entries(b, 1, &vteps[0]) == [true; 3])
            .then_some(())
    })
    .await;
    let dev = b.ip(&["-d", "link", "show", DEV]);
    assert!(
        dev.contains("local 198.51.100.2") && dev.contains("mtu 1450"),
        "{dev}"
    );
    // The hosts reach each other's pod networks (host → remote gateway) over the tunnel.
    assert!(
        a.ping(Ipv4Addr::new(10, 42, 2, 1)),
        "A reaches B's bridge over VXLAN"
    );
    assert!(agent_a.stop(), "agent A stopped cleanly");
    assert!(agent_b.stop(), "agent B stopped cleanly");
    // The agent keeps its MAC in its data dir.
    let kept = std::fs::read_to_string(tmp.join("a/data/agent/vtep-mac")).unwrap();
    assert_eq!(kept.trim(), format_mac(&vteps[0].mac));
}
