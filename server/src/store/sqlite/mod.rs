//! The SQLite backend of [`Store`]: `<data-dir>/server/db/state.db`.
//!
//! Shape: one writer thread owns the write connection and group-commits every pending write in one
//! transaction (`writer`); current state lives in memory ([`View`]) and serves get/list; recent
//! events live in the watch hub ([`Hub`]) and are pushed to watchers right after each commit; older
//! history is read from the log by the writer between batches (`read`; the database is opened in
//! exclusive locking mode, so there is no other connection); a background thread compacts and
//! reclaims space in small steps (`compact`).
//!
//! Invariants: the view, the hub and the file always agree on the revision once a batch is
//! answered; nothing in memory changes for a batch that did not commit; the file is never written
//! before [`schema::preflight`] accepted it.

mod compact;
mod read;
pub mod schema;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rusqlite::{Connection, MAIN_DB, OpenFlags};
use tokio::sync::oneshot;

use self::writer::{Op, Read, ReadOut, Request, Writer};
use super::memory::{self, View};
use super::watch::{self, Hub, HubLimits, Replay};
use super::{
    Event, EventType, KeyValue, ListOptions, ListResult, Revision, Store, StoreError, WatchStream,
};

/// How hard a commit is pushed to stable storage (see [`schema::configure`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// WAL + synchronous=FULL: an acknowledged write survives `kill -9` and power loss.
    #[default]
    Full,
    /// WAL + synchronous=NORMAL: survives `kill -9`; power loss may drop the last acknowledged
    /// writes but never corrupts the file.
    Normal,
}

/// Tunables of [`SqliteStore`]. The defaults suit a Raspberry Pi server.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub durability: Durability,
    /// Most writes group-committed in one transaction.
    pub max_batch: usize,
    /// Recent events kept in memory for watches and lists at recent revisions.
    pub history_events: usize,
    /// Byte budget of those events.
    pub history_bytes: usize,
    /// Events queued per watcher before it is expired as too slow.
    pub watch_buffer: usize,
    /// How often the background compactor looks; None disables it (compact() still works).
    pub compact_interval: Option<Duration>,
    /// History younger than this is kept (Kubernetes compacts every 5 minutes).
    pub compact_retention: Duration,
    /// At least this many of the newest revisions are always kept.
    pub compact_min_retain: Revision,
    /// Revisions per compaction transaction (keep it small so writes interleave).
    pub compact_batch: Revision,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Full,
            max_batch: 1024,
            history_events: 10_000,
            history_bytes: 16 << 20,
            watch_buffer: 1024,
            compact_interval: Some(Duration::from_secs(60)),
            compact_retention: Duration::from_secs(300),
            compact_min_retain: 1000,
            compact_batch: 500,
        }
    }
}

/// Rows read per watch-replay query.
const REPLAY_CHUNK: usize = 1000;

/// State shared by the store handle, the writer, the compactor and watch streams.
pub(crate) struct Shared {
    pub view: View,
    pub hub: Hub,
    pub compacted: AtomicI64,
    pub path: PathBuf,
    pub opts: StoreOptions,
}

/// The SQLite-backed store. Dropping it stops the compactor and the writer (after the writes already
/// queued) and ends every watch with `Closed`.
pub struct SqliteStore {
    shared: Arc<Shared>,
    tx: Sender<Request>,
    writer: Option<JoinHandle<()>>,
    compactor: Option<(Sender<()>, JoinHandle<()>)>,
}

fn open_err(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, creating its parent directories.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            open_err(
                &path,
                format!("cannot create the data directory {}: {e}", dir.display()),
            )
        })?;
        schema::probe_dir(&path, &dir)?;
        let checked = schema::preflight(&path)?;
        let existing = checked.existing;
        let mut conn = match checked.conn {
            Some(conn) => {
                schema::allow_writes(&conn)
                    .map_err(|e| open_err(&path, format!("cannot open the database: {e}")))?;
                conn
            }
            None => {
                let conn = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE
                        | OpenFlags::SQLITE_OPEN_CREATE
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| open_err(&path, format!("cannot open the database: {e}")))?;
                // Before the first access, so that no shared-memory wal-index file is ever used.
                schema::lock_exclusive(&conn)
                    .map_err(|e| open_err(&path, format!("cannot open the database: {e}")))?;
                conn
            }
        };
        if conn.is_readonly(MAIN_DB).unwrap_or(true) {
            return Err(open_err(
                &path,
                "the database file or its directory is not writable",
            ));
        }
        let setup = |conn: &mut Connection| -> rusqlite::Result<()> {
            if existing == schema::Existing::New {
                schema::prepare_new(conn)?;
            }
            schema::configure(conn, opts.durability == Durability::Full)?;
            if existing == schema::Existing::New {
                schema::create(conn)?;
            }
            if existing == schema::Existing::Upgradable {
                schema::upgrade(conn)?;
            }
            Ok(())
        };
        setup(&mut conn).map_err(|e| {
            open_err(
                &path,
                format!("cannot initialise the database (is the directory writable?): {e}"),
            )
        })?;
        // Fold a WAL left by a crash into the file so the next writes start from a short WAL.
        // Best effort: on a full disk the store must still start and serve reads.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(path = %path.display(), error = %e, "store: startup checkpoint failed");
        }
        let loaded = load(&conn, &opts)
            .map_err(|e| open_err(&path, format!("cannot read the database: {e}")))?;

        let limits = HubLimits {
            history_events: opts.history_events,
            history_bytes: opts.history_bytes,
            watch_buffer: opts.watch_buffer,
        };
        let floor = loaded
            .events
            .front()
            .map_or(loaded.revision, |e| e.revision() - 1);
        let shared = Arc::new(Shared {
            view: View::new(loaded.map, loaded.revision),
            hub: Hub::new(limits, floor, loaded.events.into()),
            compacted: AtomicI64::new(loaded.compacted),
            path: path.clone(),
            opts: opts.clone(),
        });

        let (tx, rx) = mpsc::channel();
        let w = Writer {
            conn,
            shared: shared.clone(),
            rx,
            max_batch: opts.max_batch.max(1),
            compact_batch: opts.compact_batch,
        };
        let writer = std::thread::Builder::new()
            .name("r3s-store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| open_err(&path, format!("cannot start the writer thread: {e}")))?;
        let mut store = SqliteStore {
            shared: shared.clone(),
            tx: tx.clone(),
            writer: Some(writer),
            compactor: None,
        };
        if opts.compact_interval.is_some() {
            let (stop_tx, stop_rx) = mpsc::channel();
            let handle = std::thread::Builder::new()
                .name("r3s-store-compact".into())
                .spawn(move || compact::run(shared, tx, stop_rx))
                .map_err(|e| open_err(&path, format!("cannot start the compactor: {e}")))?;
            store.compactor = Some((stop_tx, handle));
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.shared.view.len()
    }

    /// True when no key exists.
    pub fn is_empty(&self) -> bool {
        self.shared.view.is_empty()
    }

    /// Runs `PRAGMA integrity_check` on the open database ("ok" when healthy).
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        match read_via(&self.tx, Read::IntegrityCheck).await? {
            ReadOut::Check(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    /// Number of live watchers (a stream dropped by its reader is forgotten at the next event).
    pub fn watcher_count(&self) -> usize {
        self.shared.hub.lock().subscriber_count()
    }

    async fn write(&self, op: Op) -> Result<KeyValue, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Write { op, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.compactor.take() {
            drop(stop);
            let _ = handle.join();
        }
        let _ = self.tx.send(Request::Shutdown);
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

/// Sends a history read to the writer and waits for the answer.
async fn read_via(tx: &Sender<Request>, query: Read) -> Result<ReadOut, StoreError> {
    let (reply, rx) = oneshot::channel();
    tx.send(Request::Read { query, reply })
        .map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

fn unexpected() -> StoreError {
    StoreError::Backend("store writer answered a read with the wrong kind of result".into())
}

struct Loaded {
    map: BTreeMap<String, KeyValue>,
    revision: Revision,
    compacted: Revision,
    events: VecDeque<Event>,
}

/// Rebuilds current state (and the most recent events) from the log.
fn load(conn: &Connection, opts: &StoreOptions) -> rusqlite::Result<Loaded> {
    let compacted = schema::compacted(conn)?;
    let mut map: BTreeMap<String, KeyValue> = BTreeMap::new();
    let mut events = VecDeque::new();
    let mut revision = compacted;
    let mut stmt =
        conn.prepare("SELECT rev, key, create_rev, deleted, enc, value FROM log ORDER BY rev")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let rev: Revision = row.get(0)?;
        let key: String = row.get(1)?;
        let create_revision: Revision = row.get(2)?;
        let deleted = row.get::<_, i64>(3)? != 0;
        revision = revision.max(rev);
        let prev = map.get(&key).cloned();
        let (event_type, kv) = if deleted {
            let value = prev.as_ref().map(|p| p.value.clone()).unwrap_or_default();
            map.remove(&key);
            (
                EventType::Deleted,
                KeyValue {
                    key,
                    value,
                    create_revision,
                    mod_revision: rev,
                },
            )
        } else {
            let enc: i64 = row.get(4)?;
            let value: Option<Vec<u8>> = row.get(5)?;
            let value = schema::decode(enc, value.unwrap_or_default()).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    5,
                    rusqlite::types::Type::Blob,
                    format!("log row {rev} for {key}: {e}").into(),
                )
            })?;
            let kv = KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision: rev,
            };
            map.insert(key, kv.clone());
            let t = if prev.is_some() && create_revision != rev {
                EventType::Modified
            } else {
                EventType::Added
            };
            (t, kv)
        };
        // Rows at or below the compacted revision are state, not replayable history.
        if rev > compacted && opts.history_events > 0 {
            let prev = if event_type == EventType::Added {
                None
            } else {
                prev
            };
            events.push_back(Event {
                event_type,
                kv,
                prev,
            });
            if events.len() > opts.history_events {
                events.pop_front();
            }
        }
    }
    Ok(Loaded {
        map,
        revision,
        compacted,
        events,
    })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.shared.view.get(key))
    }

    fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult, StoreError> {
        let start_after = opts.start_after.as_deref();
        let wanted = match opts.revision {
            None | Some(0) => None,
            Some(r) => Some(r),
        };
        let current = self.shared.view.revision();
        let Some(at) = wanted else {
            return Ok(self.shared.view.list(prefix, start_after, opts.limit));
        };
        if at > current {
            return Err(StoreError::FutureRevision {
                requested: at,
                current,
            });
        }
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        if at < compacted {
            return Err(StoreError::Expired {
                requested: at,
                compacted,
            });
        }
        if at == current {
            // Later pages of a list usually come while nothing changed: serve them straight away.
            let res = self.shared.view.list(prefix, start_after, opts.limit);
            if res.revision == at {
                return Ok(res);
            }
        }
        let hub = self.shared.hub.lock();
        let (mut map, rev) = self.shared.view.snapshot(prefix);
        let in_memory = at >= rev || at >= hub.floor();
        if at < rev
            && in_memory
            && let Some(newer) = hub.events_after(at)
        {
            memory::rewind(&mut map, prefix, newer);
        }
        drop(hub);
        if !in_memory {
            // Rare (older than the in-memory history): a blocking round trip to the writer, which
            // owns the only connection. block_on works inside or outside a runtime.
            let query = Read::StateAt {
                prefix: prefix.to_owned(),
                at,
            };
            match futures::executor::block_on(read_via(&self.tx, query))? {
                ReadOut::State(m) => map = m,
                _ => return Err(unexpected()),
            }
        }
        let mut res = memory::paginate(&map, prefix, start_after, opts.limit);
        res.revision = at;
        Ok(res)
    }

    fn current_revision(&self) -> Revision {
        self.shared.view.revision()
    }

    fn compacted_revision(&self) -> Revision {
        self.shared.compacted.load(Ordering::SeqCst)
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        self.write(Op::Create {
            key: key.to_owned(),
            value,
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        self.write(Op::Update {
            key: key.to_owned(),
            value,
            expected,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.write(Op::Delete {
            key: key.to_owned(),
            expected,
        })
        .await
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let after = after.max(0);
        let compacted = self.shared.compacted.load(Ordering::SeqCst);
        if after < compacted {
            return Err(StoreError::Expired {
                requested: after,
                compacted,
            });
        }
        let sub = self.shared.hub.lock().subscribe(prefix, after);
        let replay: Option<Replay> = sub.replay_upto().map(|_| {
            let tx = self.tx.clone();
            let f = move |prefix: &str, after: Revision, upto: Revision| {
                let tx = tx.clone();
                let query = Read::Replay {
                    prefix: prefix.to_owned(),
                    after,
                    upto,
                    limit: REPLAY_CHUNK,
                };
                let fut: BoxFuture<'static, watch::ReplayChunk> = Box::pin(async move {
                    match read_via(&tx, query).await? {
                        ReadOut::Events(evs, reached) => Ok((evs, reached)),
                        _ => Err(unexpected()),
                    }
                });
                fut
            };
            Box::new(f) as Replay
        });
        Ok(watch::into_stream(sub, replay))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.shared.view.revision();
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision <= self.shared.compacted.load(Ordering::SeqCst) {
            return Ok(());
        }
        compact::compact_to(&self.tx, revision, true)
            .await
            .map(|_| ())
    }
}
