//! The scheduler (kube-scheduler's role): assigns pods without a node (`schedulerName` unset or
//! `default-scheduler`) to a node that passes every [`filter`] and scores best.
//!
//! Watches Nodes and Pods into two caches; any change wakes one scheduling cycle, which walks the
//! pending pods oldest first against a snapshot of the nodes and what is bound to them. Filters:
//! [`filter`] (per node) then [`interpod`] (pod affinity / anti-affinity, topology spread);
//! the nodes left are ranked by [`score`] (which adds the ScheduleAnyway spread of [`spread`],
//! with upstream's default constraints over the pod's Services and workloads from [`owners`]).
//! [`volumes`] holds pods whose PersistentVolumeClaims are missing or wait for an Immediate
//! binding, and keeps pods on the nodes their bound volumes' node affinity names.
//!
//! Invariants: a pod just bound is *assumed* on its node until the cache shows the binding, so two
//! cycles never place more on a node than fits; an unschedulable pod gets `PodScheduled=False`
//! (`Unschedulable`, upstream's summary) and a `FailedScheduling` event, and is tried again only
//! after a node or a bound pod changed (or after [`RETRY`]), never in a hot loop.
//!
//! Binding: a `Binding` POSTed to `pods/<name>/binding`, as kube-scheduler does.

pub mod filter;
pub mod interpod;
pub mod owners;
pub mod preempt;
pub mod resources;
pub mod score;
pub mod spread;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, TopologySpreadConstraint};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use serde_json::json;
use tokio::sync::Notify;

use crate::controllers::events::{EventType, Recorder, reference};
use crate::controllers::informer::Informers;
use crate::controllers::pods;
use filter::NodeInfo;

/// The name pods ask for to be scheduled by us.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How often unschedulable pods are retried even if nothing seems to have changed.
pub const RETRY: Duration = Duration::from_secs(30);

/// Settings of the scheduler.
#[derive(Clone, Debug, Default)]
pub struct SchedulerOptions {
    /// Schedule only while holding this Lease (`kube-system/kube-scheduler`; several servers on
    /// one datastore).
    pub leader_election: Option<crate::controllers::leader::LeaderElection>,
}

/// Errors of one bind.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("binding pod {pod} to {node}: {source}")]
    Bind {
        pod: String,
        node: String,
        #[source]
        source: kube::Error,
    },
}

struct State {
    client: kube::Client,
    nodes: Store<Node>,
    pods: Store<Pod>,
    /// Services and workloads: the selector of the default spread constraints.
    owners: owners::Owners,
    /// PersistentVolumeClaims, PersistentVolumes and StorageClasses.
    volumes: volumes::Volumes,
    recorder: Recorder,
    /// Bumped on every node change and every change of a bound pod: capacity may have changed.
    cluster_changes: AtomicU64,
    wake: Notify,
}

/// Runs the scheduler until `shutdown`.
pub async fn run(
    client: kube::Client,
    opts: SchedulerOptions,
    informers: Informers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    match opts.leader_election {
        None => run_scheduler(client, &informers, shutdown).await,
        Some(le) => {
            crate::controllers::leader::run(client.clone(), le, shutdown, |stop| {
                run_scheduler(client.clone(), &informers, stop)
            })
            .await;
        }
    }
}

async fn run_scheduler(
    client: kube::Client,
    informers: &Informers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (owners, owner_events) = owners::Owners::watch(&client);
    let (volumes, volume_events) = volumes::Volumes::watch(&client);
    let state = Arc::new(State {
        client: client.clone(),
        nodes: informers.nodes.store(),
        pods: informers.pods.store(),
        owners,
        volumes,
        recorder: Recorder::new(client.clone(), SCHEDULER_NAME),
        cluster_changes: AtomicU64::new(0),
        wake: Notify::new(),
    });
    let node_events = informers.nodes.wakes();
    let pod_events = informers.pods.subscribe();
    let s1 = state.clone();
    let watch_nodes = node_events.for_each(move |_| {
        s1.cluster_changes.fetch_add(1, Ordering::SeqCst);
        s1.wake.notify_one();
        async {}
    });
    let s2 = state.clone();
    let watch_pods = pod_events.for_each(move |pod| {
        if pods::node_name(&pod).is_some() || pod.metadata.deletion_timestamp.is_some() {
            s2.cluster_changes.fetch_add(1, Ordering::SeqCst);
        }
        s2.wake.notify_one();
        async {}
    });
    // A new Service or workload changes no pod's feasibility: only fill the caches.
    let watch_owners = owner_events.for_each(|()| async {});
    // A claim bound or a volume made can make a waiting pod schedulable.
    let s3 = state.clone();
    let watch_volumes = volume_events.for_each(move |()| {
        s3.cluster_changes.fetch_add(1, Ordering::SeqCst);
        s3.wake.notify_one();
        async {}
    });
    tokio::select! {
        _ = watch_nodes => {}
        _ = watch_pods => {}
        _ = watch_owners => {}
        _ = watch_volumes => {}
        _ = schedule_loop(state) => {}
        _ = shutdown => {}
    }
    tracing::info!("scheduler stopped");
}

/// What the loop remembers between cycles.
#[derive(Default)]
struct Memory {
    /// Bound by us, not yet seen bound in the cache: pod uid → (node, pod as bound).
    assumed: HashMap<String, (String, Arc<Pod>)>,
    /// Unschedulable pods: uid → (cluster_changes at the attempt, when).
    unschedulable: HashMap<String, (u64, Instant)>,
    /// Pods this scheduler nominated: uid → node. The status says so too, but the cache may not
    /// show it yet, and preempting again meanwhile would pick victims elsewhere.
    nominated: HashMap<String, String>,
}

async fn schedule_loop(state: Arc<State>) {
    let mut memory = Memory::default();
    loop {
        // Wait for a change, or time out so unschedulable pods get their periodic retry.
        let _ = tokio::time::timeout(RETRY, state.wake.notified()).await;
        if state.nodes.wait_until_ready().await.is_err()
            || state.pods.wait_until_ready().await.is_err()
            || !state.owners.synced().await
        {
            return;
        }
        if !state.volumes.synced() {
            continue;
        }
        cycle(&state, &mut memory).await;
    }
}

fn wants_us(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME)
        && pods::node_name(pod).is_none()
        && pod.metadata.deletion_timestamp.is_none()
        && pods::is_active(pod)
}

/// One pass over every pending pod.
async fn cycle(state: &State, memory: &mut Memory) {
    // Read before the snapshot: a change that lands in between then makes the next cycle retry.
    let changes = state.cluster_changes.load(Ordering::SeqCst);
    let all_pods = state.pods.state();
    let bound: HashSet<String> = all_pods
        .iter()
        .filter(|p| pods::node_name(p).is_some())
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let live: HashSet<String> = all_pods
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    memory
        .assumed
        .retain(|uid, _| live.contains(uid) && !bound.contains(uid));
    memory.unschedulable.retain(|uid, _| live.contains(uid));
    memory
        .nominated
        .retain(|uid, _| live.contains(uid) && !bound.contains(uid));

    let mut infos: Vec<NodeInfo> = state
        .nodes
        .state()
        .iter()
        .map(|n| NodeInfo::new(n.clone()))
        .collect();
    infos.sort_by(|a, b| a.node.metadata.name.cmp(&b.node.metadata.name));
    let index: HashMap<String, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.metadata.name.clone().unwrap_or_default(), i))
        .collect();
    // Terminating pods still hold their node's resources until they are gone.
    let holds_resources = |p: &Pod| {
        !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    };
    for pod in all_pods.iter().filter(|p| holds_resources(p)) {
        if let Some(i) = pods::node_name(pod).and_then(|n| index.get(n)) {
            infos[*i].add_pod(pod.clone());
        }
    }
    for (node, pod) in memory.assumed.values() {
        if let Some(i) = index.get(node) {
            infos[*i].add_pod(pod.clone());
        }
    }

    let mut pending: Vec<Arc<Pod>> = all_pods
        .into_iter()
        .filter(|p| wants_us(p))
        .filter(|p| {
            p.metadata
                .uid
                .as_ref()
                .is_none_or(|uid| !memory.assumed.contains_key(uid))
        })
        .collect();
    pending.sort_by_key(|p| {
        (
            std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
            p.metadata.creation_timestamp.clone(),
        )
    });
    // PodDisruptionBudgets, read once per cycle and only if some pod tries to preempt.
    let mut budgets: Option<Vec<preempt::Budget>> = None;
    // Spread counts of this cycle's selectors, kept current as pods are placed below.
    let mut memo = spread::Memo::default();
    for pod in pending {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some((seen, when)) = memory.unschedulable.get(&uid)
            && *seen == changes
            && when.elapsed() < RETRY
        {
            continue;
        }
        let spread_defaults = state
            .owners
            .default_selector(&pod)
            .map(spread::system_defaults)
            .unwrap_or_default();
        let pod_volumes = state.volumes.of(&pod);
        match place(&pod, &spread_defaults, &pod_volumes, &infos, &mut memo) {
            Ok(i) => {
                let node = infos[i].node.metadata.name.clone().unwrap_or_default();
                match bind(state, &pod, &node).await {
                    Ok(()) => {
                        infos[i].add_pod(pod.clone());
                        memo.pod_added(i, &pod);
                        memory.assumed.insert(uid.clone(), (node, pod.clone()));
                        memory.unschedulable.remove(&uid);
                    }
                    Err(error) => tracing::info!(%error, "bind failed; will retry"),
                }
            }
            Err(reasons) => {
                let head = filter::unschedulable_head(infos.len(), &reasons);
                let remembered = memory.nominated.get(&uid).cloned();
                let (tail, nominated) =
                    preempt(state, &pod, remembered, &infos, &index, &mut budgets).await;
                // The nominated node is held for this pod for the rest of the cycle, so a
                // lower-priority pod does not take the room its victims are freeing.
                if let Some(i) = nominated {
                    infos[i].add_pod(pod.clone());
                    memo.pod_added(i, &pod);
                }
                memory
                    .unschedulable
                    .insert(uid.clone(), (changes, Instant::now()));
                let message = if tail.is_empty() {
                    head
                } else {
                    format!("{head} {tail}")
                };
                let nominated_name =
                    nominated.map(|i| infos[i].node.metadata.name.clone().unwrap_or_default());
                if let Some(node) = &nominated_name {
                    memory.nominated.insert(uid.clone(), node.clone());
                }
                mark_unschedulable(state, &pod, &message, nominated_name).await;
            }
        }
    }
}

/// The index of the best node for `pod`, or why each node does not fit.
fn place(
    pod: &Pod,
    spread_defaults: &[TopologySpreadConstraint],
    pod_volumes: &volumes::PodVolumes,
    infos: &[NodeInfo],
    memo: &mut spread::Memo,
) -> Result<usize, Vec<Vec<String>>> {
    let mut reasons = Vec::new();
    let mut feasible = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        let mut why = filter::filter(pod, info);
        if why.is_empty()
            && let Some(reason) = pod_volumes.reason(&info.node)
        {
            why.push(reason);
        }
        if why.is_empty() {
            why = interpod::filter(pod, info, infos);
        }
        if why.is_empty() {
            feasible.push(i);
        } else {
            reasons.push(why);
        }
    }
    let scores = score::rank(pod, spread_defaults, &feasible, infos, memo);
    // The first of the best (nodes are sorted by name), so placement is deterministic.
    let mut best: Option<(i64, usize)> = None;
    for (score, i) in scores.into_iter().zip(feasible) {
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i).ok_or(reasons)
}

/// Tries preemption for `pod`, which fits nowhere: picks victims, nominates their node (the
/// returned index) and deletes them gracefully. Returns the `preemption: …` sentence.
async fn preempt(
    state: &State,
    pod: &Pod,
    remembered: Option<String>,
    infos: &[NodeInfo],
    index: &HashMap<String, usize>,
    budgets: &mut Option<Vec<preempt::Budget>>,
) -> (String, Option<usize>) {
    if !preempt::may_preempt(pod) {
        return (
            "preemption: not eligible due to preemptionPolicy=Never.".into(),
            None,
        );
    }
    let mine = preempt::priority(pod);
    // Victims already on their way out of the nominated node: wait for them, evict no more.
    let nominated = remembered
        .as_deref()
        .or_else(|| {
            pod.status
                .as_ref()
                .and_then(|s| s.nominated_node_name.as_deref())
        })
        .and_then(|n| index.get(n).copied());
    if let Some(i) = nominated
        && infos[i]
            .pods
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some() && preempt::priority(p) < mine)
    {
        return (
            "preemption: not eligible due to a terminating pod on the nominated node.".into(),
            Some(i),
        );
    }
    // Nothing of lower priority anywhere: skip the per-node simulation.
    let anything_lower = infos
        .iter()
        .any(|i| i.pods.iter().any(|p| preempt::priority(p) < mine));
    if !anything_lower {
        // No victims anywhere: the plan only sorts nodes into "no victims" and "not helpful".
        let reasons = preempt::plan(pod, infos, &[]).err().unwrap_or_default();
        return (preempt::summary(infos.len(), &reasons), None);
    }
    if budgets.is_none() {
        *budgets = Some(read_budgets(&state.client).await);
    }
    let plan = match preempt::plan(pod, infos, budgets.as_deref().unwrap_or(&[])) {
        Ok(plan) => plan,
        Err(reasons) => return (preempt::summary(infos.len(), &reasons), None),
    };
    let node = infos[plan.node]
        .node
        .metadata
        .name
        .clone()
        .unwrap_or_default();
    for victim in &plan.victims {
        evict(state, pod, victim, &node).await;
    }
    // A successful preemption adds no sentence (upstream's post-filter succeeded).
    (String::new(), Some(plan.node))
}

/// Every PodDisruptionBudget with how many more disruptions it allows (its status).
async fn read_budgets(client: &kube::Client) -> Vec<preempt::Budget> {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let api: Api<PodDisruptionBudget> = Api::all(client.clone());
    let list = match api.list(&kube::api::ListParams::default()).await {
        Ok(list) => list,
        Err(error) => {
            tracing::info!(%error, "could not read PodDisruptionBudgets; preempting without them");
            return Vec::new();
        }
    };
    list.items
        .into_iter()
        .filter_map(|pdb| {
            Some(preempt::Budget {
                namespace: pdb.metadata.namespace.clone()?,
                selector: pdb.spec.as_ref()?.selector.clone()?,
                allowed: pdb
                    .status
                    .as_ref()
                    .and_then(|s| s.disruptions_allowed)
                    .unwrap_or(0),
            })
        })
        .collect()
}

/// Marks `victim` (DisruptionTarget), records the Preempted event and deletes it with its grace
/// period, as upstream does.
async fn evict(state: &State, preemptor: &Pod, victim: &Pod, node: &str) {
    let namespace = victim.metadata.namespace.as_deref().unwrap_or("default");
    let name = victim.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
        "message": format!("{SCHEDULER_NAME}: preempting to accommodate a higher priority pod"),
        "lastTransitionTime": now(),
    }]}});
    if let Err(error) = api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&condition))
        .await
    {
        tracing::debug!(%error, "could not mark the preemption victim");
    }
    let uid = preemptor.metadata.uid.as_deref().unwrap_or("");
    state
        .recorder
        .record(
            &reference("v1", "Pod", &victim.metadata),
            EventType::Normal,
            "Preempted",
            &format!("Preempted by pod {uid} on node {node}"),
        )
        .await;
    let params = kube::api::DeleteParams {
        preconditions: victim
            .metadata
            .uid
            .clone()
            .map(|uid| kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
        ..kube::api::DeleteParams::default()
    };
    if let Err(error) = api.delete(name, &params).await {
        tracing::info!(%error, pod = %name, "could not delete the preemption victim");
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn bind(state: &State, pod: &Pod, node: &str) -> Result<(), SchedulerError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map_err(|source| SchedulerError::Bind {
        pod: format!("{namespace}/{name}"),
        node: node.to_string(),
        source,
    })?;
    state
        .recorder
        .record(
            &reference("v1", "Pod", &pod.metadata),
            EventType::Normal,
            "Scheduled",
            &format!("Successfully assigned {namespace}/{name} to {node}"),
        )
        .await;
    Ok(())
}

/// Writes `PodScheduled=False` and `nominatedNodeName` (only when they changed) and a
/// FailedScheduling event.
async fn mark_unschedulable(state: &State, pod: &Pod, message: &str, nominated: Option<String>) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let was_nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.clone());
    let unchanged = current
        .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message))
        && (nominated.is_none() || nominated == was_nominated);
    if !unchanged {
        let api: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
        let mut status = json!({"status": {"conditions": [json!({
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": now(),
        })]}});
        if let Some(node) = nominated {
            status["status"]["nominatedNodeName"] = json!(node);
        }
        if let Err(error) = api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
            .await
        {
            tracing::debug!(%error, "could not set PodScheduled=False");
        }
    }
    state
        .recorder
        .record(
            &reference("v1", "Pod", &pod.metadata),
            EventType::Warning,
            "FailedScheduling",
            message,
        )
        .await;
}
