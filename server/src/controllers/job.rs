//! The Job control loop: runs a Job's pods until `completions` of them succeeded (or, without
//! `completions`, until one succeeded and the rest finished), at most `parallelism` at a time, and
//! gives up after `backoffLimit` failures or `activeDeadlineSeconds`; deletes finished Jobs after
//! `ttlSecondsAfterFinished`.
//!
//! Watches Jobs and pods (one shared pod cache); owns the pods it creates (`ownerReferences` with
//! `controller: true`), named `<job>-<random>`. Conditions follow 1.31+: a Job first gets
//! `SuccessCriteriaMet` or `FailureTarget` (and its remaining pods are deleted), and `Complete`
//! or `Failed` only once none of its pods is still running or terminating. Failures are failed
//! pods, plus container restarts of running pods when the template's `restartPolicy` is
//! `OnFailure`. Failed pods are replaced after an exponential back-off (`base`, doubled per
//! failure, at most 6 minutes), as upstream does. With `completionMode: Indexed` every pod gets
//! an index (annotation and label `batch.kubernetes.io/job-completion-index`, env
//! `JOB_COMPLETION_INDEX`, hostname `<job>-<index>`, name `<job>-<index>-<random>`); the Job is
//! complete once every index in `0..completions` has a succeeded pod (`status.completedIndexes`).
//! Jobs with `spec.managedBy` naming another controller are left to it.
//!
//! Invariants: pods are created or deleted only when [`Expectations`] are met, so a lagging cache
//! never doubles them; a finished Job (`Complete` or `Failed`) never gets new pods; status is
//! written only when it changed, with the resourceVersion it was computed from.
//!
//! Finished pods are counted through a finalizer, as upstream: every pod carries
//! [`TRACKING`]; a pod that finished (or was deleted by someone else while the Job runs: counted
//! failed) is first recorded by uid in `status.uncountedTerminatedPods`, then loses the finalizer,
//! and only then moves into `succeeded`/`failed`. So a finished pod deleted early (pod GC,
//! `kubectl delete`) is still counted, and never twice. Pods of a finished, deleted or vanished
//! Job lose the finalizer without being counted ([`release_orphans`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use super::cache;
use super::events::{EventType, Recorder, reference};
use super::expectations::Expectations;
use super::informer::Informers;
use super::{ControllerError, pods};

/// Most pods created in one reconcile.
const BURST: usize = 500;
/// The longest back-off before a failed pod is replaced.
const MAX_BACKOFF: Duration = Duration::from_secs(360);

pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub expectations: Expectations,
    pub recorder: Recorder,
    /// The first back-off after a failed pod (upstream: 10 s).
    pub backoff_base: Duration,
}

/// What a Job's pods add up to at one moment.
struct Tally {
    active: Vec<Arc<Pod>>,
    terminating: usize,
    succeeded: i32,
    failed: i32,
    /// Failures counted against backoffLimit (failed pods, plus restarts under OnFailure).
    failures: i64,
    ready: i32,
    /// When the most recent failure happened, if any pod failed.
    last_failure: Option<Timestamp>,
    /// Indexed Jobs: the indexes with a succeeded pod.
    completed: BTreeSet<i32>,
}

/// The finalizer that keeps a Job's pod until the Job counted it (upstream's name).
pub const TRACKING: &str = "batch.kubernetes.io/job-tracking";

/// How often pods of deleted Jobs are looked for (their Job no longer reconciles them).
const ORPHAN_SWEEP: Duration = Duration::from_secs(2);

/// The index of a pod of an Indexed Job (annotation and label; upstream's name).
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(COMPLETION_INDEX)?
        .parse()
        .ok()
}

/// `0-2,4` → {0, 1, 2, 4} (malformed parts are ignored).
fn parse_indexes(text: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(low), Ok(high)) = (low.parse::<i32>(), high.parse::<i32>()) {
            out.extend(low..=high.min(low.saturating_add(1_000_000)));
        }
    }
    out
}

/// {0, 1, 2, 4} → `0-2,4`.
fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in set {
        run = match run {
            Some((low, high)) if i == high + 1 => Some((low, i)),
            Some(done) => {
                parts.push(range_text(done));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some(done) = run {
        parts.push(range_text(done));
    }
    parts.join(",")
}

fn range_text((low, high): (i32, i32)) -> String {
    if low == high {
        low.to_string()
    } else {
        format!("{low}-{high}")
    }
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn has_tracking(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING)
}

/// What the Job counted so far: `(succeeded, failed)` moved into the counters, and the uids
/// recorded but not yet released.
struct Counted {
    succeeded: i32,
    failed: i32,
    uncounted: UncountedTerminatedPods,
}

impl Counted {
    /// The stored counts, with every recorded uid whose pod no longer holds the finalizer
    /// (released, or gone) moved into the counters.
    fn settle(previous: &JobStatus, owned: &[Arc<Pod>]) -> Counted {
        let holding: HashSet<&str> = owned
            .iter()
            .filter(|p| has_tracking(p))
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let recorded = previous
            .uncounted_terminated_pods
            .clone()
            .unwrap_or_default();
        let split = |uids: Option<Vec<String>>| -> (i32, Vec<String>) {
            let (released, kept): (Vec<String>, Vec<String>) = uids
                .unwrap_or_default()
                .into_iter()
                .partition(|u| !holding.contains(u.as_str()));
            (count(released.len()), kept)
        };
        let (s, s_kept) = split(recorded.succeeded);
        let (f, f_kept) = split(recorded.failed);
        Counted {
            succeeded: previous.succeeded.unwrap_or(0) + s,
            failed: previous.failed.unwrap_or(0) + f,
            uncounted: UncountedTerminatedPods {
                succeeded: Some(s_kept),
                failed: Some(f_kept),
            },
        }
    }

    fn pending(&self) -> (i32, i32) {
        let n = |v: &Option<Vec<String>>| count(v.as_ref().map_or(0, Vec::len));
        (n(&self.uncounted.succeeded), n(&self.uncounted.failed))
    }
}

fn tally(job: &Job, owned: &[Arc<Pod>], counted: &Counted) -> Tally {
    let on_failure = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let active: Vec<Arc<Pod>> = owned
        .iter()
        .filter(|p| pods::is_active(p))
        .cloned()
        .collect();
    let terminating = owned
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_some()
                && !matches!(phase(p), Some("Succeeded" | "Failed"))
        })
        .count();
    let previous = job.status.clone().unwrap_or_default();
    let (pending_succeeded, pending_failed) = counted.pending();
    // Pods that predate tracking have no finalizer: what the cache shows still counts for them.
    let succeeded = count(
        owned
            .iter()
            .filter(|p| phase(p) == Some("Succeeded"))
            .count(),
    )
    .max(counted.succeeded + pending_succeeded);
    let failed_pods: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| phase(p) == Some("Failed"))
        .collect();
    let failed = count(failed_pods.len()).max(counted.failed + pending_failed);
    let restarts: i64 = if on_failure {
        active
            .iter()
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .map(|c| i64::from(c.restart_count))
            .sum()
    } else {
        0
    };
    let last_failure = failed_pods.iter().filter_map(|p| finished_at(p)).max();
    let indexed = job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed");
    let mut completed = BTreeSet::new();
    let mut succeeded = succeeded;
    if indexed {
        let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(0);
        completed = parse_indexes(previous.completed_indexes.as_deref().unwrap_or(""));
        completed.extend(
            owned
                .iter()
                .filter(|p| phase(p) == Some("Succeeded"))
                .filter_map(|p| index_of(p)),
        );
        completed.retain(|i| (0..completions).contains(i));
        succeeded = count(completed.len());
    }
    Tally {
        completed,
        ready: count(active.iter().filter(|p| pods::is_ready(p)).count()),
        active,
        terminating,
        succeeded,
        failed,
        failures: i64::from(failed) + restarts,
        last_failure,
    }
}

/// When a pod finished: its last container termination, else its Ready/phase change, else its
/// creation.
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let terminated = status
        .into_iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let condition = status
        .into_iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
        .max();
    terminated
        .or(condition)
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn condition<'a>(status: &'a JobStatus, kind: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind && c.status == "True")
}

/// Sets condition `kind` to `status` (keeping the transition time when it did not change).
fn set_condition(
    conditions: &mut Vec<JobCondition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == kind) {
        // Unchanged conditions are left alone, so an unchanged Job never causes a write.
        let same = c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message);
        if !same {
            if c.status != status {
                c.last_transition_time = Some(Time(now));
            }
            c.status = status.into();
            c.last_probe_time = Some(Time(now));
            c.reason = Some(reason.into());
            c.message = Some(message.into());
        }
        return;
    }
    conditions.push(JobCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
}

/// True once the Job has its final `Complete` or `Failed` condition.
pub fn is_finished(job: &Job) -> bool {
    finish_time(job).is_some()
}

/// When the Job got `Complete` or `Failed`.
pub fn finish_time(job: &Job) -> Option<Timestamp> {
    let status = job.status.as_ref()?;
    ["Complete", "Failed"]
        .iter()
        .find_map(|k| condition(status, k))
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
        })
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    cache::synced(&ctx.pods).await?;
    let managed_by = job.spec.as_ref().and_then(|s| s.managed_by.as_deref());
    let foreign = managed_by.is_some_and(|m| m != "kubernetes.io/job-controller");
    if job.metadata.deletion_timestamp.is_some() || foreign {
        return Ok(Action::await_change());
    }
    let key = pods::key(&job.metadata);
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let now = Timestamp::now();
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|p| pods::controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    if let Some(done) = finish_time(&job) {
        // A finished Job counts nothing more: its pods are simply let go.
        for pod in owned.iter().filter(|p| has_tracking(p)) {
            release(&ctx.client, pod).await;
        }
        return expire(&job, &ctx, done, now).await;
    }
    if record_finished(&job, &ctx, &owned).await? {
        // The status write brings the Job back with the uids recorded.
        return Ok(Action::await_change());
    }
    let counted = Counted::settle(job.status.as_ref().unwrap_or(&JobStatus::default()), &owned);
    let recorded: HashSet<&str> = [&counted.uncounted.succeeded, &counted.uncounted.failed]
        .into_iter()
        .flatten()
        .flatten()
        .map(String::as_str)
        .collect();
    let stopping = stopping(job.status.as_ref());
    for pod in owned.iter().filter(|p| has_tracking(p)) {
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        let terminal = matches!(phase(pod), Some("Succeeded" | "Failed"));
        // Recorded ones go; so do pods this Job deletes itself while stopping (not failures).
        if recorded.contains(uid)
            || (stopping && !terminal && pod.metadata.deletion_timestamp.is_some())
        {
            release(&ctx.client, pod).await;
        }
    }
    let t = tally(&job, &owned, &counted);
    let names: HashSet<String> = owned
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let uids: HashSet<String> = t
        .active
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let settled = ctx.expectations.satisfied(&key, &names, &uids);

    let spec = job.spec.clone().unwrap_or_default();
    let previous = job.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let mut conditions = previous.conditions.clone().unwrap_or_default();
    let suspended = spec.suspend == Some(true);
    let backoff_limit = i64::from(spec.backoff_limit.unwrap_or(6));
    let deadline = spec
        .active_deadline_seconds
        .zip(previous.start_time.as_ref())
        .map(|(secs, start)| start.0 + k8s_openapi::jiff::SignedDuration::from_secs(secs));
    let job_ref = reference("batch/v1", "Job", &job.metadata);
    // Finished only once every finished pod is counted, so the final counts are the real ones.
    let all_stopped = t.active.is_empty() && t.terminating == 0 && counted.pending() == (0, 0);
    let mut requeue: Option<Duration> = None;
    let mut failure = None;

    let failure_target = condition(&previous, "FailureTarget").map(|c| {
        (
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    });
    let failing = failure_target.or_else(|| {
        if t.failures > backoff_limit {
            Some((
                "BackoffLimitExceeded".to_string(),
                "Job has reached the specified backoff limit".to_string(),
            ))
        } else if !suspended && deadline.is_some_and(|d| d <= now) {
            Some((
                "DeadlineExceeded".to_string(),
                "Job was active longer than specified deadline".to_string(),
            ))
        } else {
            None
        }
    });
    let succeeding = condition(&previous, "SuccessCriteriaMet").is_some()
        || match spec.completions {
            Some(c) => t.succeeded >= c,
            None => t.succeeded > 0 && t.active.is_empty(),
        };

    if let Some((reason, message)) = failing {
        set_condition(
            &mut conditions,
            "FailureTarget",
            "True",
            &reason,
            &message,
            now,
        );
        delete_pods(&job, &ctx, &key, &t.active, t.active.len()).await?;
        if all_stopped {
            set_condition(&mut conditions, "Failed", "True", &reason, &message, now);
            ctx.recorder
                .record(&job_ref, EventType::Warning, &reason, &message)
                .await;
        }
    } else if succeeding {
        let (reason, message) = (
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        set_condition(
            &mut conditions,
            "SuccessCriteriaMet",
            "True",
            reason,
            message,
            now,
        );
        delete_pods(&job, &ctx, &key, &t.active, t.active.len()).await?;
        if all_stopped {
            set_condition(&mut conditions, "Complete", "True", reason, message, now);
            status.completion_time = Some(Time(now));
            ctx.recorder
                .record(&job_ref, EventType::Normal, "Completed", "Job completed")
                .await;
        }
    } else if suspended {
        delete_pods(&job, &ctx, &key, &t.active, t.active.len()).await?;
        set_condition(
            &mut conditions,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            now,
        );
        // Suspension stops (and resets) the activeDeadlineSeconds timer.
        status.start_time = None;
    } else {
        if conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            set_condition(
                &mut conditions,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            );
        }
        let start = status.start_time.get_or_insert(Time(now)).0;
        if let Some(secs) = spec.active_deadline_seconds {
            let end = start + k8s_openapi::jiff::SignedDuration::from_secs(secs);
            requeue = Some(
                end.duration_since(now)
                    .unsigned_abs()
                    .max(Duration::from_millis(100)),
            );
        }
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        if settled && indexed {
            let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
            let running: BTreeSet<i32> = t.active.iter().filter_map(|p| index_of(p)).collect();
            let todo: Vec<Option<i32>> = (0..spec.completions.unwrap_or(0))
                .filter(|i| !t.completed.contains(i) && !running.contains(i))
                .take(parallelism.saturating_sub(t.active.len()))
                .map(Some)
                .collect();
            if t.active.len() > parallelism {
                let extra = t.active.len() - parallelism;
                delete_pods(&job, &ctx, &key, &t.active, extra).await?;
            } else if !todo.is_empty() {
                match backoff_left(&ctx, &t, now) {
                    Some(wait) => requeue = Some(requeue.map_or(wait, |r| r.min(wait))),
                    None => failure = create_pods(&job, &ctx, &key, todo).await.err(),
                }
            }
        } else if settled {
            let parallelism = usize::try_from(spec.parallelism.unwrap_or(1).max(0)).unwrap_or(0);
            let want = match spec.completions {
                Some(c) => parallelism.min(usize::try_from((c - t.succeeded).max(0)).unwrap_or(0)),
                // A work queue: once one pod succeeded, the others only finish.
                None if t.succeeded > 0 => t.active.len(),
                None => parallelism,
            };
            if t.active.len() > want {
                let extra = t.active.len() - want;
                delete_pods(&job, &ctx, &key, &t.active, extra).await?;
            } else if t.active.len() < want {
                match backoff_left(&ctx, &t, now) {
                    Some(wait) => requeue = Some(requeue.map_or(wait, |r| r.min(wait))),
                    None => {
                        let todo = vec![None; want - t.active.len()];
                        failure = create_pods(&job, &ctx, &key, todo).await.err();
                    }
                }
            }
        } else {
            requeue =
                Some(requeue.map_or(Duration::from_secs(5), |r| r.min(Duration::from_secs(5))));
        }
    }

    status.active = (!t.active.is_empty()).then(|| count(t.active.len()));
    // The counters hold released pods only; recorded ones are in uncountedTerminatedPods.
    let (pending_succeeded, pending_failed) = counted.pending();
    let succeeded = t.succeeded - pending_succeeded;
    let failed = t.failed - pending_failed;
    status.succeeded = (succeeded > 0).then_some(succeeded);
    status.failed = (failed > 0).then_some(failed);
    status.uncounted_terminated_pods = Some(counted.uncounted.clone());
    status.ready = Some(t.ready);
    if spec.completion_mode.as_deref() == Some("Indexed") {
        let text = format_indexes(&t.completed);
        status.completed_indexes = (!text.is_empty()).then_some(text);
    }
    status.terminating = Some(count(t.terminating));
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    if job.status.as_ref() != Some(&status) {
        write_status(&job, &ctx, status).await?;
    }
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// True once the Job decided its outcome (its remaining pods are being stopped by it).
fn stopping(status: Option<&JobStatus>) -> bool {
    status.is_some_and(|s| {
        condition(s, "SuccessCriteriaMet").is_some() || condition(s, "FailureTarget").is_some()
    })
}

/// Records by uid, in `uncountedTerminatedPods`, every pod that finished (or that someone else
/// deleted while the Job runs) and still holds the finalizer; true if the status was written.
async fn record_finished(
    job: &Job,
    ctx: &Context,
    owned: &[Arc<Pod>],
) -> Result<bool, ControllerError> {
    let previous = job.status.clone().unwrap_or_default();
    let mut uncounted = previous
        .uncounted_terminated_pods
        .clone()
        .unwrap_or_default();
    let known: HashSet<String> = [&uncounted.succeeded, &uncounted.failed]
        .into_iter()
        .flatten()
        .flatten()
        .cloned()
        .collect();
    let stopping = stopping(Some(&previous));
    let mut indexes = parse_indexes(previous.completed_indexes.as_deref().unwrap_or(""));
    let mut added = false;
    for pod in owned.iter().filter(|p| has_tracking(p)) {
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        if known.contains(&uid) {
            continue;
        }
        let list = match phase(pod) {
            Some("Succeeded") => {
                indexes.extend(index_of(pod));
                &mut uncounted.succeeded
            }
            Some("Failed") => &mut uncounted.failed,
            _ if pod.metadata.deletion_timestamp.is_some() && !stopping => &mut uncounted.failed,
            _ => continue,
        };
        list.get_or_insert_with(Vec::new).push(uid);
        added = true;
    }
    if !added {
        return Ok(false);
    }
    let mut status = previous;
    status.uncounted_terminated_pods = Some(uncounted);
    let indexed = job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed");
    if indexed {
        let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(0);
        indexes.retain(|i| (0..completions).contains(i));
        let text = format_indexes(&indexes);
        status.completed_indexes = (!text.is_empty()).then_some(text);
    }
    write_status(job, ctx, status).await?;
    Ok(true)
}

/// Removes [`TRACKING`] from `pod` (conditional on the resourceVersion seen, so a concurrent
/// change is not overwritten; the next event retries).
async fn release(client: &kube::Client, pod: &Pod) {
    let meta = &pod.metadata;
    let rest: Vec<&String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != TRACKING)
        .collect();
    let patch = serde_json::json!({"metadata": {"finalizers": rest,
        "resourceVersion": meta.resource_version}});
    let api: Api<Pod> = Api::namespaced(client.clone(), meta.namespace.as_deref().unwrap_or(""));
    match api
        .patch(
            meta.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(error) => tracing::info!(%error, "could not release a job pod"),
    }
}

/// Pods holding [`TRACKING`] whose Job is gone, replaced or being deleted lose the finalizer
/// (their Job will never count them). Runs until the pod cache's owner stops polling it.
async fn release_orphans(client: kube::Client, pods: Store<Pod>) {
    loop {
        tokio::time::sleep(ORPHAN_SWEEP).await;
        let mut jobs: HashMap<(String, String), Option<Job>> = HashMap::new();
        // Only finished or deleted pods: a running one of a deleted Job gets deleted by the GC
        // first, and the Job reconciles its own.
        let candidates = pods.state().into_iter().filter(|p| {
            has_tracking(p)
                && (p.metadata.deletion_timestamp.is_some()
                    || matches!(phase(p), Some("Succeeded" | "Failed")))
        });
        for pod in candidates {
            let Some(owner) = pods::controller_of(&pod.metadata).filter(|o| o.kind == "Job") else {
                continue;
            };
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let key = (namespace.clone(), owner.name.clone());
            if !jobs.contains_key(&key) {
                let api: Api<Job> = Api::namespaced(client.clone(), &namespace);
                match api.get_opt(&owner.name).await {
                    Ok(job) => {
                        jobs.insert(key.clone(), job);
                    }
                    Err(error) => {
                        tracing::debug!(%error, "could not read a job");
                        continue;
                    }
                }
            }
            let live = jobs.get(&key).and_then(Option::as_ref).is_some_and(|j| {
                j.metadata.uid.as_deref() == Some(owner.uid.as_str())
                    && j.metadata.deletion_timestamp.is_none()
            });
            if !live {
                release(&client, &pod).await;
            }
        }
    }
}

/// How long failed pods still hold back replacements (none when no back-off is left).
fn backoff_left(ctx: &Context, t: &Tally, now: Timestamp) -> Option<Duration> {
    let last = t.last_failure?;
    if t.failures <= 0 {
        return None;
    }
    let exponent = u32::try_from((t.failures - 1).min(16)).unwrap_or(16);
    let delay = ctx
        .backoff_base
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_BACKOFF);
    let elapsed = now.duration_since(last).unsigned_abs();
    (elapsed < delay).then(|| delay - elapsed)
}

/// A finished Job: deleted once `ttlSecondsAfterFinished` passed, otherwise looked at again then.
async fn expire(
    job: &Job,
    ctx: &Context,
    done: Timestamp,
    now: Timestamp,
) -> Result<Action, ControllerError> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let expiry = done + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(ttl));
    if expiry > now {
        return Ok(Action::requeue(
            expiry
                .duration_since(now)
                .unsigned_abs()
                .max(Duration::from_millis(100)),
        ));
    }
    let namespace = job.metadata.namespace.as_deref().unwrap_or("");
    let name = job.metadata.name.as_deref().unwrap_or("");
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: job.metadata.uid.clone(),
            resource_version: job.metadata.resource_version.clone(),
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(source) => {
            return Err(ControllerError::Write {
                what: format!("deleting finished job {namespace}/{name}"),
                source,
            });
        }
    }
    ctx.expectations.forget(&pods::key(&job.metadata));
    Ok(Action::await_change())
}

async fn write_status(job: &Job, ctx: &Context, status: JobStatus) -> Result<(), ControllerError> {
    let namespace = job.metadata.namespace.as_deref().unwrap_or("");
    let name = job.metadata.name.as_deref().unwrap_or("");
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let mut updated = job.clone();
    updated.status = Some(status);
    api.replace_status(name, &PostParams::default(), &updated)
        .await
        .map_err(|source| ControllerError::Write {
            what: format!("status of job {namespace}/{name}"),
            source,
        })?;
    Ok(())
}

/// Creates one pod per entry of `indexes` (at most [`BURST`]; `None` for a pod without an index)
/// in slow-start batches; stops at the first failure.
async fn create_pods(
    job: &Job,
    ctx: &Context,
    key: &str,
    indexes: Vec<Option<i32>>,
) -> Result<(), ControllerError> {
    let namespace = job.metadata.namespace.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let job_ref = reference("batch/v1", "Job", &job.metadata);
    let params = PostParams::default();
    let mut pending = indexes
        .into_iter()
        .take(BURST)
        .map(|i| pod_from_template(job, i));
    let mut remaining = pending.len();
    let mut batch = 1;
    while remaining > 0 {
        let size = batch.min(remaining);
        let chunk: Vec<Pod> = pending.by_ref().take(size).collect();
        let results =
            futures::future::join_all(chunk.iter().map(|pod| api.create(&params, pod))).await;
        for result in results {
            match result {
                Ok(pod) => {
                    let name = pod.metadata.name.unwrap_or_default();
                    ctx.expectations.created(key, &name);
                    let msg = format!("Created pod: {name}");
                    ctx.recorder
                        .record(&job_ref, EventType::Normal, "SuccessfulCreate", &msg)
                        .await;
                }
                Err(source) => {
                    let msg = format!("Error creating: {source}");
                    ctx.recorder
                        .record(&job_ref, EventType::Warning, "FailedCreate", &msg)
                        .await;
                    return Err(ControllerError::Write {
                        what: format!("pod for job {key}"),
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

/// Deletes `count` of `active`, the not-yet-running and newest first.
async fn delete_pods(
    job: &Job,
    ctx: &Context,
    key: &str,
    active: &[Arc<Pod>],
    count: usize,
) -> Result<(), ControllerError> {
    if count == 0 {
        return Ok(());
    }
    let namespace = job.metadata.namespace.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let job_ref = reference("batch/v1", "Job", &job.metadata);
    let mut ranked: Vec<&Arc<Pod>> = active.iter().collect();
    ranked.sort_by_key(|p| {
        let running = u8::from(phase(p) == Some("Running"));
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        (running, std::cmp::Reverse(created))
    });
    for pod in ranked.into_iter().take(count) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        ctx.expectations.deleted(key, &uid);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                let msg = format!("Deleted pod: {name}");
                ctx.recorder
                    .record(&job_ref, EventType::Normal, "SuccessfulDelete", &msg)
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(source) => {
                return Err(ControllerError::Write {
                    what: format!("deleting pod {namespace}/{name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The pod a Job creates: its template, named `<job>-<random>` (`<job>-<index>-<random>` with an
/// index), owned by it.
fn pod_from_template(job: &Job, index: Option<i32>) -> Pod {
    let template = job.spec.clone().unwrap_or_default().template;
    let meta = template.metadata.unwrap_or_default();
    let job_name = job.metadata.name.as_deref().unwrap_or("job");
    let mut labels = meta.labels;
    let mut annotations = meta.annotations;
    let mut spec = template.spec;
    let mut prefix = format!("{job_name}-");
    if let Some(i) = index {
        prefix = format!("{job_name}-{i}-");
        let value = i.to_string();
        labels
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), value.clone());
        annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.into(), value.clone());
        if let Some(spec) = spec.as_mut() {
            spec.hostname
                .get_or_insert_with(|| format!("{job_name}-{i}"));
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                let env = c.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    env.push(k8s_openapi::api::core::v1::EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: Some(value.clone()),
                        value_from: None,
                    });
                }
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: job.metadata.namespace.clone(),
            labels,
            annotations,
            finalizers: Some({
                let mut f = meta.finalizers.unwrap_or_default();
                f.push(TRACKING.into());
                f
            }),
            owner_references: Some(vec![pods::controller_ref("batch/v1", "Job", &job.metadata)]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

fn error_policy(_job: Arc<Job>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "job reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the Job control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    informers: &Informers,
    backoff_base: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pod_store, pod_events) = (informers.pods.store(), informers.pods.subscribe());
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store,
        expectations: Expectations::default(),
        recorder: Recorder::new(client.clone(), "job-controller"),
        backoff_base,
    });
    let orphans = release_orphans(client.clone(), ctx.pods.clone());
    let controller = Controller::new(Api::<Job>::all(client), watcher::Config::default())
        .owns_shared_stream(pod_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {});
    tokio::select! {
        () = controller => {}
        () = orphans => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec, PodStatus, PodTemplateSpec};

    fn job(restart: &str) -> Job {
        Job {
            spec: Some(JobSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        restart_policy: Some(restart.into()),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            ..Job::default()
        }
    }

    fn pod(phase: &str, restarts: i32) -> Arc<Pod> {
        Arc::new(Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    restart_count: restarts,
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        })
    }

    #[test]
    fn failures_count_restarts_only_under_on_failure() {
        let owned = [pod("Running", 3), pod("Failed", 0), pod("Succeeded", 0)];
        let counted = Counted::settle(&JobStatus::default(), &owned);
        let never = tally(&job("Never"), &owned, &counted);
        assert_eq!(
            (never.active.len(), never.succeeded, never.failed),
            (1, 1, 1)
        );
        assert_eq!(never.failures, 1);
        assert_eq!(tally(&job("OnFailure"), &owned, &counted).failures, 4);
    }

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set = parse_indexes("0-2,4,7-8");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 4, 7, 8]);
        assert_eq!(format_indexes(&set), "0-2,4,7-8");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        let mut indexed = job("Never");
        indexed.metadata.name = Some("work".into());
        let pod = pod_from_template(&indexed, Some(3));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("work-3-"));
        assert_eq!(index_of(&pod), Some(3));
        assert_eq!(pod.spec.and_then(|s| s.hostname).as_deref(), Some("work-3"));
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("ts");
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            t0,
        );
        set_condition(
            &mut cs,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            t1,
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, Some(Time(t0)));
        set_condition(
            &mut cs,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
            t1,
        );
        assert_eq!(cs[0].last_transition_time, Some(Time(t1)));
    }
}
