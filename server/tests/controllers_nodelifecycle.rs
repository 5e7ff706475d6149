//! A node that stops renewing its Lease: after the (shortened) grace period it is Ready=Unknown
//! and tainted unreachable, its pods are evicted once their (shortened, 1 s) toleration of the
//! unreachable taint runs out, and the Deployment's pods come back on the remaining nodes.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use r3s_server::controllers::ControllerOptions;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}
      containers: [{name: web, image: registry.example/web:1}]
"#;

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_is_tainted_and_its_pods_move() {
    if !support::have_kubectl() {
        return;
    }
    let opts = ControllerOptions {
        node_monitor_grace_period: Duration::from_secs(2),
        node_monitor_period: Duration::from_millis(200),
        default_toleration_seconds: 1,
        ..ControllerOptions::default()
    };
    let cluster = support::start(&["sim-a", "sim-b", "sim-c"], opts).await;
    let manifest = cluster.write("web.yaml", DEPLOYMENT);
    cluster.ok(&["apply", "-f", &manifest]).await;
    cluster
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let before = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods");
    assert!(
        before.items.iter().any(|p| node_of(p) == "sim-b"),
        "one pod per node"
    );

    cluster.sim().unplug("sim-b");
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let t = Duration::from_secs(30);
    support::wait_for(
        "sim-b Ready=Unknown with the unreachable NoExecute taint",
        t,
        || async {
            let Ok(node) = nodes.get("sim-b").await else {
                return false;
            };
            let unknown = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c.type_ == "Ready"
                            && c.status == "Unknown"
                            && c.reason.as_deref() == Some("NodeStatusUnknown")
                    })
                });
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| {
                    t.iter().any(|t| {
                        t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                    })
                });
            unknown && tainted
        },
    )
    .await;
    let out = cluster.ok(&["get", "node", "sim-b"]).await;
    assert!(out.contains("NotReady"), "{out}");

    // The evicted pod stays Terminating (its node cannot confirm); three live ones run elsewhere.
    support::wait_for("three ready pods elsewhere, sim-b's evicted", t, || async {
        pods.list(&ListParams::default().labels("app=web"))
            .await
            .is_ok_and(|l| {
                let (gone, live): (Vec<&Pod>, Vec<&Pod>) = l
                    .items
                    .iter()
                    .partition(|p| p.metadata.deletion_timestamp.is_some());
                live.len() == 3
                    && live.iter().all(|p| ready(p) && node_of(p) != "sim-b")
                    && gone.iter().all(|p| node_of(p) == "sim-b")
                    && gone.len() == 1
            })
    })
    .await;
    let healthy = nodes.get("sim-a").await.expect("sim-a");
    assert!(
        healthy
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_none_or(|t| t.is_empty()),
        "a renewing node stays untainted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gc_removes_pods_of_deleted_nodes_and_old_terminated_pods() {
    if !support::have_kubectl() {
        return;
    }
    let opts = ControllerOptions {
        pod_gc_period: Duration::from_millis(200),
        terminated_pod_gc_threshold: 1,
        ..ControllerOptions::default()
    };
    let cluster = support::start(&["sim-a", "sim-b"], opts).await;
    let manifest = cluster.write("web.yaml", DEPLOYMENT);
    cluster.ok(&["apply", "-f", &manifest]).await;
    cluster
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    cluster.sim().unplug("sim-b");
    nodes
        .delete("sim-b", &kube::api::DeleteParams::default())
        .await
        .expect("delete node");
    let t = Duration::from_secs(30);
    support::wait_for("three ready pods, all on sim-a", t, || async {
        pods.list(&ListParams::default().labels("app=web"))
            .await
            .is_ok_and(|l| {
                l.items.len() == 3
                    && l.items.iter().all(ready)
                    && l.items.iter().all(|p| node_of(p) == "sim-a")
            })
    })
    .await;

    // Two finished pods with a threshold of one: the older goes.
    for name in ["done-1", "done-2"] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"job": "x"}},
            "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "x"}]}
        }))
        .expect("pod");
        pods.create(&kube::api::PostParams::default(), &pod)
            .await
            .expect("create");
        pods.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .expect("status");
        // Distinct creation timestamps (second resolution) so "older" is well defined.
        if name == "done-1" {
            support::wait_for("a new second", t, || async {
                let created = pods
                    .get("done-1")
                    .await
                    .ok()
                    .and_then(|p| p.metadata.creation_timestamp);
                created.is_some_and(|c| {
                    k8s_openapi::jiff::Timestamp::now().as_second() > c.0.as_second()
                })
            })
            .await;
        }
    }
    support::wait_for("done-1 collected, done-2 kept", t, || async {
        pods.get_opt("done-1").await.ok().flatten().is_none()
            && pods.get_opt("done-2").await.ok().flatten().is_some()
    })
    .await;
}
