//! The CronJob control loop: creates a Job from `spec.jobTemplate` at each time `spec.schedule`
//! names (in `spec.timeZone`, UTC by default), named `<cronjob>-<scheduled minutes since the
//! epoch>`, and keeps `status` (`active`, `lastScheduleTime`, `lastSuccessfulTime`) and the
//! finished Jobs within the history limits.
//!
//! Watches CronJobs and Jobs (one shared Job cache). For each CronJob it takes the latest
//! scheduled time after `lastScheduleTime` (or creation) and not after now (missed earlier times
//! are skipped, as upstream skips them), and not older than `startingDeadlineSeconds`; with
//! `concurrencyPolicy: Forbid` it waits while a Job of the CronJob runs, with `Replace` it deletes
//! the running ones first; `suspend` stops new runs only. Time comes from an injectable
//! [`Clock`], and a CronJob is looked at again at its next scheduled time (at most
//! `max_requeue` later), so tests can move time forward instead of waiting.
//!
//! Invariants: a scheduled time creates at most one Job (the name is derived from it, and
//! `lastScheduleTime` moves past it only after the Job exists); a Job listed in `status.active`
//! is dropped only once the cache shows it finished or a live read shows it gone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use super::cache;
use super::clock::Clock;
use super::events::{EventType, Recorder, reference};
use super::job::is_finished;
use super::{ControllerError, pods};
use crate::cron::{Schedule, time_zone};

/// The annotation with the scheduled time a Job was created for (upstream's name).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub struct Context {
    pub client: kube::Client,
    pub jobs: Store<Job>,
    pub recorder: Recorder,
    pub clock: Clock,
    /// The longest a CronJob waits before it is looked at again.
    pub max_requeue: Duration,
}

fn succeeded(job: &Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Complete" && c.status == "True")
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The Job name for a scheduled time: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    cache::synced(&ctx.jobs).await?;
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = cj.metadata.namespace.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let spec = cj.spec.clone();
    let cj_ref = reference("batch/v1", "CronJob", &cj.metadata);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let previous = cj.status.clone().unwrap_or_default();
    let mut status = previous.clone();

    let owned: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|j| pods::controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let cached: HashSet<String> = owned
        .iter()
        .filter_map(|j| j.metadata.name.clone())
        .collect();

    // Active: unfinished Jobs in the cache, plus listed ones the cache does not show yet.
    let mut active: Vec<ObjectReference> = owned
        .iter()
        .filter(|j| !is_finished(j) && j.metadata.deletion_timestamp.is_none())
        .map(|j| job_ref(j))
        .collect();
    for listed in previous.active.iter().flatten() {
        let Some(job_name) = listed.name.as_deref() else {
            continue;
        };
        if cached.contains(job_name) {
            if let Some(job) = owned
                .iter()
                .find(|j| j.metadata.name.as_deref() == Some(job_name))
                && is_finished(job)
            {
                let outcome = if succeeded(job) { "Complete" } else { "Failed" };
                let msg = format!("Saw completed job: {job_name}, status: {outcome}");
                ctx.recorder
                    .record(&cj_ref, EventType::Normal, "SawCompletedJob", &msg)
                    .await;
            }
            continue;
        }
        match jobs_api.get_opt(job_name).await {
            Ok(Some(job)) if job.metadata.uid == listed.uid && !is_finished(&job) => {
                active.push(job_ref(&job));
            }
            Ok(_) => {}
            Err(source) => {
                return Err(ControllerError::Read {
                    what: format!("job {namespace}/{job_name}"),
                    source,
                });
            }
        }
    }
    let last_success = owned
        .iter()
        .filter(|j| succeeded(j))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref().map(|t| t.0))
        .max();
    if let Some(t) = last_success
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|old| old.0 < t)
    {
        status.last_successful_time = Some(Time(t));
    }

    prune_history(&cj, &ctx, &jobs_api, &owned).await?;

    let mut requeue = None;
    let mut error = None;
    match plan(&cj, &ctx, &spec, &previous) {
        Ok(Plan::Wait(after)) => requeue = after,
        Ok(Plan::Run { scheduled, next }) => {
            requeue = next;
            let forbid = spec.concurrency_policy.as_deref() == Some("Forbid");
            let replace = spec.concurrency_policy.as_deref() == Some("Replace");
            if forbid && !active.is_empty() {
                let msg = "Not starting job because prior execution is running and concurrency policy is Forbid";
                ctx.recorder
                    .record(&cj_ref, EventType::Normal, "JobAlreadyActive", msg)
                    .await;
                // Tried again until the next time, or the starting deadline, passes.
                requeue = Some(
                    requeue
                        .unwrap_or(ctx.max_requeue)
                        .min(Duration::from_secs(1)),
                );
            } else {
                if replace {
                    for running in std::mem::take(&mut active) {
                        delete_job(&ctx, &cj_ref, &jobs_api, &running).await?;
                    }
                }
                match create_job(&cj, &ctx, &jobs_api, scheduled).await {
                    Ok(job) => {
                        if !active.iter().any(|r| r.uid == job.metadata.uid) {
                            active.push(job_ref(&job));
                        }
                        status.last_schedule_time = Some(Time(scheduled));
                    }
                    Err(e) => error = Some(e),
                }
            }
        }
        Err(why) => {
            ctx.recorder
                .record(&cj_ref, EventType::Warning, why.reason(), &why.to_string())
                .await;
        }
    }

    active.sort_by(|a, b| a.name.cmp(&b.name));
    active.dedup_by(|a, b| a.uid == b.uid);
    status.active = (!active.is_empty()).then_some(active);
    if cj.status.as_ref() != Some(&status) {
        write_status(&cj, &ctx, status).await?;
    }
    if let Some(e) = error {
        return Err(e);
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// What the schedule asks for now.
enum Plan {
    /// Nothing to start; look again after this long (never, when suspended).
    Wait(Option<Duration>),
    /// Start the Job of `scheduled`; the next time is `next` from now.
    Run {
        scheduled: Timestamp,
        next: Option<Duration>,
    },
}

/// Why a CronJob cannot be scheduled (reported as an event, not retried until it changes).
#[derive(Debug, thiserror::Error)]
enum Unschedulable {
    #[error("invalid schedule: {0}")]
    Schedule(crate::cron::CronError),
    #[error("invalid timeZone: {0}")]
    TimeZone(crate::cron::CronError),
}

impl Unschedulable {
    fn reason(&self) -> &'static str {
        match self {
            Unschedulable::Schedule(_) => "InvalidSchedule",
            Unschedulable::TimeZone(_) => "UnknownTimeZone",
        }
    }
}

fn plan(
    cj: &CronJob,
    ctx: &Context,
    spec: &k8s_openapi::api::batch::v1::CronJobSpec,
    status: &CronJobStatus,
) -> Result<Plan, Unschedulable> {
    let schedule = Schedule::parse(&spec.schedule).map_err(Unschedulable::Schedule)?;
    let tz = time_zone(spec.time_zone.as_deref()).map_err(Unschedulable::TimeZone)?;
    if spec.suspend == Some(true) {
        return Ok(Plan::Wait(None));
    }
    let now = ctx.clock.now();
    let next = schedule.next_after(now, &tz).map(|t| {
        t.duration_since(now)
            .unsigned_abs()
            .clamp(Duration::from_millis(100), ctx.max_requeue)
    });
    let next = Some(next.unwrap_or(ctx.max_requeue));
    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    if let Some(deadline) = spec.starting_deadline_seconds {
        let window_start = now - SignedDuration::from_secs(deadline);
        if window_start > earliest {
            earliest = window_start;
        }
    }
    match schedule.last_at_or_before(now, &tz) {
        Some(scheduled) if scheduled > earliest => Ok(Plan::Run { scheduled, next }),
        _ => Ok(Plan::Wait(next)),
    }
}

/// Creates (or finds, if an earlier attempt created it) the Job of `scheduled`.
async fn create_job(
    cj: &CronJob,
    ctx: &Context,
    api: &Api<Job>,
    scheduled: Timestamp,
) -> Result<Job, ControllerError> {
    let cj_name = cj.metadata.name.clone().unwrap_or_default();
    let name = job_name(&cj_name, scheduled);
    let template = cj.spec.job_template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), scheduled.to_string());
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![pods::controller_ref(
                "batch/v1",
                "CronJob",
                &cj.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    };
    let cj_ref = reference("batch/v1", "CronJob", &cj.metadata);
    match api.create(&PostParams::default(), &job).await {
        Ok(created) => {
            let msg = format!("Created job {name}");
            ctx.recorder
                .record(&cj_ref, EventType::Normal, "SuccessfulCreate", &msg)
                .await;
            Ok(created)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api
                .get(&name)
                .await
                .map_err(|source| ControllerError::Read {
                    what: format!("job {name}"),
                    source,
                })?;
            let ours = pods::controller_of(&existing.metadata)
                .is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref());
            if ours {
                Ok(existing)
            } else {
                Err(ControllerError::Invalid(format!(
                    "job {name} exists and is not controlled by cronjob {cj_name}"
                )))
            }
        }
        Err(source) => {
            let msg = format!("Error creating job: {source}");
            ctx.recorder
                .record(&cj_ref, EventType::Warning, "FailedCreate", &msg)
                .await;
            Err(ControllerError::Write {
                what: format!("job {name}"),
                source,
            })
        }
    }
}

async fn delete_job(
    ctx: &Context,
    cj_ref: &ObjectReference,
    api: &Api<Job>,
    job: &ObjectReference,
) -> Result<(), ControllerError> {
    let name = job.name.clone().unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: job.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            let msg = format!("Deleted job {name}");
            ctx.recorder
                .record(cj_ref, EventType::Normal, "SuccessfulDelete", &msg)
                .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(ControllerError::Write {
            what: format!("deleting job {name}"),
            source,
        }),
    }
}

/// Deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit`/`failedJobsHistoryLimit`.
async fn prune_history(
    cj: &CronJob,
    ctx: &Context,
    api: &Api<Job>,
    owned: &[Arc<Job>],
) -> Result<(), ControllerError> {
    let spec = cj.spec.clone();
    let cj_ref = reference("batch/v1", "CronJob", &cj.metadata);
    for (want_success, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut finished: Vec<&Arc<Job>> = owned
            .iter()
            .filter(|j| is_finished(j) && succeeded(j) == want_success)
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        let limit = usize::try_from(limit.max(0)).unwrap_or(0);
        if finished.len() <= limit {
            continue;
        }
        // Oldest first: by the scheduled time each Job was made for (timestamps of start and
        // creation have second precision and tie for Jobs made in quick succession).
        finished.sort_by_key(|j| {
            let scheduled = j
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SCHEDULED_TIMESTAMP))
                .and_then(|t| t.parse::<Timestamp>().ok());
            let start = j
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0);
            (
                scheduled,
                start.or(j.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                j.metadata.name.clone(),
            )
        });
        let excess = finished.len() - limit;
        for job in finished.into_iter().take(excess) {
            delete_job(ctx, &cj_ref, api, &job_ref(job)).await?;
        }
    }
    Ok(())
}

async fn write_status(
    cj: &CronJob,
    ctx: &Context,
    status: CronJobStatus,
) -> Result<(), ControllerError> {
    let namespace = cj.metadata.namespace.as_deref().unwrap_or("");
    let name = cj.metadata.name.as_deref().unwrap_or("");
    let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), namespace);
    let mut updated = cj.clone();
    updated.status = Some(status);
    api.replace_status(name, &PostParams::default(), &updated)
        .await
        .map_err(|source| ControllerError::Write {
            what: format!("status of cronjob {namespace}/{name}"),
            source,
        })?;
    Ok(())
}

fn error_policy(_cj: Arc<CronJob>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::info!(%error, "cronjob reconcile failed");
    Action::requeue(error.backoff())
}

/// Runs the CronJob control loop until `shutdown`.
pub async fn run(
    client: kube::Client,
    clock: Clock,
    max_requeue: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (job_store, job_events) = cache::watched::<Job>(&client);
    let ctx = Arc::new(Context {
        client: client.clone(),
        jobs: job_store,
        recorder: Recorder::new(client.clone(), "cronjob-controller"),
        clock,
        max_requeue,
    });
    Controller::new(Api::<CronJob>::all(client), watcher::Config::default())
        .owns_stream(job_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_count_minutes_since_the_epoch() {
        let t: Timestamp = "2026-01-01T00:05:00Z".parse().expect("ts");
        assert_eq!(job_name("backup", t), "backup-29453765");
    }
}
