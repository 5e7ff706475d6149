//! Puts a [`Ruleset`] into the kernel as table `ip <table>`, each change one nf_tables transaction.
//!
//! The first apply (and any apply after a failure) replaces the whole table: delete whatever a
//! previous run left, create everything. Later applies keep the table and its base chains (so
//! the hooks never go away), flush every rule and both verdict maps, delete the chains and sets
//! that are no longer wanted, create the new ones and refill everything, all in one batch. The
//! dynamic session-affinity sets of endpoints that stay are kept, with their client entries.
//! Invariant: after a successful apply the table holds exactly the ruleset, nothing stale;
//! after a failed one the kernel still holds the previous ruleset untouched.

use std::path::Path;

use r3s_cni::nft::{Batch, Conn, FAMILY_IP, NftError};

use super::rules::Ruleset;

/// The proxy's connection to nf_tables and what it last applied.
#[derive(Debug)]
pub struct Applier {
    conn: Conn,
    table: String,
    applied: Option<Ruleset>,
}

impl Applier {
    /// Opens a netfilter socket in the namespace at `netns` (`None`: the caller's).
    pub fn open(table: &str, netns: Option<&Path>) -> Result<Applier, NftError> {
        Ok(Applier {
            conn: Conn::open_in(netns)?,
            table: table.to_string(),
            applied: None,
        })
    }

    /// Applies `desired` unless it is what was last applied (`force` re-applies anyway, which
    /// also repairs a table someone changed behind the proxy's back). Returns whether it wrote.
    pub fn apply(&mut self, desired: &Ruleset, force: bool) -> Result<bool, NftError> {
        if !force && self.applied.as_ref() == Some(desired) {
            return Ok(false);
        }
        let mut batch = self.conn.batch(FAMILY_IP);
        match &self.applied {
            None => self.replace(&mut batch, desired),
            Some(old) => self.update(&mut batch, old, desired),
        }
        let result = self.conn.commit(batch, "the service proxy table");
        match result {
            Ok(()) => {
                self.applied = Some(desired.clone());
                Ok(true)
            }
            Err(e) => {
                // The kernel kept the old table, but our picture of it may be wrong (someone
                // deleted it?): start over with a full replacement next time.
                self.applied = None;
                Err(e)
            }
        }
    }

    /// Deletes the table (absent is fine).
    pub fn remove(&mut self) -> Result<(), NftError> {
        let mut batch = self.conn.batch(FAMILY_IP);
        batch.reset_table(&self.table);
        self.applied = None;
        self.conn.commit(batch, "deleting the service proxy table")
    }

    fn replace(&self, batch: &mut Batch, rs: &Ruleset) {
        let t = &self.table;
        batch.reset_table(t);
        batch.add_table(t);
        for s in &rs.sets {
            batch.add_set(t, &s.spec);
        }
        for c in &rs.chains {
            batch.add_chain(t, &c.name, c.hook);
        }
        self.fill(batch, rs);
    }

    fn update(&self, batch: &mut Batch, old: &Ruleset, new: &Ruleset) {
        let t = &self.table;
        batch.add_table(t);
        batch.flush_rules(t);
        let same_set = |rs: &Ruleset, s: &super::rules::SetDef| {
            rs.set(&s.spec.name).is_some_and(|o| o.spec == s.spec)
        };
        let same_chain = |rs: &Ruleset, c: &super::rules::ChainDef| {
            rs.chain(&c.name).is_some_and(|o| o.hook == c.hook)
        };
        // Static sets (the verdict maps) are emptied before anything they point to goes.
        for s in &old.sets {
            if s.spec.dynamic_timeout_ms.is_none() {
                batch.flush_set(t, &s.spec.name);
            }
        }
        for s in &old.sets {
            if !same_set(new, s) {
                batch.del_set(t, &s.spec.name);
            }
        }
        for c in &old.chains {
            if !same_chain(new, c) {
                batch.del_chain(t, &c.name);
            }
        }
        for s in &new.sets {
            if !same_set(old, s) {
                batch.add_set(t, &s.spec);
            }
        }
        for c in &new.chains {
            if !same_chain(old, c) {
                batch.add_chain(t, &c.name, c.hook);
            }
        }
        self.fill(batch, new);
    }

    fn fill(&self, batch: &mut Batch, rs: &Ruleset) {
        let t = &self.table;
        for c in &rs.chains {
            for r in &c.rules {
                batch.add_rule(t, &c.name, r);
            }
        }
        for s in &rs.sets {
            if !s.elements.is_empty() {
                batch.add_elements(t, &s.spec.name, &s.elements);
            }
        }
    }
}
