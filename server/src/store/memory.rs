//! The in-memory view of current state: every live key with its value, and the revision it reflects.
//!
//! get and list at the current revision are served from here, never by SQL. Values are `Bytes`, so a
//! list hands out cheap clones of shared buffers.
//!
//! Invariants: only the backend's single writer mutates the view, and only after the matching batch
//! is durable; `revision` is the revision of the last applied batch, so a reader always sees a state
//! that existed at exactly that revision.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock};

use super::{Event, EventType, KeyValue, ListResult, Revision};

struct Inner {
    map: BTreeMap<String, KeyValue>,
    revision: Revision,
}

/// The current-state view.
pub struct View {
    inner: RwLock<Inner>,
}

impl View {
    pub fn new(map: BTreeMap<String, KeyValue>, revision: Revision) -> View {
        View {
            inner: RwLock::new(Inner { map, revision }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.read().map.get(key).cloned()
    }

    pub fn revision(&self) -> Revision {
        self.read().revision
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One page of keys under `prefix` at the current revision.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> ListResult {
        let g = self.read();
        let mut res = paginate(&g.map, prefix, start_after, limit);
        res.revision = g.revision;
        res
    }

    /// All keys under `prefix` and the revision they reflect (the base for reading an older revision).
    pub fn snapshot(&self, prefix: &str) -> (BTreeMap<String, KeyValue>, Revision) {
        let g = self.read();
        let map = range(&g.map, prefix, None)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (map, g.revision)
    }

    /// Looks up keys for the writer's validation under one read lock.
    pub fn with<R>(&self, f: impl FnOnce(&BTreeMap<String, KeyValue>) -> R) -> R {
        f(&self.read().map)
    }

    /// Applies a committed batch (in revision order) and moves the view to `revision`.
    pub fn apply(&self, events: &[Event], revision: Revision) {
        let mut g = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        for ev in events {
            match ev.event_type {
                EventType::Added | EventType::Modified => {
                    g.map.insert(ev.kv.key.clone(), ev.kv.clone());
                }
                EventType::Deleted => {
                    g.map.remove(&ev.kv.key);
                }
            }
        }
        g.revision = revision;
    }
}

/// Keys under `prefix`, strictly after `start_after` when given, in key order.
fn range<'a>(
    map: &'a BTreeMap<String, KeyValue>,
    prefix: &'a str,
    start_after: Option<&str>,
) -> impl Iterator<Item = (&'a String, &'a KeyValue)> + 'a {
    let lower = match start_after {
        Some(k) if k >= prefix => Bound::Excluded(k.to_owned()),
        _ => Bound::Included(prefix.to_owned()),
    };
    map.range::<String, _>((lower, Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

/// One page of `map` under `prefix`; `revision` is left for the caller to fill in.
pub fn paginate(
    map: &BTreeMap<String, KeyValue>,
    prefix: &str,
    start_after: Option<&str>,
    limit: Option<usize>,
) -> ListResult {
    let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut it = range(map, prefix, start_after);
    let items: Vec<KeyValue> = it.by_ref().take(limit).map(|(_, v)| v.clone()).collect();
    let remaining = it.count();
    let more_after = if remaining > 0 {
        items.last().map(|kv| kv.key.clone())
    } else {
        None
    };
    ListResult {
        items,
        revision: 0,
        more_after,
        remaining,
    }
}

/// Rolls a snapshot back from its revision to `target` by undoing `newer` (events after `target`,
/// oldest first), keeping only keys under `prefix`.
pub fn rewind<'a>(
    map: &mut BTreeMap<String, KeyValue>,
    prefix: &str,
    newer: impl DoubleEndedIterator<Item = &'a Event>,
) {
    for ev in newer.rev() {
        if !ev.kv.key.starts_with(prefix) {
            continue;
        }
        match (&ev.event_type, &ev.prev) {
            (EventType::Added, _) | (_, None) => {
                map.remove(&ev.kv.key);
            }
            (EventType::Modified | EventType::Deleted, Some(prev)) => {
                map.insert(prev.key.clone(), prev.clone());
            }
        }
    }
}
