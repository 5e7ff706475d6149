//! Endpoints follow the pods a Service selects: ready pods under `addresses` with named target
//! ports resolved, not-ready ones under `notReadyAddresses`, updates on scaling, removal with the
//! Service.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

const MANIFEST: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: registry.example/web:1
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {tier: front}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

fn counts(ep: &Endpoints) -> (usize, usize, Vec<i32>) {
    let subsets = ep.subsets.clone().unwrap_or_default();
    let ready = subsets
        .iter()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    let not_ready = subsets
        .iter()
        .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
        .sum();
    let ports = subsets
        .iter()
        .flat_map(|s| s.ports.iter().flatten().map(|p| p.port))
        .collect();
    (ready, not_ready, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_track_selected_pods() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b"], ControllerOptions::default()).await;
    let manifest = cluster.write("web.yaml", MANIFEST);
    cluster.ok(&["apply", "-f", &manifest]).await;
    let eps: Api<Endpoints> = Api::namespaced(cluster.client.clone(), "default");
    let t = Duration::from_secs(30);
    let has = |want: (usize, usize, Vec<i32>)| {
        let eps = eps.clone();
        async move {
            eps.get_opt("web")
                .await
                .ok()
                .flatten()
                .is_some_and(|ep| counts(&ep) == want)
        }
    };
    support::wait_for("two ready addresses on port 8080", t, || {
        has((2, 0, vec![8080]))
    })
    .await;
    let ep = eps.get("web").await.expect("endpoints");
    assert_eq!(
        ep.metadata
            .labels
            .and_then(|l| l.get("tier").cloned())
            .as_deref(),
        Some("front")
    );

    cluster
        .ok(&["scale", "deployment/web", "--replicas=3"])
        .await;
    support::wait_for("three ready addresses", t, || has((3, 0, vec![8080]))).await;

    // A selected pod that is not ready (on a node nobody runs) is listed as not ready.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let stray: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "web", "image": "x",
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &stray)
        .await
        .expect("create");
    let status = json!({"status": {"phase": "Running", "podIP": "10.42.9.9",
        "conditions": [{"type": "Ready", "status": "False"}]}});
    pods.patch_status("stray", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    support::wait_for("one not-ready address", t, || has((3, 1, vec![8080]))).await;

    // The Endpoints go with their Service.
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for("the Endpoints to be collected", t, || async {
        eps.get_opt("web").await.ok().flatten().is_none()
    })
    .await;
}
