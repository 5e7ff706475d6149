//! CronJobs end to end with the real kubectl against a real server, on an injected clock that
//! stands an hour ahead of real time and moves only when the test moves it a minute forward (no
//! real minutes are waited): a new CronJob fires at once for the clock's current minute, then
//! once per advance. The test plays the kubelet for the Jobs' pods.
//!
//! Covered: Jobs named `<cronjob>-<scheduled minutes>`, lastScheduleTime/lastSuccessfulTime,
//! Forbid (no second Job while one runs), Replace (the running Job is deleted), history limits,
//! suspend, `kubectl create cronjob` and `kubectl create job --from=cronjob/…` (protobuf bodies),
//! table columns, and a 422 for a bad schedule or time zone.

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use r3s_server::controllers::ControllerOptions;
use r3s_server::controllers::clock::Clock;
use serde_json::json;

const T: Duration = Duration::from_secs(60);
const MINUTE: Duration = Duration::from_secs(60);

fn opts(clock: &Clock) -> ControllerOptions {
    ControllerOptions {
        clock: clock.clone(),
        cronjob_max_requeue: Duration::from_millis(200),
        job_backoff_base: Duration::from_millis(50),
        ..ControllerOptions::default()
    }
}

fn cronjob(name: &str, extra: &str) -> String {
    support::manifests::cronjob(name, "tick", extra)
}

async fn jobs_of(jobs: &Api<Job>, cronjob: &str) -> Vec<Job> {
    let mut list: Vec<Job> = jobs
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|j| {
            j.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "CronJob" && r.name == cronjob)
        })
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect();
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    list
}

fn names(jobs: &[Job]) -> Vec<String> {
    jobs.iter()
        .filter_map(|j| j.metadata.name.clone())
        .collect()
}

fn finished(job: &Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// Marks every pod of `job` Succeeded, as a kubelet would once its containers exit 0.
async fn complete(pods: &Api<Pod>, jobs: &Api<Job>, job: &str) {
    let label = format!("batch.kubernetes.io/job-name={job}");
    support::wait_for(&format!("a pod of {job}"), T, || async {
        pods.list(&ListParams::default().labels(&label))
            .await
            .is_ok_and(|l| !l.items.is_empty())
    })
    .await;
    for pod in pods
        .list(&ListParams::default().labels(&label))
        .await
        .expect("pods")
        .items
    {
        let status = json!({"status": {"phase": "Succeeded"}});
        pods.patch_status(
            pod.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .expect("pod status");
    }
    for _ in 0..300 {
        if jobs.get(job).await.is_ok_and(|j| finished(&j)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let j = jobs.get(job).await.expect("job");
    let p = pods
        .list(&ListParams::default().labels(&label))
        .await
        .expect("pods");
    panic!(
        "{job} did not complete: {}\npods: {}",
        serde_json::to_string(&j).unwrap_or_default(),
        serde_json::to_string(&p.items).unwrap_or_default()
    );
}

/// Waits for the CronJob to have `want` Jobs.
async fn wait_jobs(jobs: &Api<Job>, cronjob: &str, want: usize) -> Vec<Job> {
    support::wait_for(&format!("{want} jobs of {cronjob}"), T, || async {
        jobs_of(jobs, cronjob).await.len() == want
    })
    .await;
    jobs_of(jobs, cronjob).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjobs_schedule_on_an_injected_clock() {
    if !support::have_kubectl() {
        return;
    }
    let ahead =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(1);
    let clock = Clock::frozen_at(ahead);
    let cluster = support::start(&[], opts(&clock)).await;
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let cronjobs: Api<CronJob> = Api::namespaced(cluster.client.clone(), "default");

    // Allow, with one successful Job kept.
    let manifest = cluster.write(
        "tick.yaml",
        &cronjob("tick", "  successfulJobsHistoryLimit: 1"),
    );
    cluster.ok(&["apply", "-f", &manifest]).await;
    let cj = cronjobs.get("tick").await.expect("cronjob");
    assert_eq!(cj.spec.concurrency_policy.as_deref(), Some("Allow"));
    assert_eq!(cj.spec.failed_jobs_history_limit, Some(1));
    let first = wait_jobs(&jobs, "tick", 1).await;
    // The Job is created before the status that records it is written.
    support::wait_for("lastScheduleTime", T, || async {
        cronjobs.get("tick").await.is_ok_and(|c| {
            c.status
                .is_some_and(|s| s.last_schedule_time.is_some() && s.active.is_some())
        })
    })
    .await;
    let cj = cronjobs.get("tick").await.expect("cronjob");
    let status = cj.status.clone().expect("status");
    let scheduled = status
        .last_schedule_time
        .clone()
        .expect("lastScheduleTime")
        .0;
    assert_eq!(
        names(&first),
        [format!("tick-{}", scheduled.as_second() / 60)]
    );
    assert_eq!(status.active.map(|a| a.len()), Some(1));
    let first_name = names(&first)[0].clone();
    complete(&pods, &jobs, &first_name).await;
    support::wait_for("lastSuccessfulTime and no active job", T, || async {
        cronjobs.get("tick").await.is_ok_and(|c| {
            c.status.as_ref().is_some_and(|s| {
                s.last_successful_time.is_some() && s.active.as_ref().is_none_or(Vec::is_empty)
            })
        })
    })
    .await;

    // The next minute gives a second Job; once it succeeds the first is pruned (limit 1).
    clock.advance(MINUTE);
    let both = wait_jobs(&jobs, "tick", 2).await;
    let second = names(&both)
        .into_iter()
        .find(|n| *n != first_name)
        .expect("a new job");
    complete(&pods, &jobs, &second).await;
    support::wait_for("the history limit to prune the older job", T, || async {
        names(&jobs_of(&jobs, "tick").await) == [second.clone()]
    })
    .await;

    let out = cluster.ok(&["get", "cronjobs"]).await;
    let header = support::kubectl_api::header(&out);
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ]
    );
    assert!(out.contains("* * * * *") && out.contains("False"), "{out}");
    let described = cluster.ok(&["describe", "cronjob", "tick"]).await;
    assert!(described.contains("Schedule:"), "{described}");
    assert!(described.contains("SuccessfulCreate"), "{described}");
    let all = cluster.ok(&["get", "jobs,cronjobs,endpointslices"]).await;
    assert!(
        all.contains("cronjob.batch/tick") && all.contains("job.batch/"),
        "{all}"
    );

    // Suspended: time passes, nothing starts (checked at the end).
    cluster
        .ok(&[
            "patch",
            "cronjob",
            "tick",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ])
        .await;
    // Forbid: while a Job runs, the next minute starts none (an event says why).
    let manifest = cluster.write("solo.yaml", &cronjob("solo", "  concurrencyPolicy: Forbid"));
    cluster.ok(&["apply", "-f", &manifest]).await;
    let running = wait_jobs(&jobs, "solo", 1).await;
    clock.advance(MINUTE);
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    support::wait_for("a JobAlreadyActive event", T, || async {
        events.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some("JobAlreadyActive")
                    && e.involved_object.name.as_deref() == Some("solo")
            })
        })
    })
    .await;
    assert_eq!(names(&jobs_of(&jobs, "solo").await), names(&running));
    // The suspended CronJob still has only its one Job.
    assert_eq!(names(&jobs_of(&jobs, "tick").await), [second]);

    // Replace: the running Job is deleted and the next one takes its place.
    cluster
        .ok(&[
            "patch",
            "cronjob",
            "solo",
            "--type=merge",
            "-p",
            r#"{"spec":{"concurrencyPolicy":"Replace"}}"#,
        ])
        .await;
    clock.advance(MINUTE);
    let old = names(&running)[0].clone();
    support::wait_for("the running job to be replaced", T, || async {
        let now = names(&jobs_of(&jobs, "solo").await);
        now.len() == 1 && now[0] != old
    })
    .await;

    // `kubectl create job --from=cronjob/…` (protobuf body) makes a Job from the template.
    cluster
        .ok(&["create", "job", "manual", "--from=cronjob/tick"])
        .await;
    let manual = jobs.get("manual").await.expect("job from cronjob");
    assert_eq!(
        manual
            .metadata
            .annotations
            .unwrap_or_default()
            .get("cronjob.kubernetes.io/instantiate")
            .map(String::as_str),
        Some("manual")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_cronjobs_and_refuses_invalid_ones() {
    if !support::have_kubectl() {
        return;
    }
    let clock = Clock::default();
    let cluster = support::start(&[], opts(&clock)).await;
    let cronjobs: Api<CronJob> = Api::namespaced(cluster.client.clone(), "default");
    cluster
        .ok(&[
            "create",
            "cronjob",
            "nightly",
            "--image=registry.example/backup:1",
            "--schedule=30 2 * * *",
            "--",
            "backup",
        ])
        .await;
    let cj = cronjobs.get("nightly").await.expect("cronjob");
    assert_eq!(cj.spec.schedule, "30 2 * * *");
    assert_eq!(cj.spec.successful_jobs_history_limit, Some(3));
    let out = cluster.ok(&["get", "cj", "nightly", "-o", "wide"]).await;
    assert!(
        out.contains("30 2 * * *") && out.contains("<none>"),
        "{out}"
    );

    let bad = cluster.write(
        "bad.yaml",
        r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: bad, namespace: default}
spec:
  schedule: "61 * * * *"
  timeZone: Mars/Olympus
  concurrencyPolicy: Sometimes
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: registry.example/c:1}]
"#,
    );
    let (ok, _, stderr) = cluster.kubectl(&["apply", "-f", &bad]).await;
    assert!(!ok);
    assert!(
        stderr.contains(r#"The CronJob "bad" is invalid"#),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"spec.schedule: Invalid value: "61 * * * *""#),
        "{stderr}"
    );
    assert!(stderr.contains("spec.timeZone: Invalid value"), "{stderr}");
    assert!(
        stderr.contains("spec.concurrencyPolicy: Unsupported value"),
        "{stderr}"
    );

    if std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists() {
        let berlin = cluster.write(
            "berlin.yaml",
            &cronjob("berlin", "  timeZone: Europe/Berlin"),
        );
        cluster.ok(&["apply", "-f", &berlin]).await;
        let out = cluster.ok(&["get", "cronjob", "berlin"]).await;
        assert!(out.contains("Europe/Berlin"), "{out}");
    }
}
