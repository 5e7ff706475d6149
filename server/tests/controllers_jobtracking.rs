//! Job pod tracking with the `batch.kubernetes.io/job-tracking` finalizer, end to end with the
//! real kubectl. No node runs the pods: the test plays the kubelet (status subresource).
//!
//! A finished pod deleted at once (before or after the controller saw it) is still counted, a
//! running pod someone deletes counts as failed, the uids pass through
//! `status.uncountedTerminatedPods` (seen on a watch), every pod is released once counted, and a
//! deleted Job's pods do not stay behind on the finalizer.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

const T: Duration = Duration::from_secs(60);
const TRACKING: &str = "batch.kubernetes.io/job-tracking";

fn opts() -> ControllerOptions {
    ControllerOptions {
        job_backoff_base: Duration::from_millis(50),
        ..ControllerOptions::default()
    }
}

async fn job_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels("batch.kubernetes.io/job-name=tracked"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn running(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

async fn running_pods(pods: &Api<Pod>) -> Vec<String> {
    job_pods(pods)
        .await
        .into_iter()
        .filter(running)
        .filter_map(|p| p.metadata.name)
        .collect()
}

async fn finish(pods: &Api<Pod>, name: &str, phase: &str) {
    let status = json!({"status": {"phase": phase}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

fn counts(job: &Job) -> (i32, i32) {
    let s = job.status.clone().unwrap_or_default();
    (s.succeeded.unwrap_or(0), s.failed.unwrap_or(0))
}

async fn wait_counts(jobs: &Api<Job>, want: (i32, i32)) {
    support::wait_for(&format!("job counts {want:?}"), T, || async {
        jobs.get("tracked").await.is_ok_and(|j| counts(&j) == want)
    })
    .await;
}

async fn three_running(pods: &Api<Pod>) -> Vec<String> {
    support::wait_for("three running pods", T, || async {
        running_pods(pods).await.len() == 3
    })
    .await;
    running_pods(pods).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_pods_are_counted_through_the_finalizer() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&[], opts()).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), "default");

    // Every uid the Job ever listed as uncounted, from a watch.
    let uncounted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let observer = {
        let uncounted = uncounted.clone();
        let cfg = watcher::Config::default().fields("metadata.name=tracked");
        let mut events = watcher(jobs.clone(), cfg).boxed();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) = event
                    && let Some(u) = job.status.and_then(|s| s.uncounted_terminated_pods)
                {
                    let mut seen = uncounted.lock().expect("lock");
                    seen.extend(u.succeeded.into_iter().flatten());
                    seen.extend(u.failed.into_iter().flatten());
                }
            }
        })
    };

    let manifest = cluster.write(
        "job.yaml",
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: tracked}\nspec:\n  completions: 4\n  parallelism: 3\n  backoffLimit: 6\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: work, image: registry.example/work:1}]\n",
    );
    cluster.ok(&["apply", "-f", &manifest]).await;
    let first = three_running(&pods).await;
    for pod in job_pods(&pods).await {
        assert!(
            pod.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == TRACKING),
            "{:?} has no tracking finalizer",
            pod.metadata.name
        );
    }

    // Succeeded and deleted straight away with kubectl: still one success.
    let done = &first[0];
    finish(&pods, done, "Succeeded").await;
    let uid_done = pods
        .get(done)
        .await
        .expect("pod")
        .metadata
        .uid
        .unwrap_or_default();
    cluster.ok(&["delete", "pod", done, "--wait=false"]).await;
    wait_counts(&jobs, (1, 0)).await;
    support::wait_for("the counted pod to be gone", T, || async {
        pods.get_opt(done).await.is_ok_and(|p| p.is_none())
    })
    .await;

    // Failed and force-deleted at once: one failure.
    let failed = &first[1];
    finish(&pods, failed, "Failed").await;
    cluster
        .ok(&[
            "delete",
            "pod",
            failed,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])
        .await;
    wait_counts(&jobs, (1, 1)).await;

    // A running pod someone deletes counts as failed too, and is replaced.
    let victim = &first[2];
    cluster.ok(&["delete", "pod", victim, "--wait=false"]).await;
    wait_counts(&jobs, (1, 2)).await;

    // The rest succeed: the Job completes with exact counts and nothing left uncounted.
    let seen_done: Arc<Mutex<HashSet<String>>> = Arc::default();
    support::wait_for("three successes more", T, || {
        let (seen_done, pods, jobs) = (seen_done.clone(), pods.clone(), jobs.clone());
        async move {
            for name in running_pods(&pods).await {
                let fresh = {
                    let mut seen = seen_done.lock().expect("lock");
                    seen.len() < 3 && seen.insert(name.clone())
                };
                if fresh {
                    finish(&pods, &name, "Succeeded").await;
                }
            }
            jobs.get("tracked").await.is_ok_and(|j| {
                j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Complete" && c.status == "True")
                    })
            })
        }
    })
    .await;
    let job = jobs.get("tracked").await.expect("job");
    assert_eq!(counts(&job), (4, 2));
    let left = job
        .status
        .as_ref()
        .and_then(|s| s.uncounted_terminated_pods.clone())
        .unwrap_or_default();
    assert!(
        left.succeeded.unwrap_or_default().is_empty() && left.failed.unwrap_or_default().is_empty()
    );
    assert!(
        uncounted.lock().expect("lock").contains(&uid_done),
        "the deleted pod's uid never went through uncountedTerminatedPods"
    );
    support::wait_for("every pod released", T, || async {
        job_pods(&pods).await.iter().all(|p| {
            p.metadata
                .finalizers
                .iter()
                .flatten()
                .all(|f| f != TRACKING)
        })
    })
    .await;
    let described = cluster.ok(&["describe", "job", "tracked"]).await;
    assert!(
        described.contains("4 Succeeded") && described.contains("2 Failed"),
        "{described}"
    );

    // Deleting the Job takes its pods with it (nothing stays on the finalizer).
    cluster.ok(&["delete", "job", "tracked"]).await;
    support::wait_for("the Job's pods to be gone", T, || async {
        job_pods(&pods).await.is_empty()
    })
    .await;
    observer.abort();
}
