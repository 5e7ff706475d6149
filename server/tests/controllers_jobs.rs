//! Jobs end to end with the real kubectl against a real server. No node runs the pods: the test
//! plays the kubelet and marks them Succeeded or Failed through the status subresource.
//!
//! Covered: completions with parallelism (never more active pods than allowed, checked on a
//! watch), backoffLimit (BackoffLimitExceeded), activeDeadlineSeconds (DeadlineExceeded),
//! ttlSecondsAfterFinished, background deletion of a Job's pods, suspend, `kubectl create job`
//! (protobuf body), `get`/`describe`/`wait`, and 422s with field paths for invalid Jobs.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn opts() -> ControllerOptions {
    ControllerOptions {
        job_backoff_base: Duration::from_millis(50),
        ..ControllerOptions::default()
    }
}

fn job_manifest(name: &str, spec: &str) -> String {
    support::manifests::job(name, "work", spec)
}

fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

async fn job_pods(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn active_pods(pods: &Api<Pod>, job: &str) -> Vec<String> {
    job_pods(pods, job)
        .await
        .into_iter()
        .filter(is_active)
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// What a kubelet reports when a pod's containers exit.
async fn finish(pods: &Api<Pod>, name: &str, phase: &str) {
    let code = if phase == "Succeeded" { 0 } else { 1 };
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = json!({"status": {"phase": phase, "containerStatuses": [{
        "name": "work", "image": "registry.example/work:1", "imageID": "", "ready": false,
        "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "finishedAt": now, "startedAt": now}}}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

fn condition(job: &Job, kind: &str) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_default())
}

async fn wait_condition(jobs: &Api<Job>, name: &str, kind: &str) -> Job {
    support::wait_for(&format!("job {name} condition {kind}"), T, || async {
        jobs.get(name)
            .await
            .is_ok_and(|j| condition(&j, kind).is_some())
    })
    .await;
    jobs.get(name).await.expect("job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_completions_with_parallelism() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&[], opts()).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), "default");

    // Every pod of the Job as a watch shows it: the most active at any moment, and how many.
    let most = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let observer = {
        let (most, created) = (most.clone(), created.clone());
        let cfg = watcher::Config::default().labels("batch.kubernetes.io/job-name=pi");
        let mut events = watcher(pods.clone(), cfg).boxed();
        tokio::spawn(async move {
            let mut active = HashSet::new();
            let mut seen = HashSet::new();
            while let Some(Ok(event)) = events.next().await {
                let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event else {
                    continue;
                };
                let name = p.metadata.name.clone().unwrap_or_default();
                if seen.insert(name.clone()) {
                    created.fetch_add(1, Ordering::SeqCst);
                }
                if is_active(&p) {
                    active.insert(name);
                } else {
                    active.remove(&name);
                }
                most.fetch_max(active.len(), Ordering::SeqCst);
            }
        })
    };

    let manifest = cluster.write(
        "pi.yaml",
        &job_manifest("pi", "  completions: 3\n  parallelism: 2"),
    );
    cluster.ok(&["apply", "-f", &manifest]).await;
    let job = jobs.get("pi").await.expect("job");
    let spec = job.spec.clone().expect("spec");
    assert_eq!(spec.backoff_limit, Some(6));
    assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
    let uid = job.metadata.uid.clone().expect("uid");
    let selector = spec
        .selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert_eq!(
        selector.get("batch.kubernetes.io/controller-uid"),
        Some(&uid)
    );

    for round in [2, 1] {
        support::wait_for(&format!("{round} active pods"), T, || async {
            active_pods(&pods, "pi").await.len() == round
        })
        .await;
        for name in active_pods(&pods, "pi").await {
            finish(&pods, &name, "Succeeded").await;
        }
    }
    cluster
        .ok(&[
            "wait",
            "--for=condition=complete",
            "job/pi",
            "--timeout=60s",
        ])
        .await;
    let job = jobs.get("pi").await.expect("job");
    let status = job.status.clone().expect("status");
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.active, None);
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(
        condition(&job, "SuccessCriteriaMet").as_deref(),
        Some("CompletionsReached")
    );
    assert_eq!(created.load(Ordering::SeqCst), 3);
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{} pods were active at once",
        most.load(Ordering::SeqCst)
    );
    observer.abort();

    let out = cluster.ok(&["get", "jobs"]).await;
    let header = support::kubectl_api::header(&out);
    assert_eq!(header, ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("pi ") && l.contains("Complete") && l.contains("3/3")),
        "{out}"
    );
    let described = cluster.ok(&["describe", "job", "pi"]).await;
    assert!(described.contains("Completions:"), "{described}");
    assert!(described.contains("SuccessfulCreate"), "{described}");

    // Background deletion (kubectl's default) takes the pods with the Job.
    cluster.ok(&["delete", "job", "pi"]).await;
    support::wait_for("the pods of the deleted job to go", T, || async {
        job_pods(&pods, "pi").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failures_deadlines_ttl_and_suspend() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&[], opts()).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), "default");

    // backoffLimit 2: the third failed pod fails the Job.
    let manifest = cluster.write("flaky.yaml", &job_manifest("flaky", "  backoffLimit: 2"));
    cluster.ok(&["apply", "-f", &manifest]).await;
    for attempt in 1..=3 {
        support::wait_for(&format!("attempt {attempt}"), T, || async {
            active_pods(&pods, "flaky").await.len() == 1
        })
        .await;
        for name in active_pods(&pods, "flaky").await {
            finish(&pods, &name, "Failed").await;
        }
    }
    cluster
        .ok(&[
            "wait",
            "--for=condition=failed",
            "job/flaky",
            "--timeout=60s",
        ])
        .await;
    let job = jobs.get("flaky").await.expect("job");
    assert_eq!(
        condition(&job, "Failed").as_deref(),
        Some("BackoffLimitExceeded")
    );
    assert_eq!(job.status.as_ref().and_then(|s| s.failed), Some(3));
    assert_eq!(job_pods(&pods, "flaky").await.len(), 3);
    let out = cluster.ok(&["get", "job", "flaky"]).await;
    assert!(out.contains("Failed"), "{out}");

    // activeDeadlineSeconds: pods that never finish are stopped and the Job fails.
    let manifest = cluster.write(
        "slow.yaml",
        &job_manifest(
            "slow",
            "  activeDeadlineSeconds: 2\n  parallelism: 2\n  completions: 4",
        ),
    );
    cluster.ok(&["apply", "-f", &manifest]).await;
    let job = wait_condition(&jobs, "slow", "Failed").await;
    assert_eq!(
        condition(&job, "Failed").as_deref(),
        Some("DeadlineExceeded")
    );
    assert_eq!(
        condition(&job, "FailureTarget").as_deref(),
        Some("DeadlineExceeded")
    );
    assert!(active_pods(&pods, "slow").await.is_empty());

    // ttlSecondsAfterFinished: a finished Job is deleted, its pods with it.
    let manifest = cluster.write(
        "brief.yaml",
        &job_manifest("brief", "  ttlSecondsAfterFinished: 1"),
    );
    cluster.ok(&["apply", "-f", &manifest]).await;
    support::wait_for("the pod of brief", T, || async {
        active_pods(&pods, "brief").await.len() == 1
    })
    .await;
    for name in active_pods(&pods, "brief").await {
        finish(&pods, &name, "Succeeded").await;
    }
    wait_condition(&jobs, "brief", "Complete").await;
    support::wait_for("the finished job to be deleted", T, || async {
        jobs.get_opt("brief").await.is_ok_and(|j| j.is_none())
    })
    .await;
    support::wait_for("its pods to be collected", T, || async {
        job_pods(&pods, "brief").await.is_empty()
    })
    .await;

    // suspend: no pods while suspended; resuming starts them.
    let manifest = cluster.write("later.yaml", &job_manifest("later", "  suspend: true"));
    cluster.ok(&["apply", "-f", &manifest]).await;
    let job = wait_condition(&jobs, "later", "Suspended").await;
    assert_eq!(
        condition(&job, "Suspended").as_deref(),
        Some("JobSuspended")
    );
    assert!(job_pods(&pods, "later").await.is_empty());
    let out = cluster.ok(&["get", "job", "later"]).await;
    assert!(out.contains("Suspended"), "{out}");
    cluster
        .ok(&[
            "patch",
            "job",
            "later",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":false}}"#,
        ])
        .await;
    support::wait_for("the resumed job's pod", T, || async {
        active_pods(&pods, "later").await.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_jobs_and_refuses_invalid_ones() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&[], opts()).await;
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), "default");

    // `kubectl create job` sends a protobuf body.
    cluster
        .ok(&[
            "create",
            "job",
            "once",
            "--image=registry.example/once:1",
            "--",
            "true",
        ])
        .await;
    let job = jobs.get("once").await.expect("job");
    let template = job.spec.clone().expect("spec").template;
    let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    assert_eq!(labels.get("job-name").map(String::as_str), Some("once"));
    assert_eq!(
        labels
            .get("batch.kubernetes.io/job-name")
            .map(String::as_str),
        Some("once")
    );
    assert_eq!(
        template.spec.and_then(|s| s.restart_policy).as_deref(),
        Some("Never")
    );

    // Invalid Jobs: 422 with field paths, as kubectl prints them.
    let bad = cluster.write(
        "bad.yaml",
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: bad, namespace: default}
spec:
  parallelism: -1
  template:
    spec:
      restartPolicy: Always
      containers: [{name: work, image: registry.example/work:1}]
"#,
    );
    let (ok, _, stderr) = cluster.kubectl(&["apply", "-f", &bad]).await;
    assert!(!ok);
    assert!(stderr.contains("is invalid"), "{stderr}");
    assert!(
        stderr.contains(r#"spec.template.spec.restartPolicy: Unsupported value: "Always""#),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.parallelism: Invalid value: -1: must be greater than or equal to 0"),
        "{stderr}"
    );
    // The selector cannot change.
    let (ok, _, stderr) = cluster
        .kubectl(&[
            "patch",
            "job",
            "once",
            "--type=merge",
            "-p",
            r#"{"spec":{"selector":{"matchLabels":{"x":"y"}}}}"#,
        ])
        .await;
    assert!(!ok);
    assert!(stderr.contains("spec.selector"), "{stderr}");

    let resources = cluster.ok(&["api-resources", "--api-group=batch"]).await;
    assert!(
        resources.contains("cronjobs") && resources.contains("cj"),
        "{resources}"
    );
    assert!(resources.contains("jobs"), "{resources}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_jobs_and_namespace_deletion() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&[], opts()).await;
    cluster.ok(&["create", "namespace", "batchns"]).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "batchns");
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), "batchns");
    let manifest = cluster.write(
        "indexed.yaml",
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: idx, namespace: batchns}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 3
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: registry.example/work:1}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: idle, namespace: batchns}
spec:
  schedule: "@daily"
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: work, image: registry.example/work:1}]
"#,
    );
    cluster.ok(&["apply", "-f", &manifest]).await;
    support::wait_for("three indexed pods", T, || async {
        active_pods(&pods, "idx").await.len() == 3
    })
    .await;
    let mut indexes: Vec<String> = Vec::new();
    for pod in job_pods(&pods, "idx").await {
        let index = pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get("batch.kubernetes.io/job-completion-index")
            .cloned()
            .expect("completion index");
        let name = pod.metadata.name.clone().unwrap_or_default();
        assert!(name.starts_with(&format!("idx-{index}-")), "{name}");
        let spec = pod.spec.clone().expect("spec");
        assert_eq!(spec.hostname, Some(format!("idx-{index}")));
        let env = spec.containers[0].env.clone().unwrap_or_default();
        assert!(
            env.iter()
                .any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value.as_deref() == Some(&index))
        );
        indexes.push(index);
    }
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
    let by_index =
        |want: &'static str| {
            let pods = pods.clone();
            async move {
                job_pods(&pods, "idx")
                    .await
                    .into_iter()
                    .find(|p| {
                        p.metadata.annotations.as_ref().and_then(|a| {
                            a.get("batch.kubernetes.io/job-completion-index").cloned()
                        }) == Some(want.to_string())
                    })
                    .and_then(|p| p.metadata.name)
                    .expect("pod of index")
            }
        };
    finish(&pods, &by_index("1").await, "Succeeded").await;
    support::wait_for("completedIndexes 1", T, || async {
        jobs.get("idx")
            .await
            .is_ok_and(|j| j.status.and_then(|s| s.completed_indexes).as_deref() == Some("1"))
    })
    .await;
    // A failed index is retried under the same index.
    finish(&pods, &by_index("0").await, "Failed").await;
    support::wait_for("index 0 to run again", T, || async {
        active_pods(&pods, "idx").await.len() == 2
    })
    .await;
    for name in active_pods(&pods, "idx").await {
        finish(&pods, &name, "Succeeded").await;
    }
    let job = wait_condition(&jobs, "idx", "Complete").await;
    let status = job.status.expect("status");
    assert_eq!(status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!((status.succeeded, status.failed), (Some(3), Some(1)));

    // Deleting the namespace takes Jobs, CronJobs and pods with it.
    cluster
        .ok(&["delete", "namespace", "batchns", "--timeout=60s"])
        .await;
    let (ok, _, stderr) = cluster.kubectl(&["get", "namespace", "batchns"]).await;
    assert!(!ok && stderr.contains("NotFound"), "{stderr}");
    let cronjobs: Api<k8s_openapi::api::batch::v1::CronJob> = Api::all(cluster.client.clone());
    let left = cronjobs.list(&ListParams::default()).await.expect("list");
    assert!(left.items.is_empty());
}
