//! Node IPAM (a /24 of 10.42.0.0/16 per node, freed on delete) and the per-namespace defaults
//! (`default` ServiceAccount, `kube-root-ca.crt` ConfigMap, recreated when deleted).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

const FAKE_CA: &str = "-----BEGIN CERTIFICATE-----\nr3s test CA\n-----END CERTIFICATE-----\n";

async fn pod_cidr(nodes: &Api<Node>, name: &str) -> Option<String> {
    nodes.get(name).await.ok()?.spec?.pod_cidr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ranges_and_namespace_defaults() {
    let opts = ControllerOptions {
        root_ca_pem: Some(FAKE_CA.into()),
        ..ControllerOptions::default()
    };
    let cluster = support::start(&["sim-a", "sim-b"], opts).await;
    let t = Duration::from_secs(20);
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    support::wait_for("both nodes to get a pod CIDR", t, || async {
        pod_cidr(&nodes, "sim-a").await.is_some() && pod_cidr(&nodes, "sim-b").await.is_some()
    })
    .await;
    let a = pod_cidr(&nodes, "sim-a").await.unwrap_or_default();
    let b = pod_cidr(&nodes, "sim-b").await.unwrap_or_default();
    let both: HashSet<_> = [a.clone(), b.clone()].into();
    let want: HashSet<_> = ["10.42.0.0/24".to_string(), "10.42.1.0/24".to_string()].into();
    assert_eq!(both, want);
    let node = nodes.get("sim-a").await.expect("sim-a");
    assert_eq!(node.spec.and_then(|s| s.pod_cidrs), Some(vec![a.clone()]));

    // sim-a's range is free again once sim-a is gone.
    nodes
        .delete("sim-a", &DeleteParams::default())
        .await
        .expect("delete");
    let fresh: Node = serde_json::from_value(json!({"metadata": {"name": "late"}})).expect("node");
    support::wait_for("sim-a to leave the IPAM cache", t, || async {
        nodes.get_opt("sim-a").await.ok().flatten().is_none()
    })
    .await;
    nodes
        .create(&PostParams::default(), &fresh)
        .await
        .expect("create");
    support::wait_for("the new node to reuse sim-a's range", t, || async {
        pod_cidr(&nodes, "late").await.as_deref() == Some(a.as_str())
    })
    .await;

    // Every namespace gets the defaults; deleting them brings them back.
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "default");
    support::wait_for("default/default and kube-root-ca.crt", t, || async {
        sas.get_opt("default").await.ok().flatten().is_some()
            && cms
                .get_opt("kube-root-ca.crt")
                .await
                .ok()
                .flatten()
                .and_then(|cm| cm.data)
                .and_then(|d| d.get("ca.crt").cloned())
                .as_deref()
                == Some(FAKE_CA)
    })
    .await;
    let ns = format!("r3st{}sa", std::process::id());
    let manifest = cluster.write(
        "ns.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"),
    );
    if support::have_kubectl() {
        cluster.ok(&["apply", "-f", &manifest]).await;
        let ns_sas: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), &ns);
        support::wait_for("the new namespace's default ServiceAccount", t, || async {
            ns_sas.get_opt("default").await.ok().flatten().is_some()
        })
        .await;
    }
    sas.delete("default", &DeleteParams::default())
        .await
        .expect("delete sa");
    support::wait_for("default/default to come back", t, || async {
        sas.get_opt("default").await.ok().flatten().is_some()
    })
    .await;
}
