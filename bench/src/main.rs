//! `r3s-bench`: one command that measures r3s on this machine and writes one report
//! (`docs/benchmarks.md`, `docs/benchmarks.json`, `docs/benchmarks-*.svg`).
//!
//! Run as root from the repository: `cargo run -p r3s-bench --release -- [--quick] [--out docs]`.
//! It needs the release `r3s-server` and `r3s-agent` beside it (cargo builds them with
//! `cargo build --release -p r3s-server -p r3s-agent`), `/usr/bin/kubectl`, `docker-registry`,
//! `busybox-static`, `runc` and `etcd-server` (Debian packages; etcd-server is installed by the
//! runner if missing). Everything runs in network namespaces of its own (see [`cluster`]), data
//! on disk under /var/tmp, logs on tmpfs; all is removed at the end.
//!
//! Items (issue 9): 1 idle footprint, 2 store writes/s beside raw SQLite and etcd, 3 API
//! throughput and latency, 4 pod start beside runc, 5 scale with simulated nodes, 6 cold start,
//! 7 binary sizes. It is not a test: nothing here runs under `cargo test`.

mod api;
mod cluster;
mod footprint;
mod machine;
#[allow(dead_code)]
#[path = "../../server/tests/support/node_sim.rs"]
mod node_sim;
mod outer;
mod podstart;
mod procs;
#[path = "../../images/tests/support/mod.rs"]
mod registry;
mod report;
mod scale;
mod sizes;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use report::{Plot, Report, Series};

/// Measures r3s on this machine and writes docs/benchmarks.{md,json} and SVG plots.
#[derive(Debug, Parser)]
#[command(name = "r3s-bench")]
struct Args {
    /// Short windows and few repetitions (minutes instead of half an hour); the report says so.
    #[arg(long)]
    quick: bool,
    /// Where to write the report.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs"))]
    out: PathBuf,
    /// Idle window in minutes, per pod count (default 10, or 1 with --quick).
    #[arg(long)]
    idle_minutes: Option<f64>,
    /// Only these items (comma-separated numbers 1-7; 6 comes with 1).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Simulated nodes and pods for item 5 (default 100 and 3000, or 20 and 300 with --quick).
    #[arg(long)]
    scale_nodes: Option<usize>,
    #[arg(long)]
    scale_pods: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("r3s-bench: run as root (network namespaces, containers, cgroups)");
        return ExitCode::FAILURE;
    }
    if let Some(res) = outer::run_isolated() {
        return match res {
            Ok(0) => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("r3s-bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("r3s-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(inner) = outer::inner() else {
        eprintln!("r3s-bench: started as the inner process without its environment");
        return ExitCode::FAILURE;
    };
    // On SIGINT/SIGTERM (forwarded by the outer process) the run is dropped: every drop guard
    // stops its process by PID (agents stop their pods), then the outer process sweeps.
    let res = rt.block_on(async {
        let (mut int, mut term) = (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        );
        tokio::select! {
            r = run(args, inner) => r,
            _ = int.recv() => Err(anyhow::anyhow!("interrupted (SIGINT): stopping")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated (SIGTERM): stopping")),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("r3s-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, inner: outer::Inner) -> anyhow::Result<()> {
    let want = |n: u8| args.only.is_empty() || args.only.contains(&n);
    let quick = args.quick;
    let mut r = Report::new(
        machine::Machine::at_start(),
        if quick { "quick" } else { "full" },
    );
    let idle =
        Duration::from_secs_f64(60.0 * args.idle_minutes.unwrap_or(if quick { 1.0 } else { 10.0 }));
    let secs = Duration::from_secs(if quick { 2 } else { 5 });
    let (nodes, pods) = (
        args.scale_nodes.unwrap_or(if quick { 20 } else { 100 }),
        args.scale_pods.unwrap_or(if quick { 300 } else { 3000 }),
    );
    let runs = if quick { 5 } else { 20 };
    let watch_writes = if quick { 100 } else { 300 };
    r.setting(
        "Idle window per pod count",
        format!(
            "{:.1} min (first half settles, second half measured)",
            idle.as_secs_f64() / 60.0
        ),
    );
    r.setting("Throughput runs", format!("{} s per point", secs.as_secs()));
    r.setting(
        "Runner build",
        format!(
            "{} (the measured r3s-server and r3s-agent are release builds: {}); the in-process store and raw SQLite figures of item 2 run in the runner's own code",
            if cfg!(debug_assertions) { "debug" } else { "release" },
            cluster::bin("r3s-server").map_or_else(|e| e.to_string(), |p| p.display().to_string())
        ),
    );
    r.setting(
        "Machine sharing",
        "shared 2-core machine: other builds may run during the benchmark; see the load averages"
            .into(),
    );

    // Both directories are the outer process's: it removes them when this one has ended.
    let dir = tempfile::Builder::new()
        .prefix("data")
        .tempdir_in(&inner.dir)?;
    let logs = inner.logs.clone();

    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let target_dir = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default();

    // Store first, on a quiet cluster-free machine (etcd and SQLite only).
    let mut store_series: Vec<Series> = Vec::new();
    if want(2)
        && let Err(e) = store_items(&mut r, dir.path(), &logs, secs, &mut store_series).await
    {
        r.skip(store::SEC, format!("{e:#}"));
    }

    if want(1) || want(3) || want(4) || want(6) {
        match footprint::start(&mut r, dir.path(), &logs).await {
            Ok(mut live) => {
                let res = live_items(
                    &mut r,
                    &mut live,
                    dir.path(),
                    &inner.tag,
                    &want,
                    idle,
                    secs,
                    runs,
                    watch_writes,
                    &mut store_series,
                )
                .await;
                if let Err(e) = res {
                    r.skip(
                        "1. Idle footprint",
                        format!("the live cluster failed: {e:#}\n{}", live.log_tails()),
                    );
                }
                live.stop();
            }
            Err(e) => r.skip(
                "1. Idle footprint",
                format!("the cluster did not start: {e:#}"),
            ),
        }
    }
    if !store_series.is_empty() {
        r.plots.push(Plot {
            file: "benchmarks-store-writes.svg".into(),
            title: format!("{}: durable writes/s vs concurrent writers", store::SEC),
            x_label: "concurrent writers".into(),
            y_label: "writes per second (log)".into(),
            log_y: true,
            series: store_series,
        });
    }
    if want(7) {
        sizes::run(&mut r, &root, &target_dir);
    }
    // A partial report first, so a run cut short still leaves its figures.
    notes(&mut r);
    r.machine.finish();
    r.write(&args.out)?;
    if want(5)
        && let Err(e) = scale::run(&mut r, dir.path(), &logs, nodes, pods).await
    {
        r.skip(scale::SEC, format!("{e:#}"));
    }
    r.machine.finish();
    r.write(&args.out)?;
    println!(
        "report written to {}",
        args.out.join("benchmarks.md").display()
    );
    Ok(())
}

async fn store_items(
    r: &mut Report,
    dir: &std::path::Path,
    logs: &std::path::Path,
    secs: Duration,
    series: &mut Vec<Series>,
) -> anyhow::Result<()> {
    let raw = store::raw_sqlite(dir, secs)?;
    r.add(
        store::SEC,
        "raw SQLite, 1 row per commit (single writer)",
        raw,
        "writes/s",
        None,
        "rusqlite, WAL, synchronous=FULL, the store's page size and exclusive locking",
    );
    let mut ours = Vec::new();
    for w in store::WRITERS {
        let v = store::r3s_store(dir, w, secs).await?;
        r.add(store::SEC, &format!("r3s store in-process, {w} writers"), v, "writes/s", None,
            &format!("{:.2}× raw SQLite; concurrent writers share one group commit (one fsync per batch)", v / raw));
        ours.push((w as f64, v));
    }
    series.push(Series {
        name: "r3s store (in-process)".into(),
        points: ours,
    });
    series.push(Series {
        name: "raw SQLite (1 writer)".into(),
        points: store::WRITERS.iter().map(|w| (*w as f64, raw)).collect(),
    });
    match store::start_etcd(dir, logs).await {
        Ok(mut e) => {
            let mut pts = Vec::new();
            for w in store::WRITERS {
                let v = store::etcd_writes(&e, w, secs).await?;
                r.add(
                    store::SEC,
                    &format!("etcd via HTTP JSON gateway, {w} writers"),
                    v,
                    "writes/s",
                    None,
                    &format!("{}; POST /v3/kv/put over loopback HTTP/1.1", e.version),
                );
                pts.push((w as f64, v));
            }
            series.push(Series {
                name: "etcd (HTTP JSON gateway)".into(),
                points: pts,
            });
            e.proc.stop();
        }
        Err(err) => r.skip(store::SEC, format!("etcd: {err:#}")),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn live_items(
    r: &mut Report,
    live: &mut footprint::Live,
    dir: &std::path::Path,
    tag: &str,
    want: &dyn Fn(u8) -> bool,
    idle: Duration,
    secs: Duration,
    runs: usize,
    watch_writes: u64,
    store_series: &mut Vec<Series>,
) -> anyhow::Result<()> {
    use footprint::Subject::{LoneAgent, SingleNode};
    if want(1) {
        let res = async {
            footprint::idle(r, live, SingleNode, "0 pods", idle).await?;
            footprint::start_pods(live, &live.server_node, 20).await?;
            footprint::idle(r, live, SingleNode, "20 pods", idle).await?;
            footprint::delete_pods(live).await
        }
        .await;
        if let Err(e) = res {
            r.skip(footprint::SEC_IDLE, format!("{e:#}"));
        }
    }
    if want(1) || want(6) {
        footprint::join_agent(r, live).await?;
    }
    if want(1) {
        let res = async {
            footprint::idle(r, live, LoneAgent, "0 pods", idle).await?;
            footprint::start_pods(live, &live.agent_node, 20).await?;
            footprint::idle(r, live, LoneAgent, "20 pods", idle).await?;
            footprint::delete_pods(live).await
        }
        .await;
        if let Err(e) = res {
            r.skip(footprint::SEC_IDLE, format!("lone agent: {e:#}"));
        }
    }
    if want(4)
        && let Err(e) = podstart::run(r, live, dir, runs, tag).await
    {
        r.skip(podstart::SEC, format!("{e:#}"));
    }
    if want(2) {
        let mut pts = Vec::new();
        for w in store::WRITERS {
            match api::patch_writes(&live.kubeconfig, w, secs).await {
                Ok(v) => {
                    r.add(store::SEC, &format!("r3s API server over HTTPS (merge-patch ConfigMap), {w} writers"), v, "writes/s", None,
                        "the network path comparable to etcd's: TLS, authn/authz, admission, JSON, then the store");
                    pts.push((w as f64, v));
                }
                Err(e) => r.skip(store::SEC, format!("API path, {w} writers: {e:#}")),
            }
        }
        store_series.push(Series {
            name: "r3s API server (HTTPS patch)".into(),
            points: pts,
        });
    }
    if want(3)
        && let Err(e) = api::run(r, &live.client, &live.kubeconfig, secs, watch_writes).await
    {
        r.skip(api::SEC, format!("{e:#}"));
    }
    Ok(())
}

/// Method and design notes per section, in the report beside the figures.
fn notes(r: &mut Report) {
    r.note(footprint::SEC_IDLE, "Single-node cluster (as issue 9 defines it): the release `r3s-server` (API, SQLite store, \
        controllers, scheduler and the in-process agent) in a network namespace of its own, measured alone with 0 and then \
        20 pods on its node. Then a lone `r3s-agent` joins from a second namespace and is measured with 0 and 20 pods of its \
        own; the server's figures in those windows are listed too, without a target (it then also stores the second node's \
        Lease renewals). Pods are busybox-static `sleep` from a local docker-registry. RSS and CPU count only processes \
        running an r3s executable, never container processes. Targets from issue 9: server + agent ≤ 64 MB, agent ≤ 24 MB, \
        ≤ 1 % of a core, ≤ 60 kB written per minute. k3s for comparison (anchors §3): server + agent 1.2–1.6 GB and 25–30 % \
        of a Pi 4 core, agent ~270 MB, idle writes 6–11 kB/s (360–660 kB/min). RSS is summed per process, as the issue asks, \
        so every page of the executable a shim maps counts once per shim; the PSS sum beside it (smaps_rollup, a page shared \
        by n processes counts 1/n) is what the group costs the machine. Where the figures come from: \
        (a) with pods, one shim process per container (agent/src/runtime/shim.rs) stays the container's parent, the only \
        process that can reap it; once the container started it execve's its own executable into a waiter \
        (agent/src/runtime/waiter.rs: one thread, one poll loop over the output pipes, the attach FIFO and a signalfd), so \
        none of the memory creating the container took (libcontainer, the OCI spec, their heap, the copier threads) stays \
        per container; (b) the main process's RSS is mostly file-backed pages of its own executable (see the smaps_rollup \
        split in each note), so it follows the binary's code size; (c) idle writes: the only periodic writer is each node's \
        Lease renewal every 10 s (kubelet's interval), one SQLite commit each (strace of an idle server shows nothing else), \
        and with synchronous=FULL every commit's WAL pages are written back, so the next commit dirties the shared 4 KiB page \
        again. A Lease row is ~515 bytes (69-byte key, ~430-byte zstd value with its managedFields), one per 1 KiB page, so \
        each renewal appends 4 frames (header page, pointer map, log interior page, new leaf): 2 page-cache pages or more \
        per commit. The node status is written only when it changes or every 5 minutes, as kubelet does.");
    r.note(store::SEC, "Each writer updates its own key with a ~600-byte Lease-shaped value; every write is acknowledged \
        only after it is durable (fsync). etcd is Debian's etcd-server started by the runner on 127.0.0.1 with a temp \
        data dir and default settings, reached through its gRPC-gateway JSON API with hyper (the Rust etcd gRPC client \
        needs protoc). The r3s store is measured both in-process (the store alone) and through the API server over \
        HTTPS (the network path, comparable to etcd's but heavier: TLS, auth, admission, full object JSON).");
    r.note(api::SEC, "ConfigMaps over HTTPS against the release server of item 1 (with its in-process agent running), each \
        client its own kube::Client. Closed loop: every client sends its next request when the previous one returns.");
    r.note(
        footprint::SEC_COLD,
        "Fresh data directory each time; times from process spawn.",
    );
}
