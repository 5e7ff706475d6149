//! Garbage collection and namespace deletion end to end with the real kubectl: `kubectl delete`
//! with `--cascade=background|foreground|orphan`, and `kubectl delete namespace` emptying and
//! finalizing a namespace.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams};
use r3s_server::controllers::ControllerOptions;

fn deployment(name: &str, namespace: &str) -> String {
    support::manifests::deployment(
        name,
        namespace,
        2,
        "[{name: c, image: registry.example/app:1}]",
    )
}

async fn count<K>(api: &Api<K>, labels: &str) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default().labels(labels))
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX)
}

async fn running(cluster: &support::Cluster, name: &str) {
    let manifest = cluster.write(&format!("{name}.yaml"), &deployment(name, "default"));
    cluster.ok(&["apply", "-f", &manifest]).await;
    cluster
        .ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=60s",
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_deletion_modes() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b"], ControllerOptions::default()).await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let t = Duration::from_secs(30);

    // Background (kubectl's default): the owner goes at once, the collector takes the rest.
    running(&cluster, "bg").await;
    cluster.ok(&["delete", "deployment", "bg"]).await;
    support::wait_for("bg's ReplicaSet and pods to be collected", t, || async {
        count(&rss, "app=bg").await == 0 && count(&pods, "app=bg").await == 0
    })
    .await;

    // Foreground: the owner waits, with its finalizer, until its dependents are gone; kubectl
    // waits for the owner's DELETED event.
    running(&cluster, "fg").await;
    cluster
        .ok(&[
            "delete",
            "deployment",
            "fg",
            "--cascade=foreground",
            "--timeout=60s",
        ])
        .await;
    support::wait_for("fg and everything it owned to be gone", t, || async {
        deployments.get_opt("fg").await.ok().flatten().is_none()
            && count(&rss, "app=fg").await == 0
            && count(&pods, "app=fg").await == 0
    })
    .await;

    // Orphan: the owner goes, its ReplicaSet and pods stay, without the owner reference.
    running(&cluster, "or").await;
    cluster
        .ok(&[
            "delete",
            "deployment",
            "or",
            "--cascade=orphan",
            "--timeout=60s",
        ])
        .await;
    support::wait_for("or to be gone", t, || async {
        deployments.get_opt("or").await.ok().flatten().is_none()
    })
    .await;
    support::wait_for("or's ReplicaSet to be orphaned", t, || async {
        rss.list(&ListParams::default().labels("app=or"))
            .await
            .is_ok_and(|l| {
                l.items.len() == 1
                    && l.items[0]
                        .metadata
                        .owner_references
                        .as_ref()
                        .is_none_or(|r| r.is_empty())
            })
    })
    .await;
    assert_eq!(count(&pods, "app=or").await, 2, "orphaned pods stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_its_contents() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a"], ControllerOptions::default()).await;
    let ns = format!("r3st{}gone", std::process::id());
    // Manifests rather than `kubectl create namespace|configmap`: those send protobuf bodies.
    let extra = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg, namespace: {ns}}}\ndata: {{a: b}}\n"
    );
    let manifest = cluster.write("ns.yaml", &extra);
    cluster.ok(&["apply", "-f", &manifest]).await;
    let manifest = cluster.write("ns-web.yaml", &deployment("web", &ns));
    cluster.ok(&["apply", "-f", &manifest]).await;
    cluster
        .ok(&[
            "-n",
            &ns,
            "rollout",
            "status",
            "deployment/web",
            "--timeout=60s",
        ])
        .await;
    // kubectl waits for the namespace's DELETED event, i.e. for the finalize step.
    cluster
        .ok(&["delete", "namespace", &ns, "--timeout=60s"])
        .await;
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    assert!(namespaces.get_opt(&ns).await.expect("get").is_none());
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    assert_eq!(count(&pods, "app=web").await, 0);
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns);
    assert_eq!(count(&cms, "").await, 0);
}
