//! The ReplicaSet control loop: keeps `spec.replicas` active pods for every ReplicaSet and reports
//! what it sees in `status`.
//!
//! Watches ReplicaSets and pods (one shared pod cache, the reconcile reads from it); owns the pods it
//! creates (`ownerReferences` with `controller: true` and `blockOwnerDeletion: true`).
//!
//! Invariants: a ReplicaSet never has more creations in flight than it is short of pods, because it
//! acts only when its [`Expectations`] are met (the cache shows its earlier creations and
//! deletions); creations go out in slow-start batches (1, 2, 4, …) that stop at the first error;
//! when it has too many pods it deletes the least useful first (unscheduled, then pending, then not
//! ready, then the most recently ready); `status` is written only when it changed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;

use super::cache;
use super::events::{EventType, Recorder, reference};
use super::expectations::Expectations;
use super::informer::Informers;
use super::{ControllerError, pods, selector};

/// Most pods created in one reconcile (upstream's burst replicas).
const BURST: usize = 500;

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub expectations: Expectations,
    pub recorder: Recorder,
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    cache::synced(&ctx.pods).await?;
    let key = pods::key(&rs.metadata);
    let namespace = rs.metadata.namespace.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let spec = rs.spec.clone();
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|p| pods::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).collect();

    // Pods are only added or removed while the cache reflects our earlier writes, and never for a
    // ReplicaSet that is itself being deleted (the garbage collector owns that).
    let names: HashSet<String> = owned
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let uids: HashSet<String> = active
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let settled = ctx.expectations.satisfied(&key, &names, &uids);
    let mut failure = None;
    if settled && rs.metadata.deletion_timestamp.is_none() {
        let want = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
        if active.len() < want {
            failure = create_pods(&rs, &ctx, &key, want - active.len())
                .await
                .err();
        } else if active.len() > want {
            delete_pods(&rs, &ctx, &key, &active, active.len() - want).await?;
        }
    }

    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let status = compute_status(&rs, &active, failure.as_ref(), now);
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            rs.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .map_err(|source| ControllerError::Write {
            what: format!("status of replicaset {key}"),
            source,
        })?;
    }
    if let Some(error) = failure {
        return Err(error);
    }
    // Ready pods become available after minReadySeconds without any watch event: look again then.
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(min_ready).unwrap_or(1).max(1),
        )));
    }
    if !settled {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::await_change())
}

fn error_policy(_rs: Arc<ReplicaSet>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "replicaset reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the ReplicaSet control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pod_store, pod_events) = (informers.pods.store(), informers.pods.subscribe());
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store,
        expectations: Expectations::default(),
        recorder: Recorder::new(client.clone(), "replicaset-controller"),
    });
    Controller::new(Api::<ReplicaSet>::all(client), watcher::Config::default())
        .owns_shared_stream(pod_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Creates `count` pods (at most [`BURST`]) in slow-start batches; stops at the first failure.
async fn create_pods(
    rs: &ReplicaSet,
    ctx: &Context,
    key: &str,
    count: usize,
) -> Result<(), ControllerError> {
    let namespace = rs.metadata.namespace.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let template = pod_from_template(rs);
    let rs_ref = reference("apps/v1", "ReplicaSet", &rs.metadata);
    let params = PostParams::default();
    let mut remaining = count.min(BURST);
    let mut batch = 1;
    while remaining > 0 {
        let size = batch.min(remaining);
        let results =
            futures::future::join_all((0..size).map(|_| api.create(&params, &template))).await;
        for result in results {
            match result {
                Ok(pod) => {
                    let name = pod.metadata.name.unwrap_or_default();
                    ctx.expectations.created(key, &name);
                    ctx.recorder
                        .record(
                            &rs_ref,
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {name}"),
                        )
                        .await;
                }
                Err(source) => {
                    ctx.recorder
                        .record(
                            &rs_ref,
                            EventType::Warning,
                            "FailedCreate",
                            &format!("Error creating: {source}"),
                        )
                        .await;
                    return Err(ControllerError::Write {
                        what: format!("pod for replicaset {key}"),
                        source,
                    });
                }
            }
        }
        remaining -= size;
        batch *= 2;
    }
    Ok(())
}

/// Deletes the `count` least useful of `active`.
async fn delete_pods(
    rs: &ReplicaSet,
    ctx: &Context,
    key: &str,
    active: &[&Arc<Pod>],
    count: usize,
) -> Result<(), ControllerError> {
    let namespace = rs.metadata.namespace.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let rs_ref = reference("apps/v1", "ReplicaSet", &rs.metadata);
    let mut ranked: Vec<&Arc<Pod>> = active.to_vec();
    ranked.sort_by_key(|p| deletion_rank(p));
    for pod in ranked.into_iter().take(count) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        ctx.expectations.deleted(key, &uid);
        if pods::delete_exact(&api, &pod.metadata).await? {
            ctx.recorder
                .record(
                    &rs_ref,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                )
                .await;
        }
    }
    Ok(())
}

/// Lower ranks are deleted first: unscheduled, pending, not ready, then the most recently ready
/// (a pod ready for long is the most valuable to keep), newest first as the tie-breaker.
fn deletion_rank(pod: &Pod) -> (u8, u8, u8, std::cmp::Reverse<i64>, std::cmp::Reverse<i64>) {
    let scheduled = u8::from(pods::node_name(pod).is_some());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let running = u8::from(phase == Some("Running"));
    let ready = u8::from(pods::is_ready(pod));
    let since = pods::ready_since(pod)
        .flatten()
        .map_or(0, |t| t.as_second());
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    (
        scheduled,
        running,
        ready,
        std::cmp::Reverse(since),
        std::cmp::Reverse(created),
    )
}

/// The pod a ReplicaSet creates: its template, named `<rs>-<random>`, owned by it.
fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.template.clone().unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.metadata.name.as_deref().unwrap_or("pod"))),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![pods::controller_ref(
                "apps/v1",
                "ReplicaSet",
                &rs.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The status a ReplicaSet should show for its active pods.
fn compute_status(
    rs: &ReplicaSet,
    active: &[&Arc<Pod>],
    failure: Option<&ControllerError>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let spec = rs.spec.clone();
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let fully_labeled = count(&|p: &Pod| {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let previous = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<_> = previous
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_.as_deref() != Some("ReplicaFailure"))
        .collect();
    if let Some(error) = failure {
        let old = previous
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_.as_deref() == Some("ReplicaFailure"))
            .cloned();
        conditions.push(k8s_openapi::api::apps::v1::ReplicaSetCondition {
            type_: Some("ReplicaFailure".into()),
            status: Some("True".into()),
            reason: Some("FailedCreate".into()),
            message: Some(error.to_string()),
            last_transition_time: old.and_then(|c| c.last_transition_time).or(Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
            )),
        });
    }
    ReplicaSetStatus {
        replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(count(&|p: &Pod| pods::is_ready(p))),
        available_replicas: Some(count(&|p: &Pod| pods::is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

/// True if `rs` selects `pod` (used by tests and by adoption checks).
pub fn selects(rs: &ReplicaSet, pod: &Pod) -> bool {
    selector::matches(&rs.spec.selector, pod.metadata.labels.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
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
    fn least_useful_pods_are_deleted_first() {
        let ready = pod("ready", Some("n1"), "Running", true);
        let unready = pod("unready", Some("n1"), "Running", false);
        let pending = pod("pending", Some("n1"), "Pending", false);
        let unscheduled = pod("unscheduled", None, "Pending", false);
        let mut all = [&ready, &unready, &pending, &unscheduled];
        all.sort_by_key(|p| deletion_rank(p));
        let names: Vec<_> = all
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(names, ["unscheduled", "pending", "unready", "ready"]);
    }
}
