//! Pods bound to this node: the manager watches them (`fieldSelector=spec.nodeName=<node>`) and
//! runs one [`worker::Worker`] per pod UID, handing it each new version of the object.
//!
//! Module map: [`worker`] (the per-pod state machine), [`sandbox`] (namespaces and /etc files),
//! [`container`] (pod + image → runtime config), [`env`] (environment), [`status`] (pod status),
//! [`quantity`] (resource quantities), [`state`] (what a restarted agent re-adopts).
//!
//! Invariants: at most one worker per pod UID; the manager never touches containers itself; a
//! pod missing from a relist is treated as deleted (its worker stops it).

pub mod container;
pub mod env;
pub mod events;
pub mod probe;
pub mod quantity;
pub mod sandbox;
pub mod state;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::layout::Layout;
use crate::runtime::Runtime;
use worker::{Desired, Worker};

/// What every worker shares.
pub struct Ctx {
    pub client: kube::Client,
    pub node_name: String,
    pub host_ip: IpAddr,
    pub layout: Layout,
    pub runtime: Runtime,
    pub images: r3s_images::ImageService,
    /// Pod networking (CNI ADD/DEL), set once the Node has a podCIDR; until then new pods get a
    /// loopback-only network namespace (and keep it: they are not re-attached later).
    pub network: std::sync::OnceLock<r3s_cni::node::KernelNetwork>,
    pub cluster_dns: Option<IpAddr>,
    pub cluster_domain: String,
    /// Absolute cgroup directory under which pods get `pod<uid>/<container>`.
    pub cgroup_root: PathBuf,
    pub node_milli_cpu: i64,
    pub node_memory_bytes: i64,
    /// On shutdown, leave pods running for the next start to re-adopt (containers run under
    /// shims); otherwise stop them.
    pub keep_pods_on_stop: bool,
    /// How often configMap and secret volumes are compared with the API (kubelet's
    /// `--sync-frequency`).
    pub sync_frequency: std::time::Duration,
}

/// kubelet's default `--sync-frequency`.
pub const DEFAULT_SYNC_FREQUENCY: std::time::Duration = std::time::Duration::from_secs(60);

struct Handle {
    tx: watch::Sender<Desired>,
    last: Arc<Pod>,
}

/// Watches this node's pods until `stop` fires, then stops every worker (and so every
/// container, unless [`Ctx::keep_pods_on_stop`]) and returns.
pub async fn manage(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = watcher(api, cfg).boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut seen_in_relist: Option<HashSet<String>> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res {
                    warn!("a pod worker failed: {e}");
                }
            }
            ev = events.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    Ok(watcher::Event::Init) => seen_in_relist = Some(HashSet::new()),
                    Ok(watcher::Event::InitApply(pod)) | Ok(watcher::Event::Apply(pod)) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if let Some(seen) = &mut seen_in_relist {
                            seen.insert(uid.clone());
                        }
                        let pod = Arc::new(pod);
                        match workers.get_mut(&uid) {
                            Some(h) => {
                                h.last = pod.clone();
                                let _ = h.tx.send(Desired::Run(pod));
                            }
                            None => {
                                let (tx, rx) = watch::channel(Desired::Run(pod.clone()));
                                let w = Worker::new(ctx.clone(), pod.clone());
                                let done = done_tx.clone();
                                let u = uid.clone();
                                tasks.spawn(async move {
                                    w.run(rx).await;
                                    let _ = done.send(u);
                                });
                                workers.insert(uid, Handle { tx, last: pod });
                            }
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        let uid = pod.metadata.uid.clone().unwrap_or_default();
                        if let Some(h) = workers.get(&uid) {
                            let _ = h.tx.send(Desired::Gone(Arc::new(pod)));
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        // Pods a previous run left (state files) that are no longer bound
                        // here, deleted while no agent ran: adopt them only to stop them.
                        for st in state::list(&ctx.layout.run_dir) {
                            if workers.contains_key(&st.uid) {
                                continue;
                            }
                            info!(pod = %format!("{}/{}", st.namespace, st.name), "stopping a pod left by a previous run");
                            let mut pod = Pod::default();
                            pod.metadata.uid = Some(st.uid.clone());
                            pod.metadata.name = Some(st.name.clone());
                            pod.metadata.namespace = Some(st.namespace.clone());
                            let pod = Arc::new(pod);
                            let (tx, rx) = watch::channel(Desired::Gone(pod.clone()));
                            let w = Worker::new(ctx.clone(), pod.clone());
                            let done = done_tx.clone();
                            let u = st.uid.clone();
                            tasks.spawn(async move {
                                w.run(rx).await;
                                let _ = done.send(u);
                            });
                            workers.insert(st.uid, Handle { tx, last: pod });
                        }
                        if let Some(seen) = seen_in_relist.take() {
                            for (uid, h) in &workers {
                                if !seen.contains(uid) {
                                    let _ = h.tx.send(Desired::Gone(h.last.clone()));
                                }
                            }
                        }
                    }
                    // The watcher retries by itself; keep the pods running meanwhile.
                    Err(e) => {
                        warn!("pod watch: {e}");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
    info!(pods = workers.len(), "stopping pod workers");
    for h in workers.values() {
        let _ = h.tx.send(Desired::Shutdown);
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
