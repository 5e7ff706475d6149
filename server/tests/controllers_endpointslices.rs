//! EndpointSlices follow the pods a Service selects, with the real kubectl and simulated nodes:
//! ready endpoints with node names, target references and resolved named ports; a not-ready pod
//! listed with `ready: false`; the labels kube-proxy and kubectl look for; `kubectl get
//! endpointslices` columns; removal with the Service. PodDisruptionBudget status and validation.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

/// (ready, not ready) endpoints over every slice of the Service, and their ports.
fn tally(slices: &[EndpointSlice]) -> (usize, usize, Vec<i32>) {
    let endpoints: Vec<_> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .collect();
    let ready = endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .count();
    let mut ports: Vec<i32> = slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten().filter_map(|p| p.port))
        .collect();
    ports.dedup();
    (ready, endpoints.len() - ready, ports)
}

async fn slices(api: &Api<EndpointSlice>) -> Vec<EndpointSlice> {
    api.list(&ListParams::default().labels("kubernetes.io/service-name=shop"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslices_track_selected_pods() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b"], ControllerOptions::default()).await;
    let manifest = cluster.write("shop.yaml", &support::served_app::manifest("shop", ""));
    cluster.ok(&["apply", "-f", &manifest]).await;
    let api: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "default");
    let t = Duration::from_secs(30);
    let has = |want: (usize, usize, Vec<i32>)| {
        let api = api.clone();
        async move { tally(&slices(&api).await) == want }
    };
    support::wait_for("two ready endpoints on port 8080", t, || {
        has((2, 0, vec![8080]))
    })
    .await;
    let found = slices(&api).await;
    assert_eq!(found.len(), 1);
    let slice = &found[0];
    assert_eq!(slice.address_type, "IPv4");
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpointslice-controller.k8s.io")
    );
    let owner = &slice.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "shop")
    );
    for e in slice.endpoints.iter().flatten() {
        assert!(
            e.node_name
                .as_deref()
                .is_some_and(|n| n.starts_with("sim-"))
        );
        let target = e.target_ref.clone().expect("targetRef");
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        assert!(target.name.is_some_and(|n| n.starts_with("shop-")));
    }
    let out = cluster.ok(&["get", "endpointslices"]).await;
    let header = support::kubectl_api::header(&out);
    assert_eq!(header, ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("shop-") && l.contains("IPv4") && l.contains("8080")),
        "{out}"
    );

    // A selected pod that is not ready (on a node nobody runs) is listed with ready: false.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    support::served_app::add_not_ready_pod(&pods, "shop").await;
    support::wait_for("one not-ready endpoint", t, || has((2, 1, vec![8080]))).await;
    // It becomes ready: the slice follows.
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("stray", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    support::wait_for("three ready endpoints", t, || has((3, 0, vec![8080]))).await;

    // The slices go with their Service.
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    services
        .delete("shop", &DeleteParams::default())
        .await
        .expect("delete");
    support::wait_for("the EndpointSlices to be collected", t, || async {
        slices(&api).await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_disruption_budgets_count_healthy_pods() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a"], ControllerOptions::default()).await;
    let manifest = cluster.write("shop.yaml", &support::served_app::manifest("shop", ""));
    cluster.ok(&["apply", "-f", &manifest]).await;
    cluster
        .ok(&["rollout", "status", "deployment/shop", "--timeout=60s"])
        .await;
    // `kubectl create pdb` sends a protobuf body.
    cluster
        .ok(&[
            "create",
            "pdb",
            "shop",
            "--selector=app=shop",
            "--min-available=1",
        ])
        .await;
    let pdbs: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(cluster.client.clone(), "default");
    support::wait_for(
        "one disruption allowed",
        Duration::from_secs(30),
        || async {
            pdbs.get("shop").await.is_ok_and(|p| {
                p.status.is_some_and(|s| {
                    (
                        s.expected_pods,
                        s.current_healthy,
                        s.desired_healthy,
                        s.disruptions_allowed,
                    ) == (Some(2), Some(2), Some(1), Some(1))
                })
            })
        },
    )
    .await;
    let out = cluster.ok(&["get", "pdb"]).await;
    let header = support::kubectl_api::header(&out);
    assert_eq!(
        header,
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ]
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("shop") && l.contains("N/A")),
        "{out}"
    );

    let bad = cluster.write(
        "pdb.yaml",
        r#"
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: both, namespace: default}
spec: {minAvailable: 1, maxUnavailable: "150%", selector: {matchLabels: {app: shop}}}
"#,
    );
    let (ok, _, stderr) = cluster.kubectl(&["apply", "-f", &bad]).await;
    assert!(!ok);
    assert!(
        stderr.contains("minAvailable and maxUnavailable cannot be both set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.maxUnavailable: Invalid value"),
        "{stderr}"
    );
}
