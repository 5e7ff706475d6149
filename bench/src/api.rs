//! Item 3: API throughput and latency, ConfigMaps over HTTPS against the release server, with 1,
//! 16 and 64 concurrent clients. Each client is its own `kube::Client` (own connections, own TLS
//! sessions), as separate controllers or kubectl users would be.
//!
//! - create: each client creates new ConfigMaps (~200 bytes of data) for the run's duration;
//! - get: each client reads one of ten existing ConfigMaps;
//! - list: each client lists a namespace holding 100 ConfigMaps;
//! - watch: N watchers on a namespace while one writer updates a ConfigMap as fast as it can;
//!   latency is write issued → event received (commit and fsync included), throughput is events
//!   delivered per second over all watchers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};

use crate::cluster;
use crate::report::{Plot, Report, Series, percentiles_ms};

pub const SEC: &str = "3. API";
pub const CLIENTS: [usize; 3] = [1, 16, 64];

fn cm(name: &str, seq: u64) -> ConfigMap {
    let mut data = BTreeMap::new();
    data.insert("seq".to_owned(), seq.to_string());
    data.insert("payload".to_owned(), "x".repeat(200));
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

async fn namespace(c: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns: Api<Namespace> = Api::all(c.clone());
    let n: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    if ns.get_opt(name).await?.is_none() {
        ns.create(&PostParams::default(), &n).await?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Get,
    List,
}

/// Runs `op` from `clients` clients for `secs`; returns (ops/s, latencies).
async fn closed_loop(
    kubeconfig: &Path,
    op: Op,
    clients: usize,
    secs: Duration,
    tag: &str,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let mut cs = Vec::new();
    for _ in 0..clients {
        cs.push(cluster::client(kubeconfig).await?);
    }
    let start = Instant::now();
    let tasks: Vec<_> = cs
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let api: Api<ConfigMap> = Api::namespaced(
                    c.clone(),
                    match op {
                        Op::Create => "bench-create",
                        Op::Get => "bench-get",
                        Op::List => "bench-list",
                    },
                );
                let mut n = 0u64;
                while start.elapsed() < secs {
                    let t = Instant::now();
                    let ok = match op {
                        Op::Create => api
                            .create(&PostParams::default(), &cm(&format!("{tag}-{i}-{n}"), n))
                            .await
                            .is_ok(),
                        Op::Get => api.get(&format!("cm-{}", i % 10)).await.is_ok(),
                        Op::List => api
                            .list(&ListParams::default())
                            .await
                            // 100 of ours, plus kube-root-ca.crt, published in every namespace.
                            .is_ok_and(|l| l.items.len() >= 100),
                    };
                    if ok {
                        lat.push(t.elapsed());
                    }
                    n += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    Ok((rate, all))
}

/// `watchers` watches while one writer makes `writes` updates.
async fn watch_run(
    kubeconfig: &Path,
    watchers: usize,
    writes: u64,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let c = cluster::client(kubeconfig).await?;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "bench-watch");
    let name = format!("w{watchers}");
    let created = api.create(&PostParams::default(), &cm(&name, 0)).await?;
    let rv = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let issued: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; writes as usize + 1]));
    let mut subs = Vec::new();
    for _ in 0..watchers {
        let wc = cluster::client(kubeconfig).await?;
        let wapi: Api<ConfigMap> = Api::namespaced(wc, "bench-watch");
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(290);
        let mut stream = wapi.watch(&wp, &rv).await?.boxed();
        let issued = issued.clone();
        subs.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut last = Instant::now();
            while let Ok(Ok(Some(ev))) =
                tokio::time::timeout(Duration::from_secs(30), stream.try_next()).await
            {
                if let WatchEvent::Modified(o) = ev {
                    let now = Instant::now();
                    let seq: u64 = o
                        .data
                        .as_ref()
                        .and_then(|d| d.get("seq"))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if let Some(Some(t0)) = issued
                        .lock()
                        .ok()
                        .and_then(|v| v.get(seq as usize).copied())
                    {
                        lat.push(now.saturating_duration_since(t0));
                        last = now;
                    }
                    if seq >= writes {
                        break;
                    }
                }
            }
            (lat, last)
        }));
    }
    // Give the watches a moment to be registered server-side.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    for seq in 1..=writes {
        if let Ok(mut v) = issued.lock() {
            v[seq as usize] = Some(Instant::now());
        }
        let patch = serde_json::json!({"data": {"seq": seq.to_string()}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let mut all = Vec::new();
    let mut end = start;
    for s in subs {
        let (lat, last) = s.await?;
        all.extend(lat);
        end = end.max(last);
    }
    let rate = all.len() as f64
        / end
            .saturating_duration_since(start)
            .as_secs_f64()
            .max(0.001);
    Ok((rate, all))
}

pub async fn run(
    r: &mut Report,
    client: &kube::Client,
    kubeconfig: &Path,
    secs: Duration,
    writes: u64,
) -> anyhow::Result<()> {
    for ns in ["bench-create", "bench-get", "bench-list", "bench-watch"] {
        namespace(client, ns).await?;
    }
    let get: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-get");
    for i in 0..10 {
        get.create(&PostParams::default(), &cm(&format!("cm-{i}"), 0))
            .await?;
    }
    let list: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-list");
    for i in 0..100 {
        list.create(&PostParams::default(), &cm(&format!("cm-{i}"), 0))
            .await?;
    }
    let mut p50s: Vec<Series> = Vec::new();
    let mut p99s: Vec<Series> = Vec::new();
    let mut rates: Vec<Series> = Vec::new();
    for (label, op) in [
        ("create", Some(Op::Create)),
        ("get", Some(Op::Get)),
        ("list 100", Some(Op::List)),
        ("watch", None),
    ] {
        let (mut s50, mut s99, mut srate) = (Vec::new(), Vec::new(), Vec::new());
        for clients in CLIENTS {
            let (rate, mut lat) = match op {
                Some(op) => {
                    closed_loop(kubeconfig, op, clients, secs, &format!("c{clients}")).await?
                }
                None => watch_run(kubeconfig, clients, writes).await?,
            };
            let (p50, p99) = percentiles_ms(&mut lat);
            let who = if op.is_some() { "clients" } else { "watchers" };
            let unit = if op.is_some() { "req/s" } else { "events/s" };
            r.add(
                SEC,
                &format!("{label}, {clients} {who}: throughput"),
                rate,
                unit,
                None,
                &format!("{} operations", lat.len()),
            );
            r.add(
                SEC,
                &format!("{label}, {clients} {who}: p50 / p99 latency"),
                p50,
                "ms",
                None,
                &format!("p99 {p99:.1} ms"),
            );
            s50.push((clients as f64, p50));
            s99.push((clients as f64, p99));
            srate.push((clients as f64, rate));
        }
        p50s.push(Series {
            name: format!("{label} p50"),
            points: s50,
        });
        p99s.push(Series {
            name: format!("{label} p99"),
            points: s99,
        });
        rates.push(Series {
            name: label.into(),
            points: srate,
        });
    }
    let mut lat_series = Vec::new();
    for (a, b) in p50s.into_iter().zip(p99s) {
        lat_series.push(a);
        lat_series.push(b);
    }
    r.plots.push(Plot {
        file: "benchmarks-api-latency.svg".into(),
        title: format!("{SEC}: latency vs concurrent clients"),
        x_label: "clients (watchers for watch)".into(),
        y_label: "ms (log)".into(),
        log_y: true,
        series: lat_series,
    });
    r.plots.push(Plot {
        file: "benchmarks-api-throughput.svg".into(),
        title: format!("{SEC}: throughput vs concurrent clients"),
        x_label: "clients (watchers for watch)".into(),
        y_label: "requests or events per second (log)".into(),
        log_y: true,
        series: rates,
    });
    Ok(())
}

/// For item 2: `writers` tasks each merge-patching its own ConfigMap over HTTPS for `secs`.
pub async fn patch_writes(
    kubeconfig: &Path,
    writers: usize,
    secs: Duration,
) -> anyhow::Result<f64> {
    let c = cluster::client(kubeconfig).await?;
    namespace(&c, "bench-store").await?;
    let mut tasks = Vec::new();
    let start_at = Arc::new(tokio::sync::Barrier::new(writers));
    let done = Arc::new(Mutex::new(0u64));
    let t_all = Instant::now();
    for w in 0..writers {
        let c = cluster::client(kubeconfig).await?;
        let api: Api<ConfigMap> = Api::namespaced(c, "bench-store");
        let name = format!("s{writers}-{w}");
        let _ = api.create(&PostParams::default(), &cm(&name, 0)).await?;
        let (b, done) = (start_at.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < secs {
                let patch = serde_json::json!({"data": {"seq": n.to_string()}});
                if api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    n += 1;
                }
            }
            if let Ok(mut d) = done.lock() {
                *d += n;
            }
            start.elapsed()
        }));
    }
    let mut longest = Duration::ZERO;
    for t in tasks {
        longest = longest.max(t.await?);
    }
    let _ = t_all;
    let n = *done.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(n as f64 / longest.as_secs_f64())
}
