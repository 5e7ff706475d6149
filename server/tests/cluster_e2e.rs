//! The thin end-to-end path through the real binary, as root: `r3s-server` (API, store, controllers,
//! scheduler and the in-process agent) on a fresh data dir, a real `docker-registry` on 127.0.0.1
//! holding a busybox-static image, and the real kubectl: `kubectl create deployment` → the scheduler
//! binds the pod → the agent runs it in a libcontainer container with an address from the node's
//! podCIDR → it serves HTTP that the test fetches from the host; SIGTERM stops everything.
//!
//! What the server creates on the host (the `r3s0` bridge, the `ip r3s-masq` nftables table) is
//! removed by a guard when the test created it, on failure too.

#![allow(clippy::unwrap_used)]

#[path = "../../images/tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;
use support::{Compression, Entry, Registry, require};

const BIN: &str = env!("CARGO_BIN_EXE_r3s-server");
const KUBECTL: &str = "/usr/bin/kubectl";

/// The server process; SIGKILLed by PID if the test ends without stopping it.
struct ServerProcess(Option<Child>);

impl ServerProcess {
    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "r3s-server did not stop");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServerProcess {
    /// On a failed test: SIGTERM first, so the agent stops the pods it started (a SIGKILLed
    /// agent leaves its containers running), and SIGKILL only if that does not end it in time.
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes the host-side network objects the server made, if they were not there before.
struct HostNetworkGuard {
    bridge_existed: bool,
    table_existed: bool,
    proxy_table_existed: bool,
    /// The agent's cluster DNS link, or its address on lo on kernels without dummy links.
    dns_link_existed: bool,
    dns_on_lo: bool,
}

impl HostNetworkGuard {
    fn new() -> Self {
        HostNetworkGuard {
            bridge_existed: Path::new("/sys/class/net/r3s0").exists(),
            table_existed: nft_table_exists(),
            proxy_table_existed: nft_table_exists_named("r3s-proxy"),
            dns_link_existed: Path::new("/sys/class/net/r3s-dns").exists(),
            dns_on_lo: dns_on_lo(),
        }
    }
}

impl Drop for HostNetworkGuard {
    fn drop(&mut self) {
        if !self.bridge_existed && Path::new("/sys/class/net/r3s0").exists() {
            let _ = Command::new("ip").args(["link", "del", "r3s0"]).status();
        }
        if !self.table_existed && nft_table_exists() {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", "r3s-masq"])
                .status();
        }
        // The agent's service proxy table (it deletes it on shutdown; this covers a crash).
        if !self.proxy_table_existed && nft_table_exists_named("r3s-proxy") {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", "r3s-proxy"])
                .status();
        }
        if !self.dns_link_existed && Path::new("/sys/class/net/r3s-dns").exists() {
            let _ = Command::new("ip").args(["link", "del", "r3s-dns"]).status();
        }
        if !self.dns_on_lo && dns_on_lo() {
            let _ = Command::new("ip")
                .args(["addr", "del", "10.43.0.10/32", "dev", "lo"])
                .status();
        }
    }
}

fn dns_on_lo() -> bool {
    Command::new("ip")
        .args(["-o", "addr", "show", "dev", "lo"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" 10.43.0.10/32 "))
}

fn nft_table_exists() -> bool {
    nft_table_exists_named("r3s-masq")
}

fn nft_table_exists_named(name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn kubectl(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(KUBECTL)
        .env("KUBECONFIG", dir.join("kubeconfig.yaml"))
        .env("HOME", dir.join("home"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it returns `Some`, failing after `limit` with `what` and the server log.
fn eventually<T>(dir: &Path, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for {what}; server log (last lines, newest first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn http_get(addr: &str) -> Option<String> {
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_runs_in_a_youki_container_and_serves() {
    if !require("root", support::is_root())
        || !require("docker-registry", support::have_registry())
        || !require("busybox-static", support::have_busybox())
        || !require("kubectl", Path::new(KUBECTL).exists())
        || !require(
            "no r3s0 bridge on this host",
            !Path::new("/sys/class/net/r3s0").exists(),
        )
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("home")).unwrap();

    // A busybox-static image in a real registry on 127.0.0.1.
    let reg = Registry::start();
    let bb = std::fs::read("/bin/busybox").unwrap();
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox", bb, 0o755),
        Entry::Dir("tmp", 0o1777),
    ];
    for applet in ["sh", "echo", "sleep", "httpd"] {
        entries.push(Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    let img = support::image(
        vec![support::layer(&entries, Compression::Gzip)],
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64")
            .as_str(),
        None,
        false,
    );
    reg.push("busybox", "1", &img, &RegistryAuth::Anonymous)
        .await;
    let image = format!("{}/busybox:1", reg.addr);
    // The registry is plain HTTP: say so in registries.yaml, as a k3s user would.
    let registries = dir.join("registries.yaml");
    std::fs::write(
        &registries,
        format!(
            "mirrors:\n  \"{}\":\n    endpoint:\n      - \"http://{}\"\n",
            reg.addr, reg.addr
        ),
    )
    .unwrap();

    let _net = HostNetworkGuard::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let empty = dir.join("empty-config.yaml");
    std::fs::write(&empty, "").unwrap();
    let node = format!("r3st-node-{}", std::process::id());
    let server = ServerProcess(Some(
        Command::new(BIN)
            .env_clear()
            .env("R3S_CONFIG_FILE", &empty)
            .env("RUST_LOG", "info")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--write-kubeconfig")
            .arg(dir.join("kubeconfig.yaml"))
            .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
            .arg(port.to_string())
            .args(["--node-name", &node, "--node-ip", "127.0.0.1"])
            .arg("--private-registry")
            .arg(&registries)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
            .spawn()
            .unwrap(),
    ));

    // The server's own node registers and becomes Ready, with a podCIDR from the node IPAM.
    let cidr = eventually(
        dir,
        "the node Ready with a podCIDR",
        Duration::from_secs(90),
        || {
            let (ok, out, _) = kubectl(
                dir,
                &[
                    "get",
                    "node",
                    &node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.podCIDR}",
                ],
            );
            let mut parts = out.split_whitespace();
            match (ok, parts.next(), parts.next()) {
                (true, Some("True"), Some(cidr)) => Some(cidr.to_owned()),
                _ => None,
            }
        },
    );
    assert!(cidr.starts_with("10.42."), "{cidr}");
    let (ok, roles, _) = kubectl(dir, &["get", "node", &node, "--no-headers"]);
    assert!(ok && roles.contains("control-plane"), "{roles}");

    // A Deployment created the way people do it.
    let (ok, _, err) = kubectl(
        dir,
        &[
            "create",
            "deployment",
            "web",
            &format!("--image={image}"),
            "--",
            "sh",
            "-c",
            "echo hello-from-r3s > /tmp/index.html && exec httpd -f -p 8080 -h /tmp",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(
        dir,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    );
    assert!(ok, "rollout status: {out}{err}");

    let (ok, out, err) = kubectl(
        dir,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].status.phase} {.items[0].spec.nodeName} {.items[0].status.podIP} {.items[0].status.containerStatuses[0].containerID}",
        ],
    );
    assert!(ok, "{err}");
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{out}");
    assert_eq!(fields[0], "Running");
    assert_eq!(fields[1], node);
    assert!(fields[3].starts_with("youki://"), "{out}");
    let pod_ip = fields[2].to_owned();
    let prefix = cidr.rsplit_once('.').map(|(p, _)| p).unwrap();
    assert!(pod_ip.starts_with(prefix), "{pod_ip} in {cidr}");

    // It serves, on its pod IP, from inside its own network namespace.
    let body = eventually(dir, "HTTP from the pod", Duration::from_secs(30), || {
        http_get(&format!("{pod_ip}:8080")).filter(|b| b.contains("hello-from-r3s"))
    });
    assert!(body.starts_with("HTTP/1."), "{body}");

    // Scaling goes through the scheduler and the agent too.
    let (ok, _, err) = kubectl(dir, &["scale", "deployment/web", "--replicas=2"]);
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(
        dir,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    );
    assert!(ok, "rollout status after scale: {out}{err}");

    let status = server.stop();
    assert!(status.success(), "exit status {status}");
    drop(reg);
}
