//! The DaemonSet control loop: one pod per eligible node, rolled to a new template node by node.
//!
//! Watches DaemonSets, Pods (one shared cache) and Nodes (one shared cache). A node is eligible if
//! it matches the template's nodeSelector / required node affinity and every NoSchedule/NoExecute
//! taint is tolerated by the template plus the tolerations DaemonSet pods always get (not-ready,
//! unreachable, disk/memory/pid pressure, unschedulable; network-unavailable for hostNetwork).
//! Pods are created with a required node affinity on `metadata.name` and placed by the
//! scheduler, as upstream does.
//!
//! Invariants: acts only when its [`Expectations`] are met; at most one pod per node (extras, the
//! newest first, are deleted); RollingUpdate replaces at most `maxUnavailable` pods at a time, and
//! only while the rest are ready; pods carry `controller-revision-hash` (a hash of the template),
//! and the template history is kept as ControllerRevisions `<set>-<hash>` ([`history`]), which
//! `kubectl rollout history|undo daemonset` read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde_json::json;

use super::cache;
use super::events::{EventType, Recorder, reference};
use super::expectations::Expectations;
use super::informer::Informers;
use super::{ControllerError, history, pods, rollout};
use crate::scheduler::filter::{node_affinity_fits, tolerates};

/// The label tying a DaemonSet pod to the template it was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub revisions: Store<ControllerRevision>,
    pub expectations: Expectations,
    pub recorder: Recorder,
}

/// The tolerations every DaemonSet pod gets on top of its template's.
fn default_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut keys = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        keys.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    keys.into_iter()
        .map(|(key, effect)| Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Toleration::default()
        })
        .collect()
}

/// The pod template as created, with the default tolerations added.
fn template_pod(ds: &DaemonSet) -> Pod {
    let template = ds.spec.template.clone();
    let mut spec = template.spec.unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in default_tolerations(host_network) {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: Some(spec),
        status: None,
    }
}

/// True if a pod of `ds` belongs on `node`.
fn should_run(pod: &Pod, node: &Node) -> bool {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tolerated = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)));
    tolerated && node_affinity_fits(pod, node)
}

/// The node a DaemonSet pod is meant for: its nodeName, or its `metadata.name` affinity.
fn target_node(pod: &Pod) -> Option<String> {
    if let Some(n) = pods::node_name(pod) {
        return Some(n.to_string());
    }
    pod.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

fn max_unavailable(ds: &DaemonSet, desired: usize) -> usize {
    let strategy = ds.spec.update_strategy.clone().unwrap_or_default();
    let value = strategy
        .rolling_update
        .and_then(|r| r.max_unavailable)
        .unwrap_or(IntOrString::Int(1));
    let n = match value {
        IntOrString::Int(n) => usize::try_from(n).unwrap_or(0),
        IntOrString::String(s) => {
            let p: usize = s.trim_end_matches('%').parse().unwrap_or(0);
            desired * p / 100
        }
    };
    n.max(1)
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    cache::synced(&ctx.pods).await?;
    cache::synced(&ctx.nodes).await?;
    cache::synced(&ctx.revisions).await?;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let key = pods::key(&ds.metadata);
    let namespace = ds.metadata.namespace.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|p| pods::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).collect();
    let names: HashSet<String> = owned
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let uids: HashSet<String> = active
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let settled = ctx.expectations.satisfied(&key, &names, &uids);

    let template = template_pod(&ds);
    let hash = rollout::template_hash(&ds.spec.template, None);
    let ds_name = ds.metadata.name.clone().unwrap_or_default();
    let live: HashSet<String> = active
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_HASH))
        .map(|h| format!("{ds_name}-{h}"))
        .collect();
    let owner = history::Owner {
        api_version: "apps/v1",
        kind: "DaemonSet",
        meta: &ds.metadata,
        template: &ds.spec.template,
        name: format!("{ds_name}-{hash}"),
        extra_labels: vec![(REVISION_HASH.to_string(), hash.clone())],
        history_limit: ds.spec.revision_history_limit.unwrap_or(10),
    };
    history::sync(
        &ctx.client,
        history::owned(&ctx.revisions, &ds.metadata),
        &owner,
        &live,
    )
    .await?;
    let nodes = ctx.nodes.state();
    let eligible: HashSet<String> = nodes
        .iter()
        .filter(|n| should_run(&template, n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut by_node: HashMap<String, Vec<&Arc<Pod>>> = HashMap::new();
    for pod in &active {
        if let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    let pod_hash = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_HASH))
            .cloned()
    };
    let now = Timestamp::now();
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);

    if settled {
        let mut create = Vec::new();
        let mut delete: Vec<&Arc<Pod>> = Vec::new();
        for node in &eligible {
            match by_node.get(node) {
                None => create.push(node.clone()),
                Some(list) if list.len() > 1 => {
                    let mut list = list.clone();
                    list.sort_by_key(|p| p.metadata.creation_timestamp.clone());
                    delete.extend(list.into_iter().skip(1));
                }
                Some(_) => {}
            }
        }
        for (node, list) in &by_node {
            if !eligible.contains(node) {
                delete.extend(list.iter().copied());
            }
        }
        // Rolling update: replace outdated pods while few enough are unavailable.
        let on_delete = ds
            .spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            == Some("OnDelete");
        if !on_delete && create.is_empty() && delete.is_empty() {
            let budget = max_unavailable(&ds, eligible.len());
            let unavailable = eligible
                .iter()
                .filter(|n| {
                    by_node
                        .get(*n)
                        .is_none_or(|l| !l.iter().any(|p| pods::is_available(p, min_ready, now)))
                })
                .count();
            let mut room = budget.saturating_sub(unavailable);
            // Unavailable outdated pods go first: they cost nothing.
            for node in &eligible {
                let Some(list) = by_node.get(node) else {
                    continue;
                };
                for p in list {
                    if pod_hash(p).as_deref() != Some(hash.as_str())
                        && !pods::is_available(p, min_ready, now)
                    {
                        delete.push(p);
                    }
                }
            }
            for node in &eligible {
                let Some(list) = by_node.get(node) else {
                    continue;
                };
                for p in list {
                    if room > 0
                        && pod_hash(p).as_deref() != Some(hash.as_str())
                        && pods::is_available(p, min_ready, now)
                    {
                        delete.push(p);
                        room -= 1;
                    }
                }
            }
        }
        create_pods(&ds, &ctx, &key, &template, &hash, &create).await?;
        delete_pods(&ds, &ctx, &key, &delete).await?;
    }

    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(
            eligible
                .iter()
                .filter(|n| by_node.get(*n).is_some_and(|l| l.iter().any(|p| f(p))))
                .count(),
        )
        .unwrap_or(i32::MAX)
    };
    let desired = i32::try_from(eligible.len()).unwrap_or(i32::MAX);
    let available = count(&|p: &Pod| pods::is_available(p, min_ready, now));
    let misscheduled = by_node
        .iter()
        .filter(|(n, l)| !eligible.contains(*n) && l.iter().any(|p| pods::node_name(p).is_some()))
        .count();
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: count(&|p: &Pod| pods::node_name(p).is_some()),
        number_misscheduled: i32::try_from(misscheduled).unwrap_or(i32::MAX),
        number_ready: count(&|p: &Pod| pods::is_ready(p)),
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(count(&|p: &Pod| {
            pod_hash(p).as_deref() == Some(hash.as_str()) && pods::node_name(p).is_some()
        })),
        observed_generation: ds.metadata.generation,
        collision_count: None,
        conditions: None,
    };
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            ds.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .map_err(|source| ControllerError::Write {
            what: format!("status of daemonset {key}"),
            source,
        })?;
    }
    if !settled {
        return Ok(Action::requeue(std::time::Duration::from_secs(5)));
    }
    Ok(Action::await_change())
}

async fn create_pods(
    ds: &DaemonSet,
    ctx: &Context,
    key: &str,
    template: &Pod,
    hash: &str,
    nodes: &[String],
) -> Result<(), ControllerError> {
    let namespace = ds.metadata.namespace.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let ds_ref = reference("apps/v1", "DaemonSet", &ds.metadata);
    for node in nodes {
        let mut pod = template.clone();
        let mut labels = pod.metadata.labels.clone().unwrap_or_default();
        labels.insert(REVISION_HASH.into(), hash.to_string());
        pod.metadata = ObjectMeta {
            generate_name: Some(format!("{}-", ds.metadata.name.as_deref().unwrap_or("ds"))),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: pod.metadata.annotations.clone(),
            owner_references: Some(vec![pods::controller_ref(
                "apps/v1",
                "DaemonSet",
                &ds.metadata,
            )]),
            ..ObjectMeta::default()
        };
        if let Some(spec) = pod.spec.as_mut() {
            let affinity: k8s_openapi::api::core::v1::Affinity = serde_json::from_value(json!({
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [
                        {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}
            }))
            .unwrap_or_default();
            spec.affinity
                .get_or_insert_with(Default::default)
                .node_affinity = affinity.node_affinity;
        }
        match api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                ctx.expectations.created(key, &name);
                ctx.recorder
                    .record(
                        &ds_ref,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created pod: {name}"),
                    )
                    .await;
            }
            Err(source) => {
                return Err(ControllerError::Write {
                    what: format!("pod of daemonset {key} for node {node}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

async fn delete_pods(
    ds: &DaemonSet,
    ctx: &Context,
    key: &str,
    victims: &[&Arc<Pod>],
) -> Result<(), ControllerError> {
    let namespace = ds.metadata.namespace.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let ds_ref = reference("apps/v1", "DaemonSet", &ds.metadata);
    let mut done = HashSet::new();
    for pod in victims {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !done.insert(uid.clone()) {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        ctx.expectations.deleted(key, &uid);
        if pods::delete_exact(&api, &pod.metadata).await? {
            ctx.recorder
                .record(
                    &ds_ref,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                )
                .await;
        }
    }
    Ok(())
}

fn error_policy(_ds: Arc<DaemonSet>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "daemonset reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the DaemonSet control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pod_store, pod_events) = (informers.pods.store(), informers.pods.subscribe());
    let (node_store, node_events) = (informers.nodes.store(), informers.nodes.subscribe());
    let (revision_store, revision_events) = cache::watched::<ControllerRevision>(&client);
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store,
        nodes: node_store,
        revisions: revision_store,
        expectations: Expectations::default(),
        recorder: Recorder::new(client.clone(), "daemonset-controller"),
    });
    let controller = Controller::new(Api::<DaemonSet>::all(client), watcher::Config::default());
    let all = controller.store();
    // Any node change may make any DaemonSet want (or not want) a pod there.
    let every_daemonset = move |_node: Arc<Node>| {
        all.state()
            .iter()
            .map(|ds| ObjectRef::from_obj(&**ds))
            .collect::<Vec<_>>()
    };
    controller
        .owns_shared_stream(pod_events)
        .owns_stream(revision_events)
        .watches_shared_stream(node_events, every_daemonset)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
