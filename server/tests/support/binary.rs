//! The real `r3s-server` binary for end-to-end tests: the command line they all start from, the
//! running process, the real kubectl on the kubeconfig the server writes, and bounded waits.
//!
//! Layout under a test's `dir`: `data/` (the data dir), `kubeconfig.yaml` (written by the server),
//! `home/` (kubectl's HOME, made by the test), `empty-config.yaml` (so no host config file leaks
//! in) and the server's stderr in the `*.log` file named at spawn. A [`Server`] still running when
//! it is dropped gets SIGTERM and its grace time, then SIGKILL, by its PID.
//!
//! Included by path (`#[path = "support/binary.rs"] mod binary;`), apart from `support/mod.rs`,
//! so the binary tests do not compile the in-process cluster.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_r3s-server");
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// True if kubectl exists; otherwise prints `skipped:` (or panics when `CI=true`).
pub fn have_kubectl() -> bool {
    if Path::new(KUBECTL).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "kubectl is missing at {KUBECTL}"
    );
    eprintln!("skipped: kubectl is missing at {KUBECTL}");
    false
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `r3s-server` on `dir`'s data dir, serving HTTPS on 127.0.0.1:`port` as node `node`, writing
/// its admin kubeconfig to `dir/kubeconfig.yaml`; the caller adds flags and spawns it.
pub fn command(dir: &Path, port: u16, node: &str) -> Command {
    command_writing(dir, &dir.join("kubeconfig.yaml"), port, node)
}

/// [`command`] with the admin kubeconfig written to `kubeconfig` instead.
pub fn command_writing(dir: &Path, kubeconfig: &Path, port: u16, node: &str) -> Command {
    let empty = dir.join("empty-config.yaml");
    std::fs::write(&empty, "").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("R3S_CONFIG_FILE", &empty)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--write-kubeconfig")
        .arg(kubeconfig)
        .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
        .arg(port.to_string())
        .args(["--node-name", node])
        .stdin(Stdio::null());
    cmd
}

/// A running server process.
pub struct Server {
    child: Option<Child>,
    /// How long a dropped server may take to stop after SIGTERM (an agent stops its pods; a
    /// SIGKILLed agent leaves its containers running) before it is SIGKILLed.
    grace: Duration,
}

impl Server {
    /// Spawns `cmd` with stdout discarded and stderr in `log`.
    pub fn spawn(mut cmd: Command, log: &Path, grace: Duration) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start r3s-server");
        Server {
            child: Some(child),
            grace,
        }
    }

    /// A control plane only (`--disable-agent`) on `dir` and `port`, logging to
    /// `dir/server-<port>.log`; SIGKILLed at once if dropped while running.
    pub fn control_plane(dir: &Path, port: u16, node: &str) -> Server {
        let mut cmd = command(dir, port, node);
        cmd.arg("--disable-agent");
        Server::spawn(cmd, &dir.join(format!("server-{port}.log")), Duration::ZERO)
    }

    /// SIGTERM, then the exit status; panics if it is still running after `limit`.
    pub fn stop(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        terminate(&child);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "r3s-server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn terminate(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !self.grace.is_zero() {
            terminate(&child);
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// kubectl on `dir/kubeconfig.yaml` with `dir/home` as HOME; the caller sets stdio and runs it.
pub fn kubectl_command(dir: &Path, args: &[&str]) -> Command {
    kubectl_command_on(dir, &dir.join("kubeconfig.yaml"), args)
}

fn kubectl_command_on(dir: &Path, kubeconfig: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(KUBECTL);
    cmd.env("KUBECONFIG", kubeconfig)
        .env("HOME", dir.join("home"))
        .args(args);
    cmd
}

/// Runs kubectl on `dir/kubeconfig.yaml`; returns (success, stdout, stderr).
pub fn kubectl(dir: &Path, args: &[&str]) -> (bool, String, String) {
    kubectl_on(dir, &dir.join("kubeconfig.yaml"), args)
}

/// Runs kubectl on another `kubeconfig` (HOME still `dir/home`).
pub fn kubectl_on(dir: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = kubectl_command_on(dir, kubeconfig, args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (bounded) until kubectl reads `/readyz` through the kubeconfig the server wrote.
pub fn wait_ready(dir: &Path) {
    let kubeconfig = dir.join("kubeconfig.yaml");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if kubeconfig.exists() {
            let (ok, out, _) = kubectl(dir, &["get", "--raw", "/readyz"]);
            if ok && out.trim() == "ok" {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "r3s-server did not become ready; log: {}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every `*.log` file in `dir`, concatenated.
pub fn logs(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p: PathBuf = entry.path();
        if p.extension().is_some_and(|e| e == "log") {
            all.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    all
}

/// The last 40 lines of `dir/server.log`, newest first, for failure messages.
pub fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    format!(
        "server log (last lines, newest first):\n{}",
        tail.join("\n")
    )
}

/// Polls `f` every 250 ms until it returns `Some`, failing after `limit` with `what` and the
/// tail of `dir/server.log`.
pub fn eventually<T>(
    dir: &Path,
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; {}",
            log_tail(dir)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Writes a `registries.yaml` in `dir` saying `registry` (host:port) is plain HTTP, as a k3s user
/// would; returns its path.
pub fn plain_http_mirror(dir: &Path, registry: &str) -> PathBuf {
    let path = dir.join("registries.yaml");
    std::fs::write(
        &path,
        format!("mirrors:\n  \"{registry}\":\n    endpoint:\n      - \"http://{registry}\"\n"),
    )
    .unwrap();
    path
}
