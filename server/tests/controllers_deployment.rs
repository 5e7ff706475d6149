//! Deployments end to end with the real kubectl against the in-process control plane (API over
//! HTTPS on SQLite, control loops, scheduler) and three simulated nodes: `rollout status`, an image
//! change that keeps within maxSurge/maxUnavailable (checked on a pod watch), `rollout history`,
//! `rollout undo`, and scaling up and down.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use r3s_server::controllers::ControllerOptions;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.example/web:1
"#;

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// What a pod watch saw during a rollout: the most pods at once and the fewest ready.
#[derive(Default)]
struct Extremes {
    pods: HashMap<String, Pod>,
    max_total: usize,
    min_ready: usize,
    events: usize,
    /// The initial listing is complete (extremes only count from then on).
    listed: bool,
}

async fn pods_with_image(pods: &Api<Pod>, want: &str) -> (usize, usize) {
    let list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list pods");
    let mut list = list;
    list.items
        .retain(|p| p.metadata.deletion_timestamp.is_none());
    let matching = list.items.iter().filter(|p| image(p) == want).count();
    let ready_matching = list
        .items
        .iter()
        .filter(|p| image(p) == want && ready(p))
        .count();
    (
        matching,
        ready_matching + (list.items.len() - matching) * 1000,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollout_history_undo_and_scale() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b", "sim-c"], ControllerOptions::default()).await;
    let manifest = cluster.write("web.yaml", DEPLOYMENT);
    cluster.ok(&["apply", "-f", &manifest]).await;
    let out = cluster
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let first = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods");
    assert_eq!(first.items.len(), 3);
    assert!(first.items.iter().all(ready));
    let nodes: HashSet<_> = first
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    assert_eq!(nodes.len(), 3, "least-allocated scoring spreads the pods");
    // Pods carry a controller reference to their ReplicaSet.
    let owner = &first.items[0]
        .metadata
        .owner_references
        .as_ref()
        .expect("owners")[0];
    assert_eq!(owner.kind, "ReplicaSet");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
    // The control loops write as kube-controller-manager (their User-Agent), as on k3s.
    let managers: HashSet<String> = first.items[0]
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains("kube-controller-manager") && !managers.contains("unknown"),
        "{managers:?}"
    );

    // Watch every pod event during the image change.
    let seen = Arc::new(Mutex::new(Extremes {
        min_ready: usize::MAX,
        ..Extremes::default()
    }));
    let recorder = seen.clone();
    let watch_pods = pods.clone();
    let watching = tokio::spawn(async move {
        let mut stream = watcher(watch_pods, watcher::Config::default().labels("app=web")).boxed();
        while let Some(event) = stream.next().await {
            let mut s = recorder.lock().expect("lock");
            match event.expect("watch") {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    s.pods
                        .insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                watcher::Event::Delete(p) => {
                    s.pods.remove(p.metadata.name.as_deref().unwrap_or(""));
                }
                watcher::Event::Init => s.pods.clear(),
                watcher::Event::InitDone => s.listed = true,
            }
            if !s.listed {
                continue;
            }
            // Terminating pods no longer count, for the rollout as for upstream.
            let live: Vec<&Pod> = s
                .pods
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let total = live.len();
            let ready_now = live.iter().filter(|p| ready(p)).count();
            s.max_total = s.max_total.max(total);
            s.min_ready = s.min_ready.min(ready_now);
            s.events += 1;
        }
    });
    support::wait_for("the pod watch to list", Duration::from_secs(10), || async {
        seen.lock().expect("lock").listed
    })
    .await;
    cluster
        .ok(&[
            "set",
            "image",
            "deployment/web",
            "web=registry.example/web:2",
        ])
        .await;
    let out = cluster
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    support::wait_for(
        "three ready pods of image 2 and no others",
        Duration::from_secs(30),
        || async { pods_with_image(&pods, "registry.example/web:2").await == (3, 3) },
    )
    .await;
    watching.abort();
    {
        let s = seen.lock().expect("lock");
        assert!(s.events > 3, "the watch saw the rollout");
        assert!(
            s.max_total <= 4,
            "maxSurge 1: at most 4 pods, saw {}",
            s.max_total
        );
        assert!(
            s.min_ready >= 2,
            "maxUnavailable 1: at least 2 ready, saw {}",
            s.min_ready
        );
    }

    // History: two revisions, the first ReplicaSet scaled to zero and kept.
    let history = cluster.ok(&["rollout", "history", "deployment/web"]).await;
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    let rss: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "default");
    let list = rss.list(&ListParams::default()).await.expect("rs");
    assert_eq!(list.items.len(), 2);
    for rs in &list.items {
        let name = rs.metadata.name.clone().unwrap_or_default();
        let hash = rs
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            .cloned();
        assert_eq!(Some(name), hash.map(|h| format!("web-{h}")));
    }

    // Undo: back to image 1, whose ReplicaSet is reused as revision 3.
    cluster.ok(&["rollout", "undo", "deployment/web"]).await;
    let out = cluster
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    support::wait_for(
        "three ready pods of image 1 and no others",
        Duration::from_secs(30),
        || async { pods_with_image(&pods, "registry.example/web:1").await == (3, 3) },
    )
    .await;
    let list = rss.list(&ListParams::default()).await.expect("rs");
    assert_eq!(list.items.len(), 2, "undo reuses the old ReplicaSet");
    let history = cluster.ok(&["rollout", "history", "deployment/web"]).await;
    assert!(
        history.contains("2 ") && history.contains("3 ") && !history.contains("\n1 "),
        "{history}"
    );

    // Scale up and down.
    cluster
        .ok(&["scale", "deployment/web", "--replicas=5"])
        .await;
    cluster
        .ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    support::wait_for("five ready pods", Duration::from_secs(30), || async {
        pods_with_image(&pods, "registry.example/web:1").await == (5, 5)
    })
    .await;
    cluster
        .ok(&["scale", "deployment/web", "--replicas=2"])
        .await;
    support::wait_for("two pods", Duration::from_secs(30), || async {
        pods_with_image(&pods, "registry.example/web:1").await == (2, 2)
    })
    .await;
    let out = cluster.ok(&["get", "deployment", "web"]).await;
    assert!(out.contains("2/2"), "{out}");
    let describe = cluster.ok(&["describe", "deployment", "web"]).await;
    assert!(describe.contains("ScalingReplicaSet"), "{describe}");
    assert!(describe.contains("NewReplicaSetAvailable"), "{describe}");
}
