//! Cluster DNS end to end: a real API server in-process (SQLite store in a temp dir) holding
//! Services, Endpoints and Pods; the agent's DNS server watching it on a 127.0.0.x address; and
//! `dig` (bind9-dnsutils) asking over UDP and TCP. Names outside the cluster go to a tiny
//! upstream responder the test runs itself on loopback (never the host's resolver).
//!
//! A second test runs [`r3s_agent::dns::run`] as the agent does, inside a fresh network namespace
//! (root): the dummy link gets the cluster DNS address, `dig` in that namespace gets answers on
//! 10.43.0.10:53, and the link is gone after shutdown. The namespace belongs to one thread and
//! dies with it, so nothing is left on failure either.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use r3s_agent::dns::server::Sockets;
use r3s_agent::dns::zone::Zone;
use r3s_server::api::ApiState;
use r3s_server::client;
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use serde_json::json;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

const DIG: &str = "/usr/bin/dig";

/// Skips (or fails under CI) when a prerequisite is missing.
fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("missing prerequisite: {what}");
    }
    eprintln!("skipped: {what} is missing");
    false
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// An in-process API server and an admin client for it.
fn api(dir: &Path) -> kube::Client {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.join("state.db"), StoreOptions::default()).unwrap());
    let state = ApiState::new(store, "127.0.0.1:6443");
    client::in_process(state, client::identity("r3s-test-admin"))
}

/// A distinct loopback address for this process, so parallel runs do not meet.
fn loopback(n: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 53, (pid % 250) as u8 + 1, n)
}

/// The upstream the DNS server forwards to: `*.outside.test.` A 203.0.113.7, the rest NXDOMAIN.
/// Returns its address and how many queries it answered (to tell a cached answer from a new one).
async fn upstream(ip: Ipv4Addr) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let sock = UdpSocket::bind((ip, 0)).await.unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            let name = q.queries[0].name().to_string().to_ascii_lowercase();
            if name.ends_with("outside.test.") {
                r.add_answer(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(203, 0, 113, 7))),
                ));
            } else {
                r.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), peer).await;
        }
    });
    (addr, count)
}

/// What `dig` printed, by section.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: String,
    /// `TYPE RDATA` of each answer record.
    answers: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
}

async fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let out = tokio::process::Command::new(DIG)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+tries=1", "+time=3", "+noall", "+comments", "+answer"])
        .args(["+authority", "+additional"])
        .args(args)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = Dig::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest.split(';').next().unwrap_or("").to_string();
        }
        if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = if line.contains("ANSWER") {
                "answer"
            } else if line.contains("AUTHORITY") {
                "authority"
            } else if line.contains("ADDITIONAL") {
                "additional"
            } else {
                ""
            };
            continue;
        }
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let rec = format!("{} {}", f[3], f[4..].join(" "));
        match section {
            "answer" => d.answers.push(rec),
            "authority" => d.authority.push(rec),
            "additional" => d.additional.push(rec),
            _ => {}
        }
    }
    d.answers.sort();
    d
}

/// Asks until `ok` holds (the view follows the API a moment later), failing after 30 s.
async fn dig_until(server: SocketAddr, args: &[&str], ok: impl Fn(&Dig) -> bool) -> Dig {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = dig(server, args).await;
        if ok(&d) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "dig {args:?} never satisfied: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace with its `default` ServiceAccount (no ServiceAccount controller runs here, and pod
/// admission requires the account, as upstream's does).
async fn create_ns(client: &kube::Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), ns);
    let sa = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
}

async fn create<K>(client: &kube::Client, ns: &str, v: serde_json::Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let obj: K = serde_json::from_value(v).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
}

/// A pod with a hostname/subdomain and a status IP (no scheduler or agent runs here).
async fn pod(client: &kube::Client, ns: &str, name: &str, ip: &str, subdomain: &str) {
    create::<Pod>(
        client,
        ns,
        json!({
            "metadata": {"name": name},
            "spec": {
                "hostname": name, "subdomain": subdomain,
                "containers": [{"name": "c", "image": "example.invalid/c:1"}]
            }
        }),
    )
    .await;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]
        }})),
    )
    .await
    .unwrap();
}

fn endpoints(name: &str, addrs: &[(&str, Option<&str>)]) -> serde_json::Value {
    let addresses: Vec<_> = addrs
        .iter()
        .map(|(ip, pod)| match pod {
            Some(p) => json!({"ip": ip, "targetRef": {"kind": "Pod", "name": p}}),
            None => json!({"ip": ip}),
        })
        .collect();
    json!({
        "metadata": {"name": name},
        "subsets": [{
            "addresses": addresses,
            "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]
        }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cluster_names_and_forwards_the_rest() {
    if !require(
        Path::new(DIG).exists(),
        "dig (apt-get install bind9-dnsutils)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let client = api(dir.path());
    let pid = std::process::id();
    let ns = format!("r3sd{pid}a");
    create_ns(&client, &ns).await;

    let (up, up_count) = upstream(loopback(2)).await;
    let sockets = Sockets::bind(SocketAddr::new(IpAddr::V4(loopback(1)), 0))
        .await
        .unwrap();
    let server = sockets.local_addr().unwrap();
    let zone = Zone::new("cluster.local", 5, Some(server.ip())).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let dns = tokio::spawn(r3s_agent::dns::serve_on(
        client.clone(),
        sockets,
        zone,
        vec![up],
        async {
            let _ = stopped.await;
        },
    ));

    create::<Service>(
        &client,
        &ns,
        json!({
            "metadata": {"name": "web"},
            "spec": {"clusterIP": "10.43.7.50",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }),
    )
    .await;
    create::<Service>(
        &client,
        &ns,
        json!({
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None",
                     "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]}
        }),
    )
    .await;
    create::<Service>(
        &client,
        &ns,
        json!({
            "metadata": {"name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "db.outside.test"}
        }),
    )
    .await;
    pod(&client, &ns, "db-0", "10.42.1.5", "db").await;
    create::<Endpoints>(
        &client,
        &ns,
        endpoints("db", &[("10.42.1.5", Some("db-0")), ("10.42.2.6", None)]),
    )
    .await;

    let web = format!("web.{ns}.svc.cluster.local");
    let db = format!("db.{ns}.svc.cluster.local");

    // ClusterIP Service: A, authoritative, TTL 5.
    let d = dig_until(server, &[&web, "A"], |d| d.status == "NOERROR").await;
    assert_eq!(d.answers, ["A 10.43.7.50"]);
    assert!(d.flags.split(' ').any(|f| f == "aa"), "{d:?}");
    // Same over TCP.
    let d = dig(server, &["+tcp", &web, "A"]).await;
    assert_eq!(d.answers, ["A 10.43.7.50"]);
    // SRV for the named port, with the target's address as additional data.
    let d = dig(server, &[&format!("_http._tcp.{web}"), "SRV"]).await;
    assert_eq!(d.answers, [format!("SRV 0 100 80 {web}.")]);
    assert_eq!(d.additional, ["A 10.43.7.50"]);
    // PTR of the ClusterIP.
    let d = dig(server, &["-x", "10.43.7.50"]).await;
    assert_eq!(d.answers, [format!("PTR {web}.")]);

    // Headless: every ready endpoint; per-endpoint names (the pod's hostname, else dashed IP).
    let d = dig_until(server, &[&db, "A"], |d| d.answers.len() == 2).await;
    assert_eq!(d.answers, ["A 10.42.1.5", "A 10.42.2.6"]);
    let d = dig(server, &[&format!("_sql._tcp.{db}"), "SRV"]).await;
    assert_eq!(
        d.answers,
        [
            format!("SRV 0 50 5432 10-42-2-6.{db}."),
            format!("SRV 0 50 5432 db-0.{db}."),
        ]
    );
    let d = dig_until(server, &[&format!("db-0.{db}"), "A"], |d| {
        d.status == "NOERROR"
    })
    .await;
    assert_eq!(d.answers, ["A 10.42.1.5"]);
    let d = dig(server, &["-x", "10.42.1.5"]).await;
    assert_eq!(d.answers, [format!("PTR db-0.{db}.")]);

    // Pod record.
    let d = dig(server, &[&format!("10-42-1-5.{ns}.pod.cluster.local"), "A"]).await;
    assert_eq!(d.answers, ["A 10.42.1.5"]);

    // ExternalName: the CNAME, followed through the upstream.
    let d = dig(server, &[&format!("ext.{ns}.svc.cluster.local"), "A"]).await;
    assert_eq!(d.answers, ["A 203.0.113.7", "CNAME db.outside.test."]);

    // Negative answers: NXDOMAIN for a missing name, NODATA for a missing type; SOA either way.
    let d = dig(server, &[&format!("nope.{ns}.svc.cluster.local"), "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.answers.is_empty());
    assert!(
        d.authority.len() == 1 && d.authority[0].starts_with("SOA ns.dns.cluster.local."),
        "{d:?}"
    );
    let d = dig(server, &[&web, "AAAA"]).await;
    assert_eq!(d.status, "NOERROR");
    assert!(d.answers.is_empty());
    assert_eq!(d.authority.len(), 1, "{d:?}");

    // Outside names: forwarded to the test's upstream, then served from the cache.
    let d = dig(server, &["www.outside.test", "A"]).await;
    assert_eq!(d.answers, ["A 203.0.113.7"]);
    let asked = up_count.load(std::sync::atomic::Ordering::SeqCst);
    let d = dig(server, &["www.outside.test", "A"]).await;
    assert_eq!(d.answers, ["A 203.0.113.7"]);
    assert_eq!(up_count.load(std::sync::atomic::Ordering::SeqCst), asked);
    let d = dig(server, &["nothing.example", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");

    // Updates: an endpoint goes, then the Service.
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    eps.replace("db", &PostParams::default(), &{
        let mut e: Endpoints =
            serde_json::from_value(endpoints("db", &[("10.42.2.6", None)])).unwrap();
        e.metadata.resource_version = eps.get("db").await.unwrap().metadata.resource_version;
        e
    })
    .await
    .unwrap();
    let d = dig_until(server, &[&db, "A"], |d| d.answers.len() == 1).await;
    assert_eq!(d.answers, ["A 10.42.2.6"]);
    let d = dig(server, &[&format!("db-0.{db}"), "A"]).await;
    assert_eq!(d.status, "NXDOMAIN");

    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    dig_until(server, &[&web, "A"], |d| d.status == "NXDOMAIN").await;
    // Its PTR is no longer ours: forwarded, and the upstream knows nothing.
    let d = dig(server, &["-x", "10.43.7.50"]).await;
    assert_eq!(d.status, "NXDOMAIN");

    let _ = stop.send(());
    dns.await.unwrap();
}

/// A raw UDP query (for checks dig cannot make, such as a header with garbage after it).
async fn raw(server: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let sock = UdpSocket::bind((server.ip(), 0)).await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..n]).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_large_answers() {
    if !require(
        Path::new(DIG).exists(),
        "dig (apt-get install bind9-dnsutils)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let client = api(dir.path());
    let ns = format!("r3sd{}b", std::process::id());
    create_ns(&client, &ns).await;
    let sockets = Sockets::bind(SocketAddr::new(IpAddr::V4(loopback(3)), 0))
        .await
        .unwrap();
    let server = sockets.local_addr().unwrap();
    let zone = Zone::new("cluster.local", 5, Some(server.ip())).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let dns = tokio::spawn(r3s_agent::dns::serve_on(
        client.clone(),
        sockets,
        zone,
        vec![],
        async {
            let _ = stopped.await;
        },
    ));
    // A headless Service with 60 endpoints: more than 512 bytes of A records.
    create::<Service>(
        &client,
        &ns,
        json!({"metadata": {"name": "big"}, "spec": {"clusterIP": "None"}}),
    )
    .await;
    let ips: Vec<String> = (1..=60).map(|i| format!("10.42.9.{i}")).collect();
    let addrs: Vec<(&str, Option<&str>)> = ips.iter().map(|ip| (ip.as_str(), None)).collect();
    create::<Endpoints>(&client, &ns, endpoints("big", &addrs)).await;
    let big = format!("big.{ns}.svc.cluster.local");
    // Over UDP without EDNS the answer is truncated; dig then retries over TCP by itself.
    let d = dig_until(server, &["+noedns", &big, "A"], |d| d.answers.len() == 60).await;
    assert_eq!(d.status, "NOERROR");
    let d = dig(server, &["+noedns", "+ignore", &big, "A"]).await;
    assert!(d.flags.split(' ').any(|f| f == "tc"), "{d:?}");
    assert!(d.answers.is_empty(), "{d:?}");

    // A header followed by garbage: FORMERR with the same ID.
    let mut junk = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0xff; 7]);
    let m = raw(server, &junk)
        .await
        .expect("an answer to a malformed query");
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // An update (opcode 5) is not implemented.
    let mut update = Message::new(7, MessageType::Query, OpCode::Update);
    update.add_query(hickory_proto::op::Query::query(
        Name::from_ascii("cluster.local.").unwrap(),
        hickory_proto::rr::RecordType::SOA,
    ));
    let m = raw(server, &update.to_vec().unwrap()).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    // No upstream configured: outside names fail with SERVFAIL, not silence.
    let d = dig(server, &["www.outside.test", "A"]).await;
    assert_eq!(d.status, "SERVFAIL");

    let _ = stop.send(());
    dns.await.unwrap();
}

/// Where the cluster DNS address is in the caller's network namespace: on the dummy link (which
/// then must exist), on `lo` (kernels without dummy links), or nowhere (and no dummy link left).
async fn placement(h: &rtnetlink::Handle, link: &str, ip: Ipv4Addr) -> Option<String> {
    if let Some(l) = r3s_cni::nl::link_by_name(h, link).await.unwrap() {
        let addrs = r3s_cni::nl::ipv4_addrs(h, l.index).await.unwrap();
        return Some(format!("{link} {addrs:?}"));
    }
    let lo = r3s_cni::nl::require_link(h, "lo").await.unwrap();
    let addrs = r3s_cni::nl::ipv4_addrs(h, lo.index).await.unwrap();
    addrs.contains(&(ip, 32)).then(|| "lo".to_string())
}

#[test]
fn serves_on_the_cluster_address_in_a_netns() {
    if !require(is_root(), "root (to make a network namespace)")
        || !require(
            Path::new(DIG).exists(),
            "dig (apt-get install bind9-dnsutils)",
        )
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // The namespace is this thread's alone: it (and the dummy link in it) vanishes with the
    // thread, whatever happens.
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(in_netns(&path));
    });
    t.join().expect("the netns test thread failed");
}

async fn in_netns(dir: &Path) {
    let h = r3s_cni::netns::connect(None).unwrap();
    let lo = r3s_cni::nl::require_link(&h, "lo").await.unwrap();
    r3s_cni::nl::set_up(&h, &lo).await.unwrap();

    let client = api(dir);
    let ns = format!("r3sd{}c", std::process::id());
    create_ns(&client, &ns).await;
    create::<Service>(
        &client,
        &ns,
        json!({
            "metadata": {"name": "web"},
            "spec": {"clusterIP": "10.43.8.50",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }),
    )
    .await;

    let cluster_dns: IpAddr = "10.43.0.10".parse().unwrap();
    let mut opts = r3s_agent::dns::DnsOptions::new(cluster_dns, "cluster.local");
    opts.upstreams = Some(vec![]);
    let link = opts.link.clone().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(r3s_agent::dns::run(client.clone(), opts.clone(), async {
        let _ = stopped.await;
    }));
    let server = SocketAddr::new(cluster_dns, 53);
    let web = format!("web.{ns}.svc.cluster.local");
    let d = dig_until(server, &[&web, "A"], |d| d.status == "NOERROR").await;
    assert_eq!(d.answers, ["A 10.43.8.50"]);
    let d = dig(server, &["+tcp", &web, "A"]).await;
    assert_eq!(d.answers, ["A 10.43.8.50"]);
    let ip = Ipv4Addr::new(10, 43, 0, 10);
    let placed = placement(&h, &link, ip).await;
    // On a kernel with dummy links the address is alone on `r3s-dns`, else it is on lo.
    let on_dummy = format!("{link} [(10.43.0.10, 32)]");
    assert!(
        placed.as_deref() == Some(on_dummy.as_str()) || placed.as_deref() == Some("lo"),
        "{placed:?}"
    );
    eprintln!("cluster DNS address placed on: {placed:?}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert_eq!(
        placement(&h, &link, ip).await,
        None,
        "address left after shutdown"
    );

    // Aborted instead of stopped (the agent's future dropped): the guard removes the link.
    let task = tokio::spawn(r3s_agent::dns::run(
        client.clone(),
        opts,
        std::future::pending(),
    ));
    dig_until(server, &[&web, "A"], |d| d.status == "NOERROR").await;
    task.abort();
    let _ = task.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while placement(&h, &link, ip).await.is_some() {
        assert!(Instant::now() < deadline, "address left after abort");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
