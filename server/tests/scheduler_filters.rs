//! The scheduler against three simulated nodes: resource requests, taints and tolerations, node
//! selectors, upstream's explanation of an unschedulable pod (PodScheduled=False, FailedScheduling
//! in `kubectl describe`), and a retry once the cluster changes.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

fn pod(name: &str, cpu: &str, tolerate: bool, node_selector: Option<&str>) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.example/app:1",
        "resources": {"requests": {"cpu": cpu}}}]});
    if tolerate {
        spec["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
    }
    if let Some(host) = node_selector {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": host});
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pod")
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name)
        .await
        .ok()?
        .spec?
        .node_name
        .filter(|n| !n.is_empty())
}

async fn wait_bound(pods: &Api<Pod>, name: &str) -> String {
    support::wait_for(
        &format!("pod {name} to be bound"),
        Duration::from_secs(20),
        || async { node_of(pods, name).await.is_some() },
    )
    .await;
    node_of(pods, name).await.unwrap_or_default()
}

fn scheduled_condition(p: &Pod) -> Option<(String, Option<String>, Option<String>)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_taints_selectors_and_explanations() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b", "sim-c"], ControllerOptions::default()).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    for name in ["sim-b", "sim-c"] {
        let taint = json!({"spec": {"taints": [
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}});
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&taint))
            .await
            .expect("taint");
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let pp = PostParams::default();

    // A node selector and a toleration: exactly that tainted node.
    pods.create(&pp, &pod("pinned", "1", true, Some("sim-c")))
        .await
        .expect("create");
    assert_eq!(wait_bound(&pods, "pinned").await, "sim-c");

    // Without a toleration only sim-a is left; 3 of its 4 CPUs go to the first pod.
    pods.create(&pp, &pod("big-1", "3", false, None))
        .await
        .expect("create");
    assert_eq!(wait_bound(&pods, "big-1").await, "sim-a");

    // The next one fits nowhere, and says why in upstream's words.
    pods.create(&pp, &pod("big-2", "3", false, None))
        .await
        .expect("create");
    let want = "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling.";
    support::wait_for(
        "PodScheduled=False on big-2",
        Duration::from_secs(20),
        || async {
            pods.get("big-2")
                .await
                .ok()
                .as_ref()
                .and_then(scheduled_condition)
                == Some((
                    "False".into(),
                    Some("Unschedulable".into()),
                    Some(want.into()),
                ))
        },
    )
    .await;
    let describe = cluster.ok(&["describe", "pod", "big-2"]).await;
    assert!(describe.contains("FailedScheduling"), "{describe}");
    assert!(
        describe.contains("1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}"),
        "{describe}"
    );
    assert_eq!(node_of(&pods, "big-2").await, None);

    // A tolerating pod may use the tainted nodes' CPU (sim-c has 3 free, sim-b 4).
    pods.create(&pp, &pod("tolerant", "3500m", true, None))
        .await
        .expect("create");
    assert_eq!(wait_bound(&pods, "tolerant").await, "sim-b");

    // Freeing sim-a lets the waiting pod in without anyone touching it.
    pods.delete("big-1", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(wait_bound(&pods, "big-2").await, "sim-a");
    let describe = cluster.ok(&["describe", "pod", "big-2"]).await;
    assert!(
        describe.contains("Successfully assigned default/big-2 to sim-a"),
        "{describe}"
    );
}

const SPREAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: solo, namespace: default}
spec:
  replicas: 4
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app: solo}}
      containers: [{name: c, image: registry.example/app:1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: spread, namespace: default}
spec:
  replicas: 4
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: spread}}
      containers: [{name: c, image: registry.example/app:1}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_and_topology_spread() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b", "sim-c"], ControllerOptions::default()).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    for (node, zone) in [("sim-a", "a"), ("sim-b", "b"), ("sim-c", "b")] {
        let patch = json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}});
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("label");
    }
    let manifest = cluster.write("spread.yaml", SPREAD);
    cluster.ok(&["apply", "-f", &manifest]).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let t = Duration::from_secs(30);
    let placed = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&kube::api::ListParams::default().labels(&format!("app={app}")))
                .await
                .expect("list");
            list.items
                .iter()
                .map(|p| (p.spec.as_ref().and_then(|s| s.node_name.clone()), p.clone()))
                .collect::<Vec<_>>()
        }
    };
    // Anti-affinity: one per node, the fourth explains why it waits.
    let want = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    support::wait_for(
        "three solo pods on three nodes, one unschedulable",
        t,
        || async {
            let list = placed("solo").await;
            let mut bound: Vec<String> = list.iter().filter_map(|(n, _)| n.clone()).collect();
            bound.sort();
            let waiting: Vec<&Pod> = list
                .iter()
                .filter(|(n, _)| n.is_none())
                .map(|(_, p)| p)
                .collect();
            bound == ["sim-a", "sim-b", "sim-c"]
                && waiting.len() == 1
                && scheduled_condition(waiting[0]).and_then(|c| c.2).as_deref() == Some(want)
        },
    )
    .await;
    // Spread: zone a (one node) and zone b (two nodes) get two pods each.
    support::wait_for("spread pods balanced across zones", t, || async {
        let list = placed("spread").await;
        let zone_a = list
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("sim-a"))
            .count();
        let zone_b = list
            .iter()
            .filter(|(n, _)| matches!(n.as_deref(), Some("sim-b" | "sim-c")))
            .count();
        (zone_a, zone_b) == (2, 2)
    })
    .await;
}
