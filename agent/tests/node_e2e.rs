//! End to end, as root: the real API server in-process (HTTPS, SQLite store in a temp dir), a real
//! `docker-registry` on 127.0.0.1 serving a busybox-static image, and [`r3s_agent::run_node`]
//! running pods through libcontainer. Checks node registration and Lease renewal, a pod reaching
//! Running with kubelet-like status, the container as a real process in its cgroup, CRI logs,
//! restarts of a crashing container with back-off, SIGTERM then cleanup on delete, a hostNetwork
//! HTTP server reachable from the test, and kubectl's view of it all.
//!
//! The registry and OCI image builder are the images crate's test support, included by path (one
//! copy of that code). Everything the test creates (containers, overlay and namespace mounts,
//! cgroups, the registry process, temp dirs) is removed by guards, on failure too.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../images/tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ApiServer, client, start_api_server};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use oci_client::secrets::RegistryAuth;
use r3s_agent::NodeOptions;
use serde_json::{Value, json};
use support::{Compression, Entry, Registry, require};
use tokio::sync::oneshot;

const KUBECTL: &str = "/usr/bin/kubectl";

/// Removes whatever the agent left if the test fails half-way: containers (killed), mounts,
/// cgroups. Runs after the agent's own shutdown on success, finding nothing.
struct AgentGuard {
    run_dir: PathBuf,
    data_dir: PathBuf,
    cgroup_root: PathBuf,
    /// A pod bridge the agent made on the host.
    bridge: Option<String>,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let run_dir = self.run_dir.clone();
        let bridge = self.bridge.clone();
        // A fresh runtime on its own thread: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let runtime = r3s_agent::runtime::Runtime::new(run_dir.join("containers"));
            rt.block_on(async {
                r3s_agent::runtime::cleanup::delete_all(&runtime).await;
                if let Some(bridge) = &bridge
                    && let Ok(h) = r3s_cni::netns::connect(None)
                {
                    let _ = r3s_cni::nl::delete_link(&h, bridge).await;
                }
            });
        })
        .join();
        r3s_agent::runtime::cleanup::unmount_below(&self.data_dir);
        r3s_agent::runtime::cleanup::unmount_below(&self.run_dir);
        r3s_agent::runtime::cleanup::remove_cgroup(&self.cgroup_root);
    }
}

/// Polls `f` until it returns `Some`, up to five minutes (a bound on a hang, not a timing check).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn pod_json(api: &Api<Pod>, name: &str) -> Option<Value> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .map(|p| serde_json::to_value(p).unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

async fn kubectl(server: &ApiServer, args: &[&str]) -> String {
    let out = tokio::process::Command::new(KUBECTL)
        .args(args)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", &server.home)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid_alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; "State: Z" counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// The pid of the (only) process of the container's cgroup in the memory hierarchy.
fn cgroup_pids(cgroup: &Path) -> Vec<i32> {
    let rel = cgroup.strip_prefix("/").unwrap();
    for base in [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ] {
        if let Ok(t) = std::fs::read_to_string(Path::new(base).join(rel).join("cgroup.procs")) {
            return t.lines().filter_map(|l| l.parse().ok()).collect();
        }
    }
    Vec::new()
}

/// A registry with a busybox image, an API server and a running agent. Field order is drop
/// order: the guard cleans up before the directories and the registry go.
struct Harness {
    _guard: AgentGuard,
    agent: Option<tokio::task::JoinHandle<Result<(), r3s_agent::AgentError>>>,
    stop: Option<oneshot::Sender<()>>,
    server: ApiServer,
    client: kube::Client,
    image: String,
    manifest_digest: String,
    registry_addr: String,
    node_name: String,
    data_dir: PathBuf,
    run_dir: PathBuf,
    cgroup_root: PathBuf,
    _reg: Registry,
    _tmp: tempfile::TempDir,
}

/// Starts everything, or returns `None` (after `skipped:`; panics under CI=true) when a
/// prerequisite is missing. `suffix` keeps names unique between tests of this process.
async fn harness(suffix: &str, pod_cidr: Option<&str>) -> Option<Harness> {
    // With a podCIDR the test assigns it to the Node itself (as the server's IPAM controller
    // will); here it only picks a unique bridge and skips the host masquerade table.
    if !require("root", support::is_root())
        || !support::have_registry()
        || !support::have_busybox()
        || !require("kubectl (/usr/bin/kubectl)", Path::new(KUBECTL).exists())
    {
        return None;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "r3s_agent=info".into()),
        )
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let uniq = format!("r3st{}{suffix}", std::process::id());

    // A busybox-static image in a real registry.
    let reg = Registry::start();
    let bb = std::fs::read("/bin/busybox").unwrap();
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox", bb, 0o755),
        Entry::Dir("tmp", 0o1777),
    ];
    for applet in ["sh", "echo", "sleep", "cat", "mkdir", "httpd", "hostname"] {
        entries.push(Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    let layer = support::layer(&entries, Compression::Gzip);
    let img = support::image(
        vec![layer],
        r3s_agent::node::info::architecture(),
        None,
        false,
    );
    reg.push("busybox", "1", &img, &RegistryAuth::Anonymous)
        .await;
    let image = format!("{}/busybox:1", reg.addr);

    let server = start_api_server(&tmp.path().join("server")).await;
    let client = client(&server.kubeconfig).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    eventually("the default namespace", || async {
        namespaces.get_opt("default").await.ok().flatten()
    })
    .await;

    // The agent.
    let data_dir = tmp.path().join("data");
    let run_dir = tmp.path().join("run");
    let cgroup_root = PathBuf::from(format!("/{uniq}"));
    let bridge = format!("r3sb{}{suffix}", std::process::id());
    let guard = AgentGuard {
        run_dir: run_dir.clone(),
        data_dir: data_dir.clone(),
        cgroup_root: cgroup_root.clone(),
        bridge: pod_cidr.map(|_| bridge.clone()),
    };
    let node_name = format!("{uniq}-node");
    let mut opts = NodeOptions::new(&node_name, &data_dir);
    opts.run_dir = run_dir.clone();
    opts.node_ip = Some("127.0.0.1".parse().unwrap());
    opts.control_plane = true;
    opts.labels.push("r3s.test/role=e2e".parse().unwrap());
    opts.taints
        .push("r3s.test/dedicated=e2e:PreferNoSchedule".parse().unwrap());
    opts.cgroup_root = cgroup_root.clone();
    // Containers start under the real agent binary's shim, as in production: without one,
    // libcontainer forks its init from this multi-threaded test process, and that child can
    // deadlock on a malloc lock another thread held at fork time (seen in CI).
    opts.shim = Some(PathBuf::from(env!("CARGO_BIN_EXE_r3s-agent")));
    let mut registries = r3s_images::RegistriesConfig::from_yaml(&format!(
        "mirrors:\n  \"{0}\":\n    endpoint:\n      - \"http://{0}\"\n",
        reg.addr
    ))
    .unwrap();
    registries.disable_default_endpoint = true;
    opts.registries = registries;
    // No cluster CIDR: no masquerade table in the test machine's own namespace, and the node is
    // Ready without waiting for a podCIDR (this server runs no node IPAM; the network test sets
    // the podCIDR itself).
    opts.cluster_cidr = None;
    if pod_cidr.is_some() {
        opts.bridge = bridge;
    }
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(r3s_agent::run_node(client.clone(), opts, async {
        let _ = stop_rx.await;
    }));

    Some(Harness {
        _guard: guard,
        agent: Some(agent),
        stop: Some(stop_tx),
        server,
        client,
        image,
        manifest_digest: img.manifest_digest.clone(),
        registry_addr: reg.addr.clone(),
        node_name,
        data_dir,
        run_dir,
        cgroup_root,
        _reg: reg,
        _tmp: tmp,
    })
}

impl Harness {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn create(&self, name: &str, spec: Value) -> Pod {
        let mut spec = spec;
        spec["nodeName"] = json!(self.node_name);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()
    }

    fn log(&self, pod: &Pod, container: &str, restart: u32) -> PathBuf {
        self.data_dir
            .join("agent/pods")
            .join(format!(
                "default_{}_{}",
                pod.metadata.name.as_deref().unwrap(),
                pod.metadata.uid.as_deref().unwrap()
            ))
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// Stops the agent (which stops its pods) and checks no container is left.
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(agent) = self.agent.take() {
            agent.await.unwrap().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(self.run_dir.join("containers"))
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "containers left: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_runs_pods_end_to_end() {
    let Some(h) = harness("a", None).await else {
        return;
    };
    let (client, node_name, image) = (h.client.clone(), h.node_name.clone(), h.image.clone());
    let (data_dir, run_dir, cgroup_root) =
        (h.data_dir.clone(), h.run_dir.clone(), h.cgroup_root.clone());

    // The Node: registered, Ready, labelled and tainted, with capacity and nodeInfo.
    let nodes: Api<Node> = Api::all(client.clone());
    let node = eventually("node Ready", || async {
        let n = nodes.get_opt(&node_name).await.ok().flatten()?;
        let v = serde_json::to_value(&n).unwrap();
        let ready = v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(v)
    })
    .await;
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], node_name.as_str());
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    assert_eq!(labels["r3s.test/role"], "e2e");
    assert_eq!(node["spec"]["taints"][0]["key"], "r3s.test/dedicated");
    let status = &node["status"];
    assert_eq!(
        status["nodeInfo"]["containerRuntimeVersion"],
        "youki://0.7.0"
    );
    assert_eq!(status["capacity"]["pods"], "110");
    assert!(
        status["capacity"]["cpu"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert!(
        status["allocatable"]["memory"]
            .as_str()
            .unwrap()
            .ends_with("Ki")
    );
    assert_eq!(
        status["addresses"][0],
        json!({"type": "InternalIP", "address": "127.0.0.1"})
    );
    for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(
            status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == t),
            "{t}"
        );
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let first_renew = eventually("the node lease", || async {
        let l = leases.get_opt(&node_name).await.ok().flatten()?;
        let v = serde_json::to_value(l).unwrap();
        Some(v["spec"]["renewTime"].as_str()?.to_owned())
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let create = |name: &str, spec: Value| {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))
        .unwrap();
        let pods = pods.clone();
        async move { pods.create(&PostParams::default(), &pod).await.unwrap() }
    };

    // 1. A long-running pod that answers SIGTERM.
    let created = create(
        "ticker",
        json!({
            "nodeName": node_name,
            "terminationGracePeriodSeconds": 20,
            "containers": [{
                "name": "c",
                "image": image,
                "command": ["sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo host $(hostname); i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"],
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
            }],
        }),
    )
    .await;
    let uid = created.metadata.uid.clone().unwrap();
    let running = eventually("ticker Running", || async {
        let p = pod_json(&pods, "ticker").await?;
        (p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object())
        .then_some(p)
    })
    .await;
    let st = &running["status"];
    let cs = &st["containerStatuses"][0];
    assert_eq!(cs["name"], "c");
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["started"], true);
    assert_eq!(cs["restartCount"], 0);
    assert_eq!(cs["image"], image.as_str());
    assert_eq!(
        cs["imageID"],
        format!("{}/busybox@{}", h.registry_addr, h.manifest_digest).as_str()
    );
    let container_id = cs["containerID"].as_str().unwrap().to_owned();
    assert!(container_id.starts_with("youki://"), "{container_id}");
    assert_eq!(st["hostIP"], "127.0.0.1");
    assert!(st["startTime"].is_string());
    assert_eq!(st["qosClass"], "Guaranteed");
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        let c = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .unwrap_or_else(|| panic!("condition {t}"));
        assert_eq!(c["status"], "True", "{t}");
    }

    // The container is a real process in the expected cgroup, with the memory limit applied.
    let cgroup = cgroup_root.join(format!("pod{uid}")).join("c");
    let pids = cgroup_pids(&cgroup);
    assert!(!pids.is_empty(), "no process in {}", cgroup.display());
    let pid = pids[0];
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        proc_cgroup.contains(&format!("{}", cgroup.display())),
        "{proc_cgroup}"
    );
    let limit_file = Path::new("/sys/fs/cgroup/memory")
        .join(cgroup.strip_prefix("/").unwrap())
        .join("memory.limit_in_bytes");
    if let Ok(limit) = std::fs::read_to_string(&limit_file) {
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
    }
    // Its output lands in the CRI log file.
    let log = data_dir
        .join("agent/pods")
        .join(format!("default_ticker_{uid}"))
        .join("c/0.log");
    eventually("ticks in the CRI log", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let line = text.lines().find(|l| l.contains("tick 1"))?.to_owned();
        Some(line)
    })
    .await;
    let first = std::fs::read_to_string(&log).unwrap();
    let first = first.lines().next().unwrap();
    let (stream, tag, body) = r3s_agent::runtime::logs::parse_line(first).unwrap();
    // The pod's UTS namespace carries the pod name as hostname.
    assert_eq!((stream, tag, body), ("stdout", 'F', "host ticker"));

    // 2. A crashing container is restarted, with restartCount growing and lastState kept.
    create(
        "crasher",
        json!({
            "nodeName": node_name,
            "containers": [{"name": "c", "image": image, "command": ["sh", "-c", "echo crashing; exit 3"]}],
        }),
    )
    .await;
    let crashed = eventually("crasher restarted twice", || async {
        let p = pod_json(&pods, "crasher").await?;
        let cs = &p["status"]["containerStatuses"][0];
        (cs["restartCount"].as_u64()? >= 2).then(|| p.clone())
    })
    .await;
    let cs = &crashed["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(crashed["status"]["phase"], "Running");
    eventually("CrashLoopBackOff", || async {
        let p = pod_json(&pods, "crasher").await?;
        (p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then_some(())
    })
    .await;

    // Events as kubelet posts them (what `kubectl describe pod` lists).
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let reasons = |pod: &'static str| {
        let events = events.clone();
        async move {
            events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(pod))
                .filter_map(|e| e.reason)
                .collect::<Vec<String>>()
        }
    };
    let ticker_events = reasons("ticker").await;
    for r in ["Pulling", "Pulled", "Created", "Started"] {
        assert!(
            ticker_events.iter().any(|e| e == r),
            "{r} missing: {ticker_events:?}"
        );
    }
    eventually("a BackOff event", || async {
        reasons("crasher")
            .await
            .iter()
            .any(|e| e == "BackOff")
            .then_some(())
    })
    .await;

    // 3. A hostNetwork pod serving HTTP on 127.0.0.1.
    let port = free_port();
    create(
        "web",
        json!({
            "nodeName": node_name,
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "httpd",
                "image": image,
                "command": ["sh", "-c", format!("mkdir -p /tmp/www && echo hello-from-r3s > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /tmp/www")],
            }],
        }),
    )
    .await;
    let mut body = None;
    for _ in 0..300 {
        body = tokio::task::spawn_blocking(move || http_get(port))
            .await
            .unwrap()
            .filter(|b| b.contains("hello-from-r3s"));
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(body) = body else {
        let web = pod_json(&pods, "web").await.unwrap_or_default();
        panic!("the hostNetwork pod never answered HTTP; the pod: {web:#}");
    };
    assert!(body.starts_with("HTTP/1."), "{body}");
    let web = pod_json(&pods, "web").await.unwrap();
    assert_eq!(web["status"]["podIP"], "127.0.0.1");

    // kubectl sees it all.
    let wide = kubectl(&h.server, &["get", "pods", "-o", "wide"]).await;
    let ticker_line = wide.lines().find(|l| l.starts_with("ticker")).unwrap();
    assert!(
        ticker_line.contains("Running") && ticker_line.contains(&node_name),
        "{wide}"
    );
    let nodes_out = kubectl(&h.server, &["get", "nodes"]).await;
    let node_line = nodes_out
        .lines()
        .find(|l| l.starts_with(&node_name))
        .unwrap();
    assert!(node_line.contains("Ready"), "{nodes_out}");

    // The Lease has been renewed since registration (every 10 s).
    eventually("a lease renewal", || async {
        let l = leases.get_opt(&node_name).await.ok().flatten()?;
        let v = serde_json::to_value(l).unwrap();
        (v["spec"]["renewTime"].as_str()? != first_renew).then_some(())
    })
    .await;

    // 4. Deleting the pod stops its process (SIGTERM first: the trap logs it) and cleans up.
    pods.delete("ticker", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the ticker process to exit", || async {
        (!pid_alive(pid)).then_some(())
    })
    .await;
    eventually("the pod object to be gone", || async {
        pod_json(&pods, "ticker").await.is_none().then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("stdout F got TERM"), "{text}");
    eventually("the pod cgroup to be removed", || async {
        let mem = Path::new("/sys/fs/cgroup/memory")
            .join(cgroup_root.strip_prefix("/").unwrap())
            .join(format!("pod{uid}"));
        (!mem.exists()).then_some(())
    })
    .await;
    eventually("the sandbox to be removed", || async {
        (!run_dir.join("sandboxes").join(&uid).exists()).then_some(())
    })
    .await;

    // Shutdown stops every pod and leaves no container behind.
    h.stop().await;
    assert!(
        http_get(port).is_none(),
        "the web pod still answers after shutdown"
    );
}

/// The first CRI record's timestamp of a log file.
fn first_timestamp(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split(' ').next().unwrap().to_owned()
}

async fn terminal(h: &Harness, name: &str) -> Value {
    let pods = h.pods();
    eventually(&format!("{name} to finish"), || async {
        let p = pod_json(&pods, name).await?;
        let phase = p["status"]["phase"].as_str()?;
        (phase == "Succeeded" || phase == "Failed").then_some(p)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_env_exit_codes_and_errors() {
    let Some(h) = harness("b", None).await else {
        return;
    };
    let image = h.image.clone();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(h.client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "settings"}, "data": {"color": "blue"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(h.client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();

    // Init containers run in order, each to completion, then the container with its environment.
    let batch = h
        .create(
            "batch",
            json!({
                "restartPolicy": "Never",
                "volumes": [
                    {"name": "shared", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "settings"}},
                    {"name": "sec", "secret": {"secretName": "creds"}},
                ],
                "initContainers": [
                    {"name": "first", "image": image, "command": ["sh", "-c", "echo first; echo first > /shared/order; sleep 1"],
                     "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
                    {"name": "second", "image": image, "command": ["sh", "-c", "echo second; echo second >> /shared/order"],
                     "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
                ],
                "containers": [{
                    "name": "main",
                    "image": image,
                    "command": ["sh", "-c", "echo \"color=$COLOR password=$PASSWORD pod=$POD greeting=$GREETING mem=$MEM_MI\"; echo order $(cat /shared/order); echo file-color $(cat /etc/cfg/color) file-password $(cat /etc/sec/password); echo x > /etc/cfg/new || echo cfg-read-only; echo k8s=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"],
                    "volumeMounts": [
                        {"name": "shared", "mountPath": "/shared"},
                        {"name": "cfg", "mountPath": "/etc/cfg"},
                        {"name": "sec", "mountPath": "/etc/sec"},
                    ],
                    "resources": {"limits": {"memory": "32Mi"}},
                    "env": [
                        {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "GREETING", "value": "hello-$(POD)"},
                        {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    ],
                }],
            }),
        )
        .await;
    let done = terminal(&h, "batch").await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{done:#}");
    let inits = done["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    for s in inits {
        assert_eq!(s["state"]["terminated"]["reason"], "Completed", "{s}");
    }
    let main = &done["status"]["containerStatuses"][0];
    assert_eq!(main["state"]["terminated"]["exitCode"], 0);
    assert_eq!(main["state"]["terminated"]["reason"], "Completed");
    let out = std::fs::read_to_string(h.log(&batch, "main", 0)).unwrap();
    assert!(
        out.contains("stdout F color=blue password=s3cret pod=batch greeting=hello-batch mem=32"),
        "{out}"
    );
    // Volumes: an emptyDir shared by the init containers and the container, configMap and secret
    // files, the configMap mounted read-only.
    assert!(out.contains("stdout F order first second"), "{out}");
    assert!(
        out.contains("stdout F file-color blue file-password s3cret"),
        "{out}"
    );
    assert!(out.contains("stdout F cfg-read-only"), "{out}");
    // Service variables: what in-cluster clients read to find the API.
    let k8s: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(h.client.clone(), "default");
    let ip = k8s
        .get("kubernetes")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    assert!(out.contains(&format!("stdout F k8s={ip}:443")), "{out}");
    // "second" started only after "first" had finished.
    let first = std::fs::read_to_string(h.log(&batch, "first", 0)).unwrap();
    assert!(first.contains("stdout F first"), "{first}");
    assert!(
        first_timestamp(&h.log(&batch, "first", 0)) < first_timestamp(&h.log(&batch, "second", 0))
    );
    assert!(
        first_timestamp(&h.log(&batch, "second", 0)) < first_timestamp(&h.log(&batch, "main", 0))
    );

    // A non-zero exit with restartPolicy Never fails the pod with the exit code.
    h.create(
        "failing",
        json!({"restartPolicy": "Never", "containers": [{"name": "c", "image": image, "command": ["sh", "-c", "exit 7"]}]}),
    )
    .await;
    let failed = terminal(&h, "failing").await;
    assert_eq!(failed["status"]["phase"], "Failed");
    let t = &failed["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (t["exitCode"].as_i64(), t["reason"].as_str()),
        (Some(7), Some("Error"))
    );

    // Over its memory limit, a container is OOM-killed and reported so.
    h.create(
        "hog",
        json!({
            "restartPolicy": "Never",
            "containers": [{
                "name": "c", "image": image,
                "command": ["sh", "-c", "a=0123456789; while true; do a=\"$a$a\"; done"],
                "resources": {"limits": {"memory": "16Mi"}},
            }],
        }),
    )
    .await;
    let hog = terminal(&h, "hog").await;
    let t = &hog["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{hog:#}");
    assert_eq!(t["exitCode"], 137);

    // A readiness probe (httpGet, inside a loopback-only pod) gates Ready.
    h.create(
        "slow-web",
        json!({
            "containers": [{
                "name": "web", "image": image,
                "command": ["sh", "-c", "sleep 3; mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            }],
            "terminationGracePeriodSeconds": 2,
        }),
    )
    .await;
    let pods = h.pods();
    let not_ready = eventually("slow-web Running but not ready", || async {
        let p = pod_json(&pods, "slow-web").await?;
        (p["status"]["phase"] == "Running").then_some(p)
    })
    .await;
    let ready_flag = not_ready["status"]["containerStatuses"][0]["ready"].clone();
    assert_eq!(
        ready_flag, false,
        "ready before its probe passed: {not_ready:#}"
    );
    eventually("slow-web Ready", || async {
        let p = pod_json(&pods, "slow-web").await?;
        let ready = p["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        (ready && p["status"]["containerStatuses"][0]["ready"] == true).then_some(())
    })
    .await;

    // The pod's containers share /dev/shm (and the IPC namespace).
    let shm = h
        .create(
            "shm",
            json!({
                "containers": [
                    {"name": "writer", "image": image, "command": ["sh", "-c", "echo shared-note > /dev/shm/note; while true; do sleep 1; done"]},
                    {"name": "reader", "image": image, "command": ["sh", "-c", "until cat /dev/shm/note; do sleep 1; done; while true; do sleep 1; done"]},
                ],
                "terminationGracePeriodSeconds": 2,
            }),
        )
        .await;
    let reader_log = h.log(&shm, "reader", 0);
    eventually("the reader to see the writer's /dev/shm file", || async {
        std::fs::read_to_string(&reader_log)
            .ok()?
            .contains("stdout F shared-note")
            .then_some(())
    })
    .await;

    // An exec readiness probe runs inside the container.
    h.create(
        "exec-ready",
        json!({
            "containers": [{
                "name": "c", "image": image,
                "command": ["sh", "-c", "sleep 2; echo yes > /tmp/ready; while true; do sleep 1; done"],
                "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1},
            }],
            "terminationGracePeriodSeconds": 2,
        }),
    )
    .await;
    eventually("exec-ready Ready", || async {
        let p = pod_json(&pods, "exec-ready").await?;
        (p["status"]["containerStatuses"][0]["ready"] == true).then_some(())
    })
    .await;

    // A failing liveness probe (tcpSocket) restarts the container.
    h.create(
        "unhealthy",
        json!({
            "containers": [{
                "name": "c", "image": image,
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                "livenessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 1},
            }],
            "terminationGracePeriodSeconds": 2,
        }),
    )
    .await;
    eventually("unhealthy restarted", || async {
        let p = pod_json(&pods, "unhealthy").await?;
        (p["status"]["containerStatuses"][0]["restartCount"].as_u64()? >= 1).then_some(())
    })
    .await;
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(h.client.clone(), "default");
    let unhealthy = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("unhealthy"))
        .filter(|e| e.reason.as_deref() == Some("Unhealthy"))
        .count();
    assert!(unhealthy >= 1, "no Unhealthy event");

    // Errors a user must see in the status: a missing configMap, an image that may not be pulled.
    h.create(
        "misconfigured",
        json!({"containers": [{"name": "c", "image": image, "command": ["true"],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}]}),
    )
    .await;
    h.create(
        "never-pull",
        json!({"containers": [{"name": "c", "image": format!("{}/absent:1", h.registry_addr), "imagePullPolicy": "Never"}]}),
    )
    .await;
    let pods = h.pods();
    h.create(
        "unsupported-volume",
        json!({"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}],
            "containers": [{"name": "c", "image": image, "command": ["true"]}]}),
    )
    .await;
    // A claim that does not exist: the reason, not an empty volume.
    let p = eventually("the missing claim message", || async {
        let p = pod_json(&pods, "unsupported-volume").await?;
        p["status"]["message"].as_str().map(str::to_owned)
    })
    .await;
    assert!(
        p.contains("persistentvolumeclaim default/c not found"),
        "{p}"
    );
    for (name, reason) in [
        ("misconfigured", "CreateContainerConfigError"),
        ("never-pull", "ErrImageNeverPull"),
    ] {
        let p = eventually(reason, || async {
            let p = pod_json(&pods, name).await?;
            (p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == reason)
                .then_some(p)
        })
        .await;
        assert_eq!(p["status"]["phase"], "Pending");
    }

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_network_through_cni_when_the_node_has_a_pod_cidr() {
    // A /24 of 10.42.0.0/16 unlikely to be used by another test on this machine.
    let cidr = format!("10.42.{}.0/24", 200 + std::process::id() % 50);
    let Some(h) = harness("c", Some(&cidr)).await else {
        return;
    };
    // The Node registers without a podCIDR; once it gets one, the agent sets up the bridge.
    let nodes: Api<Node> = Api::all(h.client.clone());
    eventually("the node registered", || async {
        nodes.get_opt(&h.node_name).await.ok().flatten()
    })
    .await;
    nodes
        .patch(
            &h.node_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
        )
        .await
        .unwrap();
    let bridge = format!("/sys/class/net/r3sb{}c", std::process::id());
    eventually("the pod bridge", || async {
        Path::new(&bridge).exists().then_some(())
    })
    .await;
    let pod = h
        .create(
            "netpod",
            json!({"containers": [{"name": "web", "image": h.image,
                "command": ["sh", "-c", "mkdir -p /tmp/www && echo pod-network-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]}],
                "terminationGracePeriodSeconds": 2}),
        )
        .await;
    let pods = h.pods();
    let ip = eventually("netpod Running with an IP", || async {
        let p = pod_json(&pods, "netpod").await?;
        (p["status"]["phase"] == "Running").then_some(())?;
        Some(p["status"]["podIP"].as_str()?.to_owned())
    })
    .await;
    let addr: std::net::Ipv4Addr = ip.parse().unwrap();
    let net: ipnet::Ipv4Net = cidr.parse().unwrap();
    assert!(
        net.contains(&addr) && addr != net.network(),
        "{ip} in {cidr}"
    );
    // The host reaches the pod through the bridge.
    let body = eventually("HTTP from the pod's address", || {
        let ip = ip.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut s = std::net::TcpStream::connect((ip.as_str(), 8080)).ok()?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
                let mut b = String::new();
                s.read_to_string(&mut b).ok()?;
                Some(b)
            })
            .await
            .unwrap()
            .filter(|b| b.contains("pod-network-ok"))
        }
    })
    .await;
    assert!(body.starts_with("HTTP/1."));
    // /etc/hosts in the pod names its address.
    let hosts = std::fs::read_to_string(
        h.run_dir
            .join("sandboxes")
            .join(pod.metadata.uid.as_deref().unwrap())
            .join("hosts"),
    )
    .unwrap();
    assert!(hosts.contains(&format!("{ip}\tnetpod")), "{hosts}");

    let leases = h.data_dir.join("agent/cni");
    let leased = |ip: &str| {
        walk_files(&leases)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == ip))
            .count()
    };
    assert_eq!(leased(&ip), 1, "no IPAM lease for {ip}");

    // Deleting the pod releases its address (CNI DEL) and removes its namespaces.
    pods.delete("netpod", &DeleteParams::default())
        .await
        .unwrap();
    eventually("netpod gone", || async {
        pod_json(&pods, "netpod").await.is_none().then_some(())
    })
    .await;
    assert_eq!(leased(&ip), 0, "the address {ip} is still leased");
    h.stop().await;
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
