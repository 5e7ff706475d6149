//! Endpoints follow the pods a Service selects: ready pods under `addresses` with named target
//! ports resolved, not-ready ones under `notReadyAddresses`, updates on scaling, removal with the
//! Service.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, DeleteParams};
use r3s_server::controllers::ControllerOptions;

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
    let manifest = cluster.write(
        "web.yaml",
        &support::served_app::manifest("web", "{tier: front}"),
    );
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
    support::served_app::add_not_ready_pod(&pods, "web").await;
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
