//! Under a steady update load with background compaction, the database stops growing: 200,000 updates
//! spread over 100 keys leave a file of bounded size, no larger after the second half of the run than
//! after the first, with every current value intact after a reopen.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use r3s_server::store::{ListOptions, SqliteStore, Store, StoreOptions};

const KEYS: usize = 100;
const UPDATES: usize = 200_000;
const MIB: u64 = 1 << 20;

fn opts() -> StoreOptions {
    StoreOptions {
        compact_interval: Some(Duration::from_millis(50)),
        compact_retention: Duration::ZERO,
        compact_min_retain: 1000,
        compact_batch: 500,
        ..StoreOptions::default()
    }
}

/// A Lease-sized value (~300 bytes) that names its key and update number.
fn value(key: usize, n: usize) -> Bytes {
    let mut s = format!("{{\"key\":{key},\"n\":{n},\"holder\":\"node-{key}\",\"pad\":\"");
    while s.len() < 290 {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn db_and_wal(db: &Path) -> (u64, u64) {
    let wal = db.with_file_name("state.db-wal");
    (size(db), size(&wal))
}

/// Runs `per_key` updates on every key, one task per key (so writes group-commit).
async fn run_updates(s: &Arc<SqliteStore>, from: usize, per_key: usize) {
    let tasks: Vec<_> = (0..KEYS)
        .map(|k| {
            let s = s.clone();
            tokio::spawn(async move {
                let key = format!("/registry/leases/kube-node-lease/node-{k:03}");
                let mut rev = s.get(&key).expect("get").expect("key exists").mod_revision;
                for n in from..from + per_key {
                    rev = s
                        .update(&key, value(k, n), rev)
                        .await
                        .expect("update")
                        .mod_revision;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("update task");
    }
}

/// Waits (bounded) until background compaction has caught up to within `slack` of the head.
async fn wait_compacted(s: &SqliteStore, slack: i64) {
    // Bounded at 2 minutes: on a loaded 2-core machine compaction competes with the writers.
    for _ in 0..2400 {
        if s.current_revision() - s.compacted_revision() <= slack {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "background compaction did not catch up: current {} compacted {}",
        s.current_revision(),
        s.compacted_revision()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_updates_do_not_grow_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("server/db/state.db");
    let s = Arc::new(SqliteStore::open(&db, opts()).expect("open"));
    for k in 0..KEYS {
        s.create(
            &format!("/registry/leases/kube-node-lease/node-{k:03}"),
            value(k, 0),
        )
        .await
        .expect("create");
    }
    let per_half = UPDATES / KEYS / 2;

    // Peak db+wal size per half, sampled while the updates run.
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (peak, stop, db) = (peak.clone(), stop.clone(), db.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (d, w) = db_and_wal(&db);
                peak.fetch_max(d + w, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let take_peak = || peak.swap(0, std::sync::atomic::Ordering::SeqCst);

    run_updates(&s, 1, per_half).await;
    wait_compacted(&s, 2 * 1000).await;
    let (db1, wal1) = db_and_wal(&db);
    let peak1 = take_peak();
    eprintln!("after first half: db {db1} B, wal {wal1} B, peak db+wal {peak1} B");

    run_updates(&s, 1 + per_half, per_half).await;
    wait_compacted(&s, 2 * 1000).await;
    let (db2, wal2) = db_and_wal(&db);
    let peak2 = take_peak();
    eprintln!("after second half: db {db2} B, wal {wal2} B, peak db+wal {peak2} B");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    monitor.join().expect("monitor thread");
    assert_eq!(s.current_revision(), (KEYS + UPDATES) as i64);

    // 200,000 rows of ~300 bytes would be ~70 MB uncompacted (~35 MB per half); the live data is
    // ~30 KB plus ~1000-2000 retained revisions, and the WAL is checkpointed at each compaction.
    // The size oscillates between vacuums and with how far compaction lags the writers (more on a
    // loaded machine), hence the slack; a leak would add ~35 MB per half.
    assert!(db1 <= 4 * MIB, "db after first half: {db1} B");
    assert!(db2 <= 4 * MIB, "db after second half: {db2} B");
    assert!(
        peak1 <= 16 * MIB,
        "peak db+wal in the first half: {peak1} B"
    );
    assert!(
        peak2 <= peak1 + 8 * MIB,
        "file kept growing: peak {peak1} B in the first half, {peak2} B in the second"
    );
    assert!(
        db2 <= db1 + 2 * MIB,
        "file kept growing: {db1} B after the first half, {db2} B after the second"
    );

    // An explicit compaction of everything shrinks it to a small file.
    let head = s.current_revision();
    s.compact(head).await.expect("compact");
    let (db3, wal3) = db_and_wal(&db);
    eprintln!("after full compaction: db {db3} B, wal {wal3} B");
    assert!(db3 <= MIB, "db after full compaction: {db3} B");
    drop(s);

    let s = SqliteStore::open(&db, opts()).expect("reopen");
    assert_eq!(s.current_revision(), head);
    let all = s
        .list("/registry/leases/", &ListOptions::default())
        .expect("list");
    assert_eq!(all.items.len(), KEYS);
    for (k, kv) in all.items.iter().enumerate() {
        assert_eq!(kv.value, value(k, 2 * per_half), "value of key {k}");
    }
    drop(s);
    let conn = rusqlite::Connection::open(&db).expect("sqlite open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let auto_vacuum: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .expect("auto_vacuum");
    assert_eq!(
        auto_vacuum, 2,
        "database created with auto_vacuum=INCREMENTAL"
    );
}
