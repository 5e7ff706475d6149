//! Item 5: scale. The release server with `--disable-agent`, 100 simulated nodes (the node
//! simulator the controller tests use: Node + Lease renewed every 500 ms + pods marked Running, all
//! through the API from this process) and 3,000 pods created through the API by 16 concurrent
//! clients. Figures: scheduling rate (pods bound per second, first create → last bound), the server
//! process's RSS afterwards (only the server: the simulator runs in the benchmark process), and
//! the latency of listing every pod (client-side list and `kubectl get pods -A`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};

use crate::cluster;
use crate::node_sim::NodeSimulator;
use crate::procs;
use crate::report::{Report, percentiles_ms};

pub const SEC: &str = "5. Scale";

fn pod(i: usize) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("scale-{i}"), "labels": {"bench": "scale"}},
        "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    }))?)
}

pub async fn run(
    r: &mut Report,
    dir: &Path,
    logs: &Path,
    nodes: usize,
    pods: usize,
) -> anyhow::Result<()> {
    let sdir = dir.join("scale");
    std::fs::create_dir_all(&sdir)?;
    let mut server = cluster::spawn_server(&cluster::ServerSpec {
        dir: &sdir,
        logs,
        node: "r3sb-scale",
        disable_agent: true,
        registries: None,
    })?;
    let kubeconfig = sdir.join("kubeconfig.yaml");
    let ready = cluster::wait_ready(&mut server, &kubeconfig, Duration::from_secs(120)).await?;
    r.add(
        crate::footprint::SEC_COLD,
        "server --disable-agent start → /readyz 200",
        ready.as_secs_f64() * 1000.0,
        "ms",
        None,
        "the scale run's server, fresh data dir",
    );
    let client = cluster::client(&kubeconfig).await?;
    let names: Vec<String> = (0..nodes).map(|i| format!("sim-{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = Instant::now();
    let sim = NodeSimulator::start(client.clone(), &refs).await;
    println!(
        "scale: {nodes} simulated nodes registered in {:?}",
        t.elapsed()
    );
    let rss_nodes = procs::sample(server.pid()).rss_kib as f64 / 1024.0;

    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut creators = Vec::new();
    for _ in 0..16 {
        let (api, next) = (api.clone(), next.clone());
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= pods {
                    return anyhow::Ok(());
                }
                api.create(&PostParams::default(), &pod(i)?)
                    .await
                    .with_context(|| format!("create pod {i}"))?;
            }
        }));
    }
    for c in creators {
        c.await??;
    }
    let created = t0.elapsed();
    let lp = ListParams::default().labels("bench=scale");
    let deadline = Instant::now() + Duration::from_secs(480);
    let (mut bound, mut running) = (0, 0);
    while Instant::now() < deadline {
        let l = api.list(&lp).await?;
        bound = l
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        running = l.items.iter().filter(|p| cluster::pod_running(p)).count();
        if bound == pods {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let scheduled = t0.elapsed();
    r.add(
        SEC,
        &format!("{pods} pods created through the API (16 clients)"),
        pods as f64 / created.as_secs_f64(),
        "pods/s",
        None,
        &format!("{:.1} s", created.as_secs_f64()),
    );
    r.add(
        SEC,
        &format!("scheduling rate, {pods} pods on {nodes} nodes (first create → all bound)"),
        bound as f64 / scheduled.as_secs_f64(),
        "pods/s",
        None,
        &format!(
            "{bound} of {pods} bound after {:.1} s ({running} already Running by the simulator at that moment){}",
            scheduled.as_secs_f64(),
            if bound < pods { "; the run stopped waiting at 8 min" } else { "" }
        ),
    );
    // Let the simulator mark them Running, then take memory and list figures.
    let deadline = Instant::now() + Duration::from_secs(300);
    while bound == pods && Instant::now() < deadline {
        let l = api.list(&lp).await?;
        if l.items.iter().filter(|p| cluster::pod_running(p)).count() == pods {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let rss = procs::sample(server.pid()).rss_kib as f64 / 1024.0;
    r.add(SEC, &format!("server RSS with {nodes} nodes and {pods} running pods"), rss, "MiB", None,
        &format!("{rss_nodes:.0} MiB with the {nodes} nodes before any pod; the watch cache of every object is in the server's memory"));
    let all: Api<Pod> = Api::all(client.clone());
    let mut lat = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let l = all.list(&ListParams::default()).await?;
        lat.push(t.elapsed());
        anyhow::ensure!(l.items.len() >= pods, "list returned {}", l.items.len());
    }
    let (p50, _) = percentiles_ms(&mut lat);
    r.add(
        SEC,
        &format!("list all {pods} pods (client, JSON), median of 5"),
        p50,
        "ms",
        None,
        "",
    );
    let home = sdir.join("home");
    std::fs::create_dir_all(&home)?;
    let mut lat = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = tokio::process::Command::new(cluster::KUBECTL)
            .args(["get", "pods", "-A"])
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &home)
            .output()
            .await?;
        lat.push(t.elapsed());
        anyhow::ensure!(out.status.success(), "kubectl get pods -A failed");
    }
    let (p50, _) = percentiles_ms(&mut lat);
    r.add(
        SEC,
        &format!("kubectl get pods -A ({pods} pods), median of 3"),
        p50,
        "ms",
        None,
        "kubectl v1.32 asks for the Table form (server-side printing)",
    );
    drop(sim);
    server.stop();
    Ok(())
}
