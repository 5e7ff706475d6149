//! The scheduler's soft preferences against three simulated nodes: preferred node affinity,
//! PreferNoSchedule taints, preferred pod affinity outweighing an emptier node, preferred
//! anti-affinity; and the 300 s not-ready/unreachable tolerations every pod gets at creation.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::{Value, json};

fn pod(name: &str, labels: Value, extra: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.example/app:1",
        "resources": {"requests": {"cpu": "500m"}}}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": spec}))
        .expect("pod")
}

async fn bound(pods: &Api<Pod>, name: &str) -> String {
    let node = || async {
        pods.get(name)
            .await
            .ok()
            .and_then(|p| p.spec?.node_name)
            .filter(|n| !n.is_empty())
    };
    support::wait_for(
        &format!("pod {name} to be bound"),
        Duration::from_secs(20),
        || async { node().await.is_some() },
    )
    .await;
    node().await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_rank_the_feasible_nodes() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b", "sim-c"], ControllerOptions::default()).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let pp = PostParams::default();
    nodes
        .patch(
            "sim-b",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"disk": "ssd"}}})),
        )
        .await
        .expect("label");

    // Preferred node affinity: the ssd node.
    let prefers_ssd = json!({"affinity": {"nodeAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "preference": {
            "matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}});
    pods.create(&pp, &pod("fast", json!({"app": "fast"}), prefers_ssd))
        .await
        .expect("create");
    assert_eq!(bound(&pods, "fast").await, "sim-b");
    // Admission added the default NoExecute tolerations.
    let tolerations = pods
        .get("fast")
        .await
        .expect("pod")
        .spec
        .and_then(|s| s.tolerations)
        .unwrap_or_default();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        assert!(
            tolerations.iter().any(|t| t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some("NoExecute")
                && t.toleration_seconds == Some(300)),
            "{key}: {tolerations:?}"
        );
    }

    // Preferred pod affinity to `fast` beats the emptier nodes.
    let near_fast = json!({"affinity": {"podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": "fast"}}}}]}}});
    pods.create(&pp, &pod("buddy", json!({"app": "buddy"}), near_fast))
        .await
        .expect("create");
    assert_eq!(bound(&pods, "buddy").await, "sim-b");

    // Preferred anti-affinity: away from `fast`.
    let away = json!({"affinity": {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": "fast"}}}}]}}});
    pods.create(&pp, &pod("loner", json!({"app": "loner"}), away))
        .await
        .expect("create");
    assert_ne!(bound(&pods, "loner").await, "sim-b");

    // PreferNoSchedule on sim-a and sim-c: the busiest node, sim-b, is still preferred.
    for name in ["sim-a", "sim-c"] {
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"taints": [
                    {"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]}})),
            )
            .await
            .expect("taint");
    }
    // The taints reach the scheduler's node cache through a watch of their own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pods.create(&pp, &pod("plain", json!({"app": "plain"}), json!({})))
        .await
        .expect("create");
    assert_eq!(bound(&pods, "plain").await, "sim-b");
}
