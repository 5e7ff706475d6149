//! The servicelb loop: a LoadBalancer Service's `status.loadBalancer.ingress` lists the Ready
//! nodes' addresses (ExternalIP before InternalIP) and follows nodes turning unready and new
//! addresses; a Service of another load balancer class is left alone; a Service that stops being
//! a LoadBalancer loses its ingress.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 8081, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec:
  type: LoadBalancer
  loadBalancerClass: example.com/other
  selector: {app: web}
  ports: [{port: 8082, targetPort: 8080}]
"#;

fn ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

async fn set_status(nodes: &Api<Node>, name: &str, status: serde_json::Value) {
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .expect("node status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_ingress_follows_ready_nodes() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b"], ControllerOptions::default()).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    set_status(
        &nodes,
        "sim-a",
        json!({"addresses": [{"type": "InternalIP", "address": "198.51.100.11"}]}),
    )
    .await;
    set_status(
        &nodes,
        "sim-b",
        json!({"addresses": [{"type": "InternalIP", "address": "198.51.100.12"}]}),
    )
    .await;
    let manifest = cluster.write("lb.yaml", MANIFEST);
    cluster.ok(&["apply", "-f", &manifest]).await;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let t = Duration::from_secs(30);
    let has = |name: &'static str, want: Vec<&'static str>| {
        let services = services.clone();
        async move {
            services
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| ingress(&s) == want)
        }
    };
    support::wait_for("both node IPs as ingress", t, || {
        has("web", vec!["198.51.100.11", "198.51.100.12"])
    })
    .await;
    // kubectl shows it as the EXTERNAL-IP column.
    let out = cluster.ok(&["get", "svc", "web", "--no-headers"]).await;
    assert!(out.contains("198.51.100.11,198.51.100.12"), "{out}");

    // An ExternalIP wins over the InternalIP; an unready node drops out.
    set_status(
        &nodes,
        "sim-a",
        json!({"addresses": [{"type": "InternalIP", "address": "198.51.100.11"},
                             {"type": "ExternalIP", "address": "203.0.113.11"}]}),
    )
    .await;
    set_status(
        &nodes,
        "sim-b",
        json!({"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}),
    )
    .await;
    support::wait_for("only sim-a's external IP", t, || {
        has("web", vec!["203.0.113.11"])
    })
    .await;

    // Another implementation's Service was never touched.
    let other = services.get("other").await.expect("other");
    assert!(ingress(&other).is_empty(), "{:?}", other.status);

    // No longer a LoadBalancer: the ingress goes. (The node port is removed in the same patch:
    // r3s's API server does not drop type-dependent fields on a type change yet.)
    cluster
        .ok(&[
            "patch",
            "svc",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/type","value":"ClusterIP"},{"op":"remove","path":"/spec/ports/0/nodePort"}]"#,
        ])
        .await;
    support::wait_for("the ingress cleared", t, || has("web", vec![])).await;
}

/// `--disable=servicelb`: no loop sets a LoadBalancer's ingress, as on k3s (another load balancer
/// implementation takes over), while the other loops run (the Service's Endpoints appear).
#[tokio::test]
async fn disabled_servicelb_leaves_load_balancers_pending() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(
        &["sim-a"],
        ControllerOptions {
            servicelb: false,
            ..ControllerOptions::default()
        },
    )
    .await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    set_status(
        &nodes,
        "sim-a",
        json!({"addresses": [{"type": "InternalIP", "address": "198.51.100.11"}]}),
    )
    .await;
    let manifest = cluster.write("lb.yaml", MANIFEST);
    cluster.ok(&["apply", "-f", &manifest]).await;
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> =
        Api::namespaced(cluster.client.clone(), "default");
    support::wait_for(
        "the web Service's Endpoints",
        Duration::from_secs(30),
        || {
            let endpoints = endpoints.clone();
            async move { endpoints.get_opt("web").await.ok().flatten().is_some() }
        },
    )
    .await;
    // Give a running ServiceLB loop ample time to have acted; none must.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let web = services.get("web").await.expect("web");
    assert!(ingress(&web).is_empty(), "{:?}", web.status);
    let out = cluster.ok(&["get", "service", "web"]).await;
    assert!(out.contains("<pending>"), "{out}");
}
