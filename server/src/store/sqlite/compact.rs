//! Compaction: dropping superseded history in small batches, then reclaiming the space.
//!
//! A compaction to revision T asks the writer for one batch at a time (each its own short
//! transaction, so ordinary writes interleave), then for incremental-vacuum steps when enough pages
//! are free, then for a WAL checkpoint that truncates the WAL. Under a steady update load, pages freed
//! by compaction are reused by new rows, so the file stops growing.
//!
//! The background compactor follows Kubernetes' habit: every `compact_interval` it samples the
//! current revision; it compacts to the newest sample at least `compact_retention` old, never
//! closer than `compact_min_retain` revisions to the head, and only when at least one full batch is
//! due (so an idle cluster does not rewrite pages for a handful of revisions: flash wear).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use tokio::sync::oneshot;

use super::Shared;
use super::writer::{Maint, MaintDone, Request};
use crate::store::{Revision, StoreError};

async fn step(tx: &Sender<Request>, step: Maint) -> Result<MaintDone, StoreError> {
    let (reply, rx) = oneshot::channel();
    tx.send(Request::Maintain { step, reply })
        .map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// Compacts history up to `target` (already checked against the current revision), then reclaims
/// space. Returns the number of log rows deleted.
pub(crate) async fn compact_to(
    tx: &Sender<Request>,
    target: Revision,
) -> Result<usize, StoreError> {
    let mut deleted = 0;
    loop {
        let done = step(tx, Maint::CompactBatch { target }).await?;
        deleted += done.rows_deleted;
        if done.done {
            break;
        }
    }
    let mut force = false;
    loop {
        let done = step(tx, Maint::Vacuum { force }).await?;
        if done.done {
            break;
        }
        force = true;
    }
    step(tx, Maint::Checkpoint).await?;
    Ok(deleted)
}

/// The background compactor's loop; returns when `stop` is dropped or signalled.
pub(crate) fn run(shared: Arc<Shared>, tx: Sender<Request>, stop: Receiver<()>) {
    let opts = shared.opts.clone();
    let Some(interval) = opts.compact_interval else {
        return;
    };
    let mut samples: VecDeque<(Instant, Revision)> = VecDeque::new();
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let current = shared.view.revision();
        samples.push_back((now, current));
        let old_enough = |t: Instant| now.duration_since(t) >= opts.compact_retention;
        while samples.len() >= 2 && samples.get(1).is_some_and(|(t, _)| old_enough(*t)) {
            samples.pop_front();
        }
        let Some(&(t, sampled)) = samples.front() else {
            continue;
        };
        if !old_enough(t) {
            continue;
        }
        let target = sampled.min(current - opts.compact_min_retain);
        let compacted = shared.compacted.load(Ordering::SeqCst);
        if target - compacted < opts.compact_batch.max(1) {
            continue;
        }
        match futures::executor::block_on(compact_to(&tx, target)) {
            Ok(rows) => tracing::debug!(target, rows, "store compacted"),
            Err(StoreError::Closed) => return,
            Err(e) => tracing::warn!(error = %e, target, "store compaction failed; will retry"),
        }
    }
}
