//! Item 1 (idle footprint) and item 6 (cold start) on a real two-node cluster: the release server
//! with its in-process agent, and a lone agent joined to it from its own network namespace.
//!
//! Method: a window of `idle` after the cluster (then after 20 running pods per node) is up; the
//! first half lets start-up work settle, CPU time and `write_bytes` are differenced over the second
//! half, RSS and the database size are read at the end. Container processes are not counted (only
//! processes running an r3s executable, see [`crate::procs`]). Server and agent logs go to tmpfs, as
//! they would go to journald in production, so they are not counted as the r3s process's writes.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

use crate::cluster::{self, Proc};
use crate::procs;
use crate::report::{Report, Target};

pub const SEC_IDLE: &str = "1. Idle footprint";
pub const SEC_COLD: &str = "6. Cold start";

/// The running cluster the later items reuse.
pub struct Live {
    pub server: Proc,
    pub agent: Proc,
    pub client: kube::Client,
    pub kubeconfig: std::path::PathBuf,
    pub server_node: String,
    pub agent_node: String,
    pub image: cluster::ImageSource,
    pub server_data: std::path::PathBuf,
}

pub async fn start(
    r: &mut Report,
    dir: &std::path::Path,
    logs: &std::path::Path,
) -> anyhow::Result<Live> {
    let image = cluster::image_source(dir)
        .await
        .context("registry with busybox")?;
    let pid = std::process::id();
    let server_node = format!("r3sb{pid}-server");
    let agent_node = format!("r3sb{pid}-agent");
    let sdir = dir.join("server");
    std::fs::create_dir_all(&sdir)?;
    let mut server = cluster::spawn_server(&cluster::ServerSpec {
        dir: &sdir,
        logs,
        node: &server_node,
        disable_agent: false,
        registries: Some(&image.server_yaml),
    })?;
    let kubeconfig = sdir.join("kubeconfig.yaml");
    let ready = cluster::wait_ready(&mut server, &kubeconfig, Duration::from_secs(120)).await?;
    r.add(SEC_COLD, "server start → /readyz 200", ready.as_secs_f64() * 1000.0, "ms", None,
        "fresh data dir: includes creating the SQLite database, the CA and serving certificates and the join token");
    let client = cluster::client(&kubeconfig).await?;
    let started = server.started;
    let t = cluster::wait_node_ready(
        &client,
        &server_node,
        started,
        &mut server,
        Duration::from_secs(180),
    )
    .await?;
    r.add(SEC_COLD, "server start → its own node Ready (in-process agent)", t.as_secs_f64() * 1000.0, "ms", None,
        "the in-process agent registers after the API is up, sets up the bridge, VXLAN, service proxy and DNS, then posts Ready");

    let token = std::fs::read_to_string(sdir.join("data/server/token"))
        .context("the server's join token")?;
    let adir = dir.join("agent");
    std::fs::create_dir_all(&adir)?;
    let mut agent =
        cluster::spawn_agent(&adir, logs, &agent_node, token.trim(), &image.agent_yaml)?;
    let t = cluster::wait_node_ready(
        &client,
        &agent_node,
        agent.started,
        &mut agent,
        Duration::from_secs(180),
    )
    .await?;
    r.add(SEC_COLD, "lone agent start → node Ready", t.as_secs_f64() * 1000.0, "ms", None,
        "join over HTTPS with the bootstrap token (CA pinned by its hash), client certificate issued, node registered, networking set up");
    Ok(Live {
        server,
        agent,
        client,
        kubeconfig,
        server_node,
        agent_node,
        image,
        server_data: sdir.join("data"),
    })
}

struct Window {
    rss_mib: f64,
    cpu_pct: f64,
    kb_per_min: f64,
    threads: u64,
    processes: usize,
}

fn measure(a0: procs::Sample, a1: procs::Sample, secs: f64, pid: i32) -> Window {
    Window {
        rss_mib: a1.rss_kib as f64 / 1024.0,
        cpu_pct: (a1.cpu_ticks.saturating_sub(a0.cpu_ticks)) as f64 / procs::ticks_per_sec() / secs
            * 100.0,
        kb_per_min: (a1.write_bytes.saturating_sub(a0.write_bytes)) as f64 / 1000.0 / (secs / 60.0),
        threads: procs::threads(pid),
        processes: a1.processes,
    }
}

/// One idle window over the running cluster; `label` is "0 pods" or "20 pods per node".
pub async fn idle(
    r: &mut Report,
    live: &mut Live,
    label: &str,
    window: Duration,
) -> anyhow::Result<()> {
    let (sp, ap) = (live.server.pid(), live.agent.pid());
    println!(
        "idle footprint ({label}): settling {:?}, then measuring {:?}",
        window / 2,
        window / 2
    );
    tokio::time::sleep(window / 2).await;
    let (s0, a0, db0) = (
        procs::sample(sp),
        procs::sample(ap),
        cluster::db_bytes(&live.server_data),
    );
    let t0 = Instant::now();
    tokio::time::sleep(window / 2).await;
    let secs = t0.elapsed().as_secs_f64();
    let (s1, a1, db1) = (
        procs::sample(sp),
        procs::sample(ap),
        cluster::db_bytes(&live.server_data),
    );
    if !live.server.alive() || !live.agent.alive() {
        anyhow::bail!(
            "a process died during the idle window:\n{}\n{}",
            live.server.log_tail(),
            live.agent.log_tail()
        );
    }
    let s = measure(s0, s1, secs, sp);
    let a = measure(a0, a1, secs, ap);
    let mins = window.as_secs_f64() / 60.0;
    let rss_note = format!(
        "{} process(es), {} threads (tokio: 2 workers + blocking pool + SQLite writer); {}",
        s.processes,
        s.threads,
        rollup(sp)
    );
    r.add(
        SEC_IDLE,
        &format!("server + in-process agent RSS, {label}, {mins:.0} min after start"),
        s.rss_mib,
        "MiB",
        Some(Target::AtMost(64.0)),
        &rss_note,
    );
    r.add(
        SEC_IDLE,
        &format!("lone agent RSS, {label}"),
        a.rss_mib,
        "MiB",
        Some(Target::AtMost(24.0)),
        &format!(
            "{} process(es), {} threads; {}",
            a.processes,
            a.threads,
            rollup(ap)
        ),
    );
    r.add(
        SEC_IDLE,
        &format!("server + in-process agent CPU, {label}"),
        s.cpu_pct,
        "% of a core",
        Some(Target::AtMost(1.0)),
        "utime+stime over the measured half of the window",
    );
    r.add(
        SEC_IDLE,
        &format!("lone agent CPU, {label}"),
        a.cpu_pct,
        "% of a core",
        Some(Target::AtMost(1.0)),
        "",
    );
    r.add(
        SEC_IDLE,
        &format!("server + in-process agent disk writes, {label}"),
        s.kb_per_min,
        "kB/min",
        Some(Target::AtMost(60.0)),
        &format!(
            "/proc/<pid>/io write_bytes; db+wal+shm grew {:.1} kB over the same time",
            (db1 as f64 - db0 as f64) / 1000.0
        ),
    );
    r.add(
        SEC_IDLE,
        &format!("lone agent disk writes, {label}"),
        a.kb_per_min,
        "kB/min",
        Some(Target::AtMost(60.0)),
        "",
    );
    r.add(
        SEC_IDLE,
        &format!("database size (state.db + wal + shm), {label}"),
        db1 as f64 / 1000.0,
        "kB",
        None,
        "",
    );
    Ok(())
}

fn rollup(pid: i32) -> String {
    let m = procs::smaps_rollup(pid);
    let get = |k: &str| m.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
    format!(
        "smaps_rollup: anonymous {:.1} MiB, file-backed {:.1} MiB",
        get("Anonymous") as f64 / 1024.0,
        get("Rss").saturating_sub(get("Anonymous")) as f64 / 1024.0
    )
}

/// Starts `n` sleeping pods on each node and waits until all run.
pub async fn start_pods(live: &Live, n: usize) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(live.client.clone(), "default");
    for node in [&live.server_node, &live.agent_node] {
        for i in 0..n {
            let name = format!(
                "idle-{}-{i}",
                if *node == live.server_node { "s" } else { "a" }
            );
            pods.create(
                &PostParams::default(),
                &cluster::sleeper(&name, node, &live.image.image)?,
            )
            .await
            .with_context(|| format!("create {name}"))?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let lp = ListParams::default().labels("r3s-bench=sleeper");
    loop {
        let l = pods.list(&lp).await?;
        let running = l.items.iter().filter(|p| cluster::pod_running(p)).count();
        if running == 2 * n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {running} of {} pods Running after 10 min",
            2 * n
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn delete_pods(live: &Live) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(live.client.clone(), "default");
    let lp = ListParams::default().labels("r3s-bench=sleeper");
    pods.delete_collection(
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
        &lp,
    )
    .await?;
    Ok(())
}
