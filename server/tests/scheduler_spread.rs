//! Topology spread with `whenUnsatisfiable: ScheduleAnyway` against three simulated nodes in two
//! zones (the real store, control loops and scheduler in-process): a 6-replica Deployment ends
//! up 3 + 3 across the zones although one zone has twice the nodes (least-allocated alone would
//! put 4 in it); and with one zone cordoned a ScheduleAnyway spread still places every replica,
//! where the same constraint with DoNotSchedule places one and leaves the rest pending.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

const ZONE: &str = "topology.kubernetes.io/zone";

fn deployment(name: &str, replicas: i32, when: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "c", "image": "registry.example/app:1",
                        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}],
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
                        "whenUnsatisfiable": when,
                        "labelSelector": {"matchLabels": {"app": name}}}]
                }
            }
        }
    }))
    .expect("deployment")
}

/// Starts the cluster with sim-a1 and sim-a2 in zone a and sim-b1 in zone b.
async fn two_zones() -> support::Cluster {
    let cluster = support::start(
        &["sim-a1", "sim-a2", "sim-b1"],
        ControllerOptions::default(),
    )
    .await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    for (node, zone) in [("sim-a1", "a"), ("sim-a2", "a"), ("sim-b1", "b")] {
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {ZONE: zone}}})),
            )
            .await
            .expect("label node");
    }
    // The labels reach the scheduler's node cache through its own watch.
    let sched_sees = || async {
        nodes
            .list(&ListParams::default().labels(ZONE))
            .await
            .is_ok_and(|l| l.items.len() == 3)
    };
    support::wait_for("the zone labels", Duration::from_secs(10), sched_sees).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster
}

/// The app's pods per node ("" for unbound), once there are `total` of them.
async fn placement(pods: &Api<Pod>, app: &str, total: usize) -> BTreeMap<String, usize> {
    let params = ListParams::default().labels(&format!("app={app}"));
    let list = || async {
        pods.list(&params)
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    };
    support::wait_for(
        &format!("{total} pods of {app}"),
        Duration::from_secs(30),
        || async { list().await.len() == total },
    )
    .await;
    let mut by_node = BTreeMap::new();
    for pod in list().await {
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        *by_node.entry(node).or_default() += 1;
    }
    by_node
}

async fn all_bound(pods: &Api<Pod>, app: &str, total: usize) -> BTreeMap<String, usize> {
    let params = ListParams::default().labels(&format!("app={app}"));
    support::wait_for(
        &format!("all {total} pods of {app} to be bound"),
        Duration::from_secs(30),
        || async {
            pods.list(&params).await.is_ok_and(|l| {
                l.items.len() == total
                    && l.items.iter().all(|p| {
                        p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_deref())
                            .is_some_and(|n| !n.is_empty())
                    })
            })
        },
    )
    .await;
    placement(pods, app, total).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_anyway_spread_balances_zones() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = two_zones().await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", 6, "ScheduleAnyway"),
        )
        .await
        .expect("create deployment");
    let by_node = all_bound(&pods, "web", 6).await;
    let zone_a =
        by_node.get("sim-a1").copied().unwrap_or(0) + by_node.get("sim-a2").copied().unwrap_or(0);
    let zone_b = by_node.get("sim-b1").copied().unwrap_or(0);
    assert_eq!((zone_a, zone_b), (3, 3), "{by_node:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_anyway_places_what_do_not_schedule_refuses() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = two_zones().await;
    // Zone b's only node takes no new pods, but its (empty) zone still counts for the skew.
    cluster.ok(&["cordon", "sim-b1"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let pp = PostParams::default();

    deployments
        .create(&pp, &deployment("soft", 4, "ScheduleAnyway"))
        .await
        .expect("create deployment");
    let by_node = all_bound(&pods, "soft", 4).await;
    assert_eq!(by_node.get("sim-b1"), None, "{by_node:?}");

    deployments
        .create(&pp, &deployment("hard", 4, "DoNotSchedule"))
        .await
        .expect("create deployment");
    // One pod fits the skew (zone a 1, zone b 0); the other three are refused with upstream's
    // reason.
    let params = ListParams::default().labels("app=hard");
    let pending_explained = || async {
        let Ok(list) = pods.list(&params).await else {
            return false;
        };
        let bound = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        let refused = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.message.as_deref().is_some_and(|m| {
                                    m.contains("didn't match pod topology spread constraints")
                                })
                        })
                    })
            })
            .count();
        list.items.len() == 4 && bound == 1 && refused == 3
    };
    support::wait_for(
        "one hard pod bound and three refused",
        Duration::from_secs(30),
        pending_explained,
    )
    .await;
    let by_node = placement(&pods, "hard", 4).await;
    assert_eq!(by_node.get(""), Some(&3), "{by_node:?}");
}

/// A Deployment that sets no constraints still spreads over the nodes (upstream's default
/// constraints over its ReplicaSet's pods), although least-allocated alone would put every
/// replica on the much bigger node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_constraints_spread_by_default() {
    let cluster = support::start(&["sim-big", "sim-small"], ControllerOptions::default()).await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let big = json!({"status": {"capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"}}});
    nodes
        .patch_status("sim-big", &PatchParams::default(), &Patch::Merge(&big))
        .await
        .expect("grow sim-big");
    // The new capacity reaches the scheduler's node cache through its own watch.
    support::wait_for("sim-big's capacity", Duration::from_secs(10), || async {
        nodes
            .get("sim-big")
            .await
            .ok()
            .and_then(|n| n.status?.allocatable?.get("cpu").cloned())
            .is_some_and(|q| q.0 == "64")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plain: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "plain"}},
            "template": {"metadata": {"labels": {"app": "plain"}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/app:1"}]}}}
    }))
    .expect("deployment");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    deployments
        .create(&PostParams::default(), &plain)
        .await
        .expect("create deployment");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let by_node = all_bound(&pods, "plain", 4).await;
    assert_eq!(
        (by_node.get("sim-big"), by_node.get("sim-small")),
        (Some(&2), Some(&2)),
        "{by_node:?}"
    );
}
