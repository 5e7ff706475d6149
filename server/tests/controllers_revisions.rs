//! DaemonSets and StatefulSets keep their template history as ControllerRevisions, which the real
//! kubectl reads: `rollout history` (list and `--revision`), `rollout undo` (back one step, and to
//! a revision the set already runs: "skipped"), with old revisions pruned to
//! `revisionHistoryLimit` and StatefulSet `status.updateRevision/currentRevision` naming them.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use r3s_server::controllers::ControllerOptions;

const T: Duration = Duration::from_secs(60);

const DAEMONSET: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: default}
spec:
  selector: {matchLabels: {app: agent}}
  revisionHistoryLimit: 2
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: registry.example/agent:1}]
"#;

const STATEFULSET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: default}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: registry.example/db:1}]
"#;

/// Images of the pods labelled `selector`, with the `controller-revision-hash` of each.
async fn pod_images(pods: &Api<Pod>, selector: &str) -> BTreeSet<(String, String)> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| {
                    let image = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default();
                    let hash = p
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("controller-revision-hash"))
                        .cloned()
                        .unwrap_or_default();
                    (image, hash)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (revision number, name) of every ControllerRevision labelled `selector`, by number.
async fn revisions(api: &Api<ControllerRevision>, selector: &str) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = api
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list revisions")
        .items
        .into_iter()
        .map(|r| (r.revision.unwrap_or(0), r.metadata.name.unwrap_or_default()))
        .collect();
    out.sort();
    out
}

/// The REVISION column of `kubectl rollout history`.
fn history_numbers(out: &str) -> Vec<i64> {
    out.lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_history_undo_and_pruning() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b"], ControllerOptions::default()).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let crs: Api<ControllerRevision> = Api::namespaced(cluster.client.clone(), "default");
    let manifest = cluster.write("ds.yaml", DAEMONSET);
    cluster.ok(&["apply", "-f", &manifest]).await;
    cluster
        .ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await;
    let image = |n: u32| format!("registry.example/agent:{n}");
    let set_image = |n: u32| format!("agent={}", image(n));
    cluster
        .ok(&["set", "image", "daemonset/agent", &set_image(2)])
        .await;
    cluster
        .ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await;
    support::wait_for("two revisions", T, || async {
        revisions(&crs, "app=agent").await.len() == 2
    })
    .await;
    let revs = revisions(&crs, "app=agent").await;
    assert_eq!(
        revs.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 2],
        "{revs:?}"
    );
    support::wait_for("every pod on image 2", T, || async {
        let now = pod_images(&pods, "app=agent").await;
        now.len() == 1 && now.iter().all(|(i, _)| *i == image(2))
    })
    .await;
    // Pods carry the hash the revision is named after.
    let (_, hash) = pod_images(&pods, "app=agent")
        .await
        .into_iter()
        .next()
        .expect("a pod");
    assert_eq!(revs[1].1, format!("agent-{hash}"));

    let out = cluster.ok(&["rollout", "history", "daemonset/agent"]).await;
    assert_eq!(history_numbers(&out), [1, 2], "{out}");
    let out = cluster
        .ok(&["rollout", "history", "daemonset/agent", "--revision=1"])
        .await;
    assert!(out.contains(&image(1)), "{out}");

    // Undo: back to image 1, whose revision is renumbered 3 (no copy is written).
    let out = cluster.ok(&["rollout", "undo", "daemonset/agent"]).await;
    assert!(out.contains("rolled back"), "{out}");
    cluster
        .ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
        .await;
    support::wait_for("every pod back on image 1", T, || async {
        let now = pod_images(&pods, "app=agent").await;
        now.len() == 1 && now.iter().all(|(i, _)| *i == image(1))
    })
    .await;
    support::wait_for("revision 1 renumbered 3", T, || async {
        revisions(&crs, "app=agent")
            .await
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>()
            == [2, 3]
    })
    .await;
    let out = cluster.ok(&["rollout", "history", "daemonset/agent"]).await;
    assert_eq!(history_numbers(&out), [2, 3], "{out}");
    // kubectl compares the revision's data with the set's template byte for byte.
    let out = cluster
        .ok(&["rollout", "undo", "daemonset/agent", "--to-revision=3"])
        .await;
    assert!(out.contains("skipped rollback"), "{out}");

    // Two more templates: limit 2 keeps the current revision and two older ones.
    for n in [4, 5] {
        cluster
            .ok(&["set", "image", "daemonset/agent", &set_image(n)])
            .await;
        cluster
            .ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"])
            .await;
    }
    support::wait_for("pruned to the limit", T, || async {
        revisions(&crs, "app=agent")
            .await
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>()
            == [3, 4, 5]
    })
    .await;

    // Deleting the set collects its revisions.
    cluster.ok(&["delete", "daemonset/agent"]).await;
    support::wait_for("revisions collected", T, || async {
        revisions(&crs, "app=agent").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_revisions_status_and_undo() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&["sim-a", "sim-b"], ControllerOptions::default()).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let crs: Api<ControllerRevision> = Api::namespaced(cluster.client.clone(), "default");
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), "default");
    let manifest = cluster.write("db.yaml", STATEFULSET);
    cluster.ok(&["apply", "-f", &manifest]).await;
    cluster
        .ok(&["rollout", "status", "statefulset/db", "--timeout=60s"])
        .await;
    let first = revisions(&crs, "app=db").await;
    assert_eq!(first.len(), 1, "{first:?}");
    let status = sets.get("db").await.expect("db").status.expect("status");
    assert_eq!(status.update_revision.as_deref(), Some(first[0].1.as_str()));
    assert_eq!(status.current_revision, status.update_revision);

    cluster
        .ok(&["set", "image", "statefulset/db", "db=registry.example/db:2"])
        .await;
    cluster
        .ok(&["rollout", "status", "statefulset/db", "--timeout=60s"])
        .await;
    support::wait_for("both pods on image 2", T, || async {
        let now = pod_images(&pods, "app=db").await;
        now.len() == 1 && now.iter().all(|(i, _)| i == "registry.example/db:2")
    })
    .await;
    let revs = revisions(&crs, "app=db").await;
    assert_eq!(
        revs.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 2],
        "{revs:?}"
    );
    support::wait_for("currentRevision caught up", T, || async {
        let s = sets.get("db").await.ok().and_then(|s| s.status);
        s.is_some_and(|s| {
            s.current_revision.as_deref() == Some(revs[1].1.as_str())
                && s.update_revision == s.current_revision
        })
    })
    .await;
    let (_, label) = pod_images(&pods, "app=db")
        .await
        .into_iter()
        .next()
        .expect("a pod");
    assert_eq!(label, revs[1].1, "pods carry the revision name");

    let out = cluster.ok(&["rollout", "history", "statefulset/db"]).await;
    assert_eq!(history_numbers(&out), [1, 2], "{out}");
    let out = cluster
        .ok(&["rollout", "history", "statefulset/db", "--revision=1"])
        .await;
    assert!(out.contains("registry.example/db:1"), "{out}");
    let out = cluster.ok(&["rollout", "undo", "statefulset/db"]).await;
    assert!(out.contains("rolled back"), "{out}");
    cluster
        .ok(&["rollout", "status", "statefulset/db", "--timeout=60s"])
        .await;
    support::wait_for("both pods back on image 1", T, || async {
        let now = pod_images(&pods, "app=db").await;
        now.len() == 1 && now.iter().all(|(i, _)| i == "registry.example/db:1")
    })
    .await;
    support::wait_for("revision 1 renumbered 3", T, || async {
        revisions(&crs, "app=db")
            .await
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>()
            == [2, 3]
    })
    .await;
    let out = cluster
        .ok(&["rollout", "undo", "statefulset/db", "--to-revision=3"])
        .await;
    assert!(out.contains("skipped rollback"), "{out}");
}
