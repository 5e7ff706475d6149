//! A StatefulSet creates its pods in order (each only once its predecessors are ready), deletes
//! them in reverse order, and rolls a new image out (`kubectl rollout status statefulset`), all
//! checked on a pod watch.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use r3s_server::controllers::ControllerOptions;

const STATEFULSET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: default}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  updateStrategy: {type: RollingUpdate}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: registry.example/db:1}]
"#;

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[derive(Default)]
struct Log {
    pods: BTreeMap<String, Pod>,
    created: Vec<String>,
    deleted: Vec<String>,
    /// Creations that happened while a lower ordinal was missing or not ready.
    out_of_order: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_creation_and_deletion() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b"], ControllerOptions::default()).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let log = Arc::new(Mutex::new(Log::default()));
    let writer = log.clone();
    let watch_api = pods.clone();
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
    let watching = tokio::spawn(async move {
        let mut listed = Some(listed_tx);
        let mut stream = watcher(watch_api, watcher::Config::default().labels("app=db")).boxed();
        while let Some(event) = stream.next().await {
            let mut l = writer.lock().expect("lock");
            match event.expect("watch") {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if !l.pods.contains_key(&name) {
                        let ordinal: usize = name.trim_start_matches("db-").parse().unwrap_or(0);
                        let predecessors_ready =
                            (0..ordinal).all(|i| l.pods.get(&format!("db-{i}")).is_some_and(ready));
                        if !predecessors_ready {
                            l.out_of_order.push(name.clone());
                        }
                        l.created.push(name.clone());
                    }
                    l.pods.insert(name, p);
                }
                watcher::Event::Delete(p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    l.pods.remove(&name);
                    l.deleted.push(name);
                }
                watcher::Event::Init => {}
                watcher::Event::InitDone => {
                    if let Some(tx) = listed.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });
    listed_rx.await.expect("watch listed");

    let manifest = cluster.write("db.yaml", STATEFULSET);
    cluster.ok(&["apply", "-f", &manifest]).await;
    let out = cluster
        .ok(&["rollout", "status", "statefulset/db", "--timeout=60s"])
        .await;
    assert!(out.contains("roll"), "{out}");
    let t = Duration::from_secs(30);
    support::wait_for("db-0..2 ready", t, || async {
        let l = log.lock().expect("lock");
        l.pods.len() == 3 && l.pods.values().all(ready)
    })
    .await;
    {
        let l = log.lock().expect("lock");
        assert_eq!(l.created, ["db-0", "db-1", "db-2"]);
        assert!(
            l.out_of_order.is_empty(),
            "created early: {:?}",
            l.out_of_order
        );
        let p = &l.pods["db-1"];
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("db-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
    }

    cluster
        .ok(&["scale", "statefulset/db", "--replicas=1"])
        .await;
    support::wait_for("only db-0 left", t, || async {
        log.lock()
            .expect("lock")
            .pods
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            == ["db-0"]
    })
    .await;
    assert_eq!(log.lock().expect("lock").deleted, ["db-2", "db-1"]);

    cluster
        .ok(&["scale", "statefulset/db", "--replicas=2"])
        .await;
    cluster
        .ok(&["set", "image", "statefulset/db", "db=registry.example/db:2"])
        .await;
    let out = cluster
        .ok(&["rollout", "status", "statefulset/db", "--timeout=60s"])
        .await;
    assert!(out.contains("roll"), "{out}");
    support::wait_for("both pods on image 2", t, || async {
        pods.list(&ListParams::default().labels("app=db"))
            .await
            .is_ok_and(|l| {
                l.items.len() == 2
                    && l.items.iter().all(|p| {
                        ready(p)
                            && p.spec
                                .as_ref()
                                .and_then(|s| s.containers[0].image.as_deref())
                                == Some("registry.example/db:2")
                    })
            })
    })
    .await;
    watching.abort();
    assert!(log.lock().expect("lock").out_of_order.is_empty());
}
