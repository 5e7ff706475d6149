//! Item 1 (idle footprint) and item 6 (cold start) on a real cluster: the release server with its
//! in-process agent (a single-node cluster, as issue 9 defines it), then a lone agent joined to it
//! from its own network namespace.
//!
//! Method: windows of `idle`; the first half lets start-up work settle, CPU time and `write_bytes`
//! are differenced over the second half, RSS and the database size are read at the end. In order:
//! the single-node cluster with 0 pods, then with 20 pods on its node (server figures: nothing else
//! talks to it); then the lone agent joins and is measured with 0, then 20 pods of its own (agent
//! figures; the server's during those windows are reported too, without a target, since it then
//! also stores a second node's heartbeats). Container processes are not counted (only processes
//! running an r3s executable, see [`crate::procs`]). Server and agent logs go to tmpfs, as they
//! would go to journald in production, so they are not counted as the r3s process's writes.

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
    /// The lone agent, once [`join_agent`] has started it.
    pub agent: Option<Proc>,
    pub client: kube::Client,
    pub kubeconfig: std::path::PathBuf,
    pub server_node: String,
    pub agent_node: String,
    pub image: cluster::ImageSource,
    pub server_data: std::path::PathBuf,
    dir: std::path::PathBuf,
    logs: std::path::PathBuf,
}

impl Live {
    /// The last lines of the server's and (if started) the agent's logs.
    pub fn log_tails(&self) -> String {
        format!(
            "server log:\n{}\nagent log:\n{}",
            self.server.log_tail(),
            self.agent.as_ref().map_or_else(String::new, Proc::log_tail)
        )
    }

    pub fn stop(&mut self) {
        if let Some(a) = &mut self.agent {
            a.stop();
        }
        self.server.stop();
    }
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

    Ok(Live {
        server,
        agent: None,
        client,
        kubeconfig,
        server_node,
        agent_node,
        image,
        server_data: sdir.join("data"),
        dir: dir.to_path_buf(),
        logs: logs.to_path_buf(),
    })
}

/// Starts the lone agent, joined with the server's token, and waits for its node to be Ready.
pub async fn join_agent(r: &mut Report, live: &mut Live) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(live.server_data.join("server/token"))
        .context("the server's join token")?;
    let adir = live.dir.join("agent");
    std::fs::create_dir_all(&adir)?;
    let mut agent = cluster::spawn_agent(
        &adir,
        &live.logs,
        &live.agent_node,
        token.trim(),
        &live.image.agent_yaml,
    )?;
    let t = cluster::wait_node_ready(
        &live.client,
        &live.agent_node,
        agent.started,
        &mut agent,
        Duration::from_secs(180),
    )
    .await;
    live.agent = Some(agent);
    r.add(SEC_COLD, "lone agent start → node Ready", t?.as_secs_f64() * 1000.0, "ms", None,
        "join over HTTPS with the bootstrap token (CA pinned by its hash), client certificate issued, node registered, networking set up");
    Ok(())
}

struct Window {
    rss_mib: f64,
    pss_mib: f64,
    /// The root process alone (server or agent), then the mean of the other processes (shims).
    root_rss_mib: f64,
    root_pss_mib: f64,
    shim_rss_mib: f64,
    shim_pss_mib: f64,
    cpu_pct: f64,
    kb_per_min: f64,
    threads: u64,
    processes: usize,
}

fn measure(a0: procs::Sample, a1: procs::Sample, secs: f64, pid: i32) -> Window {
    let others = a1.processes.saturating_sub(1).max(1) as f64;
    Window {
        rss_mib: a1.rss_kib as f64 / 1024.0,
        pss_mib: a1.pss_kib as f64 / 1024.0,
        root_rss_mib: a1.root_rss_kib as f64 / 1024.0,
        root_pss_mib: a1.root_pss_kib as f64 / 1024.0,
        shim_rss_mib: a1.rss_kib.saturating_sub(a1.root_rss_kib) as f64 / 1024.0 / others,
        shim_pss_mib: a1.pss_kib.saturating_sub(a1.root_pss_kib) as f64 / 1024.0 / others,
        cpu_pct: (a1.cpu_ticks.saturating_sub(a0.cpu_ticks)) as f64 / procs::ticks_per_sec() / secs
            * 100.0,
        kb_per_min: (a1.write_bytes.saturating_sub(a0.write_bytes)) as f64 / 1000.0 / (secs / 60.0),
        threads: procs::threads(pid),
        processes: a1.processes,
    }
}

/// Whose figures an idle window reports.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The single-node cluster: the server with its in-process agent, no other node joined.
    SingleNode,
    /// The lone agent (the server's figures are reported beside, without targets).
    LoneAgent,
}

/// One idle window over the running cluster; `label` is "0 pods" or "20 pods".
pub async fn idle(
    r: &mut Report,
    live: &mut Live,
    who: Subject,
    label: &str,
    window: Duration,
) -> anyhow::Result<()> {
    let sp = live.server.pid();
    let ap = match (who, &live.agent) {
        (Subject::LoneAgent, Some(a)) => Some(a.pid()),
        (Subject::LoneAgent, None) => anyhow::bail!("the lone agent is not running"),
        (Subject::SingleNode, _) => None,
    };
    println!(
        "idle footprint ({label}): settling {:?}, then measuring {:?}",
        window / 2,
        window / 2
    );
    tokio::time::sleep(window / 2).await;
    let sample = |live: &Live| {
        (
            procs::sample(sp),
            ap.map(procs::sample),
            cluster::db_bytes(&live.server_data),
        )
    };
    let (s0, a0, db0) = sample(live);
    let t0 = Instant::now();
    tokio::time::sleep(window / 2).await;
    let secs = t0.elapsed().as_secs_f64();
    let (s1, a1, db1) = sample(live);
    if !live.server.alive() || live.agent.as_mut().is_some_and(|a| !a.alive()) {
        anyhow::bail!(
            "a process died during the idle window:\n{}",
            live.log_tails()
        );
    }
    let s = measure(s0, s1, secs, sp);
    let mins = window.as_secs_f64() / 60.0;
    let threads_note = |w: &Window, pid: i32| {
        let shims = if w.processes > 1 {
            format!(
                "; each of the {} shims {:.1} MiB RSS, {:.2} MiB PSS (mean)",
                w.processes - 1,
                w.shim_rss_mib,
                w.shim_pss_mib
            )
        } else {
            String::new()
        };
        format!(
            "{} process(es); main process {:.1} MiB RSS ({} threads; {}){shims}",
            w.processes,
            w.root_rss_mib,
            w.threads,
            rollup(pid)
        )
    };
    let pss_note = |w: &Window| {
        format!(
            "sum of Pss (smaps_rollup) over the same processes: a page shared by n of them counts 1/n; main process {:.1} MiB",
            w.root_pss_mib
        )
    };
    let (what, target) = match who {
        Subject::SingleNode => ("single-node cluster (server + in-process agent)", true),
        Subject::LoneAgent => ("server + in-process agent, lone agent joined", false),
    };
    let t = |v: f64| target.then_some(Target::AtMost(v));
    r.add(
        SEC_IDLE,
        &format!("{what} RSS, {label}, {mins:.0} min after start"),
        s.rss_mib,
        "MiB",
        t(64.0),
        &threads_note(&s, sp),
    );
    r.add(
        SEC_IDLE,
        &format!("{what} PSS, {label}"),
        s.pss_mib,
        "MiB",
        None,
        &pss_note(&s),
    );
    r.add(
        SEC_IDLE,
        &format!("{what} CPU, {label}"),
        s.cpu_pct,
        "% of a core",
        t(1.0),
        "utime+stime over the measured half of the window",
    );
    r.add(
        SEC_IDLE,
        &format!("{what} disk writes, {label}"),
        s.kb_per_min,
        "kB/min",
        t(60.0),
        &format!(
            "/proc/<pid>/io write_bytes; db+wal+shm grew {:.1} kB over the same time",
            (db1 as f64 - db0 as f64) / 1000.0
        ),
    );
    r.add(
        SEC_IDLE,
        &format!("database size (state.db + wal + shm), {what}, {label}"),
        db1 as f64 / 1000.0,
        "kB",
        None,
        "",
    );
    if let (Some(ap), Some(a0), Some(a1)) = (ap, a0, a1) {
        let a = measure(a0, a1, secs, ap);
        r.add(
            SEC_IDLE,
            &format!("lone agent RSS, {label}"),
            a.rss_mib,
            "MiB",
            Some(Target::AtMost(24.0)),
            &threads_note(&a, ap),
        );
        r.add(
            SEC_IDLE,
            &format!("lone agent PSS, {label}"),
            a.pss_mib,
            "MiB",
            None,
            &pss_note(&a),
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
            &format!("lone agent disk writes, {label}"),
            a.kb_per_min,
            "kB/min",
            Some(Target::AtMost(60.0)),
            "",
        );
    }
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

/// Starts `n` sleeping pods on `node` and waits until all run.
pub async fn start_pods(live: &Live, node: &str, n: usize) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(live.client.clone(), "default");
    for i in 0..n {
        let name = format!("idle-{node}-{i}");
        pods.create(
            &PostParams::default(),
            &cluster::sleeper(&name, node, &live.image.image)?,
        )
        .await
        .with_context(|| format!("create {name}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let lp = ListParams::default().labels("r3s-bench=sleeper");
    loop {
        let l = pods.list(&lp).await?;
        let running = l.items.iter().filter(|p| cluster::pod_running(p)).count();
        if running == n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {running} of {n} pods Running after 10 min"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Deletes the sleeping pods and waits until they are gone (their containers stopped).
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
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pods.list(&lp).await?.items.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "sleeper pods still there 5 min after their deletion"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
