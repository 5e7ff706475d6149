//! Store benchmark (`cargo bench -p r3s-server --bench store`), printed as one report:
//! - writes/s with 1, 8 and 64 concurrent writers, next to raw rusqlite single-row insert+commit in
//!   the same journal mode, synchronous setting, page size and locking mode (ratio printed);
//! - watch latency p50/p99 with 1 and 100 watchers: end to end (write issued -> event at the
//!   subscriber, including the commit's fsync) and delivery (hub publish right after the commit ->
//!   subscriber);
//! - bytes written to disk per minute by a store taking one small update every 10 s (a Lease renewal),
//!   from /proc/self/io `write_bytes` (and the db+wal growth).
//!
//! Runs in a temp dir under `R3S_BENCH_DIR` (default: the system temp dir; it must be on disk, not
//! tmpfs, for the numbers to mean anything). `R3S_BENCH_SECS` sets each throughput run (default 3),
//! `R3S_BENCH_IDLE_SECS` the idle-write window (default 60, at least 60 for the published figure).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use r3s_server::store::sqlite::schema;
use r3s_server::store::watch::{self, Hub, HubLimits};
use r3s_server::store::{Durability, Event, EventType, KeyValue, SqliteStore, Store, StoreOptions};

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn lease_value(n: usize) -> Bytes {
    // The shape and size of a coordination.k8s.io Lease as the API server stores it (~600 bytes).
    Bytes::from(format!(
        r#"{{"kind":"Lease","apiVersion":"coordination.k8s.io/v1","metadata":{{"name":"node-1","namespace":"kube-node-lease","uid":"3f2c6f5e-8a4b-4c1e-9d1a-2b7c0e4f9a11","resourceVersion":"{n}","creationTimestamp":"2026-11-22T06:00:00Z","ownerReferences":[{{"apiVersion":"v1","kind":"Node","name":"node-1","uid":"9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4"}}]}},"spec":{{"holderIdentity":"node-1","leaseDurationSeconds":40,"renewTime":"2026-11-22T06:{:02}:{:02}.000000Z"}}}}"#,
        (n / 60) % 60,
        n % 60
    ))
}

fn opts(durability: Durability) -> StoreOptions {
    StoreOptions {
        durability,
        ..StoreOptions::default()
    }
}

/// Store writes/s with `writers` concurrent tasks, each updating its own key.
async fn store_writes(
    dir: &Path,
    writers: usize,
    secs: Duration,
    d: Durability,
    rep: usize,
) -> f64 {
    let db = dir.join(format!("writes-{writers}-{d:?}-{rep}.db"));
    let s = Arc::new(SqliteStore::open(&db, opts(d)).expect("open store"));
    for w in 0..writers {
        s.create(&format!("/bench/{w}"), lease_value(0))
            .await
            .expect("create");
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let key = format!("/bench/{w}");
                let mut rev = s.get(&key).expect("get").expect("exists").mod_revision;
                let mut n = 0u64;
                while start.elapsed() < secs {
                    rev = s
                        .update(&key, lease_value(n as usize), rev)
                        .await
                        .expect("update")
                        .mod_revision;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Raw rusqlite: one row inserted and committed per transaction, same journal mode and sync.
fn raw_writes(dir: &Path, secs: Duration, d: Durability, rep: usize) -> f64 {
    let db = dir.join(format!("raw-{d:?}-{rep}.db"));
    let conn = rusqlite::Connection::open(&db).expect("open raw");
    // The store's file settings too (page size, exclusive locking), so the ratio shows what the
    // store itself adds or saves.
    conn.pragma_update(None, "page_size", schema::PAGE_SIZE)
        .expect("page size");
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .expect("exclusive");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(
        None,
        "synchronous",
        if d == Durability::Full {
            "FULL"
        } else {
            "NORMAL"
        },
    )
    .expect("sync");
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT NOT NULL, value BLOB NOT NULL)",
    )
    .expect("create table");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        conn.execute(
            "INSERT INTO t (key, value) VALUES (?1, ?2)",
            rusqlite::params![format!("/bench/{}", n % 64), &lease_value(n as usize)[..]],
        )
        .expect("insert");
        conn.execute_batch("COMMIT").expect("commit");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, usize) {
    v.sort_unstable();
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO, 0);
    }
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.50), at(0.99), v.len())
}

/// End to end: write issued -> event received by each of `watchers` subscribers.
async fn watch_latency_store(
    dir: &Path,
    watchers: usize,
    writes: usize,
) -> (Duration, Duration, usize) {
    let db = dir.join(format!("watch-{watchers}.db"));
    let s = Arc::new(SqliteStore::open(&db, opts(Durability::Full)).expect("open"));
    let kv = s
        .create("/lat/lease", lease_value(0))
        .await
        .expect("create");
    let issued: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; writes + 2]));
    let base = kv.mod_revision;
    let mut subs = Vec::new();
    for _ in 0..watchers {
        let mut w = s.watch("/lat/", base).expect("watch");
        subs.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(writes);
            while got.len() < writes {
                match w.next().await {
                    Some(Ok(ev)) => got.push((ev.revision(), Instant::now())),
                    _ => break,
                }
            }
            got
        }));
    }
    let mut rev = base;
    for i in 0..writes {
        issued.lock().expect("lock")[i + 1] = Some(Instant::now());
        rev = s
            .update("/lat/lease", lease_value(i), rev)
            .await
            .expect("update")
            .mod_revision;
    }
    let issued = issued.lock().expect("lock").clone();
    let mut lat = Vec::new();
    for sub in subs {
        for (rev, at) in sub.await.expect("subscriber") {
            if let Some(Some(t0)) = usize::try_from(rev - base).ok().and_then(|i| issued.get(i)) {
                lat.push(at.saturating_duration_since(*t0));
            }
        }
    }
    percentiles(lat)
}

/// Delivery: the hub publishes from a plain thread (as the writer does right after a commit); each
/// subscriber task notes when it receives the event.
async fn watch_latency_hub(watchers: usize, events: usize) -> (Duration, Duration, usize) {
    let hub = Arc::new(Hub::new(
        HubLimits {
            history_events: 10_000,
            history_bytes: 16 << 20,
            watch_buffer: 1024,
        },
        0,
        Vec::new(),
    ));
    let mut subs = Vec::new();
    for _ in 0..watchers {
        let sub = hub.lock().subscribe("/lat/", 0);
        let mut w = watch::into_stream(sub, None);
        subs.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(events);
            while got.len() < events {
                match w.next().await {
                    Some(Ok(ev)) => got.push((ev.revision(), Instant::now())),
                    _ => break,
                }
            }
            got
        }));
    }
    let published: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(events)));
    let (h, p) = (hub.clone(), published.clone());
    let publisher = std::thread::spawn(move || {
        for i in 0..events {
            let rev = i as i64 + 1;
            let kv = KeyValue {
                key: "/lat/lease".into(),
                value: lease_value(i),
                create_revision: 1,
                mod_revision: rev,
            };
            let ev = Event {
                event_type: EventType::Modified,
                kv,
                prev: None,
            };
            let mut g = h.lock();
            p.lock().expect("lock").push(Instant::now());
            g.publish(vec![ev]);
            drop(g);
            // About the pace of a busy writer: one commit every 200 us.
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    publisher.join().expect("publisher");
    let published = published.lock().expect("lock").clone();
    let mut lat = Vec::new();
    for sub in subs {
        for (rev, at) in sub.await.expect("subscriber") {
            if let Some(t0) = usize::try_from(rev - 1).ok().and_then(|i| published.get(i)) {
                lat.push(at.saturating_duration_since(*t0));
            }
        }
    }
    percentiles(lat)
}

fn proc_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// One small update every 10 s for `window`: bytes written per minute.
async fn idle_writes(dir: &Path, window: Duration, amortized: usize) -> (f64, f64, usize, f64) {
    let db = dir.join("idle/state.db");
    let s = SqliteStore::open(&db, opts(Durability::Full)).expect("open");
    // A small cluster's worth of objects, so the file is not trivially tiny.
    for i in 0..500 {
        s.create(
            &format!("/registry/configmaps/default/cm-{i:04}"),
            lease_value(i),
        )
        .await
        .expect("create");
    }
    let mut kv = s
        .create("/registry/leases/kube-node-lease/node-1", lease_value(0))
        .await
        .expect("create lease");
    // Let the initial load reach the disk before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wal = db.with_file_name("state.db-wal");
    let (io0, files0) = (proc_write_bytes(), file_len(&db) + file_len(&wal));
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < window {
        kv = s
            .update(&kv.key, lease_value(n + 1), kv.mod_revision)
            .await
            .expect("renew lease");
        n += 1;
        let next = Duration::from_secs(10 * n as u64);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait.min(window.saturating_sub(start.elapsed()))).await;
        }
    }
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let io = proc_write_bytes().saturating_sub(io0) as f64 / minutes;
    let files = (file_len(&db) + file_len(&wal)).saturating_sub(files0) as f64 / minutes;

    // The same single-update commits back to back, enough of them to include WAL checkpoints
    // (which a one-minute window at this pace never reaches): bytes per update.
    let io0 = proc_write_bytes();
    for i in 0..amortized {
        kv = s
            .update(&kv.key, lease_value(n + 1 + i), kv.mod_revision)
            .await
            .expect("renew lease");
    }
    let per_update = proc_write_bytes().saturating_sub(io0) as f64 / amortized.max(1) as f64;
    (io, files, n, per_update)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split(':').nth(1).map(|m| m.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The file system type holding `dir` (longest matching mount point in /proc/self/mounts).
fn fs_type(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mp = PathBuf::from(f[1]);
        if dir.starts_with(&mp) && best.as_ref().is_none_or(|(l, _)| mp.as_os_str().len() > *l) {
            best = Some((
                mp.as_os_str().len(),
                format!("{} ({} on {})", f[2], f[0], f[1]),
            ));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, s)| s)
}

const REPS: usize = 3;
const WRITERS: [usize; 3] = [1, 8, 64];

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn range(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("[{min:.0}-{max:.0}]")
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run a short version.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = if quick {
        Duration::from_millis(300)
    } else {
        env_secs("R3S_BENCH_SECS", 3)
    };
    let idle = if quick {
        Duration::from_secs(1)
    } else {
        env_secs("R3S_BENCH_IDLE_SECS", 60)
    };
    let base = std::env::var_os("R3S_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::Builder::new()
        .prefix("r3s-store-bench")
        .tempdir_in(&base)
        .expect("bench dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("r3s store benchmark");
    println!(
        "machine: {} CPUs ({}), {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        std::env::consts::ARCH
    );
    println!(
        "directory: {} on {}",
        dir.path().display(),
        fs_type(dir.path())
    );
    println!();
    println!(
        "== writes/s (each write a ~600-byte Lease update, acknowledged after commit; median of {REPS} alternating runs of {} s, min-max in brackets)",
        secs.as_secs_f64()
    );
    for d in [Durability::Full, Durability::Normal] {
        let mut raw = Vec::new();
        let mut store: [Vec<f64>; 3] = Default::default();
        for rep in 0..REPS {
            raw.push(raw_writes(dir.path(), secs, d, rep));
            for (i, writers) in WRITERS.iter().enumerate() {
                store[i].push(rt.block_on(store_writes(dir.path(), *writers, secs, d, rep)));
            }
        }
        let mode = match d {
            Durability::Full => "WAL, synchronous=FULL (default)",
            Durability::Normal => "WAL, synchronous=NORMAL",
        };
        let raw_median = median(&raw);
        println!(
            "  {mode}: raw rusqlite 1 row/commit: {raw_median:>9.0}/s {}",
            range(&raw)
        );
        for (i, writers) in WRITERS.iter().enumerate() {
            let m = median(&store[i]);
            println!(
                "    store, {writers:>2} writers: {m:>9.0}/s {}   ratio to raw: {:.2}x",
                range(&store[i]),
                m / raw_median
            );
        }
    }
    println!();
    println!("== watch latency (p50 / p99)");
    let writes = if quick { 50 } else { 1000 };
    for watchers in [1, 100] {
        let (p50, p99, n) = rt.block_on(watch_latency_store(dir.path(), watchers, writes));
        println!(
            "  end to end, write issued -> subscriber, {watchers:>3} watchers: {} / {} ({n} deliveries)",
            ms(p50),
            ms(p99)
        );
        let (p50, p99, n) = rt.block_on(watch_latency_hub(watchers, writes));
        println!(
            "  delivery, commit (publish) -> subscriber, {watchers:>3} watchers: {} / {} ({n} deliveries)",
            ms(p50),
            ms(p99)
        );
    }
    println!();
    println!(
        "== idle writes: one Lease update every 10 s for {} s",
        idle.as_secs()
    );
    let amortized = if quick { 100 } else { 5000 };
    let (io, files, n, per_update) = rt.block_on(idle_writes(dir.path(), idle, amortized));
    println!(
        "  {n} updates; /proc/self/io write_bytes: {:.0} B/min = {:.0} B/s; db+wal growth: {:.0} B/min",
        io,
        io / 60.0,
        files
    );
    println!(
        "  amortized over {amortized} such commits back to back (includes WAL checkpoints): {per_update:.0} B/update = {:.0} B/s at one update per 10 s",
        per_update / 10.0
    );
    println!("  (k3s/kine measures 6-11 kB/s idle, k3s issue #5042)");
}
