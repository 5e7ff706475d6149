//! The StatefulSet control loop: pods with stable names `<set>-<ordinal>`, created in order and
//! removed in reverse order (OrderedReady), or all at once (Parallel), and rolled to a new
//! template from the highest ordinal down to `partition`.
//!
//! Watches StatefulSets and Pods (one shared cache); owns the pods. Pods get `hostname` = their name
//! and `subdomain` = `serviceName`, and the labels `statefulset.kubernetes.io/pod-name`,
//! `apps.kubernetes.io/pod-index` and `controller-revision-hash` (the name of the ControllerRevision
//! `<set>-<template hash>` holding their template: [`history`] keeps them, `status.updateRevision`
//! and `currentRevision` name them, `kubectl rollout history|undo statefulset` reads them).
//! `volumeClaimTemplates` become PersistentVolumeClaims `<claim>-<set>-<ordinal>`, made before the
//! pod that mounts them ([`claims`]).
//!
//! Invariants: OrderedReady never creates ordinal i before 0..i are Running and Ready, never
//! deletes more than one pod at a time, and only while every other pod is ready; a rolling update
//! replaces one pod at a time, only while all pods are ready; the loop acts only when its
//! [`Expectations`] are met.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;

use super::cache;
use super::daemonset::REVISION_HASH;
use super::events::{EventType, Recorder, reference};
use super::expectations::Expectations;
use super::informer::Informers;
use super::{ControllerError, claims, history, pods, rollout};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label upstream puts on a StatefulSet's ControllerRevisions: the template hash.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub revisions: Store<ControllerRevision>,
    pub expectations: Expectations,
    pub recorder: Recorder,
}

/// The ordinal of a pod named `<set>-<n>`.
fn ordinal(set: &str, pod: &Pod) -> Option<i32> {
    pod.metadata
        .name
        .as_deref()?
        .strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && pods::is_ready(pod)
}

/// What one reconcile does: at most the pods this returns.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    create: Vec<i32>,
    delete: Vec<String>,
}

/// Decides creations and deletions from the ordinals present (`pods` by ordinal).
fn plan(
    replicas: i32,
    parallel: bool,
    partition: i32,
    update_revision: &str,
    pods: &BTreeMap<i32, &Pod>,
) -> Plan {
    let mut plan = Plan::default();
    // Failed pods are replaced: delete now, recreated on a later pass.
    for p in pods
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") {
            plan.delete
                .push(p.metadata.name.clone().unwrap_or_default());
        }
    }
    if !plan.delete.is_empty() {
        return plan;
    }
    for i in 0..replicas {
        match pods.get(&i) {
            None => {
                plan.create.push(i);
                if !parallel {
                    return plan;
                }
            }
            Some(p) if !parallel && !running_and_ready(p) => return plan,
            Some(_) => {}
        }
    }
    if !plan.create.is_empty() {
        return plan;
    }
    let all_ready = pods.values().all(|p| running_and_ready(p));
    let extra: Vec<&&Pod> = pods.range(replicas..).map(|(_, p)| p).collect();
    // A pod still terminating finishes before the next one is touched.
    if !parallel
        && extra
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some())
    {
        return plan;
    }
    let extra: Vec<&&Pod> = extra
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    if !extra.is_empty() {
        if parallel {
            plan.delete = extra
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
        } else if all_ready && let Some(last) = extra.last() {
            plan.delete
                .push(last.metadata.name.clone().unwrap_or_default());
        }
        return plan;
    }
    if all_ready
        && let Some((_, p)) = pods
            .range(partition.max(0)..replicas)
            .rev()
            .find(|(_, p)| revision_of(p) != Some(update_revision))
    {
        plan.delete
            .push(p.metadata.name.clone().unwrap_or_default());
    }
    plan
}

async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    cache::synced(&ctx.pods).await?;
    cache::synced(&ctx.revisions).await?;
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let key = pods::key(&sts.metadata);
    let namespace = sts.metadata.namespace.clone().unwrap_or_default();
    let name = sts.metadata.name.clone().unwrap_or_default();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    let sts_ref = reference("apps/v1", "StatefulSet", &sts.metadata);
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|p| pods::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    // Terminating pods keep their ordinal taken: a name is only reused once the pod is gone.
    let present: BTreeMap<i32, &Pod> = owned
        .iter()
        .filter_map(|p| Some((ordinal(&name, p)?, &**p)))
        .collect();
    let active: BTreeMap<i32, &Pod> = present
        .iter()
        .filter(|(_, p)| p.metadata.deletion_timestamp.is_none())
        .map(|(i, p)| (*i, *p))
        .collect();
    let names: HashSet<String> = owned
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let uids: HashSet<String> = active
        .values()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let settled = ctx.expectations.satisfied(&key, &names, &uids);
    let replicas = sts.spec.replicas.unwrap_or(1).max(0);
    let parallel = sts.spec.pod_management_policy.as_deref() == Some("Parallel");
    let on_delete = sts
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    let partition = sts
        .spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let hash = rollout::template_hash(&sts.spec.template, None);
    let update_revision = format!("{name}-{hash}");
    let previous = sts.status.clone().unwrap_or_default();
    let mut live: HashSet<String> = active
        .values()
        .filter_map(|p| revision_of(p).map(str::to_string))
        .collect();
    live.extend(previous.current_revision.clone());
    let owner = history::Owner {
        api_version: "apps/v1",
        kind: "StatefulSet",
        meta: &sts.metadata,
        template: &sts.spec.template,
        name: update_revision.clone(),
        extra_labels: vec![(HASH_LABEL.to_string(), hash.clone())],
        history_limit: sts.spec.revision_history_limit.unwrap_or(10),
    };
    history::sync(
        &ctx.client,
        history::owned(&ctx.revisions, &sts.metadata),
        &owner,
        &live,
    )
    .await?;
    if settled {
        let mut todo = plan(replicas, parallel, partition, &update_revision, &present);
        if on_delete {
            // OnDelete: outdated pods are replaced only when someone deletes them.
            todo.delete.retain(|n| {
                active
                    .values()
                    .find(|p| p.metadata.name.as_deref() == Some(n.as_str()))
                    .is_some_and(|p| ordinal(&name, p).is_some_and(|o| o >= replicas))
            });
        }
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        for i in &todo.create {
            claims::ensure(&ctx.client, &ctx.recorder, &sts, *i).await?;
            let pod = pod_for(&sts, *i, &update_revision);
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            ctx.expectations.created(&key, &pod_name);
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => {
                    let msg = format!("create Pod {pod_name} in StatefulSet {name} successful");
                    ctx.recorder
                        .record(&sts_ref, EventType::Normal, "SuccessfulCreate", &msg)
                        .await;
                }
                Err(source) => {
                    ctx.expectations.creation_failed(&key, &pod_name);
                    return Err(ControllerError::Write {
                        what: format!("pod {namespace}/{pod_name}"),
                        source,
                    });
                }
            }
        }
        for pod_name in &todo.delete {
            let Some(pod) = active
                .values()
                .find(|p| p.metadata.name.as_deref() == Some(pod_name.as_str()))
            else {
                continue;
            };
            let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
            ctx.expectations.deleted(&key, &pod_uid);
            if pods::delete_exact(&api, &pod.metadata).await? {
                let msg = format!("delete Pod {pod_name} in StatefulSet {name} successful");
                ctx.recorder
                    .record(&sts_ref, EventType::Normal, "SuccessfulDelete", &msg)
                    .await;
            }
        }
    }

    if settled {
        claims::prune_scaled(&ctx.client, &sts, replicas, |o| present.contains_key(&o)).await?;
    }

    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.values().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let updated = count(&|p: &Pod| revision_of(p) == Some(update_revision.as_str()));
    let current_revision =
        if updated == replicas && i32::try_from(active.len()).ok() == Some(replicas) {
            update_revision.clone()
        } else {
            previous
                .current_revision
                .clone()
                .unwrap_or_else(|| update_revision.clone())
        };
    let status = StatefulSetStatus {
        replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
        ready_replicas: Some(count(&|p: &Pod| pods::is_ready(p))),
        available_replicas: Some(count(&|p: &Pod| pods::is_ready(p))),
        current_replicas: Some(count(&|p: &Pod| {
            revision_of(p) == Some(current_revision.as_str())
        })),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(update_revision),
        observed_generation: sts.metadata.generation,
        collision_count: previous.collision_count,
        conditions: None,
    };
    if sts.status.as_ref() != Some(&status) {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .map_err(|source| ControllerError::Write {
            what: format!("status of statefulset {key}"),
            source,
        })?;
    }
    if !settled {
        return Ok(Action::requeue(std::time::Duration::from_secs(5)));
    }
    Ok(Action::await_change())
}

/// Pod `<set>-<ordinal>` from the template.
fn pod_for(sts: &StatefulSet, ordinal: i32, revision: &str) -> Pod {
    let set = sts.metadata.name.clone().unwrap_or_default();
    let name = format!("{set}-{ordinal}");
    let template = sts.spec.template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), revision.to_string());
    let mut spec = template.spec.unwrap_or_default();
    spec.hostname = Some(name.clone());
    if let Some(service) = sts.spec.service_name.clone().filter(|s| !s.is_empty()) {
        spec.subdomain = Some(service);
    }
    claims::add_volumes(sts, &mut spec, ordinal);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: sts.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![pods::controller_ref(
                "apps/v1",
                "StatefulSet",
                &sts.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn error_policy(_s: Arc<StatefulSet>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "statefulset reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the StatefulSet control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pod_store, pod_events) = (informers.pods.store(), informers.pods.subscribe());
    let (revision_store, revision_events) = cache::watched::<ControllerRevision>(&client);
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store,
        revisions: revision_store,
        expectations: Expectations::default(),
        recorder: Recorder::new(client.clone(), "statefulset-controller"),
    });
    Controller::new(Api::<StatefulSet>::all(client), watcher::Config::default())
        .owns_shared_stream(pod_events)
        .owns_stream(revision_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn pod(name: &str, ready: bool, rev: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(REVISION_HASH.to_string(), rev.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_and_deletes_from_the_top() {
        let p0 = pod("s-0", true, "r1");
        let p1 = pod("s-1", false, "r1");
        let mut present = BTreeMap::from([(0, &p0)]);
        assert_eq!(plan(3, false, 0, "r1", &present).create, vec![1]);
        present.insert(1, &p1);
        assert_eq!(
            plan(3, false, 0, "r1", &present),
            Plan::default(),
            "s-1 not ready yet"
        );
        assert_eq!(
            plan(3, true, 0, "r1", &present).create,
            vec![2],
            "Parallel does not wait"
        );
        let p1 = pod("s-1", true, "r1");
        let p2 = pod("s-2", true, "r1");
        let present = BTreeMap::from([(0, &p0), (1, &p1), (2, &p2)]);
        assert_eq!(
            plan(1, false, 0, "r1", &present).delete,
            vec!["s-2".to_string()]
        );
        // Rolling update from the top, down to the partition.
        assert_eq!(
            plan(3, false, 0, "r2", &present).delete,
            vec!["s-2".to_string()]
        );
        assert_eq!(plan(3, false, 3, "r2", &present), Plan::default());
    }
}
