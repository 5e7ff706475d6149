//! The on-disk format of `state.db` and the checks run before anything is written to it.
//!
//! Schema version 2 (version 1 plus value encoding 2; a version-1 file is upgraded in place when
//! opened for writing, see [`upgrade`]):
//! - `log(rev INTEGER PRIMARY KEY, key, create_rev, prev_rev, deleted, enc, value)`: an append-only log,
//!   one row per write, keyed by revision (the rowid, so no separate index). A small update appends
//!   one row at the right edge of one B-tree: it dirties the last leaf page and, when that is full, a
//!   new leaf, its parent and the allocation bookkeeping. There is deliberately no index on `key`:
//!   every write would have to update a second B-tree at a random position. Current state is rebuilt in memory at open; compaction finds superseded rows
//!   through `prev_rev` (a primary-key lookup).
//!   `prev_rev` is the revision of the key's previous row in the same incarnation (0 for a create);
//!   a delete row has `deleted = 1` and a NULL value (its last value is the `prev_rev` row's).
//!   `enc` says how `value` is stored: 0 as is, 1 zstd-compressed, 2 zstd-compressed against
//!   [`DICTIONARY_V1`] ([`encode`], [`decode`]).
//! - `meta(name PRIMARY KEY, value)`: `compacted` = the compacted revision. Written only by compaction,
//!   never by ordinary writes, so it costs no page per write. The current revision is
//!   `max(max(log.rev), compacted)`, so it never goes backwards even when compaction removed every row.
//! - `PRAGMA application_id` marks the file as r3s's, `PRAGMA user_version` is the schema version.
//! - Created with 1 KiB pages ([`PAGE_SIZE`]) and `auto_vacuum=INCREMENTAL` (so compaction can give
//!   space back); used in WAL mode with exclusive locking ([`lock_exclusive`], [`configure`]).
//!
//! Invariant: a file that is not an r3s database, is corrupt, or has a newer schema is refused with an
//! error naming it before any write (header check, then `quick_check` on a connection that cannot
//! write yet).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, MAIN_DB, OpenFlags};

use crate::store::StoreError;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 2;
/// The older version this build opens and upgrades (its files differ only by never holding
/// encoding 2, which an r3s-server of that version could not read: hence the version bump).
const UPGRADABLE_VERSION: i64 = 1;
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
    /// A valid r3s database at [`UPGRADABLE_VERSION`]: [`upgrade`] it before writing.
    Upgradable,
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

/// What [`preflight`] found, and for a WAL-mode file the connection the check ran on (exclusive,
/// not yet allowed to write), for the store to reuse: closing it and reopening would leave a
/// moment for another process to take the file.
pub struct Checked {
    pub existing: Existing,
    pub conn: Option<Connection>,
}

/// Checks an existing file without writing to it: SQLite header, integrity (quick_check), owner
/// (application_id) and schema version.
pub fn preflight(path: &Path) -> Result<Checked, StoreError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Checked {
                existing: Existing::New,
                conn: None,
            });
        }
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
        return Ok(Checked {
            existing: Existing::New,
            conn: None,
        });
    }
    if n < header.len() || &header[..16] != SQLITE_MAGIC {
        return Err(open_err(
            path,
            "not an SQLite database (bad header); refusing to touch it",
        ));
    }
    // Bytes 18-19 are the read/write format versions: 2 means WAL mode (every r3s database).
    let wal = header[18] == 2 && header[19] == 2;
    // Opening a WAL database creates an empty -wal (and, without exclusive locking, a -shm) next to
    // it; remove the ones that were not there before so a refused file is left exactly as found.
    let sidecars: Vec<(PathBuf, bool)> = ["-wal", "-shm"]
        .iter()
        .map(|s| {
            let p = PathBuf::from(format!("{}{s}", path.display()));
            let existed = p.exists();
            (p, existed)
        })
        .collect();
    let res = if wal {
        inspect_wal(path)
    } else {
        inspect_read_only(path).map(|existing| Checked {
            existing,
            conn: None,
        })
    };
    if res.is_err() {
        for (p, existed) in sidecars {
            let empty_wal = p.to_string_lossy().ends_with("-wal")
                && std::fs::metadata(&p).is_ok_and(|m| m.len() == 0);
            if !existed && (empty_wal || p.to_string_lossy().ends_with("-shm")) {
                let _ = std::fs::remove_file(&p);
            }
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

/// Checks a WAL-mode file on a read-write connection that cannot write yet: exclusive locking (the
/// WAL index lives in memory, so no -shm file is needed and a full disk cannot stop the check),
/// `query_only`, and no checkpoint when it closes. A read-only connection would need a -shm file.
/// On success the connection is handed to the store (see [`allow_writes`]).
fn inspect_wal(path: &Path) -> Result<Checked, StoreError> {
    let setup_err = |e: rusqlite::Error| open_err(path, format!("cannot open the database: {e}"));
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(setup_err)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(setup_err)?;
    lock_exclusive(&conn).map_err(setup_err)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(setup_err)?;
    if conn.is_readonly(MAIN_DB).unwrap_or(true) {
        return Err(open_err(
            path,
            "the database file or its directory is not writable",
        ));
    }
    let existing = check(&conn, path)?;
    Ok(Checked {
        existing,
        conn: Some(conn),
    })
}

/// Lets the connection that passed [`preflight`] write, and checkpoint when it closes.
pub fn allow_writes(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "query_only", false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
    Ok(())
}

/// Checks a rollback-journal file (never an r3s database) on a read-only connection.
fn inspect_read_only(path: &Path) -> Result<Existing, StoreError> {
    let ro = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_err(path, format!("cannot open the database read-only: {e}")))?;
    check(&ro, path)
}

/// Integrity (quick_check), owner (application_id) and schema version, read-only.
fn check(ro: &Connection, path: &Path) -> Result<Existing, StoreError> {
    // The only other user can be another r3s-server holding it exclusively: say so quickly.
    ro.busy_timeout(std::time::Duration::from_millis(200))
        .map_err(|e| open_err(path, format!("cannot open the database: {e}")))?;
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
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            return Err(open_err(
                path,
                format!("database is in use by another process (another r3s-server?): {e}"),
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
    if version == UPGRADABLE_VERSION {
        return Ok(Existing::Upgradable);
    }
    if version < SCHEMA_VERSION {
        // An older number than those we know means a file we never wrote.
        return Err(open_err(
            path,
            format!("unknown database schema version {version}; refusing to touch it"),
        ));
    }
    Ok(Existing::Current)
}

/// Exclusive locking mode, set before the connection first touches the file.
///
/// With it, WAL mode keeps its index in heap memory instead of a memory-mapped `-shm` file: without
/// it every commit would also dirty one or two `-shm` pages that the kernel writes back to flash.
/// It also stops a second r3s-server from opening the same database. The cost: no second connection
/// can read it, so the writer serves the rare reads of old history itself.
pub fn lock_exclusive(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
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

/// Page size of new databases.
///
/// 1 KiB rather than SQLite's 4 KiB default, for flash wear: a commit writes whole pages (as WAL
/// frames of page + 24 bytes), and a small update (a Lease renewal) only needs one leaf page plus,
/// now and then, the pages of a new allocation. Measured on ext4 with WAL + synchronous=FULL, bytes
/// the kernel accounted as written per single-row commit (`/proc/self/io` write_bytes):
/// 450-byte rows 9.6 kB at 4 KiB pages vs 6.9 kB at 1 KiB; 600-byte rows 10.2 vs 8.5 kB; 1.5 kB
/// rows 14.3 vs 9.7 kB; 5 kB rows 21.6 vs 12.9 kB. Bulk writes cost somewhat more bytes per row
/// (less packing), but they are bursts; the steady small updates are what wear a card out.
pub const PAGE_SIZE: i64 = 1024;

/// Run first on a new, empty database: page size and auto_vacuum can only be chosen before anything
/// is written.
pub fn prepare_new(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
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
             enc INTEGER NOT NULL,
             value BLOB
         );
         CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
         INSERT INTO meta (name, value) VALUES ('compacted', 0);",
    )?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Marks an [`Existing::Upgradable`] file as the current version, before the first value in
/// encoding 2 is written, so that an older r3s-server refuses it with a clear message instead of
/// failing on a value it cannot decode.
pub fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
}

/// The compacted revision recorded in the database.
pub fn compacted(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT value FROM meta WHERE name = 'compacted'", [], |r| {
        r.get(0)
    })
}

/// `enc` of a value stored as is.
pub const ENC_RAW: i64 = 0;
/// `enc` of a zstd-compressed value (what schema version 1 wrote; still read).
pub const ENC_ZSTD: i64 = 1;
/// `enc` of a value zstd-compressed against [`DICTIONARY_V1`].
pub const ENC_ZSTD_DICT1: i64 = 2;

/// Example objects as this server stores them (a ConfigMap, ServiceAccount, Service, Endpoints,
/// EndpointSlice, Deployment, ReplicaSet, Events, Node, Pod and, last because it is written most
/// often, a node Lease), used as a zstd raw-content dictionary.
///
/// Why: an object's JSON repeats the same field names, API versions and managedFields shapes as
/// every other object of its kind, which plain zstd cannot exploit in a value of a few hundred
/// bytes. Against these examples a node Lease (863 bytes of JSON) stores in ~150 bytes instead of
/// 432, so four rows fit in a 1 KiB page instead of one: most Lease renewals, the steady idle
/// write, then rewrite one page instead of allocating a new one (see [`PAGE_SIZE`]).
///
/// NEVER CHANGE THESE BYTES: values in encoding 2 can only be decoded with exactly them (the test
/// `the_dictionary_is_frozen` pins their hash). A better dictionary is a new encoding number.
pub const DICTIONARY_V1: &[u8] = include_bytes!("dictionary_v1.json");

/// zstd level: the fastest; the dictionary, not the level, is what shrinks small values.
const LEVEL: i32 = 1;

/// Values shorter than this are stored as is.
const COMPRESS_MIN: usize = 64;

/// The largest value a frame may claim to decode to (kube-apiserver's request limit is 3 MiB,
/// etcd's value limit 1.5 MiB); a bigger claim is a corrupt row, not an allocation to attempt.
const MAX_DECODED: u64 = 64 * 1024 * 1024;

fn encoder_dictionary() -> &'static zstd::dict::EncoderDictionary<'static> {
    static DICT: std::sync::OnceLock<zstd::dict::EncoderDictionary<'static>> =
        std::sync::OnceLock::new();
    DICT.get_or_init(|| zstd::dict::EncoderDictionary::copy(DICTIONARY_V1, LEVEL))
}

fn decoder_dictionary() -> &'static zstd::dict::DecoderDictionary<'static> {
    static DICT: std::sync::OnceLock<zstd::dict::DecoderDictionary<'static>> =
        std::sync::OnceLock::new();
    DICT.get_or_init(|| zstd::dict::DecoderDictionary::copy(DICTIONARY_V1))
}

/// How a value goes to disk: zstd against [`DICTIONARY_V1`] when that makes it smaller.
///
/// Why: flash wear. Fewer bytes per row means fewer pages per commit and a smaller file. The
/// in-memory view keeps the plain bytes.
pub fn encode(value: &[u8]) -> (i64, std::borrow::Cow<'_, [u8]>) {
    if value.len() >= COMPRESS_MIN
        && let Ok(mut c) = zstd::bulk::Compressor::with_prepared_dictionary(encoder_dictionary())
        && let Ok(z) = c.compress(value)
        && z.len() < value.len()
    {
        return (ENC_ZSTD_DICT1, std::borrow::Cow::Owned(z));
    }
    (ENC_RAW, std::borrow::Cow::Borrowed(value))
}

/// The stored bytes back as the value; an unknown encoding or a bad frame is reported, not guessed.
pub fn decode(enc: i64, stored: Vec<u8>) -> Result<bytes::Bytes, String> {
    match enc {
        ENC_RAW => Ok(bytes::Bytes::from(stored)),
        ENC_ZSTD => {
            let mut out = Vec::new();
            zstd::stream::copy_decode(&stored[..], &mut out)
                .map_err(|e| format!("bad compressed value: {e}"))?;
            Ok(bytes::Bytes::from(out))
        }
        ENC_ZSTD_DICT1 => {
            let size = match zstd::zstd_safe::get_frame_content_size(&stored) {
                Ok(Some(n)) if n <= MAX_DECODED => n as usize,
                Ok(Some(n)) => return Err(format!("bad compressed value: claims {n} bytes")),
                _ => return Err("bad compressed value: no content size".into()),
            };
            let mut d = zstd::bulk::Decompressor::with_prepared_dictionary(decoder_dictionary())
                .map_err(|e| format!("bad compressed value: {e}"))?;
            let out = d
                .decompress(&stored, size)
                .map_err(|e| format!("bad compressed value: {e}"))?;
            if out.len() != size {
                return Err("bad compressed value: short frame".into());
            }
            Ok(bytes::Bytes::from(out))
        }
        other => Err(format!("unknown value encoding {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_only_shrink() {
        let json = br#"{"kind":"Lease","apiVersion":"coordination.k8s.io/v1","metadata":{"name":"node-1","namespace":"kube-node-lease"},"spec":{"holderIdentity":"node-1","leaseDurationSeconds":40}}"#.repeat(3);
        let (enc, stored) = encode(&json);
        assert_eq!(enc, ENC_ZSTD_DICT1);
        assert!(stored.len() < json.len());
        assert_eq!(decode(enc, stored.into_owned()).expect("decode"), &json[..]);

        let small = b"tiny";
        let (enc, stored) = encode(small);
        assert_eq!((enc, &stored[..]), (ENC_RAW, &small[..]));
        assert_eq!(
            decode(enc, stored.into_owned()).expect("decode"),
            &small[..]
        );

        // Schema version 1's encoding is still read.
        let v1 = zstd::bulk::compress(&json, 1).expect("compress");
        assert_eq!(decode(ENC_ZSTD, v1).expect("decode"), &json[..]);

        assert!(decode(ENC_ZSTD, b"not zstd".to_vec()).is_err());
        assert!(decode(ENC_ZSTD_DICT1, b"not zstd".to_vec()).is_err());
        // A frame cut short is refused, not returned truncated.
        let (_, stored) = encode(&json);
        let cut = stored[..stored.len() - 4].to_vec();
        assert!(decode(ENC_ZSTD_DICT1, cut).is_err());
        assert!(decode(7, Vec::new()).is_err());
    }

    #[test]
    fn a_node_lease_fits_four_to_a_page() {
        // A renewal as the agent writes it, with names, uids and times none of the dictionary's.
        let lease = br#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"creationTimestamp":"2027-03-01T10:00:00Z","managedFields":[{"apiVersion":"coordination.k8s.io/v1","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:ownerReferences":{"k:{\"uid\":\"9d0e4a52-77c1-4f0e-b1c6-0c5e2d7a8b91\"}":{".":{},"f:apiVersion":{},"f:kind":{},"f:name":{},"f:uid":{}}}},"f:spec":{"f:holderIdentity":{},"f:leaseDurationSeconds":{},"f:renewTime":{}}},"manager":"kubelet","operation":"Update","time":"2027-03-01T10:00:00Z"}],"name":"pi-kitchen","namespace":"kube-node-lease","ownerReferences":[{"apiVersion":"v1","kind":"Node","name":"pi-kitchen","uid":"9d0e4a52-77c1-4f0e-b1c6-0c5e2d7a8b91"}],"uid":"5b7c9e11-2f3a-4d5b-8c6d-7e8f9a0b1c2d"},"spec":{"holderIdentity":"pi-kitchen","leaseDurationSeconds":40,"renewTime":"2027-03-01T12:34:56.789012Z"}}"#;
        let (enc, stored) = encode(lease);
        assert_eq!(enc, ENC_ZSTD_DICT1);
        let plain = zstd::bulk::compress(lease, LEVEL).expect("compress");
        // Key (~60 bytes) + value + row overhead must leave room for four rows in 1 KiB.
        assert!(
            stored.len() <= 180,
            "{} bytes against the dictionary, {} without",
            stored.len(),
            plain.len()
        );
    }

    #[test]
    fn the_dictionary_is_frozen() {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(DICTIONARY_V1);
        assert_eq!(
            hex::encode(hash),
            "77219ff5fcfda99e44ff9b88131b378ad5443a6882659bc7792a25a4e6aeefaf",
            "DICTIONARY_V1 changed: values already stored in encoding 2 would no longer decode"
        );
    }
}
