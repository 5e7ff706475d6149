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

#[path = "support/binary.rs"]
mod binary;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use binary::{KUBECTL, Server, eventually, free_port, kubectl};
use oci_client::secrets::RegistryAuth;
use support::{Registry, require};

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
    let img = support::busybox_image(&["sh", "echo", "sleep", "httpd"], &[]);
    reg.push("busybox", "1", &img, &RegistryAuth::Anonymous)
        .await;
    let image = format!("{}/busybox:1", reg.addr);
    // The registry is plain HTTP: say so in registries.yaml, as a k3s user would.
    let registries = binary::plain_http_mirror(dir, &reg.addr);

    let _net = HostNetworkGuard::new();
    let node = format!("r3st-node-{}", std::process::id());
    let mut cmd = binary::command(dir, free_port(), &node);
    cmd.env("RUST_LOG", "info")
        .args(["--node-ip", "127.0.0.1", "--private-registry"])
        .arg(&registries);
    // SIGTERM first on a failed test, so the agent stops the pods it started.
    let server = Server::spawn(cmd, &dir.join("server.log"), Duration::from_secs(120));

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

    let status = server.stop(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    drop(reg);
}
