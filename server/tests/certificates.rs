//! Leaf certificate renewal and rotation through the real `r3s-server` binary and the real kubectl:
//! certificates about to expire are re-issued at start from the same CA (new serial, later
//! notAfter, kubectl works with the rewritten kubeconfig), and `r3s-server certificate rotate` on a
//! stopped server's data directory re-issues the leaves while keeping the CAs, so a client
//! certificate issued before (as a joined agent holds) and the CA bundle it trusts keep working.

#![allow(clippy::unwrap_used)]

#[path = "support/binary.rs"]
mod binary;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use binary::{BIN, Server, free_port, have_kubectl, kubectl_on as kubectl, logs, wait_ready};
use r3s_server::tls::renew::{self, Leaf};

fn start(dir: &Path, port: u16) -> Server {
    Server::control_plane(dir, port, "r3st-certs")
}

fn stop(server: Server) {
    server.stop(Duration::from_secs(30));
}

fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("data/server/tls")
}

fn leaves(dir: &Path) -> Vec<Leaf> {
    renew::leaves(&tls_dir(dir)).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn ca_files(dir: &Path) -> Vec<Vec<u8>> {
    [
        "server-ca.crt",
        "server-ca.key",
        "client-ca.crt",
        "client-ca.key",
    ]
    .iter()
    .map(|f| std::fs::read(tls_dir(dir).join(f)).unwrap())
    .collect()
}

/// A kubeconfig for a client certificate issued by the cluster's client CA, trusting the server
/// CA bundle as it was at the time: what a joined node keeps on disk.
fn client_kubeconfig(dir: &Path, port: u16, user: &str) -> PathBuf {
    use base64::Engine;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let (crt, key) =
        r3s_server::tls::issue_client_certificate(&dir.join("data"), user, &["system:masters"])
            .unwrap();
    let ca = std::fs::read(tls_dir(dir).join("server-ca.crt")).unwrap();
    let path = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
            b64(&ca),
            b64(crt.as_bytes()),
            b64(key.as_bytes())
        ),
    )
    .unwrap();
    path
}

#[test]
fn leaves_near_expiry_are_renewed_at_start_and_rotate_keeps_the_cas() {
    if !have_kubectl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let kubeconfig = dir.join("kubeconfig.yaml");

    // First start makes the CAs and the one-year leaves.
    let server = start(dir, free_port());
    wait_ready(dir);
    stop(server);
    let cas = ca_files(dir);
    let first = leaves(dir);
    let names: Vec<&str> = first.iter().map(|l| l.name.as_str()).collect();
    assert!(names.contains(&"client-admin"), "{names:?}");
    assert!(names.contains(&"serving-kube-apiserver"), "{names:?}");
    assert!(first.iter().all(|l| l.not_after > now() + 360 * 86400));

    // Make every leaf expire in 30 days, as a year-old installation would be.
    renew::rotate_with_validity(&dir.join("data"), &[], Duration::from_secs(30 * 86400)).unwrap();
    let short = leaves(dir);
    assert!(short.iter().all(|l| l.not_after < now() + 31 * 86400));
    let stale_kubeconfig = std::fs::read_to_string(&kubeconfig).unwrap();

    // The next start renews them all from the same CAs and rewrites the admin kubeconfig.
    let port = free_port();
    let server = start(dir, port);
    wait_ready(dir);
    let renewed = leaves(dir);
    assert_eq!(renewed.len(), short.len());
    for (old, new) in short.iter().zip(&renewed) {
        assert_eq!(old.name, new.name);
        assert_ne!(old.serial, new.serial, "{} not renewed", old.name);
        assert!(new.not_after > now() + 360 * 86400, "{}", new.name);
        assert_eq!(old.ca, new.ca);
    }
    assert_eq!(ca_files(dir), cas, "the CAs never change");
    assert!(
        logs(dir).contains("renewed a leaf certificate"),
        "{}",
        logs(dir)
    );
    let fresh_kubeconfig = std::fs::read_to_string(&kubeconfig).unwrap();
    assert_ne!(fresh_kubeconfig, stale_kubeconfig, "kubeconfig rewritten");
    let (ok, out, err) = kubectl(dir, &kubeconfig, &["get", "namespaces", "-o", "name"]);
    assert!(ok, "{err}");
    assert!(out.contains("namespace/kube-system"), "{out}");
    // A credential made before rotation, like a joined node's, for the rotation below.
    let node_kubeconfig = client_kubeconfig(dir, port, "r3st-joined-node");
    stop(server);

    // `certificate rotate` on the stopped server: new serials, same CAs, one summary line.
    let out = Command::new(BIN)
        .env_clear()
        .args(["certificate", "rotate", "--data-dir"])
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!("rotated {} certificates", renewed.len())),
        "{stdout}"
    );
    let rotated = leaves(dir);
    for (old, new) in renewed.iter().zip(&rotated) {
        assert_ne!(old.serial, new.serial, "{} not rotated", old.name);
        assert!(stdout.contains(&old.name), "{stdout}");
    }
    assert_eq!(ca_files(dir), cas, "the CAs never change");
    let backups = std::fs::read_dir(dir.join("data/server"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tls-"))
        .count();
    assert!(backups >= 1, "old leaves kept in server/tls-<time>/");

    // Only the named one with --service; an unknown name is refused with the known ones listed.
    let out = Command::new(BIN)
        .env_clear()
        .args(["certificate", "rotate", "--service", "r3st-none", "-d"])
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serving-kube-apiserver"), "{stderr}");
    let out = Command::new(BIN)
        .env_clear()
        .args(["certificate", "rotate", "-s", "api-server", "-d"])
        .arg(dir.join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let after_one = leaves(dir);
    for (old, new) in rotated.iter().zip(&after_one) {
        assert_eq!(
            old.serial != new.serial,
            new.name == "serving-kube-apiserver",
            "{}",
            new.name
        );
    }

    // The server starts on the rotated certificates; the admin kubeconfig is rewritten, and the
    // credential from before rotation still verifies the server and is still accepted.
    let port = free_port();
    let server = start(dir, port);
    wait_ready(dir);
    let (ok, _, err) = kubectl(dir, &kubeconfig, &["get", "namespaces"]);
    assert!(ok, "{err}");
    let node_config = std::fs::read_to_string(&node_kubeconfig).unwrap().replace(
        &format!("127.0.0.1:{}", node_port(&node_kubeconfig)),
        &format!("127.0.0.1:{port}"),
    );
    std::fs::write(&node_kubeconfig, node_config).unwrap();
    let (ok, out, err) = kubectl(dir, &node_kubeconfig, &["get", "namespaces", "-o", "name"]);
    assert!(ok, "{err}");
    assert!(out.contains("namespace/default"), "{out}");
    stop(server);
}

/// The port in a kubeconfig's `server: https://127.0.0.1:<port>` line.
fn node_port(path: &Path) -> u16 {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("server:"))
        .unwrap();
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}
