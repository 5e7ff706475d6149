//! Test world builder: network namespaces as simulated hosts and pods, made with `ip netns` and
//! removed by Drop guards (deleting a namespace deletes every link inside it), plus helpers that
//! run commands inside them. Prerequisites are checked first: missing ones fail under CI=true and
//! skip otherwise.
#![allow(dead_code)]

pub mod host;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A unique short name `r3st<pid><tag><n>` (namespaces have no length limit; links do).
pub fn unique(tag: &str) -> String {
    format!(
        "r3st{}{tag}{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// Whether a command is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Returns true when the test can run; panics under CI=true when something is missing.
pub fn prerequisites(needs_vxlan: bool) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces)".to_string());
    }
    for cmd in ["ip", "ping"] {
        if !have(cmd) {
            missing.push(format!(
                "the `{cmd}` command (Debian packages iproute2, iputils-ping)"
            ));
        }
    }
    if needs_vxlan
        && !std::path::Path::new("/sys/module/vxlan").exists()
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

/// [`prerequisites`] (without VXLAN) plus the `nft` command, which the nftables tests use to
/// inspect what the kernel holds.
pub fn prerequisites_with_nft() -> bool {
    if !prerequisites(false) {
        return false;
    }
    if have("nft") {
        return true;
    }
    let why = "the `nft` command (Debian package nftables), used to inspect rules";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("missing prerequisite: {why}");
    }
    eprintln!("skipped: missing {why}");
    false
}

/// Runs a command, returning its output (no assertion).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

/// Runs a command and asserts it succeeded; returns stdout.
pub fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        }
    }

    /// `ip -n <ns> <args...>`, asserting success.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        must(&all)
    }

    /// `ip -n <ns> <args...>` without asserting.
    pub fn ip_try(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Runs a command inside the namespace without asserting.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A single ping with a short wait, for checking that something is *not* reachable.
    pub fn ping_once(&self, target: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", target])
            .status
            .success()
    }

    /// One ping from inside the namespace; true if answered.
    pub fn ping(&self, target: &str) -> bool {
        // Two tries: the first packet may wait on ARP/neighbour resolution.
        (0..3).any(|_| {
            self.exec(&["ping", "-c", "1", "-W", "2", target])
                .status
                .success()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// An IPv4 TCP round trip: a listener in `server` ns on `addr:port`, a client in `client` ns.
/// Returns the client address as the server saw it, or `None` if the round trip failed.
pub fn tcp_roundtrip(
    server: &Netns,
    client: &Netns,
    addr: std::net::Ipv4Addr,
    port: u16,
) -> Option<std::net::SocketAddr> {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;
    let sa = SocketAddr::from((addr, port));
    // A socket keeps the namespace it was created in, so bind on a thread inside `server`.
    let listener = r3s_cni::netns::run_in(&server.path, || TcpListener::bind(sa))
        .expect("enter server ns")
        .expect("bind listener");
    let acceptor = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        let (mut s, peer) = listener.accept()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        s.write_all(&buf)?;
        Ok(peer)
    });
    let client_result = r3s_cni::netns::run_in(&client.path, || -> std::io::Result<[u8; 4]> {
        let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"r3s!")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok(buf)
    })
    .expect("enter client ns");
    if !matches!(client_result, Ok(b) if &b == b"r3s!") {
        return None;
    }
    acceptor.join().ok().and_then(Result::ok)
}

/// An echo server in a namespace: answers every read with the same bytes, remembers the peer.
pub struct EchoServer {
    peer: std::sync::Arc<std::sync::Mutex<Option<std::net::IpAddr>>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: std::net::Ipv4Addr, port: u16) -> EchoServer {
        use std::io::{Read, Write};
        let sa = std::net::SocketAddr::from((addr, port));
        let listener = r3s_cni::netns::run_in(&ns.path, || std::net::TcpListener::bind(sa))
            .expect("enter server ns")
            .expect("bind echo server");
        let peer = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = peer.clone();
        // Detached: it ends when the namespace (and so the connection) goes away.
        std::thread::spawn(move || {
            let Ok((mut s, p)) = listener.accept() else {
                return;
            };
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.ip());
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        EchoServer { peer }
    }

    /// The client address the server saw.
    pub fn peer(&self) -> Option<std::net::IpAddr> {
        *self.peer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A TCP connection made from inside `ns` (the socket stays in that namespace).
pub fn connect_in(ns: &Netns, addr: std::net::Ipv4Addr, port: u16) -> std::net::TcpStream {
    let sa = std::net::SocketAddr::from((addr, port));
    let s = r3s_cni::netns::run_in(&ns.path, || {
        std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(5))
    })
    .expect("enter client ns")
    .expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("read timeout");
    s
}

/// Sends `msg` and expects it back.
pub fn echo(conn: &mut std::net::TcpStream, msg: &[u8]) -> bool {
    use std::io::{Read, Write};
    let mut back = vec![0u8; msg.len()];
    conn.write_all(msg).is_ok() && conn.read_exact(&mut back).is_ok() && back == msg
}
