//! Reads of history older than what memory holds: watch replay and list at an old revision.
//!
//! Both run on the read-only connection inside one read transaction, so the compacted revision they
//! check and the rows they read come from the same snapshot: if compaction has passed the requested
//! revision they report `Expired`, never a partial history.

use std::collections::BTreeMap;

use bytes::Bytes;
use rusqlite::{Connection, params};

use super::schema;
use crate::store::{Event, EventType, KeyValue, Revision, StoreError};

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("reading history: {e}"))
}

/// Events for keys under `prefix` in (after, upto], at most `limit` rows scanned; returns the
/// matching events and the revision scanned up to.
pub fn replay(
    conn: &Connection,
    prefix: &str,
    after: Revision,
    upto: Revision,
    limit: usize,
) -> Result<(Vec<Event>, Revision), StoreError> {
    let tx = conn.unchecked_transaction().map_err(backend)?;
    let compacted = schema::compacted(&tx).map_err(backend)?;
    if after < compacted {
        return Err(StoreError::Expired {
            requested: after,
            compacted,
        });
    }
    let mut stmt = tx
        .prepare_cached(
            "SELECT l.rev, l.key, l.create_rev, l.prev_rev, l.deleted, l.value, p.value
             FROM log l LEFT JOIN log p ON p.rev = l.prev_rev
             WHERE l.rev > ?1 AND l.rev <= ?2 ORDER BY l.rev LIMIT ?3",
        )
        .map_err(backend)?;
    let mut rows = stmt
        .query(params![
            after,
            upto,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ])
        .map_err(backend)?;
    let mut events = Vec::new();
    let mut scanned = 0usize;
    let mut reached = after;
    while let Some(row) = rows.next().map_err(backend)? {
        scanned += 1;
        let rev: Revision = row.get(0).map_err(backend)?;
        reached = rev;
        let key: String = row.get(1).map_err(backend)?;
        if !key.starts_with(prefix) {
            continue;
        }
        let create_rev: Revision = row.get(2).map_err(backend)?;
        let prev_rev: Revision = row.get(3).map_err(backend)?;
        let deleted: bool = row.get::<_, i64>(4).map_err(backend)? != 0;
        let value: Option<Vec<u8>> = row.get(5).map_err(backend)?;
        let prev_value: Option<Vec<u8>> = row.get(6).map_err(backend)?;
        let missing = || {
            StoreError::Backend(format!(
                "log row {rev} for {key} refers to missing revision {prev_rev}"
            ))
        };
        let prev = if prev_rev > 0 {
            Some(KeyValue {
                key: key.clone(),
                value: Bytes::from(prev_value.ok_or_else(missing)?),
                create_revision: create_rev,
                mod_revision: prev_rev,
            })
        } else {
            None
        };
        let (event_type, value) = match (deleted, &prev) {
            (true, Some(p)) => (EventType::Deleted, p.value.clone()),
            (true, None) => return Err(missing()),
            (false, None) => (EventType::Added, Bytes::from(value.unwrap_or_default())),
            (false, Some(_)) => (EventType::Modified, Bytes::from(value.unwrap_or_default())),
        };
        events.push(Event {
            event_type,
            kv: KeyValue {
                key,
                value,
                create_revision: create_rev,
                mod_revision: rev,
            },
            prev,
        });
    }
    if scanned < limit {
        reached = upto;
    }
    Ok((events, reached))
}

/// The keys under `prefix` as they were at revision `at`.
pub fn state_at(
    conn: &Connection,
    prefix: &str,
    at: Revision,
) -> Result<BTreeMap<String, KeyValue>, StoreError> {
    let tx = conn.unchecked_transaction().map_err(backend)?;
    let compacted = schema::compacted(&tx).map_err(backend)?;
    if at < compacted {
        return Err(StoreError::Expired {
            requested: at,
            compacted,
        });
    }
    // The log keeps, for every key, its latest row at or below any revision >= compacted; applying
    // the remaining rows in order therefore yields exactly the state at `at`.
    let mut stmt = tx
        .prepare_cached(
            "SELECT rev, key, create_rev, deleted, value FROM log WHERE rev <= ?1 ORDER BY rev",
        )
        .map_err(backend)?;
    let mut rows = stmt.query(params![at]).map_err(backend)?;
    let mut map = BTreeMap::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let key: String = row.get(1).map_err(backend)?;
        if !key.starts_with(prefix) {
            continue;
        }
        if row.get::<_, i64>(3).map_err(backend)? != 0 {
            map.remove(&key);
            continue;
        }
        let value: Option<Vec<u8>> = row.get(4).map_err(backend)?;
        let kv = KeyValue {
            key: key.clone(),
            value: Bytes::from(value.unwrap_or_default()),
            create_revision: row.get(2).map_err(backend)?,
            mod_revision: row.get(0).map_err(backend)?,
        };
        map.insert(key, kv);
    }
    Ok(map)
}
