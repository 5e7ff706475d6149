//! The Deployment control loop: one ReplicaSet per pod template (`<name>-<pod-template-hash>`),
//! rolled from old to new by RollingUpdate or Recreate, with revisions, history pruning, pause and
//! the status `kubectl rollout status` waits on.
//!
//! Watches Deployments and ReplicaSets (one shared ReplicaSet cache); owns the ReplicaSets it
//! creates. The arithmetic lives in [`super::rollout`].
//!
//! Invariants: at most one ReplicaSet of a Deployment runs its current template (found by template,
//! so `rollout undo` — which copies an old template back — reuses that ReplicaSet and gives it the
//! next revision); replicas are bounded by the ReplicaSets' `max(spec, status)` so pods that are
//! still going away count against maxSurge; the loop acts only once its cache shows the
//! ReplicaSet writes it made (resourceVersion expectations), so a stale cache never over-scales.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;

use super::cache;
use super::events::{EventType, Recorder, reference};
use super::rollout::{self, Settings};
use super::{ControllerError, pods};

pub struct Context {
    pub client: kube::Client,
    pub replicasets: Store<ReplicaSet>,
    pub recorder: Recorder,
    /// Per Deployment: the resourceVersion of each ReplicaSet write not yet seen in the cache.
    written: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl Context {
    fn expect(&self, deployment: &str, rs: &ReplicaSet) {
        let (Some(name), Some(rv)) = (
            rs.metadata.name.clone(),
            rs.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok()),
        ) else {
            return;
        };
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(deployment.to_string())
            .or_default()
            .insert(name, rv);
    }

    /// True once every ReplicaSet write is visible in `owned` (or the ReplicaSet is gone).
    fn settled(&self, deployment: &str, owned: &[Arc<ReplicaSet>]) -> bool {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pending) = w.get_mut(deployment) else {
            return true;
        };
        pending.retain(|name, rv| {
            owned
                .iter()
                .find(|rs| rs.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|rs| rs.metadata.resource_version.as_deref())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|seen| seen < *rv)
        });
        let done = pending.is_empty();
        if done {
            w.remove(deployment);
        }
        done
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    cache::synced(&ctx.replicasets).await?;
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let key = pods::key(&d.metadata);
    let namespace = d.metadata.namespace.clone().unwrap_or_default();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let mut owned: Vec<Arc<ReplicaSet>> = ctx
        .replicasets
        .state()
        .into_iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|rs| pods::controller_of(&rs.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    if !ctx.settled(&key, &owned) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let spec = &d.spec;
    let s = rollout::settings(&d);
    let template = spec.template.clone();
    owned.sort_by_key(|rs| rollout::revision(rs));
    let mut new_rs = owned
        .iter()
        .find(|rs| rollout::same_template(rs, &template))
        .cloned();
    let old: Vec<Arc<ReplicaSet>> = owned
        .iter()
        .filter(|rs| {
            new_rs
                .as_ref()
                .is_none_or(|n| n.metadata.uid != rs.metadata.uid)
        })
        .cloned()
        .collect();
    let max_revision = owned
        .iter()
        .map(|rs| rollout::revision(rs))
        .max()
        .unwrap_or(0);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut created = false;

    if !s.paused {
        match &new_rs {
            None => {
                let total: i32 = old.iter().map(|rs| rollout::accounted(rs)).sum();
                let replicas = if s.recreate {
                    0
                } else {
                    rollout::new_rs_replicas(&s, 0, total)
                };
                new_rs = Some(Arc::new(
                    create_new_rs(&d, &ctx, &api, &key, replicas, max_revision + 1).await?,
                ));
                created = true;
            }
            Some(rs) if rollout::revision(rs) < max_revision || annotations_stale(&d, rs, &s) => {
                // `rollout undo` brought an old template back: it becomes the newest revision.
                let updated = sync_new_rs_annotations(&d, rs, &s, max_revision, &api).await?;
                ctx.expect(&key, &updated);
                new_rs = Some(Arc::new(updated));
            }
            Some(_) => {}
        }
    }

    if let Some(new) = &new_rs {
        set_deployment_revision(&d, &rollout::revision(new).to_string(), &ctx).await?;
        if s.paused {
            // Paused: no rollout, but scaling still reaches the newest ReplicaSet when it is alone.
            if old.iter().all(|rs| rollout::spec_replicas(rs) == 0) {
                scale(&d, &ctx, &api, &key, new, s.replicas).await?;
            }
        } else if s.recreate {
            recreate(&d, &ctx, &api, &key, &s, new, &old).await?;
        } else {
            rolling_update(&d, &ctx, &api, &key, &s, new, &old).await?;
        }
        cleanup(&ctx, &api, &s, &old).await;
    }

    let status = compute_status(&d, &s, new_rs.as_deref(), &owned, created, Timestamp::now());
    let complete = is_complete(&d, &s, &status);
    if d.status.as_ref() != Some(&status) {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
        deployments
            .patch_status(
                d.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .map_err(|source| ControllerError::Write {
                what: format!("status of deployment {key}"),
                source,
            })?;
    }
    if complete || s.paused {
        return Ok(Action::await_change());
    }
    // Not done: look again when the progress deadline could pass even without any event.
    let deadline = s.progress_deadline_seconds.unwrap_or(600);
    Ok(Action::requeue(Duration::from_secs(
        u64::try_from(deadline.clamp(1, 30)).unwrap_or(5),
    )))
}

fn error_policy(_d: Arc<Deployment>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "deployment reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the Deployment control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (rs_store, rs_events) = cache::watched::<ReplicaSet>(&client);
    let ctx = Arc::new(Context {
        client: client.clone(),
        replicasets: rs_store,
        recorder: Recorder::new(client.clone(), "deployment-controller"),
        written: Mutex::default(),
    });
    Controller::new(Api::<Deployment>::all(client), watcher::Config::default())
        .owns_stream(rs_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn write_err(what: String) -> impl FnOnce(kube::Error) -> ControllerError {
    move |source| ControllerError::Write { what, source }
}

/// Creates the ReplicaSet for the Deployment's current template.
async fn create_new_rs(
    d: &Deployment,
    ctx: &Context,
    api: &Api<ReplicaSet>,
    key: &str,
    replicas: i32,
    revision: i64,
) -> Result<ReplicaSet, ControllerError> {
    let spec = d.spec.clone();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = rollout::template_hash(&spec.template, collisions);
    let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or(""));
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(rollout::HASH_LABEL.into(), hash.clone());
    let labels = meta.labels.clone();
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(rollout::HASH_LABEL.into(), hash);
    let s = rollout::settings(d);
    let mut annotations = BTreeMap::from([
        (rollout::REVISION.to_string(), revision.to_string()),
        (
            rollout::DESIRED_REPLICAS.to_string(),
            s.replicas.to_string(),
        ),
        (
            rollout::MAX_REPLICAS.to_string(),
            (s.replicas + s.max_surge).to_string(),
        ),
    ]);
    if let Some(cause) = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(rollout::CHANGE_CAUSE))
    {
        annotations.insert(rollout::CHANGE_CAUSE.into(), cause.clone());
    }
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: d.metadata.namespace.clone(),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![pods::controller_ref(
                "apps/v1",
                "Deployment",
                &d.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        },
        status: None,
    };
    match api.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            ctx.expect(key, &created);
            let dref = reference("apps/v1", "Deployment", &d.metadata);
            ctx.recorder
                .record(
                    &dref,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {name} from 0 to {replicas}"),
                )
                .await;
            Ok(created)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Either our own earlier creation (cache lag) or a hash collision.
            let existing = api
                .get(&name)
                .await
                .map_err(|source| ControllerError::Read {
                    what: format!("replicaset {name}"),
                    source,
                })?;
            let ours = pods::controller_of(&existing.metadata)
                .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
            if ours && rollout::same_template(&existing, &spec.template) {
                ctx.expect(key, &existing);
                return Ok(existing);
            }
            let deployments: Api<Deployment> = Api::namespaced(
                ctx.client.clone(),
                d.metadata.namespace.as_deref().unwrap_or(""),
            );
            let count = collisions.unwrap_or(0) + 1;
            deployments
                .patch_status(
                    d.metadata.name.as_deref().unwrap_or(""),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": {"collisionCount": count}})),
                )
                .await
                .map_err(write_err(format!("collisionCount of deployment {key}")))?;
            Err(ControllerError::Invalid(format!(
                "replicaset {name} exists with another template; collision count is now {count}"
            )))
        }
        Err(source) => Err(ControllerError::Write {
            what: format!("replicaset {name}"),
            source,
        }),
    }
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn annotations_stale(d: &Deployment, rs: &ReplicaSet, s: &Settings) -> bool {
    annotation(&rs.metadata, rollout::DESIRED_REPLICAS) != Some(&s.replicas.to_string())
        || annotation(&d.metadata, rollout::CHANGE_CAUSE)
            .is_some_and(|c| annotation(&rs.metadata, rollout::CHANGE_CAUSE) != Some(c))
}

/// Gives a reused ReplicaSet the next revision (remembering its old ones) and current annotations.
async fn sync_new_rs_annotations(
    d: &Deployment,
    rs: &ReplicaSet,
    s: &Settings,
    max_revision: i64,
    api: &Api<ReplicaSet>,
) -> Result<ReplicaSet, ControllerError> {
    let current = rollout::revision(rs);
    let mut annotations = serde_json::Map::new();
    if current < max_revision {
        annotations.insert(
            rollout::REVISION.into(),
            json!((max_revision + 1).to_string()),
        );
        let history = match annotation(&rs.metadata, rollout::REVISION_HISTORY) {
            Some(h) if !h.is_empty() => format!("{h},{current}"),
            _ => current.to_string(),
        };
        annotations.insert(rollout::REVISION_HISTORY.into(), json!(history));
    }
    annotations.insert(
        rollout::DESIRED_REPLICAS.into(),
        json!(s.replicas.to_string()),
    );
    annotations.insert(
        rollout::MAX_REPLICAS.into(),
        json!((s.replicas + s.max_surge).to_string()),
    );
    if let Some(cause) = annotation(&d.metadata, rollout::CHANGE_CAUSE) {
        annotations.insert(rollout::CHANGE_CAUSE.into(), json!(cause));
    }
    let name = rs.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": annotations}})),
    )
    .await
    .map_err(write_err(format!("annotations of replicaset {name}")))
}

/// Keeps the Deployment's revision annotation equal to its newest ReplicaSet's.
async fn set_deployment_revision(
    d: &Deployment,
    revision: &str,
    ctx: &Context,
) -> Result<(), ControllerError> {
    if annotation(&d.metadata, rollout::REVISION) == Some(revision) {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(
        ctx.client.clone(),
        d.metadata.namespace.as_deref().unwrap_or(""),
    );
    let name = d.metadata.name.as_deref().unwrap_or("");
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {rollout::REVISION: revision}}})),
    )
    .await
    .map_err(write_err(format!("revision of deployment {name}")))?;
    Ok(())
}

/// Sets one ReplicaSet's replicas (and records the ScalingReplicaSet event).
async fn scale(
    d: &Deployment,
    ctx: &Context,
    api: &Api<ReplicaSet>,
    key: &str,
    rs: &ReplicaSet,
    replicas: i32,
) -> Result<(), ControllerError> {
    let from = rollout::spec_replicas(rs);
    if from == replicas {
        return Ok(());
    }
    let name = rs.metadata.name.clone().unwrap_or_default();
    let s = rollout::settings(d);
    let patch = json!({
        "metadata": {"annotations": {
            rollout::DESIRED_REPLICAS: s.replicas.to_string(),
            rollout::MAX_REPLICAS: (s.replicas + s.max_surge).to_string(),
        }},
        "spec": {"replicas": replicas},
    });
    let updated = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(write_err(format!("replicas of replicaset {name}")))?;
    ctx.expect(key, &updated);
    let direction = if replicas > from { "up" } else { "down" };
    ctx.recorder
        .record(
            &reference("apps/v1", "Deployment", &d.metadata),
            EventType::Normal,
            "ScalingReplicaSet",
            &format!("Scaled {direction} replica set {name} from {from} to {replicas}"),
        )
        .await;
    Ok(())
}

/// Recreate: all old pods gone first, then the new ReplicaSet scaled up.
async fn recreate(
    d: &Deployment,
    ctx: &Context,
    api: &Api<ReplicaSet>,
    key: &str,
    s: &Settings,
    new: &ReplicaSet,
    old: &[Arc<ReplicaSet>],
) -> Result<(), ControllerError> {
    for rs in old {
        scale(d, ctx, api, key, rs, 0).await?;
    }
    let old_pods_gone = old.iter().all(|rs| {
        rs.status
            .as_ref()
            .is_none_or(|st| st.replicas == 0 && st.observed_generation >= rs.metadata.generation)
            && rollout::spec_replicas(rs) == 0
    });
    if old_pods_gone {
        scale(d, ctx, api, key, new, s.replicas).await?;
    }
    Ok(())
}

/// RollingUpdate: grow the new ReplicaSet within maxSurge, shrink old ones within maxUnavailable.
async fn rolling_update(
    d: &Deployment,
    ctx: &Context,
    api: &Api<ReplicaSet>,
    key: &str,
    s: &Settings,
    new: &ReplicaSet,
    old: &[Arc<ReplicaSet>],
) -> Result<(), ControllerError> {
    let old_total: i32 = old.iter().map(|rs| rollout::accounted(rs)).sum();
    let new_current = rollout::spec_replicas(new);
    let total = old_total + rollout::accounted(new);
    let target = rollout::new_rs_replicas(s, new_current, total);
    if target != new_current {
        scale(d, ctx, api, key, new, target).await?;
        return Ok(());
    }
    if old.iter().all(|rs| rollout::spec_replicas(rs) == 0) {
        return Ok(());
    }
    // Old pods that are not available can go as long as the total stays at or above what the
    // new ReplicaSet still lacks in availability; available ones only within maxUnavailable.
    let min_available = s.replicas - s.max_unavailable;
    let new_unavailable = (rollout::spec_replicas(new) - rollout::available(new)).max(0);
    let all_pods: i32 = total;
    let mut unhealthy_budget = (all_pods - min_available - new_unavailable).max(0);
    let mut olds: Vec<&Arc<ReplicaSet>> = old.iter().collect();
    olds.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let mut planned: HashMap<String, i32> = HashMap::new();
    for rs in &olds {
        let spec = rollout::spec_replicas(rs);
        let unhealthy = (spec - rollout::available(rs)).max(0);
        let cut = unhealthy.min(unhealthy_budget);
        if cut > 0 {
            unhealthy_budget -= cut;
            planned.insert(rs.metadata.name.clone().unwrap_or_default(), spec - cut);
        }
    }
    let available_total: i32 =
        old.iter().map(|rs| rollout::available(rs)).sum::<i32>() + rollout::available(new);
    let mut budget = rollout::old_scale_down_budget(s, available_total);
    for rs in &olds {
        let name = rs.metadata.name.clone().unwrap_or_default();
        let current = planned
            .get(&name)
            .copied()
            .unwrap_or_else(|| rollout::spec_replicas(rs));
        let cut = current.min(budget);
        if cut > 0 {
            budget -= cut;
            planned.insert(name, current - cut);
        }
    }
    for rs in olds {
        if let Some(&replicas) = planned.get(rs.metadata.name.as_deref().unwrap_or("")) {
            scale(d, ctx, api, key, rs, replicas).await?;
        }
    }
    Ok(())
}

/// Deletes the oldest empty old ReplicaSets beyond revisionHistoryLimit (best effort).
async fn cleanup(ctx: &Context, api: &Api<ReplicaSet>, s: &Settings, old: &[Arc<ReplicaSet>]) {
    let mut empty: Vec<&Arc<ReplicaSet>> = old
        .iter()
        .filter(|rs| rollout::spec_replicas(rs) == 0)
        .filter(|rs| rs.status.as_ref().is_none_or(|st| st.replicas == 0))
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let limit = usize::try_from(s.revision_history_limit).unwrap_or(0);
    if empty.len() <= limit {
        return;
    }
    empty.sort_by_key(|rs| rollout::revision(rs));
    let excess = empty.len() - limit;
    for rs in empty.into_iter().take(excess) {
        let name = rs.metadata.name.clone().unwrap_or_default();
        if let Err(error) = api.delete(&name, &DeleteParams::default()).await {
            tracing::debug!(%error, name, "could not prune an old replicaset");
        }
    }
    let _ = ctx;
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_))
}

/// Updated, current and available: what `rollout status` waits for.
fn is_complete(d: &Deployment, s: &Settings, status: &DeploymentStatus) -> bool {
    let updated = status.updated_replicas.unwrap_or(0);
    updated == s.replicas
        && status.replicas.unwrap_or(0) == s.replicas
        && status.available_replicas.unwrap_or(0) >= s.replicas
        && status.observed_generation >= d.metadata.generation
}

/// Builds a condition, keeping lastTransitionTime when the status did not flip.
fn set_condition(
    previous: Option<&DeploymentCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
    touch: bool,
) -> DeploymentCondition {
    let same = previous.is_some_and(|p| p.status.as_deref() == Some(status));
    let same_reason = same && previous.is_some_and(|p| p.reason.as_deref() == Some(reason));
    DeploymentCondition {
        type_: Some(type_.to_string()),
        status: Some(status.to_string()),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: if same {
            previous.and_then(|p| p.last_transition_time.clone())
        } else {
            Some(now.clone())
        },
        last_update_time: if same_reason && !touch {
            previous.and_then(|p| p.last_update_time.clone())
        } else {
            Some(now.clone())
        },
    }
}

fn compute_status(
    d: &Deployment,
    s: &Settings,
    new: Option<&ReplicaSet>,
    owned: &[Arc<ReplicaSet>],
    created: bool,
    now: Timestamp,
) -> DeploymentStatus {
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| owned.iter().map(|rs| f(rs)).sum::<i32>();
    let replicas = sum(&|rs| rs.status.as_ref().map_or(0, |st| st.replicas));
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|st| st.ready_replicas)
            .unwrap_or(0)
    });
    let available = sum(&|rs| rollout::available(rs));
    let updated = new
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |st| st.replicas);
    let previous = d.status.clone().unwrap_or_default();
    let t = Time(now);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((s.replicas - available).max(0)),
        collision_count: previous.collision_count,
        conditions: None,
        terminating_replicas: None,
    };
    let min_available = s.replicas - s.max_unavailable;
    let available_cond = if available >= min_available {
        set_condition(
            condition(&previous, "Available"),
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            &t,
            false,
        )
    } else {
        set_condition(
            condition(&previous, "Available"),
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            &t,
            false,
        )
    };
    let rs_name = new
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let prev_progress = condition(&previous, "Progressing");
    let progressed = updated > previous.updated_replicas.unwrap_or(0)
        || replicas < previous.replicas.unwrap_or(0)
        || ready > previous.ready_replicas.unwrap_or(0)
        || available > previous.available_replicas.unwrap_or(0);
    let progress_cond = if s.paused {
        Some(set_condition(
            prev_progress,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            &t,
            false,
        ))
    } else if is_complete(d, s, &status) {
        Some(set_condition(
            prev_progress,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            &t,
            false,
        ))
    } else if created {
        Some(set_condition(
            prev_progress,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{rs_name}\""),
            &t,
            true,
        ))
    } else if progressed
        || prev_progress.is_none_or(|c| {
            matches!(
                c.reason.as_deref(),
                Some("NewReplicaSetAvailable" | "DeploymentPaused")
            )
        })
    {
        // A new rollout (or a resume) starts the clock; every step forward restarts it.
        Some(set_condition(
            prev_progress,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_name}\" is progressing."),
            &t,
            true,
        ))
    } else {
        let last = prev_progress
            .and_then(|c| c.last_update_time.as_ref())
            .map(|t| t.0);
        let overdue = match (s.progress_deadline_seconds, last) {
            (Some(limit), Some(last)) => now.duration_since(last).as_secs() > i64::from(limit),
            _ => false,
        };
        if overdue {
            Some(set_condition(
                prev_progress,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                &t,
                false,
            ))
        } else {
            prev_progress.cloned()
        }
    };
    let mut conditions = vec![available_cond];
    conditions.extend(progress_cond);
    status.conditions = Some(conditions);
    status
}
