//! Expectations: what a control loop has asked the API for and not yet seen in its cache.
//!
//! A reconcile reads pods from a watch cache that may lag behind its own writes. Without a record of
//! what it just did, a second reconcile could count the pods it created a moment ago as missing and
//! create them again. So each owner key records the names it created and the uids it deleted; the
//! owner may act again only once the cache shows every created name and none of the deleted uids,
//! or after [`TTL`] (a lost watch event must not wedge an owner forever).
//!
//! Invariant: expectations are only ever *checked* against the cache, never decremented by event
//! handlers, so they stay correct however events are batched or replayed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an unmet expectation blocks its owner before it is dropped.
pub const TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Pending {
    created: HashSet<String>,
    deleted: HashSet<String>,
    since: Option<Instant>,
}

/// Expectations of every owner, keyed by `namespace/name`.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Pending>) -> T) -> T {
        // A poisoned lock only means another reconcile panicked mid-update; the map is still a
        // valid (if conservative) record, so keep using it.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Records that `owner` created the object `name`.
    pub fn created(&self, owner: &str, name: &str) {
        self.with(|m| {
            let p = m.entry(owner.to_string()).or_default();
            p.created.insert(name.to_string());
            p.since.get_or_insert_with(Instant::now);
        });
    }

    /// Records that `owner` deleted the object with `uid`.
    pub fn deleted(&self, owner: &str, uid: &str) {
        self.with(|m| {
            let p = m.entry(owner.to_string()).or_default();
            p.deleted.insert(uid.to_string());
            p.since.get_or_insert_with(Instant::now);
        });
    }

    /// True if the cache (`present_names`, `present_uids` of live objects) reflects everything
    /// `owner` did; settled entries are forgotten.
    pub fn satisfied(
        &self,
        owner: &str,
        present_names: &HashSet<String>,
        present_uids: &HashSet<String>,
    ) -> bool {
        self.with(|m| {
            let Some(p) = m.get_mut(owner) else {
                return true;
            };
            p.created.retain(|n| !present_names.contains(n));
            p.deleted.retain(|u| present_uids.contains(u));
            let expired = p.since.is_some_and(|s| s.elapsed() > TTL);
            if p.created.is_empty() && p.deleted.is_empty() || expired {
                m.remove(owner);
                true
            } else {
                false
            }
        })
    }

    /// Forgets `owner` (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.with(|m| m.remove(owner));
    }

    /// Drops a single creation that failed after being recorded.
    pub fn creation_failed(&self, owner: &str, name: &str) {
        self.with(|m| {
            if let Some(p) = m.get_mut(owner) {
                p.created.remove(name);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> HashSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unsatisfied_until_the_cache_shows_the_writes() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs", &set(&[]), &set(&[])));
        e.created("ns/rs", "rs-a");
        e.deleted("ns/rs", "uid-1");
        assert!(!e.satisfied("ns/rs", &set(&[]), &set(&["uid-1"])));
        assert!(!e.satisfied("ns/rs", &set(&["rs-a"]), &set(&["uid-1"])));
        assert!(e.satisfied("ns/rs", &set(&["rs-a"]), &set(&[])));
        assert!(e.satisfied("ns/rs", &set(&[]), &set(&[])));
    }
}
