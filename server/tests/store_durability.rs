//! Acknowledged writes survive `kill -9`: a child process (this test binary, re-run with
//! `R3S_STORE_CHILD_DB` set) writes as fast as it can and prints every acknowledged write; the parent
//! SIGKILLs it at a random moment, 20+ times, and after each kill checks that every acknowledged write
//! is in the reopened store and that `PRAGMA integrity_check` is ok. Background compaction runs in the
//! child with a tiny interval so kills also land in compaction, vacuum and checkpoints.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use r3s_server::store::{SqliteStore, Store, StoreError, StoreOptions};
use rand::Rng;

const CHILD_ENV: &str = "R3S_STORE_CHILD_DB";
const ROUND_ENV: &str = "R3S_STORE_CHILD_ROUND";
const ROUNDS: usize = 20;
const TASKS: usize = 8;

fn opts() -> StoreOptions {
    StoreOptions {
        compact_interval: Some(Duration::from_millis(20)),
        compact_retention: Duration::ZERO,
        compact_min_retain: 50,
        compact_batch: 50,
        ..StoreOptions::default()
    }
}

/// The child: not a test of its own; returns at once unless started by the parent.
#[test]
fn durability_child() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: usize = std::env::var(ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let s = Arc::new(SqliteStore::open(&db, opts()).expect("child: open store"));
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let s = s.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    let main_key = format!("/d/main/{t}");
                    for n in 0.. {
                        // A fresh key per write (never touched again) and an update of a shared one.
                        let key = format!("/d/log/{round:02}/{t}/{n:06}");
                        let value = format!("r{round}-t{t}-n{n}");
                        let kv = s
                            .create(&key, Bytes::from(value.clone()))
                            .await
                            .expect("child: create");
                        ack(&out, &key, kv.mod_revision, &value);
                        let cur = s.get(&main_key).expect("child: get");
                        let res = match cur {
                            None => s.create(&main_key, Bytes::from(value.clone())).await,
                            Some(c) => {
                                s.update(&main_key, Bytes::from(value.clone()), c.mod_revision)
                                    .await
                            }
                        };
                        match res {
                            Ok(kv) => ack(&out, &main_key, kv.mod_revision, &value),
                            Err(StoreError::Conflict { .. }) => {}
                            Err(e) => panic!("child: write failed: {e}"),
                        }
                        if n % 7 == 3 {
                            let victim = format!("/d/log/{round:02}/{t}/{:06}", n - 1);
                            // Said before the delete: the kill may land between commit and ack.
                            ack(&out, &victim, 0, "DELETING");
                            let kv = s.delete(&victim, None).await.expect("child: delete");
                            ack(&out, &victim, kv.mod_revision, "DELETED");
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn ack(out: &std::sync::Mutex<std::io::Stdout>, key: &str, rev: i64, value: &str) {
    let out = out
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = out.lock();
    // One line per acknowledged write, flushed before the next write could be acknowledged.
    let _ = writeln!(out, "ACK {rev} {key} {value}");
    let _ = out.flush();
}

/// What the parent learned from one child: the last acknowledged (revision, value) per key.
fn run_child(db: &Path, round: usize) -> BTreeMap<String, (i64, String)> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "durability_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, db)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked: BTreeMap<String, (i64, String)> = BTreeMap::new();
        let mut first = Some(first_tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let mut parts = rest.splitn(3, ' ');
            let (Some(rev), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(rev) = rev.parse::<i64>() else {
                continue;
            };
            let entry = acked.entry(key.to_owned()).or_insert((0, String::new()));
            if value == "DELETING" {
                entry.1 = value.to_owned();
            } else if rev > entry.0 {
                *entry = (rev, value.to_owned());
            }
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
        }
        acked
    });
    // Guard against hangs only; the kill moment itself is random.
    let started = first_rx.recv_timeout(Duration::from_secs(120)).is_ok();
    if started {
        let delay = rand::rng().random_range(0..400);
        std::thread::sleep(Duration::from_millis(delay));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let acked = reader.join().expect("reader thread");
    assert!(
        started,
        "round {round}: the child never acknowledged a write"
    );
    acked
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("server/db/state.db");
    let mut all: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut last_head = 0;
    for round in 0..ROUNDS {
        let acked = run_child(&db, round);
        assert!(!acked.is_empty(), "round {round}: nothing acknowledged");
        for (k, v) in acked {
            all.insert(k, v);
        }

        let conn = rusqlite::Connection::open(&db).expect("sqlite open");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok", "round {round}: integrity_check");
        drop(conn);

        let s = SqliteStore::open(
            &db,
            StoreOptions {
                compact_interval: None,
                ..StoreOptions::default()
            },
        )
        .expect("reopen after kill");
        let head = s.current_revision();
        assert!(head >= last_head, "round {round}: revision went back");
        for (key, (rev, value)) in &all {
            assert!(
                *rev <= head,
                "round {round}: acked revision {rev} > head {head}"
            );
            let got = s.get(key).expect("get");
            if value == "DELETED" {
                // Keys deleted once are never written again.
                assert!(got.is_none(), "round {round}: {key} was deleted at {rev}");
                continue;
            }
            if value == "DELETING" {
                // The delete may or may not have committed before the kill.
                continue;
            }
            let got = got.unwrap_or_else(|| panic!("round {round}: acked {key}@{rev} lost"));
            assert!(
                got.mod_revision >= *rev,
                "round {round}: {key} at {} older than acked {rev}",
                got.mod_revision
            );
            if got.mod_revision == *rev {
                assert_eq!(got.value, Bytes::from(value.clone()), "{key}@{rev}");
            }
        }
        last_head = head;
        eprintln!(
            "round {round}: head {head}, {} keys checked, compacted {}",
            all.len(),
            s.compacted_revision()
        );
    }
}
