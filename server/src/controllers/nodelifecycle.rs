//! The node lifecycle control loop: notices nodes that stopped heartbeating, taints them, and
//! evicts their pods once those pods' tolerations run out.
//!
//! Watches Nodes, node Leases (`kube-node-lease`) and Pods; checks every node each
//! `node_monitor_period`:
//! - heartbeat = the Lease's `renewTime` or the Ready condition's `lastHeartbeatTime` *changing*,
//!   timed on this process's clock (so skew between a Pi and the server does not matter); a node
//!   not heard from for `node_monitor_grace_period` gets its conditions set to Unknown
//!   (`NodeStatusUnknown`, "Kubelet stopped posting node status.");
//! - Ready=Unknown ⇒ taints `node.kubernetes.io/unreachable` (NoSchedule and NoExecute);
//!   Ready=False ⇒ `node.kubernetes.io/not-ready` (both effects); Ready=True ⇒ neither;
//! - a pod on a node with a NoExecute taint is deleted unless it tolerates the taint, at
//!   `timeAdded + tolerationSeconds`. A pod without its own toleration of the not-ready or
//!   unreachable taint is treated as tolerating it for `default_toleration_seconds`; pods created
//!   through the API already carry such a toleration (300 s, DefaultTolerationSeconds admission
//!   in `api/defaults.rs`), so this only matters for pods stored without one.
//!
//! ```text
//!   lease renewed ... last renewal ──── grace period ────▶ Ready=Unknown + taints ── tolerationSeconds ──▶ pods evicted
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use super::events::{EventType, Recorder, reference};
use super::informer::Informers;
use super::{ControllerOptions, pods};
use crate::scheduler::filter::tolerates;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// When each node was last heard from, on our clock.
#[derive(Default)]
struct Heartbeats {
    seen: HashMap<String, (String, Instant)>,
}

impl Heartbeats {
    /// Records the node's current heartbeat marker; returns when it last changed.
    fn observe(&mut self, node: &str, marker: String) -> Instant {
        let now = Instant::now();
        let entry = self
            .seen
            .entry(node.to_string())
            .or_insert_with(|| (marker.clone(), now));
        if entry.0 != marker {
            *entry = (marker, now);
        }
        entry.1
    }
}

/// Runs the node lifecycle loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    opts: ControllerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (nodes, pod_store) = (informers.nodes.store(), informers.pods.store());
    let (leases, lw) = reflector::store();
    // Leases are this loop's alone; Nodes and Pods come from the shared caches.
    let caches = reflector::reflector(
        lw,
        watcher(
            Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| async {});
    let recorder = Recorder::new(client.clone(), "node-controller");
    let monitor = async {
        let mut beats = Heartbeats::default();
        let mut tick = tokio::time::interval(opts.node_monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Judge nobody before the caches are listed.
        if nodes.wait_until_ready().await.is_err()
            || leases.wait_until_ready().await.is_err()
            || pod_store.wait_until_ready().await.is_err()
        {
            return;
        }
        loop {
            tick.tick().await;
            check_nodes(&client, &opts, &nodes, &leases, &mut beats).await;
            evict(&client, &opts, &nodes, &pod_store, &recorder).await;
        }
    };
    tokio::select! {
        _ = caches => {}
        _ = monitor => {}
        _ = shutdown => {}
    }
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

async fn check_nodes(
    client: &kube::Client,
    opts: &ControllerOptions,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    beats: &mut Heartbeats,
) {
    let api: Api<Node> = Api::all(client.clone());
    let leases: BTreeMap<String, String> = leases
        .state()
        .iter()
        .filter_map(|l| {
            let renew = l.spec.as_ref()?.renew_time.as_ref()?;
            Some((l.metadata.name.clone()?, format!("{:?}", renew.0)))
        })
        .collect();
    for node in nodes.state() {
        let name = node.metadata.name.clone().unwrap_or_default();
        let heartbeat = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| format!("{:?}", t.0))
            .unwrap_or_default();
        let marker = format!(
            "{}|{heartbeat}",
            leases.get(&name).cloned().unwrap_or_default()
        );
        let last = beats.observe(&name, marker);
        let mut ready = ready_status(&node);
        if last.elapsed() > opts.node_monitor_grace_period && ready.as_deref() != Some("Unknown") {
            mark_unknown(&api, &node).await;
            ready = Some("Unknown".into());
        }
        sync_taints(&api, &node, ready.as_deref()).await;
    }
}

/// Sets every condition of a silent node to Unknown.
async fn mark_unknown(api: &Api<Node>, node: &Node) {
    let now = Time(Timestamp::now());
    let mut conditions: Vec<serde_json::Value> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": now})
        })
        .collect();
    if conditions.is_empty() {
        conditions.push(
            json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
            "message": "Kubelet never posted node status.", "lastTransitionTime": now}),
        );
    }
    let name = node.metadata.name.as_deref().unwrap_or("");
    tracing::info!(node = name, "node stopped heartbeating; marking it Unknown");
    if let Err(error) = api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(&json!({"status": {"conditions": conditions}})),
        )
        .await
    {
        tracing::info!(%error, node = name, "could not mark the node Unknown");
    }
}

/// Keeps the not-ready / unreachable taints in line with the Ready condition.
async fn sync_taints(api: &Api<Node>, node: &Node, ready: Option<&str>) {
    let key = match ready {
        Some("True") => None,
        Some("False") => Some(NOT_READY),
        _ => Some(UNREACHABLE),
    };
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut wanted: Vec<Taint> = current
        .iter()
        .filter(|t| t.key != NOT_READY && t.key != UNREACHABLE || Some(t.key.as_str()) == key)
        .cloned()
        .collect();
    if let Some(key) = key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !wanted.iter().any(|t| t.key == key && t.effect == effect) {
                wanted.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    value: None,
                    time_added: (effect == "NoExecute").then(|| Time(Timestamp::now())),
                });
            }
        }
    }
    if wanted == current {
        return;
    }
    let name = node.metadata.name.as_deref().unwrap_or("");
    let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": wanted}});
    if let Err(error) = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(%error, node = name, "could not update node taints; next check retries");
    }
}

/// When `pod` must leave a node with `taints`: `None` = may stay, `Some(t)` = at `t`.
fn eviction_time(pod: &Pod, taints: &[Taint], default_seconds: i64) -> Option<Timestamp> {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut deadline: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = taint
            .time_added
            .as_ref()
            .map_or_else(Timestamp::now, |t| t.0);
        let mut matching: Vec<Toleration> = own
            .iter()
            .filter(|t| tolerates(t, taint))
            .cloned()
            .collect();
        if matching.is_empty() && (taint.key == NOT_READY || taint.key == UNREACHABLE) {
            matching.push(Toleration {
                key: Some(taint.key.clone()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(default_seconds),
                value: None,
            });
        }
        if matching.is_empty() {
            return Some(Timestamp::now());
        }
        // Tolerated forever if any matching toleration has no limit; else the shortest limit.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let at = added
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(added);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    deadline
}

async fn evict(
    client: &kube::Client,
    opts: &ControllerOptions,
    nodes: &Store<Node>,
    pod_store: &Store<Pod>,
    recorder: &Recorder,
) {
    let taints: HashMap<String, Vec<Taint>> = nodes
        .state()
        .iter()
        .filter_map(|n| {
            let taints = n.spec.as_ref()?.taints.clone()?;
            taints
                .iter()
                .any(|t| t.effect == "NoExecute")
                .then(|| (n.metadata.name.clone().unwrap_or_default(), taints))
        })
        .collect();
    if taints.is_empty() {
        return;
    }
    let now = Timestamp::now();
    for pod in pod_store.state() {
        let Some(node_taints) = pods::node_name(&pod).and_then(|n| taints.get(n)) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(at) = eviction_time(&pod, node_taints, opts.default_toleration_seconds) else {
            continue;
        };
        if at > now {
            continue;
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                recorder
                    .record(
                        &reference("v1", "Pod", &pod.metadata),
                        EventType::Normal,
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {namespace}/{name}"),
                    )
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(error) => tracing::info!(%error, pod = name, "eviction failed; next check retries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn taint(key: &str, secs_ago: i64) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(
                Timestamp::now()
                    .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs_ago))
                    .expect("time"),
            )),
        }
    }

    fn pod(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn default_and_own_tolerations_decide_when_pods_leave() {
        let now = Timestamp::now();
        // Default 300 s toleration of unreachable: not yet after 10 s, due after 400 s.
        let t = eviction_time(&pod(vec![]), &[taint(UNREACHABLE, 10)], 300).expect("deadline");
        assert!(t > now);
        let t = eviction_time(&pod(vec![]), &[taint(UNREACHABLE, 400)], 300).expect("deadline");
        assert!(t <= now);
        // An untolerated custom NoExecute taint evicts at once.
        let t = eviction_time(&pod(vec![]), &[taint("custom", 0)], 300).expect("deadline");
        assert!(t <= Timestamp::now());
        // A toleration without seconds keeps the pod forever.
        let forever = Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        assert_eq!(
            eviction_time(&pod(vec![forever]), &[taint(UNREACHABLE, 9999)], 300),
            None
        );
    }
}
