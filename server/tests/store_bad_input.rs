//! Bad input stops `SqliteStore::open` with an error naming the file, and leaves the file alone: a file
//! that is not SQLite, a corrupt SQLite file, a foreign SQLite database, a newer schema version, and an
//! unwritable data directory (a read-only tmpfs; needs root, see `prerequisites`).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use store_common::{Tmpfs, check_prerequisites};

mod store_common;
use r3s_server::store::{SqliteStore, Store, StoreError, StoreOptions};

fn opts() -> StoreOptions {
    StoreOptions {
        compact_interval: None,
        ..StoreOptions::default()
    }
}

/// The files next to `db` (db, -wal, -shm, -journal) with their length and SHA-256, to prove
/// nothing was touched.
fn snapshot(db: &Path) -> Vec<(PathBuf, Option<(usize, String)>)> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let p = PathBuf::from(format!("{}{suffix}", db.display()));
            let digest = std::fs::read(&p)
                .ok()
                .map(|bytes| (bytes.len(), hex::encode(Sha256::digest(&bytes))));
            (p, digest)
        })
        .collect()
}

fn expect_open_error(db: &Path, must_contain: &str) -> String {
    let before = snapshot(db);
    let err = match SqliteStore::open(db, opts()) {
        Ok(_) => panic!("opening {} should fail", db.display()),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::Open { .. }),
        "expected an Open error, got {err:?}"
    );
    assert!(
        msg.contains(&db.display().to_string()),
        "message names the file: {msg}"
    );
    assert!(
        msg.contains(must_contain),
        "message {msg:?} lacks {must_contain:?}"
    );
    assert!(!msg.contains('\n'), "one line: {msg:?}");
    assert_eq!(snapshot(db), before, "files untouched after: {msg}");
    msg
}

fn make_db(db: &Path, rows: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let s = SqliteStore::open(db, opts()).expect("create store");
    rt.block_on(async {
        for i in 0..rows {
            // Incompressible, so the file really has that many pages.
            let mut x = i as u64 + 1;
            let value: Vec<u8> = (0..700)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 56) as u8
                })
                .collect();
            s.create(&format!("/k/{i:05}"), Bytes::from(value))
                .await
                .expect("create");
        }
    });
}

#[test]
fn not_an_sqlite_file_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    std::fs::write(
        &db,
        b"this is my shopping list, not a database\n".repeat(50),
    )
    .expect("write");
    expect_open_error(&db, "not an SQLite database");
    // A file shorter than an SQLite header, too.
    std::fs::write(&db, b"short").expect("write");
    expect_open_error(&db, "not an SQLite database");
}

#[test]
fn corrupt_sqlite_file_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    make_db(&db, 300);
    let mut bytes = std::fs::read(&db).expect("read db");
    assert!(
        bytes.len() > 20 * 4096,
        "db big enough to corrupt a middle page"
    );
    // Scribble over whole pages in the middle of the log's B-tree.
    for (i, b) in bytes[8 * 4096..12 * 4096].iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(&db, &bytes).expect("write corrupt db");
    expect_open_error(&db, "corrupt");
}

#[test]
fn foreign_sqlite_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    let conn = rusqlite::Connection::open(&db).expect("sqlite");
    conn.execute_batch("CREATE TABLE kine (id INTEGER PRIMARY KEY, name TEXT, value BLOB);")
        .expect("create foreign table");
    drop(conn);
    expect_open_error(&db, "not an r3s database");
}

#[test]
fn newer_schema_version_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    make_db(&db, 3);
    let conn = rusqlite::Connection::open(&db).expect("sqlite");
    conn.pragma_update(None, "user_version", 3)
        .expect("set user_version");
    drop(conn);
    let msg = expect_open_error(&db, "");
    assert_eq!(
        msg,
        format!(
            "{}: database schema version 3 is newer than this r3s-server supports (2); upgrade r3s-server",
            db.display()
        )
    );
}

#[test]
fn a_version_1_database_is_read_and_upgraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    make_db(&db, 1);
    // What version 1 wrote: plain zstd values (encoding 1), and user_version 1.
    let json = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"old","namespace":"default"},"data":{"k":"written by schema version 1, written by schema version 1"}}"#;
    let conn = rusqlite::Connection::open(&db).expect("sqlite");
    conn.execute(
        "INSERT INTO log (rev, key, create_rev, prev_rev, deleted, enc, value) VALUES (100, '/registry/configmaps/default/old', 100, 0, 0, 1, ?1)",
        [zstd::bulk::compress(json, 1).expect("compress")],
    )
    .expect("insert");
    conn.pragma_update(None, "user_version", 1)
        .expect("set user_version");
    drop(conn);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    {
        let s = SqliteStore::open(&db, opts()).expect("a version-1 file opens");
        let got = s
            .get("/registry/configmaps/default/old")
            .expect("get")
            .expect("the version-1 row");
        assert_eq!(&got.value[..], &json[..]);
        rt.block_on(s.create(
            "/registry/configmaps/default/new",
            Bytes::from(json.repeat(2)),
        ))
        .expect("a write in the new encoding");
    }
    let conn = rusqlite::Connection::open(&db).expect("sqlite");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(
        version, 2,
        "upgraded, so an older r3s-server refuses it clearly"
    );
    let enc: i64 = conn
        .query_row(
            "SELECT enc FROM log WHERE key = '/registry/configmaps/default/new'",
            [],
            |r| r.get(0),
        )
        .expect("new row");
    assert_eq!(enc, 2);
    drop(conn);
    let s = SqliteStore::open(&db, opts()).expect("reopen");
    let got = s
        .get("/registry/configmaps/default/new")
        .expect("get")
        .expect("the new row");
    assert_eq!(&got.value[..], &json.repeat(2)[..]);
}

#[test]
fn empty_file_becomes_a_new_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("state.db");
    std::fs::write(&db, b"").expect("write");
    let s = SqliteStore::open(&db, opts()).expect("open empty file");
    assert_eq!(s.current_revision(), 0);
}

#[test]
fn unwritable_data_directory_is_refused() {
    if !check_prerequisites() {
        return;
    }
    // An empty read-only file system: the directories cannot even be created.
    let ro = Tmpfs::mount("ro,size=1m,mode=0755");
    let db = ro.path().join("server/db/state.db");
    let err = SqliteStore::open(&db, opts())
        .err()
        .expect("open must fail");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(msg.contains(&db.display().to_string()), "{msg}");
    assert!(msg.contains("cannot create the data directory"), "{msg}");
    drop(ro);

    // An existing, valid database on a file system that became read-only.
    let fs = Tmpfs::mount("size=8m,mode=0755");
    let db = fs.path().join("server/db/state.db");
    make_db(&db, 10);
    fs.remount("ro");
    let msg = expect_open_error(&db, "is not writable");
    assert!(msg.contains("not writable"), "{msg}");
    fs.remount("rw");
    let s = SqliteStore::open(&db, opts()).expect("open once writable again");
    assert_eq!(s.current_revision(), 10);
}
