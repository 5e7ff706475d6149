//! The single writer: the only code that writes to `state.db`, on its own thread.
//!
//! Requests arrive over a channel. Each turn the writer drains every pending write (up to
//! `max_batch`), validates them in order against current state plus the batch's own earlier writes,
//! appends one log row per accepted write, and commits them all in ONE transaction (one fsync: group
//! commit). Only then does it, holding the watch hub's lock, apply the batch to the in-memory view,
//! answer the callers and publish the events to watchers.
//!
//! Invariants:
//! - The view changes only after a successful commit; if the transaction fails (disk full, I/O error)
//!   it is rolled back, every caller in the batch gets the error, and the view and revision stay as
//!   they were, so memory never diverges from the file.
//! - Revisions are assigned consecutively from the view's revision, so the log has no gaps above the
//!   compacted revision.
//! - Maintenance steps (one compaction batch, one vacuum step, a checkpoint) run between write
//!   batches, each in its own short transaction, so writes interleave with them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use bytes::Bytes;
use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::Shared;
use crate::store::{Event, EventType, KeyValue, Revision, StoreError};

/// A write operation.
pub(crate) enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// A maintenance step, run in its own transaction between write batches.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Maint {
    /// Compacts the next batch of revisions towards `target`.
    CompactBatch { target: Revision },
    /// Frees one step of free pages; unless `force`, only when enough pages are free to be worth it.
    Vacuum { force: bool },
    /// Checkpoints the WAL into the database file and truncates it.
    Checkpoint,
}

/// Outcome of a maintenance step.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MaintDone {
    /// Nothing more to do for this kind of step.
    pub done: bool,
    /// Log rows deleted by a compaction batch.
    pub rows_deleted: usize,
}

pub(crate) type WriteReply = oneshot::Sender<Result<KeyValue, StoreError>>;

pub(crate) enum Request {
    Write {
        op: Op,
        reply: WriteReply,
    },
    Maintain {
        step: Maint,
        reply: oneshot::Sender<Result<MaintDone, StoreError>>,
    },
    Shutdown,
}

/// Pages freed per vacuum step (1 MiB with 4 KiB pages): short enough not to delay writes much.
const VACUUM_STEP_PAGES: i64 = 256;
/// Vacuum only when at least this many pages are free...
const VACUUM_MIN_FREE_PAGES: i64 = 256;
/// ...and they are at least this fraction (1/N) of the file; otherwise appends reuse them anyway,
/// and moving pages around would only add writes (flash wear).
const VACUUM_MIN_FREE_FRACTION: i64 = 4;

pub(crate) struct Writer {
    pub conn: Connection,
    pub shared: Arc<Shared>,
    pub rx: Receiver<Request>,
    pub max_batch: usize,
    pub compact_batch: Revision,
}

impl Writer {
    pub fn run(mut self) {
        let mut shutdown = false;
        while !shutdown {
            let Ok(first) = self.rx.recv() else {
                break;
            };
            let mut writes = Vec::new();
            let mut maint = Vec::new();
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Write { op, reply } => writes.push((op, reply)),
                    Request::Maintain { step, reply } => maint.push((step, reply)),
                    Request::Shutdown => shutdown = true,
                }
                if writes.len() < self.max_batch && !shutdown {
                    next = self.rx.try_recv().ok();
                }
            }
            if !writes.is_empty() {
                self.commit(writes);
            }
            for (step, reply) in maint {
                let res = self.maintain(step);
                if let Err(e) = &res {
                    tracing::warn!(error = %e, ?step, "store maintenance step failed");
                }
                let _ = reply.send(res);
            }
        }
        self.shared.hub.close();
        // Leave a short WAL behind; failures only mean a longer recovery at next open.
        let _ = self.checkpoint();
    }

    fn backend_err(&self, what: &str, e: rusqlite::Error) -> StoreError {
        StoreError::Backend(format!("{}: {what}: {e}", self.shared.path.display()))
    }

    /// Validates, persists, applies and publishes one batch of writes.
    fn commit(&mut self, writes: Vec<(Op, WriteReply)>) {
        let base = self.shared.view.revision();
        let mut rev = base;
        let mut events: Vec<Event> = Vec::with_capacity(writes.len());
        let mut staged: Vec<(WriteReply, KeyValue)> = Vec::with_capacity(writes.len());
        self.shared.view.with(|map| {
            // The batch's own earlier writes shadow the view.
            let mut overlay: HashMap<String, Option<KeyValue>> = HashMap::new();
            for (op, reply) in writes {
                let current = match overlay.get(op.key()) {
                    Some(v) => v.clone(),
                    None => map.get(op.key()).cloned(),
                };
                match apply_op(op, current, rev + 1) {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok((event, result)) => {
                        rev += 1;
                        let after = match event.event_type {
                            EventType::Deleted => None,
                            _ => Some(event.kv.clone()),
                        };
                        overlay.insert(event.kv.key.clone(), after);
                        events.push(event);
                        staged.push((reply, result));
                    }
                }
            }
        });
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.persist(&events) {
            let msg = format!(
                "{}: write failed, nothing was changed: {e}",
                self.shared.path.display()
            );
            tracing::error!(error = %msg, writes = events.len(), "store batch failed");
            for (reply, _) in staged {
                let _ = reply.send(Err(StoreError::Backend(msg.clone())));
            }
            return;
        }
        let mut hub = self.shared.hub.lock();
        self.shared.view.apply(&events, rev);
        for (reply, kv) in staged {
            let _ = reply.send(Ok(kv));
        }
        hub.publish(events);
    }

    fn persist(&mut self, events: &[Event]) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO log (rev, key, create_rev, prev_rev, deleted, value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for ev in events {
                let prev_rev = ev.prev.as_ref().map_or(0, |p| p.mod_revision);
                let (deleted, value): (i64, Option<&[u8]>) = match ev.event_type {
                    EventType::Deleted => (1, None),
                    _ => (0, Some(&ev.kv.value[..])),
                };
                stmt.execute(params![
                    ev.kv.mod_revision,
                    ev.kv.key,
                    ev.kv.create_revision,
                    prev_rev,
                    deleted,
                    value
                ])?;
            }
        }
        tx.commit()
    }

    fn maintain(&mut self, step: Maint) -> Result<MaintDone, StoreError> {
        match step {
            Maint::CompactBatch { target } => self
                .compact_batch(target)
                .map_err(|e| self.backend_err("compaction failed", e)),
            Maint::Vacuum { force } => self
                .vacuum_step(force)
                .map_err(|e| self.backend_err("incremental vacuum failed", e)),
            Maint::Checkpoint => self
                .checkpoint()
                .map(|()| MaintDone {
                    done: true,
                    rows_deleted: 0,
                })
                .map_err(|e| self.backend_err("checkpoint failed", e)),
        }
    }

    /// Deletes, for revisions in (compacted, hi], the rows they superseded and their tombstones, and
    /// records `hi` as the compacted revision, in one short transaction.
    fn compact_batch(&mut self, target: Revision) -> rusqlite::Result<MaintDone> {
        let lo = self.shared.compacted.load(Ordering::SeqCst);
        let target = target.min(self.shared.view.revision());
        if target <= lo {
            return Ok(MaintDone {
                done: true,
                rows_deleted: 0,
            });
        }
        let hi = target.min(lo + self.compact_batch.max(1));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut rows = tx.execute(
            "DELETE FROM log WHERE rev IN
                 (SELECT prev_rev FROM log WHERE rev > ?1 AND rev <= ?2 AND prev_rev > 0)",
            params![lo, hi],
        )?;
        rows += tx.execute(
            "DELETE FROM log WHERE rev > ?1 AND rev <= ?2 AND deleted = 1",
            params![lo, hi],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'compacted'",
            params![hi],
        )?;
        tx.commit()?;
        self.shared.compacted.store(hi, Ordering::SeqCst);
        Ok(MaintDone {
            done: hi >= target,
            rows_deleted: rows,
        })
    }

    fn vacuum_step(&mut self, force: bool) -> rusqlite::Result<MaintDone> {
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let worth_it = free >= VACUUM_MIN_FREE_PAGES && free * VACUUM_MIN_FREE_FRACTION >= pages;
        if free == 0 || (!force && !worth_it) {
            return Ok(MaintDone {
                done: true,
                rows_deleted: 0,
            });
        }
        let mut stmt = self
            .conn
            .prepare(&format!("PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        drop(stmt);
        Ok(MaintDone {
            done: free <= VACUUM_STEP_PAGES,
            rows_deleted: 0,
        })
    }

    fn checkpoint(&mut self) -> rusqlite::Result<()> {
        // Returns (busy, log frames, checkpointed frames); busy only means a reader was active and
        // the WAL will be truncated at a later checkpoint.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    }
}

/// Checks `op` against the key's current state and builds the event it produces at `rev`, plus the
/// value returned to the caller.
fn apply_op(
    op: Op,
    current: Option<KeyValue>,
    rev: Revision,
) -> Result<(Event, KeyValue), StoreError> {
    match op {
        Op::Create { key, value } => {
            if current.is_some() {
                return Err(StoreError::AlreadyExists { key });
            }
            let kv = KeyValue {
                key,
                value,
                create_revision: rev,
                mod_revision: rev,
            };
            Ok((
                Event {
                    event_type: EventType::Added,
                    kv: kv.clone(),
                    prev: None,
                },
                kv,
            ))
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(cur) = current else {
                return Err(StoreError::NotFound { key });
            };
            if cur.mod_revision != expected {
                return Err(StoreError::Conflict {
                    key,
                    expected,
                    actual: cur.mod_revision,
                });
            }
            let kv = KeyValue {
                key,
                value,
                create_revision: cur.create_revision,
                mod_revision: rev,
            };
            Ok((
                Event {
                    event_type: EventType::Modified,
                    kv: kv.clone(),
                    prev: Some(cur),
                },
                kv,
            ))
        }
        Op::Delete { key, expected } => {
            let Some(cur) = current else {
                return Err(StoreError::NotFound { key });
            };
            if let Some(expected) = expected
                && cur.mod_revision != expected
            {
                return Err(StoreError::Conflict {
                    key,
                    expected,
                    actual: cur.mod_revision,
                });
            }
            let kv = KeyValue {
                key,
                value: cur.value.clone(),
                create_revision: cur.create_revision,
                mod_revision: rev,
            };
            Ok((
                Event {
                    event_type: EventType::Deleted,
                    kv: kv.clone(),
                    prev: Some(cur),
                },
                kv,
            ))
        }
    }
}
