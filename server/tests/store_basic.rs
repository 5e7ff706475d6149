//! Store semantics against a real SQLite file: CRUD and compare-and-swap, lists with pagination and at
//! older revisions, watches (from 0, from a list revision, live, after compaction), revisions across
//! reopen, group commit under concurrency.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use r3s_server::store::{
    Event, EventType, KeyValue, ListOptions, SqliteStore, Store, StoreError, StoreOptions,
    WatchStream,
};

fn opts() -> StoreOptions {
    StoreOptions {
        compact_interval: None,
        ..StoreOptions::default()
    }
}

fn open(dir: &tempfile::TempDir, opts: StoreOptions) -> SqliteStore {
    SqliteStore::open(dir.path().join("server/db/state.db"), opts).expect("open store")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The next event, failing the test instead of hanging if none comes.
async fn next(w: &mut WatchStream) -> Result<Event, StoreError> {
    tokio::time::timeout(Duration::from_secs(30), w.next())
        .await
        .expect("watch event within 30 s")
        .expect("watch stream ended without an error")
}

async fn next_ok(w: &mut WatchStream) -> Event {
    next(w).await.expect("watch event")
}

fn list_all(s: &SqliteStore, prefix: &str, rev: Option<i64>) -> Vec<(String, String)> {
    let res = s
        .list(
            prefix,
            &ListOptions {
                revision: rev,
                ..ListOptions::default()
            },
        )
        .expect("list");
    res.items
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect()
}

#[tokio::test]
async fn crud_and_compare_and_swap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir, opts());
    assert_eq!(s.current_revision(), 0);

    let a = s
        .create("/registry/pods/ns/a", b("v1"))
        .await
        .expect("create");
    assert_eq!(a.create_revision, 1);
    assert_eq!(a.mod_revision, 1);
    assert_eq!(s.get("/registry/pods/ns/a").expect("get"), Some(a.clone()));
    assert!(matches!(
        s.create("/registry/pods/ns/a", b("again")).await,
        Err(StoreError::AlreadyExists { .. })
    ));

    let a2 = s
        .update("/registry/pods/ns/a", b("v2"), 1)
        .await
        .expect("update");
    assert_eq!((a2.create_revision, a2.mod_revision), (1, 2));
    match s.update("/registry/pods/ns/a", b("v3"), 1).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (1, 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        s.delete("/registry/pods/ns/a", Some(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.update("/registry/pods/ns/missing", b("x"), 1).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("/registry/pods/ns/missing", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.current_revision(), 2, "failed writes take no revision");

    let d = s
        .delete("/registry/pods/ns/a", Some(2))
        .await
        .expect("delete");
    assert_eq!(d.value, b("v2"), "delete returns the last value");
    assert_eq!((d.create_revision, d.mod_revision), (1, 3));
    assert_eq!(s.get("/registry/pods/ns/a").expect("get"), None);

    // A new incarnation starts over.
    let a3 = s
        .create("/registry/pods/ns/a", b("reborn"))
        .await
        .expect("create again");
    assert_eq!((a3.create_revision, a3.mod_revision), (4, 4));
    let u = s
        .delete("/registry/pods/ns/a", None)
        .await
        .expect("unconditional delete");
    assert_eq!(u.mod_revision, 5);

    // Everything survives a reopen.
    s.create("/registry/pods/ns/b", b("kept"))
        .await
        .expect("create b");
    drop(s);
    let s = open(&dir, opts());
    assert_eq!(s.current_revision(), 6);
    let got = s
        .get("/registry/pods/ns/b")
        .expect("get")
        .expect("b exists");
    assert_eq!(
        (got.value, got.create_revision, got.mod_revision),
        (b("kept"), 6, 6)
    );
    assert_eq!(s.get("/registry/pods/ns/a").expect("get"), None);
}

#[tokio::test]
async fn list_pagination_and_remaining() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir, opts());
    for i in 0..10 {
        s.create(&format!("/registry/pods/ns/p{i:02}"), b(&format!("pod{i}")))
            .await
            .expect("create pod");
    }
    s.create("/registry/pods-other/x", b("not a pod"))
        .await
        .expect("create");
    s.create("/registry/services/ns/s", b("svc"))
        .await
        .expect("create");

    let first = s
        .list(
            "/registry/pods/",
            &ListOptions {
                limit: Some(4),
                ..ListOptions::default()
            },
        )
        .expect("list");
    assert_eq!(first.items.len(), 4);
    assert_eq!(first.remaining, 6);
    assert_eq!(first.more_after.as_deref(), Some("/registry/pods/ns/p03"));
    let rev = first.revision;
    assert_eq!(rev, 12);

    // Writes between pages must not show up in later pages read at the first page's revision.
    s.update("/registry/pods/ns/p05", b("changed"), 6)
        .await
        .expect("update");
    s.delete("/registry/pods/ns/p09", None)
        .await
        .expect("delete");
    s.create("/registry/pods/ns/p10", b("late"))
        .await
        .expect("create");

    let mut keys: Vec<String> = first.items.iter().map(|kv| kv.key.clone()).collect();
    let mut after = first.more_after;
    let mut pages = 1;
    while let Some(a) = after {
        let page = s
            .list(
                "/registry/pods/",
                &ListOptions {
                    limit: Some(4),
                    start_after: Some(a),
                    revision: Some(rev),
                },
            )
            .expect("next page");
        assert_eq!(page.revision, rev);
        for kv in &page.items {
            if kv.key == "/registry/pods/ns/p05" {
                assert_eq!(
                    kv.value,
                    b("pod5"),
                    "page shows the value at the list revision"
                );
            }
        }
        keys.extend(page.items.iter().map(|kv| kv.key.clone()));
        after = page.more_after;
        pages += 1;
        if after.is_none() {
            assert_eq!(page.remaining, 0);
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..10)
        .map(|i| format!("/registry/pods/ns/p{i:02}"))
        .collect();
    assert_eq!(keys, want);

    // At the current revision.
    let now = list_all(&s, "/registry/pods/", None);
    assert_eq!(now.len(), 10);
    assert!(now.contains(&("/registry/pods/ns/p10".into(), "late".into())));
    assert!(!now.iter().any(|(k, _)| k == "/registry/pods/ns/p09"));
    assert_eq!(list_all(&s, "", None).len(), 12);
    assert_eq!(list_all(&s, "/registry/nothing/", None), vec![]);
}

/// Exercises list-at-revision both from memory (big history ring) and from the SQL log (tiny ring).
async fn list_at_older_revision_with(history_events: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = StoreOptions {
        history_events,
        ..opts()
    };
    let s = open(&dir, o.clone());
    s.create("/k/a", b("a1")).await.expect("create");
    s.create("/k/b", b("b1")).await.expect("create");
    s.create("/k/c", b("c1")).await.expect("create");
    s.create("/other", b("o")).await.expect("create");
    let r1 = s.current_revision();
    s.update("/k/a", b("a2"), 1).await.expect("update");
    s.delete("/k/b", None).await.expect("delete");
    s.create("/k/d", b("d1")).await.expect("create");
    s.create("/k/b", b("b2")).await.expect("recreate");
    let r2 = s.current_revision();

    let at_r1 = vec![
        ("/k/a".to_string(), "a1".to_string()),
        ("/k/b".into(), "b1".into()),
        ("/k/c".into(), "c1".into()),
    ];
    let at_r2 = vec![
        ("/k/a".to_string(), "a2".to_string()),
        ("/k/b".into(), "b2".into()),
        ("/k/c".into(), "c1".into()),
        ("/k/d".into(), "d1".into()),
    ];
    assert_eq!(list_all(&s, "/k/", Some(r1)), at_r1);
    assert_eq!(list_all(&s, "/k/", Some(r2)), at_r2);
    assert_eq!(list_all(&s, "/k/", None), at_r2);
    assert_eq!(list_all(&s, "/k/", Some(r1 + 1))[0].1, "a2");
    let page = s
        .list(
            "/k/",
            &ListOptions {
                revision: Some(r1),
                limit: Some(2),
                start_after: Some("/k/a".into()),
            },
        )
        .expect("page at r1");
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.remaining, 0);
    assert_eq!(page.items[0].mod_revision, 2);
    assert!(matches!(
        s.list(
            "/k/",
            &ListOptions {
                revision: Some(r2 + 1),
                ..ListOptions::default()
            }
        ),
        Err(StoreError::FutureRevision { .. })
    ));

    // After a reopen the same answers come from the log.
    drop(s);
    let s = open(&dir, o);
    assert_eq!(list_all(&s, "/k/", Some(r1)), at_r1);
    s.compact(r1 + 1).await.expect("compact");
    assert_eq!(s.compacted_revision(), r1 + 1);
    assert!(matches!(
        s.list(
            "/k/",
            &ListOptions {
                revision: Some(r1),
                ..ListOptions::default()
            }
        ),
        Err(StoreError::Expired { .. })
    ));
    assert_eq!(list_all(&s, "/k/", Some(r1 + 1))[0].1, "a2");
    assert_eq!(list_all(&s, "/k/", Some(r2)), at_r2);
}

#[tokio::test]
async fn list_at_older_revision_from_memory() {
    list_at_older_revision_with(10_000).await;
}

#[tokio::test]
async fn list_at_older_revision_from_log() {
    list_at_older_revision_with(1).await;
}

fn summary(ev: &Event) -> (EventType, String, String, i64, Option<String>) {
    (
        ev.event_type,
        ev.kv.key.clone(),
        String::from_utf8_lossy(&ev.kv.value).into_owned(),
        ev.kv.mod_revision,
        ev.prev
            .as_ref()
            .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
    )
}

async fn watch_from_zero_with(history_events: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(
        &dir,
        StoreOptions {
            history_events,
            ..opts()
        },
    );
    s.create("/w/a", b("1")).await.expect("create");
    s.create("/x/skip", b("-")).await.expect("create");
    s.update("/w/a", b("2"), 1).await.expect("update");
    s.delete("/w/a", Some(3)).await.expect("delete");
    let mut w = s.watch("/w/", 0).expect("watch");
    let got: Vec<_> = [
        next_ok(&mut w).await,
        next_ok(&mut w).await,
        next_ok(&mut w).await,
    ]
    .iter()
    .map(summary)
    .collect();
    assert_eq!(
        got,
        vec![
            (EventType::Added, "/w/a".into(), "1".into(), 1, None),
            (
                EventType::Modified,
                "/w/a".into(),
                "2".into(),
                3,
                Some("1".into())
            ),
            (
                EventType::Deleted,
                "/w/a".into(),
                "2".into(),
                4,
                Some("2".into())
            ),
        ]
    );
    // Then live.
    s.create("/w/b", b("live")).await.expect("create");
    let ev = next_ok(&mut w).await;
    assert_eq!(
        summary(&ev),
        (EventType::Added, "/w/b".into(), "live".into(), 5, None)
    );
    assert_eq!(ev.kv.create_revision, 5);
}

#[tokio::test]
async fn watch_from_zero_replays_then_goes_live() {
    watch_from_zero_with(10_000).await;
}

#[tokio::test]
async fn watch_from_zero_replays_from_log() {
    watch_from_zero_with(1).await;
}

#[tokio::test]
async fn watch_from_list_revision_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = std::sync::Arc::new(open(
        &dir,
        StoreOptions {
            history_events: 50,
            ..opts()
        },
    ));
    for i in 0..20 {
        s.create(&format!("/g/k{i}"), b("0")).await.expect("create");
    }
    // Writers keep going while watches start from list revisions.
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for n in 0..100 {
                    let key = format!("/g/k{}", (t * 5 + n) % 20);
                    loop {
                        let cur = s.get(&key).expect("get").expect("exists");
                        match s
                            .update(&key, Bytes::from(format!("{t}-{n}")), cur.mod_revision)
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => panic!("update failed: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let mut watches = Vec::new();
    for _ in 0..10 {
        let list = s.list("/g/", &ListOptions::default()).expect("list");
        watches.push((list.revision, s.watch("/g/", list.revision).expect("watch")));
        tokio::task::yield_now().await;
    }
    // Also one from an old revision that the small ring no longer holds (replayed from the log).
    watches.push((5, s.watch("/g/", 5).expect("watch from old revision")));
    for w in writers {
        w.await.expect("writer task");
    }
    let last = s.current_revision();
    assert_eq!(last, 20 + 400);
    for (from, mut w) in watches {
        let mut expect = from + 1;
        while expect <= last {
            let ev = next_ok(&mut w).await;
            assert_eq!(ev.revision(), expect, "watch from {from}: gap or duplicate");
            expect += 1;
        }
    }
}

#[tokio::test]
async fn watch_after_compaction_is_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir, opts());
    for i in 0..10 {
        s.create(&format!("/c/{i}"), b("x")).await.expect("create");
    }
    s.update("/c/1", b("y"), 2).await.expect("update");
    s.compact(8).await.expect("compact");
    assert_eq!(s.compacted_revision(), 8);
    assert!(matches!(
        s.watch("/c/", 0),
        Err(StoreError::Expired {
            requested: 0,
            compacted: 8
        })
    ));
    assert!(matches!(s.watch("/c/", 7), Err(StoreError::Expired { .. })));
    let mut w = s
        .watch("/c/", 8)
        .expect("watch from the compacted revision");
    assert_eq!(next_ok(&mut w).await.revision(), 9);
    assert_eq!(next_ok(&mut w).await.revision(), 10);
    let ev = next_ok(&mut w).await;
    assert_eq!(ev.revision(), 11);
    assert_eq!(ev.prev.as_ref().map(|p| p.value.clone()), Some(b("x")));
    assert!(matches!(
        s.compact(100).await,
        Err(StoreError::FutureRevision { .. })
    ));
    // Current values survive compaction.
    assert_eq!(list_all(&s, "/c/", None).len(), 10);
}

#[tokio::test]
async fn slow_watcher_is_expired_not_buffered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(
        &dir,
        StoreOptions {
            watch_buffer: 4,
            ..opts()
        },
    );
    let mut w = s.watch("/", 0).expect("watch");
    for i in 0..10 {
        s.create(&format!("/s/{i}"), b("x")).await.expect("create");
    }
    for rev in 1..=4 {
        assert_eq!(next_ok(&mut w).await.revision(), rev);
    }
    assert!(matches!(
        next(&mut w).await,
        Err(StoreError::Expired { .. })
    ));
    assert!(w.next().await.is_none(), "stream ends after the error");
    assert_eq!(s.watcher_count(), 0);
}

#[tokio::test]
async fn dropped_store_ends_watches_with_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir, opts());
    let mut w = s.watch("/", 0).expect("watch");
    s.create("/a", b("x")).await.expect("create");
    drop(s);
    assert_eq!(next_ok(&mut w).await.revision(), 1);
    assert!(matches!(next(&mut w).await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn revision_never_goes_back_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(&dir, opts());
    for i in 0..5 {
        s.create(&format!("/r/{i}"), b("x")).await.expect("create");
    }
    for i in 0..5 {
        s.delete(&format!("/r/{i}"), None).await.expect("delete");
    }
    let rev = s.current_revision();
    assert_eq!(rev, 10);
    s.compact(rev).await.expect("compact everything");
    drop(s);
    let s = open(&dir, opts());
    assert_eq!(s.current_revision(), rev);
    assert_eq!(s.compacted_revision(), rev);
    assert!(s.is_empty());
    let kv: KeyValue = s.create("/r/new", b("y")).await.expect("create");
    assert_eq!(kv.mod_revision, rev + 1);
    drop(s);
    let s = open(&dir, opts());
    assert_eq!(s.current_revision(), rev + 1);
}

#[tokio::test]
async fn concurrent_writes_group_commit_and_cas_has_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = std::sync::Arc::new(open(&dir, opts()));
    s.create("/race", b("0")).await.expect("create");
    let racers: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.update("/race", Bytes::from(format!("{i}")), 1).await })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        match r.await.expect("task") {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(wins, 1);

    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let key = format!("/cc/{i}");
                let mut kv = s.create(&key, b("0")).await.expect("create");
                for n in 1..=10 {
                    kv = s
                        .update(&key, Bytes::from(format!("{n}")), kv.mod_revision)
                        .await
                        .expect("update");
                }
                kv.mod_revision
            })
        })
        .collect();
    let mut revs = Vec::new();
    for t in tasks {
        revs.push(t.await.expect("task"));
    }
    revs.sort_unstable();
    revs.dedup();
    assert_eq!(revs.len(), 64, "every final revision is distinct");
    assert_eq!(s.current_revision(), 2 + 64 * 11);
    for i in 0..64 {
        let kv = s.get(&format!("/cc/{i}")).expect("get").expect("exists");
        assert_eq!(kv.value, b("10"));
    }
}
