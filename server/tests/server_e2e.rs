//! End to end through the real `r3s-server` binary: it starts on a fresh data directory, writes a
//! kubeconfig that the real kubectl uses, keeps its state and certificates across a restart, and
//! stops cleanly on SIGTERM. This is the README's first command, as a test.

#![allow(clippy::unwrap_used)]

#[path = "support/binary.rs"]
mod binary;

use std::time::Duration;

use binary::{Server, free_port, have_kubectl, kubectl, logs, wait_ready};

const NODE: &str = "r3st-e2e";

fn start(dir: &std::path::Path) -> Server {
    Server::control_plane(dir, free_port(), NODE)
}

/// SIGTERM, then the exit status.
fn stop(server: Server) -> std::process::ExitStatus {
    server.stop(Duration::from_secs(30))
}

#[test]
fn binary_serves_kubectl_and_keeps_state_and_certificates_across_restarts() {
    if !have_kubectl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("home")).unwrap();

    let server = start(dir);
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

    let status = stop(server);
    assert!(status.success(), "exit status {status}; log: {}", logs(dir));

    // Same data directory, another port: state, CA and admin credentials are reused.
    let server = start(dir);
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

    let status = stop(server);
    assert!(status.success(), "exit status {status}");
}

#[test]
fn second_server_on_the_same_data_dir_is_refused_with_one_line() {
    if !have_kubectl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let first = start(dir);
    wait_ready(dir);

    let out = binary::command_writing(dir, &dir.join("second-kubeconfig.yaml"), free_port(), NODE)
        .arg("--disable-agent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("state.db"), "names the database: {stderr}");
    assert!(stop(first).success());
}
