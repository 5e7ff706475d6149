//! A whole control plane in-process for controller and scheduler tests: the API over HTTPS (for
//! the real kubectl) on a real SQLite store in a temp dir, the control loops and the scheduler on
//! in-process clients, and the [`node_sim`] node simulator standing in for kubelets.
//!
//! Dropping a [`Cluster`] stops everything and removes its files.

#![allow(dead_code)]

pub mod node_sim;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use r3s_server::api::{ApiOptions, ApiState, serve_listener};
use r3s_server::client::{self, CONTROLLER_MANAGER_USER, SCHEDULER_USER};
use r3s_server::controllers::{self, ControllerOptions};
use r3s_server::scheduler::{self, SchedulerOptions};
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use r3s_server::tls::{CertOptions, ensure_certificates, server_config};
use tokio::sync::watch;

pub const KUBECTL: &str = "/usr/bin/kubectl";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub state: ApiState,
    /// An administrator's client (in-process, `system:masters`).
    pub client: kube::Client,
    pub nodes: Option<node_sim::NodeSimulator>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

// Spelled out so the `Sync` bound the shutdown parameters need is part of the signature.
#[allow(clippy::manual_async_fn)]
fn stopped(mut rx: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync + 'static {
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// True if kubectl exists; otherwise prints `skipped:` (or panics when `CI=true`).
pub fn have_kubectl() -> bool {
    if std::path::Path::new(KUBECTL).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{KUBECTL} is missing (package kubectl)");
    }
    println!("skipped: {KUBECTL} is missing");
    false
}

/// Starts the API, the control loops, the scheduler and `nodes` simulated nodes.
pub async fn start(nodes: &[&str], opts: ControllerOptions) -> Cluster {
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
    let (stop, rx) = watch::channel(false);
    // The in-process clients and the HTTPS listener share one state (store, service allocator).
    let state = ApiState::new(store.clone(), addr.to_string());
    let mut tasks = Vec::new();
    let api_opts = ApiOptions {
        listen: addr,
        tls,
        advertise_address: addr.to_string(),
        services: state.services.clone(),
        tokens: state.tokens.clone(),
    };
    let shutdown = stopped(rx.clone());
    tasks.push(tokio::spawn(async move {
        serve_listener(listener, store, api_opts, shutdown)
            .await
            .expect("serve");
    }));
    let admin = client::in_process(state.clone(), client::identity("r3s-test-admin"));
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(admin.clone());
    // `kube-node-lease` is the last namespace the server creates at start; the node simulator
    // writes Leases into it.
    wait_for(
        "the start-up namespaces",
        Duration::from_secs(10),
        || async {
            namespaces.get_opt("default").await.ok().flatten().is_some()
                && namespaces
                    .get_opt("kube-node-lease")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
        },
    )
    .await;
    let ctrl = client::in_process(state.clone(), client::identity(CONTROLLER_MANAGER_USER));
    let shutdown = stopped(rx.clone());
    tasks.push(tokio::spawn(controllers::run(ctrl, opts, shutdown)));
    let sched = client::in_process(state.clone(), client::identity(SCHEDULER_USER));
    let shutdown = stopped(rx.clone());
    tasks.push(tokio::spawn(scheduler::run(
        sched,
        SchedulerOptions::default(),
        shutdown,
    )));
    let sim = node_sim::NodeSimulator::start(admin.clone(), nodes).await;
    Cluster {
        dir,
        kubeconfig,
        state,
        client: admin,
        nodes: Some(sim),
        stop,
        tasks,
    }
}

/// Polls `check` until it holds, panicking with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Cluster {
    /// Runs kubectl with its own HOME; returns (success, stdout, stderr).
    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
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
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }

    pub fn write(&self, name: &str, body: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).expect("write manifest");
        path.display().to_string()
    }

    pub fn sim(&self) -> &node_sim::NodeSimulator {
        self.nodes.as_ref().expect("node simulator")
    }
}
