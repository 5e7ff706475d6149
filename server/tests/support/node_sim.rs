//! NODE SIMULATOR — tests only, no containers run. It plays the kubelet's API role for N fake
//! nodes: registers each Node (4 CPU, 8 GiB, 110 pods, Ready), renews its Lease in
//! `kube-node-lease` every 500 ms, and marks every pod bound to one of its nodes Running and Ready
//! (with a pod IP from the node's range), and completes graceful deletions of its pods (the final
//! delete with grace 0, as a kubelet does once containers stopped). A node can be "unplugged": its
//! heartbeats stop and its pods are left as they are (deleted ones stay Terminating).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

pub struct NodeSimulator {
    alive: Arc<HashMap<String, AtomicBool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for NodeSimulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

impl NodeSimulator {
    pub async fn start(client: kube::Client, names: &[&str]) -> NodeSimulator {
        let nodes: Api<Node> = Api::all(client.clone());
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let mut alive = HashMap::new();
        for name in names {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64"}},
                "spec": {},
                "status": {
                    "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                    "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "simulated kubelet is posting ready status",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                    "nodeInfo": {"kubeletVersion": "v1.32.0-r3s-sim", "operatingSystem": "linux",
                        "architecture": "amd64", "containerRuntimeVersion": "simulated://0",
                        "kernelVersion": "", "osImage": "node simulator", "kubeProxyVersion": "",
                        "machineID": "", "systemUUID": "", "bootID": ""},
                }
            }))
            .expect("node json");
            let created = nodes
                .create(&PostParams::default(), &node)
                .await
                .expect("create node");
            // Status is a subresource: write it separately too, in case create ignored it.
            nodes
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": node.status})),
                )
                .await
                .expect("node status");
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "kube-node-lease",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                        "uid": created.metadata.uid}]},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()}
            }))
            .expect("lease json");
            leases
                .create(&PostParams::default(), &lease)
                .await
                .expect("create lease");
            alive.insert(name.to_string(), AtomicBool::new(true));
        }
        let alive = Arc::new(alive);
        let mut tasks = Vec::new();
        let heartbeat_alive = alive.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                for (name, up) in heartbeat_alive.iter() {
                    if up.load(Ordering::SeqCst) {
                        let patch = json!({"spec": {"renewTime": micro_now()}});
                        let _ = leases
                            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await;
                    }
                }
            }
        }));
        let runner_alive = alive.clone();
        tasks.push(tokio::spawn(run_pods(client, runner_alive)));
        NodeSimulator { alive, tasks }
    }

    /// Stops `node`'s heartbeats and pod updates, as if it lost power.
    pub fn unplug(&self, node: &str) {
        if let Some(up) = self.alive.get(node) {
            up.store(false, Ordering::SeqCst);
        }
    }
}

/// Marks pods bound to live simulated nodes Running and Ready.
async fn run_pods(client: kube::Client, alive: Arc<HashMap<String, AtomicBool>>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let next_ip = AtomicU32::new(2);
    let index: BTreeMap<String, usize> = alive
        .keys()
        .cloned()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    let mut events = watcher(pods, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(pod) = event else { continue };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if !alive.get(&node).is_some_and(|up| up.load(Ordering::SeqCst)) {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(
            client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        if pod.metadata.deletion_timestamp.is_some() {
            // Graceful deletion: the "containers" stop at once, then the kubelet's final delete.
            let params = kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(kube::api::Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..kube::api::DeleteParams::default()
            };
            let _ = api
                .delete(pod.metadata.name.as_deref().unwrap_or(""), &params)
                .await;
            continue;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if running && ready {
            continue;
        }
        let n = next_ip.fetch_add(1, Ordering::SeqCst);
        let ip = format!(
            "10.42.{}.{}",
            index.get(&node).copied().unwrap_or(0),
            n % 250 + 2
        );
        let t = now();
        let containers: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                    "restartCount": 0, "started": true, "state": {"running": {"startedAt": t}}})
            })
            .collect();
        let status = json!({"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "203.0.113.1",
            "startTime": t,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": t},
                {"type": "Ready", "status": "True", "lastTransitionTime": t},
            ],
            "containerStatuses": containers,
        }});
        let _ = api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await;
    }
}
