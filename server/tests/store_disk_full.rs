//! A full disk (a small tmpfs, needs root) makes a write fail with an error; nothing is corrupted, the
//! store's memory does not diverge from the file, and once space is back writes work again and all
//! earlier data is intact after a reopen.

use std::collections::BTreeMap;
use std::io::Write;

use bytes::Bytes;
use r3s_server::store::{KeyValue, SqliteStore, Store, StoreError, StoreOptions};
use store_common::{Tmpfs, check_prerequisites};

mod store_common;

fn opts() -> StoreOptions {
    StoreOptions {
        compact_interval: None,
        ..StoreOptions::default()
    }
}

/// Fills the file system holding `path` until it reports no space.
fn fill(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "filler stopped by ENOSPC: {e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
}

fn integrity(db: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(db).expect("sqlite open");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

#[tokio::test]
async fn full_disk_fails_the_write_and_recovers() {
    if !check_prerequisites() {
        return;
    }
    let fs = Tmpfs::mount("size=4m,mode=0755");
    let db = fs.path().join("server/db/state.db");
    let s = SqliteStore::open(&db, opts()).expect("open on tmpfs");
    let mut acked: BTreeMap<String, KeyValue> = BTreeMap::new();
    for i in 0..50 {
        let kv = s
            .create(&format!("/full/base/{i:03}"), Bytes::from(vec![b'b'; 1024]))
            .await
            .expect("baseline write");
        acked.insert(kv.key.clone(), kv);
    }

    let filler = fs.path().join("filler");
    fill(&filler);
    let mut failure = None;
    for n in 0..2000 {
        let key = format!("/full/big/{n:05}");
        match s.create(&key, Bytes::from(vec![b'x'; 16 * 1024])).await {
            Ok(kv) => {
                acked.insert(kv.key.clone(), kv);
            }
            Err(e) => {
                failure = Some((key, e));
                break;
            }
        }
    }
    let (failed_key, err) = failure.expect("a write must fail once the disk is full");
    eprintln!("write failed as expected: {err}");
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(err.to_string().contains(&db.display().to_string()), "{err}");
    let head = s.current_revision();
    assert_eq!(
        head,
        acked.values().map(|kv| kv.mod_revision).max().unwrap_or(0),
        "a failed write takes no revision"
    );
    assert_eq!(s.get(&failed_key).expect("get"), None, "memory rolled back");
    for (k, kv) in &acked {
        assert_eq!(s.get(k).expect("get").as_ref(), Some(kv), "{k} readable");
    }
    // An update of an existing key fails too, leaving the old value.
    let base = acked["/full/base/000"].clone();
    let upd = s
        .update(
            &base.key,
            Bytes::from(vec![b'u'; 64 * 1024]),
            base.mod_revision,
        )
        .await;
    match upd {
        Err(StoreError::Backend(_)) => {
            assert_eq!(s.get(&base.key).expect("get"), Some(base.clone()));
        }
        Ok(kv) => {
            acked.insert(kv.key.clone(), kv);
        }
        Err(e) => panic!("unexpected error {e}"),
    }
    assert_eq!(integrity(&db), "ok", "integrity while the disk is full");

    // Space comes back: writes work, with the next revision.
    std::fs::remove_file(&filler).expect("remove filler");
    let head = s.current_revision();
    let kv = s
        .create(&failed_key, Bytes::from_static(b"after"))
        .await
        .expect("write after space is back");
    assert_eq!(kv.mod_revision, head + 1);
    acked.insert(kv.key.clone(), kv);
    let cur = s.get("/full/base/001").expect("get").expect("exists");
    let kv = s
        .update(&cur.key, Bytes::from_static(b"updated"), cur.mod_revision)
        .await
        .expect("update after space is back");
    acked.insert(kv.key.clone(), kv);
    let head = s.current_revision();
    drop(s);

    assert_eq!(integrity(&db), "ok", "integrity after recovery");
    let s = SqliteStore::open(&db, opts()).expect("reopen");
    assert_eq!(s.current_revision(), head);
    assert_eq!(s.len(), acked.len());
    for (k, kv) in &acked {
        assert_eq!(
            s.get(k).expect("get").as_ref(),
            Some(kv),
            "{k} after reopen"
        );
    }
}
