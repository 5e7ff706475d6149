//! Set-up shared by the agent's e2e tests: the real API server in-process (HTTPS, the cluster's
//! certificates and a real SQLite store under the test's directory, an admin kubeconfig written
//! next to them) and a kube client on that kubeconfig.
//!
//! Layout under `dir`: the certificates as `ensure_certificates` writes them, `server/db/state.db`,
//! `kubeconfig.yaml` and `home/` (an empty HOME for kubectl). The server stops when its
//! [`ApiServer`] is dropped.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use r3s_server::api::{ApiOptions, ServiceNetwork, serve_listener};
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use r3s_server::tls::{CertOptions, ensure_certificates, server_config};
use tokio::sync::oneshot;

/// The in-process API server; stops on drop.
pub struct ApiServer {
    pub kubeconfig: PathBuf,
    /// HOME for kubectl, so it neither reads nor writes the real one.
    pub home: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Starts the API server on a free port of 127.0.0.1 with its state under `dir`.
pub async fn start_api_server(dir: &Path) -> ApiServer {
    start_api_server_on(dir, "127.0.0.1:0".parse().unwrap(), vec![]).await
}

/// Starts the API server on `addr` (port 0: any free one), its serving certificate also naming
/// `extra_sans`.
pub async fn start_api_server_on(
    dir: &Path,
    addr: SocketAddr,
    extra_sans: Vec<String>,
) -> ApiServer {
    let certs = ensure_certificates(
        dir,
        &CertOptions {
            extra_sans,
            cluster_domain: "cluster.local".into(),
            service_ip: "10.43.0.1".parse().unwrap(),
        },
    )
    .unwrap();
    let tls = server_config(&certs).unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.join("server/db/state.db"), StoreOptions::default()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kubeconfig = dir.join("kubeconfig.yaml");
    r3s_server::kubeconfig::write(&kubeconfig, 0o600, &format!("https://{addr}"), &certs).unwrap();
    let (tx, rx) = oneshot::channel();
    let opts = ApiOptions {
        listen: addr,
        tls,
        advertise_address: addr.to_string(),
        services: Arc::new(ServiceNetwork::default()),
        tokens: None,
    };
    let task = tokio::spawn(async move {
        serve_listener(listener, store, opts, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    ApiServer {
        kubeconfig,
        home,
        shutdown: Some(tx),
        task,
    }
}

/// A kube client on `kubeconfig`.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}
