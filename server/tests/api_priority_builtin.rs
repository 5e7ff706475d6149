//! End to end, with the real kubectl (`/usr/bin/kubectl`, v1.32) against the API over HTTPS on a
//! real SQLite store: the built-in PriorityClasses `system-node-critical` and
//! `system-cluster-critical` exist from the start, cannot be deleted (upstream's Forbidden), keep
//! their value, and no user class may take the `system-` prefix unless it is exactly a built-in.
//!
//! Without kubectl the test prints `skipped:` (or fails when `CI=true`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use r3s_server::api::{ApiOptions, ApiState, serve_listener};
use r3s_server::client;
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use r3s_server::tls::{CertOptions, ensure_certificates, server_config};
use tokio::sync::watch;

const KUBECTL: &str = "/usr/bin/kubectl";

/// The API server; dropping it stops it and removes its files.
struct Server {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

fn kubectl_available() -> bool {
    if std::path::Path::new(KUBECTL).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("missing prerequisite: {KUBECTL} (kubectl 1.32)");
    }
    eprintln!("skipped: {KUBECTL} not found");
    false
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = ensure_certificates(
        dir.path(),
        &CertOptions {
            extra_sans: vec![],
            cluster_domain: "cluster.local".into(),
            service_ip: "10.43.0.1".parse().expect("literal"),
        },
    )
    .expect("certificates");
    let tls = server_config(&certs).expect("tls config");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            dir.path().join("server/db/state.db"),
            StoreOptions::default(),
        )
        .expect("store"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    r3s_server::kubeconfig::write(&kubeconfig, 0o600, &format!("https://{addr}"), &certs)
        .expect("kubeconfig");
    let state = ApiState::new(store.clone(), addr.to_string());
    let opts = ApiOptions {
        listen: addr,
        tls,
        advertise_address: addr.to_string(),
        services: state.services.clone(),
        tokens: None,
    };
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        serve_listener(listener, store, opts, shutdown)
            .await
            .expect("serve");
    });
    let admin = client::in_process(state, client::identity("r3s-test-admin"));
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(admin);
    let mut ready = false;
    for _ in 0..200 {
        if namespaces.get_opt("default").await.ok().flatten().is_some() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the server never served the default namespace");
    Server {
        dir,
        kubeconfig,
        stop,
        task,
    }
}

impl Server {
    /// Runs kubectl with its own HOME; returns (exit code, stdout, stderr).
    async fn kubectl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let out = tokio::process::Command::new(KUBECTL)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &home)
            .output()
            .await
            .expect("run kubectl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.kubectl(args).await;
        assert_eq!(
            code,
            Some(0),
            "kubectl {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// kubectl that must exit with 1; returns stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.kubectl(args).await;
        assert_eq!(code, Some(1), "kubectl {args:?}:\n{stdout}\n{stderr}");
        stderr
    }

    fn write(&self, name: &str, body: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).expect("write manifest");
        path.display().to_string()
    }
}

fn class_yaml(name: &str, value: i64, extra: &str) -> String {
    format!(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {name}}}\nvalue: {value}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_built_in_priority_classes_are_protected() {
    if !kubectl_available() {
        return;
    }
    let server = start().await;

    // Both built-ins are served from the start.
    let listed = server.ok(&["get", "priorityclass", "-o", "name"]).await;
    for name in ["system-node-critical", "system-cluster-critical"] {
        assert!(
            listed.contains(&format!("priorityclass.scheduling.k8s.io/{name}")),
            "{listed}"
        );
    }

    // Deleting one is Forbidden, with upstream's words, and changes nothing.
    for name in ["system-node-critical", "system-cluster-critical"] {
        let err = server.fails(&["delete", "priorityclass", name]).await;
        assert_eq!(
            err.trim(),
            format!(
                "Error from server (Forbidden): priorityclasses.scheduling.k8s.io \"{name}\" is forbidden: this is a system priority class and cannot be deleted"
            )
        );
    }
    let err = server
        .fails(&["delete", "pc", "system-node-critical", "--dry-run=server"])
        .await;
    assert!(
        err.contains("this is a system priority class and cannot be deleted"),
        "{err}"
    );
    let value = server
        .ok(&[
            "get",
            "pc",
            "system-node-critical",
            "-o",
            "jsonpath={.value}",
        ])
        .await;
    assert_eq!(value, "2000001000");
    let listed = server.ok(&["get", "pc"]).await;
    assert!(
        listed.contains("system-node-critical") && listed.contains("system-cluster-critical"),
        "{listed}"
    );

    // Their value is immutable like any class's; their labels are not.
    let err = server
        .fails(&[
            "patch",
            "pc",
            "system-cluster-critical",
            "--type=merge",
            "-p",
            "{\"value\": 5}",
        ])
        .await;
    assert!(
        err.contains("\"system-cluster-critical\" is invalid: value: Forbidden: may not be changed in an update."),
        "{err}"
    );
    server
        .ok(&["label", "pc", "system-cluster-critical", "team=platform"])
        .await;

    // The reserved prefix: a new name, a built-in's name with another value or as the global
    // default, each with upstream's reason.
    for (file, name, value, extra, why) in [
        (
            "mine.yaml",
            "system-mine",
            100,
            "",
            "system-mine is not a known system priority class",
        ),
        (
            "nodevalue.yaml",
            "system-node-critical",
            7,
            "",
            "value of system-node-critical PriorityClass must be 2000001000",
        ),
        (
            "default.yaml",
            "system-cluster-critical",
            2_000_000_000,
            "globalDefault: true\n",
            "globalDefault of system-cluster-critical PriorityClass must be false",
        ),
    ] {
        let path = server.write(file, &class_yaml(name, value, extra));
        let (code, stdout, err) = server.kubectl(&["create", "-f", &path]).await;
        assert_eq!(code, Some(1), "{stdout}{err}");
        // Validation comes before the store, so a built-in's own name gets the same reason.
        assert_eq!(
            err.trim(),
            format!(
                "The PriorityClass \"{name}\" is invalid: metadata.name: Forbidden: priority class names with 'system-' prefix are reserved for system use only. error: {why}"
            )
        );
    }
    let err = server
        .fails(&["create", "priorityclass", "system-other", "--value=10"])
        .await;
    assert!(
        err.contains(
            "reserved for system use only. error: system-other is not a known system priority class"
        ),
        "{err}"
    );

    // Outside the prefix, the user bound applies; a user class can be deleted.
    let err = server
        .fails(&["create", "priorityclass", "huge", "--value=1000000001"])
        .await;
    assert!(
        err.contains(
            "value: Forbidden: maximum allowed value of a user defined priority is 1000000000"
        ),
        "{err}"
    );
    server
        .ok(&["create", "priorityclass", "batch", "--value=1000"])
        .await;
    // kubectl sends that one as protobuf.
    let value = server
        .ok(&[
            "get",
            "pc",
            "batch",
            "-o",
            "jsonpath={.value} {.preemptionPolicy}",
        ])
        .await;
    assert_eq!(value, "1000 PreemptLowerPriority");
    server.ok(&["delete", "priorityclass", "batch"]).await;
    let (code, _, err) = server.kubectl(&["get", "pc", "batch"]).await;
    assert_eq!(code, Some(1), "{err}");
}
