//! End to end through the real `r3s-server` binary: it starts on a fresh data directory, writes a
//! kubeconfig that the real kubectl uses, keeps its state and certificates across a restart, and
//! stops cleanly on SIGTERM. This is the README's first command, as a test.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_r3s-server");
const KUBECTL: &str = "/usr/bin/kubectl";

/// A running server process, SIGKILLed (by its PID) if the test ends without stopping it.
struct Server {
    child: Option<Child>,
}

impl Server {
    fn start(dir: &Path, port: u16) -> Server {
        let empty = dir.join("empty-config.yaml");
        std::fs::write(&empty, "").unwrap();
        let log = std::fs::File::create(dir.join(format!("server-{port}.log"))).unwrap();
        let child = Command::new(BIN)
            .env_clear()
            .env("R3S_CONFIG_FILE", &empty)
            .args(["--data-dir"])
            .arg(dir.join("data"))
            .args(["--write-kubeconfig"])
            .arg(dir.join("kubeconfig.yaml"))
            .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
            .arg(port.to_string())
            .args(["--node-name", "r3st-e2e", "--disable-agent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start r3s-server");
        Server { child: Some(child) }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
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

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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

/// Waits (bounded) until kubectl can read `/readyz` through the written kubeconfig.
fn wait_ready(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if dir.join("kubeconfig.yaml").exists() {
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

fn logs(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p: PathBuf = entry.path();
        if p.extension().is_some_and(|e| e == "log") {
            all.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    all
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn prerequisites() -> bool {
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

#[test]
fn binary_serves_kubectl_and_keeps_state_and_certificates_across_restarts() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("home")).unwrap();

    let server = Server::start(dir, free_port());
    wait_ready(dir);

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("kubeconfig.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "kubeconfig mode");
    let kubeconfig_before = std::fs::read_to_string(dir.join("kubeconfig.yaml")).unwrap();
    assert!(
        dir.join("data/server/db/state.db").exists(),
        "state.db where k3s keeps it"
    );

    let (ok, out, err) = kubectl(dir, &["get", "namespaces", "-o", "name"]);
    assert!(ok, "{err}");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(&format!("namespace/{ns}")), "{out}");
    }
    let (ok, _, err) = kubectl(
        dir,
        &["create", "configmap", "r3st-keep", "--from-literal=k=v1"],
    );
    assert!(ok, "{err}");
    let (ok, rv_before, err) = kubectl(
        dir,
        &[
            "get",
            "configmap",
            "r3st-keep",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    assert!(ok, "{err}");

    let status = server.stop();
    assert!(status.success(), "exit status {status}; log: {}", logs(dir));

    // Same data directory, another port: state, CA and admin credentials are reused.
    let server = Server::start(dir, free_port());
    wait_ready(dir);
    let kubeconfig_after = std::fs::read_to_string(dir.join("kubeconfig.yaml")).unwrap();
    let ca = |k: &str| {
        k.lines()
            .find(|l| l.contains("certificate-authority-data"))
            .map(str::to_owned)
            .unwrap()
    };
    assert_eq!(ca(&kubeconfig_before), ca(&kubeconfig_after), "CA reused");

    let (ok, out, err) = kubectl(
        dir,
        &["get", "configmap", "r3st-keep", "-o", "jsonpath={.data.k}"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "v1");
    // Revisions keep increasing across the restart.
    let (ok, _, err) = kubectl(
        dir,
        &[
            "patch",
            "configmap",
            "r3st-keep",
            "-p",
            r#"{"data":{"k":"v2"}}"#,
        ],
    );
    assert!(ok, "{err}");
    let (ok, rv_after, err) = kubectl(
        dir,
        &[
            "get",
            "configmap",
            "r3st-keep",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
    );
    assert!(ok, "{err}");
    let before: i64 = rv_before.trim().parse().unwrap();
    let after: i64 = rv_after.trim().parse().unwrap();
    assert!(after > before, "{after} > {before}");

    let status = server.stop();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn second_server_on_the_same_data_dir_is_refused_with_one_line() {
    if !prerequisites() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let first = Server::start(dir, free_port());
    wait_ready(dir);

    let empty = dir.join("empty-config.yaml");
    let out = Command::new(BIN)
        .env_clear()
        .env("R3S_CONFIG_FILE", &empty)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.join("second-kubeconfig.yaml"))
        .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
        .arg(free_port().to_string())
        .args(["--node-name", "r3st-e2e", "--disable-agent"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("state.db"), "names the database: {stderr}");
    assert!(first.stop().success());
}
