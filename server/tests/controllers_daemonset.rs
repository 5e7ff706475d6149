//! A DaemonSet lands on every node it may run on (including a tainted one it tolerates, not one it
//! does not), follows taint changes, and rolls a new image out node by node (`kubectl rollout
//! status daemonset`).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: default}
spec:
  selector: {matchLabels: {app: agent}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      tolerations: [{key: dedicated, operator: Equal, value: edge, effect: NoSchedule}]
      containers: [{name: agent, image: registry.example/agent:1}]
"#;

async fn placement(pods: &Api<Pod>, image: &str) -> BTreeSet<String> {
    pods.list(&ListParams::default().labels("app=agent"))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.as_deref())
                        == Some(image)
                })
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect()
        })
        .unwrap_or_default()
}

async fn total(pods: &Api<Pod>) -> usize {
    pods.list(&ListParams::default().labels("app=agent"))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes_and_taints() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b", "sim-c"], ControllerOptions::default()).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let taint = |key: &str, value: &str| json!({"spec": {"taints": [{"key": key, "value": value, "effect": "NoSchedule"}]}});
    nodes
        .patch(
            "sim-b",
            &PatchParams::default(),
            &Patch::Merge(&taint("other", "x")),
        )
        .await
        .expect("taint");
    nodes
        .patch(
            "sim-c",
            &PatchParams::default(),
            &Patch::Merge(&taint("dedicated", "edge")),
        )
        .await
        .expect("taint");
    let manifest = cluster.write("ds.yaml", DAEMONSET);
    cluster.ok(&["apply", "-f", &manifest]).await;
    let out = cluster
        .ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let t = Duration::from_secs(30);
    let v1 = "registry.example/agent:1";
    assert_eq!(placement(&pods, v1).await, set(&["sim-a", "sim-c"]));

    // The untolerated taint goes away: sim-b gets its pod.
    nodes
        .patch(
            "sim-b",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": null}})),
        )
        .await
        .expect("untaint");
    support::wait_for("a pod on every node", t, || async {
        placement(&pods, v1).await == set(&["sim-a", "sim-b", "sim-c"]) && total(&pods).await == 3
    })
    .await;

    // A new image rolls out to every node.
    cluster
        .ok(&[
            "set",
            "image",
            "daemonset/agent",
            "agent=registry.example/agent:2",
        ])
        .await;
    let out = cluster
        .ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    support::wait_for("image 2 on every node and nothing else", t, || async {
        placement(&pods, "registry.example/agent:2").await == set(&["sim-a", "sim-b", "sim-c"])
            && total(&pods).await == 3
    })
    .await;
    let out = cluster
        .ok(&[
            "get",
            "daemonset",
            "agent",
            "-o",
            "jsonpath={.status.numberReady}",
        ])
        .await;
    assert_eq!(out.trim(), "3");
}
