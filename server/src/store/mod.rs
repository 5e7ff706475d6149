//! The cluster state store: a revisioned key-value log with Kubernetes (etcd) semantics.
//!
//! This replaces etcd (and k3s's kine shim) behind one trait, [`Store`]. Keys look like Kubernetes'
//! (`/registry/<resource>/<namespace>/<name>`), values are the objects' JSON bytes, and every write gets
//! the next value of one global, strictly increasing [`Revision`], which the API server exposes as
//! `metadata.resourceVersion`.
//!
//! Invariants every backend keeps:
//! - Revisions are global and strictly increasing; a key's `mod_revision` is the revision of the write
//!   that produced its current value.
//! - `create` fails if the key exists; `update`/`delete` are compare-and-swap on the key's last
//!   revision ([`StoreError::Conflict`] on mismatch).
//! - `watch(prefix, after)` yields every event with revision > `after` whose key starts with `prefix`,
//!   in revision order, with no gap, or fails with [`StoreError::Expired`] when that history has been
//!   compacted away.
//! - Only the store speaks SQL.

pub mod memory;
pub mod sqlite;
pub mod watch;

use std::fmt;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use sqlite::{Durability, SqliteStore, StoreOptions};

/// A global store revision; becomes `metadata.resourceVersion`.
pub type Revision = i64;

/// One key with its current value and the revisions that created and last modified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the write that produced this value (for a delete event: the delete's revision).
    pub mod_revision: Revision,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        })
    }
}

/// One committed change, as delivered to watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub event_type: EventType,
    /// The key after the change. For `Deleted`, `value` is the last value the key had and
    /// `mod_revision` is the revision of the delete.
    pub kv: KeyValue,
    /// The value before the change (`None` for `Added`).
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which this event was committed.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// Options for [`Store::list`].
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Read at this revision instead of the current one. Must not be older than the compacted
    /// revision ([`StoreError::Expired`]) nor newer than the current one ([`StoreError::FutureRevision`]).
    pub revision: Option<Revision>,
    /// At most this many items (None or 0: all).
    pub limit: Option<usize>,
    /// Start strictly after this key (from a previous page's `next_key`-derived continue token).
    pub start_after: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug, Default)]
pub struct ListResult {
    /// Items in key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at; pass it back in [`ListOptions::revision`] for the next page,
    /// and to [`Store::watch`] to follow on without a gap.
    pub revision: Revision,
    /// When the page was cut short by `limit`: the last key returned (continue after it).
    pub more_after: Option<String>,
    /// How many matching items remain after this page (Kubernetes' `remainingItemCount`).
    pub remaining: usize,
}

/// A stream of watch events; it ends with an `Err` if the watcher fell too far behind
/// ([`StoreError::Expired`]) or the store shut down.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// Store errors. Invalid-input variants are kept apart from failures of the store itself so the API
/// can map them to 4xx and 5xx respectively.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    /// The requested history is gone (compacted, or a watcher fell too far behind).
    #[error("revision {requested} has been compacted (oldest available: {compacted})")]
    Expired {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The database file or directory cannot be used (not SQLite, corrupt, unwritable, newer schema).
    #[error("{path}: {reason}")]
    Open { path: String, reason: String },
    /// A write or read failed in the backend (disk full, I/O error). Nothing was changed.
    #[error("storage failure: {0}")]
    Backend(String),
    #[error("the store is shut down")]
    Closed,
}

/// The revisioned key-value store behind the API server.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, from memory.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys starting with `prefix`, in key order, at the current or a given revision.
    fn list(&self, prefix: &str, opts: &ListOptions) -> Result<ListResult, StoreError>;

    /// The newest committed revision.
    fn current_revision(&self) -> Revision;

    /// The oldest revision whose history is still available (watch and list-at-revision work after it).
    fn compacted_revision(&self) -> Revision;

    /// Creates `key`; fails with `AlreadyExists` if it exists. Returns once durable.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError>;

    /// Replaces `key`'s value if its `mod_revision` is `expected`. Returns once durable.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes `key` (only if its `mod_revision` is `expected`, when given). Returns the deleted value
    /// with `mod_revision` set to the delete's revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError>;

    /// Events for keys under `prefix` with revision > `after`, in order, then live ones.
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// Drops history at and below `revision` (current values are kept).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}
