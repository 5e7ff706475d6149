//! Control loops started on a store that already holds objects (a server restart): each loop
//! must act on what its caches hold after their first complete list, not on the empty cache of
//! the list still in flight. Before this was fixed, node IPAM never gave pre-existing nodes a
//! range, and a ReplicaSet reconciled before the pod cache was filled could create extra pods.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use r3s_server::api::{ApiState, prepare};
use r3s_server::client::{self, CONTROLLER_MANAGER_USER};
use r3s_server::controllers::informer::Informers;
use r3s_server::controllers::{ControllerOptions, nodeipam, replicaset};
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use serde_json::json;
use tokio::sync::watch;

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_started_after_objects_exist_see_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("state.db"), StoreOptions::default()).expect("store"),
    );
    let state = ApiState::new(store, "127.0.0.1:6443");
    prepare(&state).await.expect("prepare");
    let admin = client::in_process(state.clone(), client::identity("r3s-test-admin"));

    // What a restarted server finds: two nodes still waiting for a range, and a ReplicaSet
    // whose two pods already exist.
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["pre-a", "pre-b"] {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
    }
    let replicasets: Api<ReplicaSet> = Api::namespaced(admin.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .expect("replicaset");
    let rs = replicasets
        .create(&PostParams::default(), &rs)
        .await
        .expect("create replicaset");
    let uid = rs.metadata.uid.clone().expect("uid");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    for i in 0..2 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("web-{i}"), "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                    "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }

    // Only the loops under test: another loop writing these objects (node lifecycle tainting
    // the nodes) would wake them and hide the bug.
    let (stop, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let ctrl = client::in_process(state.clone(), client::identity(CONTROLLER_MANAGER_USER));
    let informers = Informers::start(&ctrl);
    let shared = informers.clone();
    let ipam = tokio::spawn({
        let ctrl = ctrl.clone();
        let stop = stopped(rx.clone());
        async move { nodeipam::run(ctrl, &shared, ControllerOptions::default(), stop).await }
    });
    let rs_loop = tokio::spawn(async move { replicaset::run(ctrl, &informers, stopped(rx)).await });

    wait_for("both pre-existing nodes to get a pod CIDR", || async {
        let mut ranges = Vec::new();
        for name in ["pre-a", "pre-b"] {
            let cidr = nodes.get(name).await.ok().and_then(|n| n.spec?.pod_cidr);
            ranges.extend(cidr);
        }
        ranges.sort();
        ranges == ["10.42.0.0/24", "10.42.1.0/24"]
    })
    .await;

    // The ReplicaSet's first reconcile has counted its pods once its status says so.
    wait_for("the ReplicaSet to report its 2 replicas", || async {
        replicasets
            .get("web")
            .await
            .ok()
            .and_then(|rs| rs.status)
            .is_some_and(|s| s.replicas == 2 && s.observed_generation == Some(1))
    })
    .await;
    let listed = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list pods");
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["web-0", "web-1"], "no pod may be added on start");

    let _ = stop.send(true);
    for task in [ipam, rs_loop] {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}
