//! Benchmark (ignored by default; run with `cargo test -p r3s-server --test scheduler_bench --
//! --ignored --nocapture`): with N simulated nodes, the time to schedule P pods, the time for an
//! R-replica Deployment to be fully available, the process RSS at that point (API server, store,
//! control loops, scheduler *and* the node simulator share the process), and `kubectl get pods -A`
//! latency. Sizes from R3S_BENCH_NODES (100), R3S_BENCH_PODS (3000), R3S_BENCH_REPLICAS (1000).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use r3s_server::controllers::ControllerOptions;
use serde_json::json;

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly"]
async fn schedule_and_roll_out_at_scale() {
    if !support::have_kubectl() {
        return;
    }
    let n = size("R3S_BENCH_NODES", 100);
    let p = size("R3S_BENCH_PODS", 3000);
    let r = size("R3S_BENCH_REPLICAS", 1000);
    let names: Vec<String> = (0..n).map(|i| format!("sim-{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let started = Instant::now();
    let cluster = support::start(&refs, ControllerOptions::default()).await;
    println!(
        "bench: {n} simulated nodes registered in {:?}",
        started.elapsed()
    );

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let t0 = Instant::now();
    for i in 0..p {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("bench-{i}"), "labels": {"bench": "sched"}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create");
    }
    let created = t0.elapsed();
    let lp = ListParams::default().labels("bench=sched");
    support::wait_for(
        "every bench pod bound",
        Duration::from_secs(3600),
        || async {
            pods.list(&lp).await.is_ok_and(|l| {
                l.items
                    .iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                    .count()
                    == p
            })
        },
    )
    .await;
    let scheduled = t0.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let rate = p as f64 / scheduled.as_secs_f64();
    println!(
        "bench: {p} pods created in {created:?}, all bound after {scheduled:?} ({rate:.0} pods/s end to end)"
    );

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"replicas": r, "selector": {"matchLabels": {"app": "big"}},
            "template": {"metadata": {"labels": {"app": "big"}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/app:1"}]}}}
    }))
    .expect("deployment");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let t1 = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create");
    let want = i32::try_from(r).unwrap_or(i32::MAX);
    support::wait_for(
        "the big deployment available",
        Duration::from_secs(3600),
        || async {
            deployments
                .get("big")
                .await
                .is_ok_and(|d| d.status.and_then(|s| s.available_replicas) == Some(want))
        },
    )
    .await;
    println!(
        "bench: {r}-replica Deployment fully available after {:?}",
        t1.elapsed()
    );
    println!(
        "bench: process RSS {:.0} MiB (server + controllers + scheduler + simulator)",
        rss_mib()
    );

    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        cluster.ok(&["get", "pods", "-A"]).await;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "bench: kubectl get pods -A ({} pods): median {:?} of 3",
        p + r,
        times[1]
    );
}
