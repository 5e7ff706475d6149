//! A multi-node r3s cluster on one machine, with the real binaries, for acceptance tests.
//!
//! [`Cluster::start`] builds `n` simulated hosts as network namespaces (`<prefix>h1`…) plugged
//! into a bridge in a "switch" namespace (`<prefix>sw`) on the underlay 198.51.100.0/24: host `i`
//! is 198.51.100.`i`, the switch 198.51.100.254. The switch namespace also holds what the hosts
//! need from outside: a TCP forwarder to a real `docker-registry` on the machine's 127.0.0.1 (so
//! every host pulls `198.51.100.254:5000/busybox:1`), and a tiny upstream DNS resolver on port 53
//! (`*.outside.test` → 203.0.113.7) that each host's `/etc/resolv.conf` names (through `ip netns
//! exec`'s `/etc/netns/<name>/resolv.conf`), so cluster DNS never forwards to the machine's
//! resolver. Host 1 runs `r3s-server` (with its in-process agent), the others `r3s-agent`
//! joining with the node token, each with its own data dir.
//!
//! Everything is torn down by Drop guards, on failure too: processes the harness started are
//! stopped by PID (SIGTERM, so agents stop their pods; SIGKILL after a grace period, then any
//! container init left in the agent's libcontainer state is killed by its PID), namespaces
//! (with their links) and the `/etc/netns` files are deleted, and the data dirs are temp dirs.
//! Each host has a private mount namespace, held by a `sleep` for the cluster's lifetime, where
//! its server or agent runs (also after a restart, so a restarted agent sees the overlay and
//! namespace bind mounts of the pods it re-adopts); the mounts vanish with the namespace. Agents
//! leave their pods running when they stop (kubelet's behaviour): on teardown the harness kills
//! the inits recorded in the agent's libcontainer state and removes the pods' cgroups.
//!
//! Inside pods, [`Cluster::exec_in_pod`] runs a command in the container's own namespaces (mount,
//! UTS, IPC, network) with `nsenter` on the container's init PID, which it reads from the agent's
//! libcontainer state (`<data-dir>/agent/run/containers/<id>/state.json`).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};

use crate::support::{self, Compression, Entry, Registry};

pub const KUBECTL: &str = "/usr/bin/kubectl";
pub const SWITCH_IP: &str = "198.51.100.254";
pub const REGISTRY_PORT: u16 = 5000;
pub const API_PORT: u16 = 6443;
/// What the test's upstream resolver answers for `*.outside.test`.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// The busybox applets the test image links.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "sleep", "httpd", "wget", "nc", "nslookup", "ping", "hostname", "rm",
    "touch", "test", "ls", "ip", "true",
];

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_r3s-agent"))
}

/// `r3s-server` from the same target directory (built by `cargo test --workspace`; with
/// `cargo test -p r3s-agent`, run `cargo build -p r3s-server` first).
pub fn server_bin() -> PathBuf {
    agent_bin().with_file_name("r3s-server")
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when everything the harness needs is here; `skipped:` otherwise (a failure with CI=true).
pub fn prerequisites() -> bool {
    support::require("root", support::is_root())
        && support::have_registry()
        && support::have_busybox()
        && support::require("kubectl (/usr/bin/kubectl)", Path::new(KUBECTL).exists())
        && support::require("ip (iproute2)", have("ip"))
        && support::require("nsenter (util-linux)", have("nsenter"))
        && support::require("curl", have("curl"))
        && support::require("bridge (iproute2)", have("bridge"))
        && support::require(
            "r3s-server next to r3s-agent (cargo build -p r3s-server)",
            server_bin().exists(),
        )
        && support::require(
            "the vxlan kernel module",
            Path::new("/sys/module/vxlan").exists()
                || Command::new("modprobe")
                    .arg("vxlan")
                    .status()
                    .is_ok_and(|s| s.success()),
        )
}

/// Runs `args`, panicking with its output if it fails; returns stdout.
pub fn must(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` until `Some`, panicking after `limit` with `what` and `context()`.
pub fn eventually<T>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A network namespace; deleted (with its links and `/etc/netns` files) on drop.
pub struct Netns(pub String);

impl Netns {
    fn new(name: &str) -> Netns {
        must(&["ip", "netns", "add", name]);
        let ns = Netns(name.to_owned());
        must(&["ip", "-n", name, "link", "set", "lo", "up"]);
        ns
    }

    /// `program` run inside the namespace (`ip netns exec` execs it: the PID is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]);
        cmd
    }

    /// `ip -n <ns> args…`, stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.0];
        all.extend_from_slice(args);
        must(&all)
    }

    fn etc_dir(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// Runs `f` on a thread that entered network namespace `ns` (namespaces are per thread).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A process the harness started (an r3s binary): SIGTERM by PID on stop/drop, SIGKILL after
/// `grace`; then container inits left in `containers` (libcontainer state) are killed by PID.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
    containers: PathBuf,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path, containers: PathBuf, what: &str) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            log: log.to_owned(),
            containers,
            what: what.to_owned(),
        }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, wait, then kill the containers left; the exit status, or `None` if it had to
    /// be killed (or was not running).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        // Stopped already (or signalled by `signal_and_wait`, leaving its containers).
        self.child.as_ref()?;
        let status = self.signal_and_wait(nix::sys::signal::Signal::SIGTERM);
        kill_leftover_containers(&self.containers);
        status
    }

    /// Sends `signal`, waits (SIGKILL after 90 s); leaves containers alone.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if status.is_none() {
            eprintln!("{} did not stop on SIGTERM; killing it", self.what);
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILLs the init of every container still recorded in libcontainer's state under `dir`
/// (only after the agent that started them is gone), then removes the cgroups of the pods the
/// agent left running (its state files, `<dir>/../pods/<uid>.json`).
fn kill_leftover_containers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if let Some(pid) = init_pid(&e.path().join("state.json")) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let pods = dir.with_file_name("pods");
    let uids: Vec<String> = std::fs::read_dir(&pods)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for uid in uids {
        // The killed processes take a moment to leave their cgroups.
        let deadline = Instant::now() + Duration::from_secs(10);
        for h in std::iter::once(PathBuf::from("/sys/fs/cgroup")).chain(hierarchies.iter().cloned())
        {
            let pod = h.join("r3s").join(format!("pod{uid}"));
            while pod.exists() {
                let children: Vec<PathBuf> = std::fs::read_dir(&pod)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path())
                            .collect()
                    })
                    .unwrap_or_default();
                for c in children {
                    let _ = std::fs::remove_dir(c);
                }
                if std::fs::remove_dir(&pod).is_ok() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn init_pid(state: &Path) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).ok()?).ok()?;
    let pid = v
        .get("pid")
        .or_else(|| v.get("init_process_pid"))?
        .as_i64()?;
    (pid > 1).then_some(pid as i32)
}

/// A thread in the root namespace relaying connections accepted on a listener (made in another
/// namespace) to a TCP address on the machine's loopback. Stopped on drop.
struct Forwarder {
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(listener: TcpListener, to: SocketAddr) -> Forwarder {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(upstream) = TcpStream::connect(to) else {
                            continue;
                        };
                        pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                        pipe(upstream, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Forwarder { stop }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The upstream resolver: `*.outside.test.` A [`OUTSIDE_IP`], the rest NXDOMAIN. Stops on drop
/// (a read timeout lets the thread see the flag).
struct Upstream {
    stop: Arc<AtomicBool>,
}

impl Upstream {
    fn start(sock: std::net::UdpSocket) -> Upstream {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(query) = q.queries.first() else {
                    continue;
                };
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.metadata.recursion_available = true;
                r.add_queries(q.queries.clone());
                let name = query.name().to_string().to_ascii_lowercase();
                if name.ends_with("outside.test.") {
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A(OUTSIDE_IP)),
                    ));
                } else {
                    r.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = sock.send_to(&r.to_vec().unwrap(), peer);
            }
        });
        Upstream { stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One simulated host.
pub struct Host {
    pub index: usize,
    pub ns: Netns,
    pub ip: String,
    pub node: String,
    pub data_dir: PathBuf,
    /// `r3s-server` on host 1, `r3s-agent` on the others.
    pub proc: Option<Proc>,
    /// The process holding the host's mount namespace (started with the host's first process).
    mnt: Option<Child>,
}

impl Host {
    /// The agent's libcontainer state directory (`--root`).
    pub fn containers_dir(&self) -> PathBuf {
        self.data_dir.join("agent/run/containers")
    }
}

/// A running cluster. Field order is drop order: processes first, then namespaces, then files.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub prefix: String,
    pub image: String,
    _upstream: Upstream,
    _forwarder: Forwarder,
    _registry: Registry,
    pub switch: Netns,
    pub dir: tempfile::TempDir,
    token: String,
    registries: PathBuf,
    empty_config: PathBuf,
}

impl Drop for Cluster {
    /// Agents before the server (they stop their pods while the API still answers).
    fn drop(&mut self) {
        for h in self.hosts.iter_mut().rev() {
            if let Some(mut p) = h.proc.take() {
                p.stop();
            }
        }
        for h in &mut self.hosts {
            if let Some(mut m) = h.mnt.take() {
                let _ = m.kill();
                let _ = m.wait();
            }
        }
    }
}

impl Cluster {
    /// Builds `n` hosts, starts the server on host 1, joins agents on the others, and waits until
    /// every Node is Ready with a podCIDR.
    pub fn start(n: usize, tag: &str) -> Cluster {
        assert!((1..=9).contains(&n));
        let prefix = format!("r3st{}{tag}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("r3st-cluster")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();

        // The switch: a bridge, the underlay's .254 and the services the hosts use.
        let switch = Netns::new(&format!("{prefix}sw"));
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["addr", "add", &format!("{SWITCH_IP}/24"), "dev", "br0"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for i in 1..=n {
            let ns = Netns::new(&format!("{prefix}h{i}"));
            let port = format!("h{i}");
            switch.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
            ]);
            switch.ip(&["link", "set", &port, "master", "br0", "up"]);
            let ip = format!("198.51.100.{i}");
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", SWITCH_IP]);
            // The host's resolver, as `ip netns exec` shows it: the test's upstream.
            std::fs::create_dir_all(ns.etc_dir()).unwrap();
            std::fs::write(
                ns.etc_dir().join("resolv.conf"),
                format!("nameserver {SWITCH_IP}\n"),
            )
            .unwrap();
            hosts.push(Host {
                index: i,
                ns,
                ip,
                node: format!("{prefix}-n{i}"),
                data_dir: dir.path().join(format!("host{i}")),
                proc: None,
                mnt: None,
            });
        }

        // The registry on the machine's loopback, relayed from the switch's 198.51.100.254:5000.
        let registry = Registry::start();
        let image = push_busybox(&registry);
        let listener = in_netns(&switch.0, || {
            TcpListener::bind((SWITCH_IP, REGISTRY_PORT)).unwrap()
        });
        let forwarder = Forwarder::start(listener, registry.addr.parse().unwrap());
        let upstream = Upstream::start(in_netns(&switch.0, || {
            std::net::UdpSocket::bind((SWITCH_IP, 53)).unwrap()
        }));
        let mirror = format!("{SWITCH_IP}:{REGISTRY_PORT}");
        let registries = dir.path().join("registries.yaml");
        std::fs::write(
            &registries,
            format!("mirrors:\n  \"{mirror}\":\n    endpoint:\n      - \"http://{mirror}\"\n"),
        )
        .unwrap();
        let _ = image;
        let empty_config = dir.path().join("empty-config.yaml");
        std::fs::write(&empty_config, "").unwrap();

        let mut cluster = Cluster {
            hosts,
            prefix,
            image: format!("{mirror}/busybox:1"),
            _upstream: upstream,
            _forwarder: forwarder,
            _registry: registry,
            switch,
            dir,
            token: String::new(),
            registries,
            empty_config,
        };
        cluster.start_server();
        cluster.token = std::fs::read_to_string(cluster.hosts[0].data_dir.join("server/token"))
            .unwrap()
            .trim()
            .to_owned();
        for i in 1..n {
            cluster.start_agent(i);
        }
        for i in 0..n {
            cluster.wait_node_ready(i);
        }
        cluster
    }

    /// `bin` in host `host`'s network namespace and its mount namespace (a slave of the
    /// machine's: its mounts, cgroup trees included, stay visible; the host's own mounts stay
    /// private and vanish with it), where the test's resolv.conf is bound over /etc/resolv.conf.
    /// Not `ip netns exec`: it mounts a fresh sysfs over /sys, hiding the cgroup trees under it.
    fn base_command(&mut self, host: usize, bin: &Path) -> Command {
        let holder = self.mount_holder(host);
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.hosts[host].ns.0))
            .arg(format!("--mount=/proc/{holder}/ns/mnt"))
            .arg("--")
            .arg(bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("R3S_CONFIG_FILE", &self.empty_config)
            .env("RUST_LOG", "info");
        cmd
    }

    /// The PID of the process holding host `host`'s mount namespace, started on first use.
    fn mount_holder(&mut self, host: usize) -> u32 {
        let h = &mut self.hosts[host];
        if let Some(m) = &h.mnt {
            return m.id();
        }
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", h.ns.0))
            .args(["--", "unshare", "--mount", "--propagation", "slave", "--"])
            .args([
                "sh",
                "-c",
                "mount --bind \"$0\" /etc/resolv.conf && exec sleep infinity",
            ])
            .arg(h.ns.etc_dir().join("resolv.conf"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        h.mnt = Some(child);
        // Ready once the shell has bound resolv.conf and become `sleep`.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_or(true, |c| c.trim() != "sleep")
        {
            assert!(
                Instant::now() < deadline,
                "the mount namespace holder did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pid
    }

    fn start_server(&mut self) {
        let mut cmd = self.base_command(0, &server_bin());
        let h = &self.hosts[0];
        cmd.arg("--data-dir")
            .arg(&h.data_dir)
            .arg("--write-kubeconfig")
            .arg(self.kubeconfig())
            .args(["--https-listen-port", &API_PORT.to_string()])
            .args(["--node-name", &h.node, "--node-ip", &h.ip])
            .arg("--private-registry")
            .arg(&self.registries);
        let log = self.dir.path().join("host1.log");
        let proc = Proc::spawn(cmd, &log, h.containers_dir(), "r3s-server");
        self.hosts[0].proc = Some(proc);
        let (dir, n) = (self.dir.path().to_owned(), self.hosts.len());
        eventually(
            "the API server",
            Duration::from_secs(90),
            || logs_in(&dir, n),
            || {
                assert!(
                    self.hosts[0].proc.as_mut().unwrap().running(),
                    "r3s-server exited\n{}",
                    self.hosts[0].proc.as_ref().unwrap().tail(40)
                );
                self.kubectl_ok(&["get", "namespace", "default"])
                    .then_some(())
            },
        );
    }

    /// Starts (or restarts) the agent of host `i` (0-based, not 0).
    pub fn start_agent(&mut self, i: usize) {
        assert!(i > 0, "host 1 runs the server");
        let mut cmd = self.base_command(i, &agent_bin());
        let h = &self.hosts[i];
        cmd.args([
            "--server",
            &format!("https://{}:{API_PORT}", self.hosts[0].ip),
        ])
        .args(["--token", &self.token])
        .arg("--data-dir")
        .arg(&h.data_dir)
        .args(["--node-name", &h.node, "--node-ip", &h.ip])
        .arg("--private-registry")
        .arg(&self.registries);
        let log = self.dir.path().join(format!("host{}.log", i + 1));
        // Keep the previous run's log (append): restarts are part of what is tested.
        let previous = std::fs::read_to_string(&log).unwrap_or_default();
        let proc = Proc::spawn(cmd, &log, h.containers_dir(), "r3s-agent");
        if !previous.is_empty() {
            eprintln!(
                "(previous run of host{} logged {} bytes)",
                i + 1,
                previous.len()
            );
        }
        self.hosts[i].proc = Some(proc);
    }

    /// Stops the process of host `i` (SIGTERM); true if it exited successfully.
    pub fn stop_host(&mut self, i: usize) -> bool {
        self.hosts[i]
            .proc
            .take()
            .and_then(|mut p| p.stop())
            .is_some_and(|s| s.success())
    }

    /// Sends `signal` to the agent of host `i` and waits for it to exit, leaving its pods
    /// running (for a restart that re-adopts them); the exit status, `None` if it had to be
    /// killed.
    pub fn signal_agent(
        &mut self,
        i: usize,
        signal: nix::sys::signal::Signal,
    ) -> Option<std::process::ExitStatus> {
        self.hosts[i].proc.as_mut()?.signal_and_wait(signal)
    }

    pub fn wait_node_ready(&mut self, i: usize) -> String {
        let node = self.hosts[i].node.clone();
        let (dir, n) = (self.dir.path().to_owned(), self.hosts.len());
        eventually(
            &format!("node {node} Ready with a podCIDR"),
            Duration::from_secs(150),
            || logs_in(&dir, n),
            || {
                if let Some(p) = self.hosts[i].proc.as_mut() {
                    assert!(p.running(), "host{} exited\n{}", i + 1, p.tail(40));
                }
                let out = self.kubectl(&[
                    "get",
                    "node",
                    &node,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.podCIDR}",
                ])?;
                let mut parts = out.split_whitespace();
                match (parts.next(), parts.next()) {
                    (Some("True"), Some(cidr)) => Some(cidr.to_owned()),
                    _ => None,
                }
            },
        )
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.yaml")
    }

    /// kubectl (admin) run in host 1's namespace: its full output.
    pub fn kubectl_out(&self, args: &[&str]) -> Output {
        self.hosts[0]
            .ns
            .command(KUBECTL)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path().join("home"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// kubectl's stdout if it succeeded.
    pub fn kubectl(&self, args: &[&str]) -> Option<String> {
        let out = self.kubectl_out(args);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> bool {
        self.kubectl(args).is_some()
    }

    /// kubectl that must succeed.
    pub fn kubectl_must(&self, args: &[&str]) -> String {
        let out = self.kubectl_out(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` with `yaml`.
    pub fn apply(&self, yaml: &str) {
        let file = self.dir.path().join("apply.yaml");
        std::fs::write(&file, yaml).unwrap();
        self.kubectl_must(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// The last lines of every host's log.
    pub fn logs(&self) -> String {
        logs_in(self.dir.path(), self.hosts.len())
    }

    pub fn host_of_node(&self, node: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.node == node)
            .unwrap_or_else(|| panic!("no host runs node {node}"))
    }

    /// (name, node, pod IP, container id) of each Running pod matching `selector`.
    pub fn pods(&self, selector: &str) -> Vec<(String, String, String, String)> {
        let out = self.kubectl_must(&[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.phase} {.status.containerStatuses[0].containerID}{\"\\n\"}{end}",
        ]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5 && f[3] == "Running").then(|| {
                    (
                        f[0].to_owned(),
                        f[1].to_owned(),
                        f[2].to_owned(),
                        f[4].trim_start_matches("youki://").to_owned(),
                    )
                })
            })
            .collect()
    }

    /// The init PID of pod `name`'s first container.
    pub fn pod_pid(&self, name: &str) -> i32 {
        let out = self.kubectl_must(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.spec.nodeName} {.status.containerStatuses[0].containerID}",
        ]);
        let (node, id) = out.split_once(' ').unwrap();
        let id = id.trim_start_matches("youki://");
        let host = &self.hosts[self.host_of_node(node)];
        let state = host.containers_dir().join(id).join("state.json");
        init_pid(&state).unwrap_or_else(|| panic!("no init pid in {}", state.display()))
    }

    /// Runs `sh -c script` inside pod `name` (its mount, UTS, IPC and network namespaces, so its
    /// own busybox and /etc/resolv.conf): the output.
    pub fn exec_in_pod(&self, name: &str, script: &str) -> Output {
        let pid = self.pod_pid(name).to_string();
        Command::new("nsenter")
            .args([
                "-t", &pid, "-m", "-u", "-i", "-n", "--", "/bin/sh", "-c", script,
            ])
            .env_clear()
            .env("PATH", "/bin")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `exec_in_pod` that must succeed: stdout.
    pub fn exec_in_pod_must(&self, name: &str, script: &str) -> String {
        let out = self.exec_in_pod(name, script);
        assert!(
            out.status.success(),
            "in pod {name}: {script}: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `program args…` in host `i`'s network namespace (the machine's tools).
    pub fn on_host(&self, i: usize, args: &[&str]) -> Output {
        self.hosts[i]
            .ns
            .command(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// (rx, tx) packets of link `dev` in host `i`, from netlink link statistics.
    pub fn link_packets(&self, i: usize, dev: &str) -> (u64, u64) {
        let out = self.hosts[i]
            .ns
            .ip(&["-j", "-s", "link", "show", "dev", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let stats = &v[0]["stats64"];
        (
            stats["rx"]["packets"].as_u64().unwrap(),
            stats["tx"]["packets"].as_u64().unwrap(),
        )
    }
}

/// The last lines of the logs of hosts 1..=n under `dir`.
fn logs_in(dir: &Path, n: usize) -> String {
    let mut s = String::new();
    for i in 1..=n {
        let text = std::fs::read_to_string(dir.join(format!("host{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        s += &format!(
            "--- host{i} log (last lines) ---\n{}\n",
            lines[lines.len().saturating_sub(25)..].join("\n")
        );
    }
    s
}

/// Pushes a busybox-static image with [`APPLETS`] to `reg`; returns `busybox:1`'s reference there.
fn push_busybox(reg: &Registry) -> String {
    let bb = std::fs::read("/bin/busybox").unwrap();
    let mut entries = vec![
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox", bb, 0o755),
        Entry::Dir("tmp", 0o1777),
        Entry::Dir("etc", 0o755),
    ];
    for applet in APPLETS {
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(reg.push(
        "busybox",
        "1",
        &img,
        &oci_client::secrets::RegistryAuth::Anonymous,
    ));
    format!("{}/busybox:1", reg.addr)
}
