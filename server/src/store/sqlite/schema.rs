//! The on-disk format of `state.db` and the checks run before anything is written to it.
//!
//! Schema version 1:
//! - `log(rev INTEGER PRIMARY KEY, key, create_rev, prev_rev, deleted, value)`: an append-only log,
//!   one row per write, keyed by revision (the rowid, so no separate index). A small update appends
//!   one row at the right edge of one B-tree: it dirties the last leaf page and, now and then, a parent
//!   page. There is deliberately no index on `key`: every write would have to update a second B-tree at
//!   a random position. Current state is rebuilt in memory at open; compaction finds superseded rows
//!   through `prev_rev` (a primary-key lookup).
//!   `prev_rev` is the revision of the key's previous row in the same incarnation (0 for a create);
//!   a delete row has `deleted = 1` and a NULL value (its last value is the `prev_rev` row's).
//! - `meta(name PRIMARY KEY, value)`: `compacted` = the compacted revision. Written only by compaction,
//!   never by ordinary writes, so it costs no page per write. The current revision is
//!   `max(max(log.rev), compacted)`, so it never goes backwards even when compaction removed every row.
//! - `PRAGMA application_id` marks the file as r3s's, `PRAGMA user_version` is the schema version.
//!
//! Invariant: a file that is not an r3s database, is corrupt, or has a newer schema is refused with an
//! error naming it before any write (header check, then a read-only connection and `quick_check`).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 1;
/// "r3s" + 1, stored in the SQLite header to recognise our files.
pub const APPLICATION_ID: i64 = 0x7233_7301;

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

fn open_err(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// What the pre-flight check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Existing {
    /// No file, or an empty one: the schema will be created.
    New,
    /// A valid r3s database at our schema version.
    Current,
}

/// Fails unless files can be created in `dir` (a read-only file system, a full inode table...), so
/// that an unwritable data directory is reported as such rather than as an unreadable database.
pub fn probe_dir(path: &Path, dir: &Path) -> Result<(), StoreError> {
    let probe = dir.join(format!(".r3s-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(open_err(
            path,
            format!("the data directory {} is not writable: {e}", dir.display()),
        )),
    }
}

/// Checks an existing file without writing to it: SQLite header, integrity (quick_check), owner
/// (application_id) and schema version.
pub fn preflight(path: &Path) -> Result<Existing, StoreError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::New),
        Err(e) => {
            return Err(open_err(
                path,
                format!("cannot read the database file: {e}"),
            ));
        }
    };
    let mut header = [0u8; 100];
    let mut n = 0;
    while n < header.len() {
        match f.read(&mut header[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(open_err(
                    path,
                    format!("cannot read the database file: {e}"),
                ));
            }
        }
    }
    drop(f);
    if n == 0 {
        return Ok(Existing::New);
    }
    if n < header.len() || &header[..16] != SQLITE_MAGIC {
        return Err(open_err(
            path,
            "not an SQLite database (bad header); refusing to touch it",
        ));
    }
    // A read-only connection to a WAL database creates empty -wal/-shm files next to it; remove the
    // ones that were not there before so a refused file is left exactly as found.
    let sidecars: Vec<(PathBuf, bool)> = ["-wal", "-shm"]
        .iter()
        .map(|s| {
            let p = PathBuf::from(format!("{}{s}", path.display()));
            let existed = p.exists();
            (p, existed)
        })
        .collect();
    let res = inspect(path);
    for (p, existed) in sidecars {
        let empty_wal = p.to_string_lossy().ends_with("-wal")
            && std::fs::metadata(&p).is_ok_and(|m| m.len() == 0);
        if !existed && (empty_wal || p.to_string_lossy().ends_with("-shm")) {
            let _ = std::fs::remove_file(&p);
        }
    }
    res
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// The read-only half of [`preflight`].
fn inspect(path: &Path) -> Result<Existing, StoreError> {
    let ro = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_err(path, format!("cannot open the database read-only: {e}")))?;
    let check: Result<Vec<String>, rusqlite::Error> = (|| {
        let mut stmt = ro.prepare("PRAGMA quick_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })();
    match check {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => {}
        Ok(lines) => {
            let first = lines.into_iter().take(3).collect::<Vec<_>>().join("; ");
            return Err(open_err(
                path,
                format!("database is corrupt (quick_check: {first}); refusing to touch it"),
            ));
        }
        Err(e) if is_corruption(&e) => {
            return Err(open_err(
                path,
                format!("database is corrupt ({e}); refusing to touch it"),
            ));
        }
        Err(e) => return Err(open_err(path, format!("cannot read the database: {e}"))),
    }
    let read_i64 = |sql: &str| -> Result<i64, StoreError> {
        ro.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map_err(|e| open_err(path, format!("cannot read the database header: {e}")))
    };
    let app_id = read_i64("PRAGMA application_id")?;
    let version = read_i64("PRAGMA user_version")?;
    let tables = read_i64("SELECT count(*) FROM sqlite_schema")?;
    if app_id != APPLICATION_ID {
        if app_id == 0 && version == 0 && tables == 0 {
            return Ok(Existing::New);
        }
        return Err(open_err(
            path,
            format!(
                "not an r3s database (application_id {app_id:#x}, expected {APPLICATION_ID:#x}); refusing to touch it"
            ),
        ));
    }
    if version > SCHEMA_VERSION {
        return Err(open_err(
            path,
            format!(
                "database schema version {version} is newer than this r3s-server supports ({SCHEMA_VERSION}); upgrade r3s-server"
            ),
        ));
    }
    if version < SCHEMA_VERSION {
        // Only version 1 exists; an older number means a file we never wrote.
        return Err(open_err(
            path,
            format!("unknown database schema version {version}; refusing to touch it"),
        ));
    }
    Ok(Existing::Current)
}

/// Settings applied to the write connection.
///
/// Journal and sync choice: `journal_mode=WAL` with `synchronous=FULL` (the default durability).
/// - An acknowledged write survives `kill -9`: the caller is answered only after COMMIT returned, and
///   by then the WAL frames are in the kernel (any mode would do for this part).
/// - It also survives power loss: FULL fsyncs the WAL at each commit. That is one fsync per *batch*
///   thanks to group commit, so under load it costs little, and the bytes written are the same as
///   with NORMAL (fsync changes when they reach the disk, not how many there are).
/// - Power loss never corrupts the file: WAL with FULL or NORMAL is atomic per transaction; the
///   checkpoint copies pages back only after the WAL is synced.
///
/// `Durability::Normal` (WAL + synchronous=NORMAL, what k3s/kine use) is offered for disposable
/// nodes: it may lose the last acknowledged writes on power loss, never corrupts.
pub fn configure(conn: &Connection, sync_full: bool) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if sync_full { "FULL" } else { "NORMAL" },
    )?;
    // Bound the WAL file left on disk after a checkpoint resets it (~4 MiB of frames by default
    // between checkpoints).
    conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    Ok(())
}

/// Run first on a new, empty database: auto_vacuum can only be chosen before anything is written.
pub fn prepare_new(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
}

/// Creates the schema in a new, empty database (after [`prepare_new`] and [`configure`]).
pub fn create(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE log (
             rev INTEGER PRIMARY KEY,
             key TEXT NOT NULL,
             create_rev INTEGER NOT NULL,
             prev_rev INTEGER NOT NULL,
             deleted INTEGER NOT NULL,
             value BLOB
         );
         CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
         INSERT INTO meta (name, value) VALUES ('compacted', 0);",
    )?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// The compacted revision recorded in the database.
pub fn compacted(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
        r.get(0)
    })
}
