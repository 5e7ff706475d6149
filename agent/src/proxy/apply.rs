//! Puts a [`Ruleset`] into the kernel as table `ip <table>`, each change one nf_tables transaction.
//!
//! The first apply (and any apply after a failure) replaces the whole table: delete whatever a
//! previous run left, create everything. Later applies change only the difference from the last
//! applied ruleset, in one batch: chains whose rules changed are flushed and refilled, chains and
//! sets no longer wanted are deleted, new ones created, map elements added and deleted by key.
//! The table and its base chains stay (the hooks never go away), and the dynamic
//! session-affinity sets of endpoints that stay keep their client entries. One endpoint change
//! among thousands of Services is thus a small transaction (the kernel's cost of a batch grows
//! with what it touches).
//! Invariant: after a successful apply the table holds exactly the ruleset, nothing stale;
//! after a failed one the kernel still holds the previous ruleset untouched.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use r3s_cni::nft::{Batch, Conn, Element, FAMILY_IP, NftError};

use super::rules::{ChainDef, Ruleset, SetDef};

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
            Some(old) => self.update(&mut batch, old, desired, force),
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

    /// Changes only what differs from `old`: chains whose rules changed are flushed and
    /// refilled, chains and sets no longer wanted are deleted, map elements are added and deleted
    /// one by one. With `force`, every chain and map is refilled (repairs edits made behind
    /// the proxy's back) while the dynamic affinity sets still keep their entries.
    fn update(&self, batch: &mut Batch, old: &Ruleset, new: &Ruleset, force: bool) {
        let t = &self.table;
        batch.add_table(t);
        // Name indexes: thousands of chains must not be compared pairwise.
        let (old_ix, new_ix) = (Index::of(old), Index::of(new));
        // A set recreated with another spec (an affinity timeout changed) may be looked up by
        // rules that did not change: refill every chain so none keeps it busy.
        let force = force
            || old.sets.iter().any(|s| {
                new_ix
                    .sets
                    .get(s.spec.name.as_str())
                    .is_some_and(|n| n.spec != s.spec)
            });
        let same_set = |ix: &Index, s: &SetDef| {
            ix.sets
                .get(s.spec.name.as_str())
                .is_some_and(|o| o.spec == s.spec)
        };
        let same_chain = |ix: &Index, c: &ChainDef| {
            ix.chains
                .get(c.name.as_str())
                .is_some_and(|o| o.hook == c.hook)
        };
        // 1. Rules and elements that may point at what goes.
        let mut refill: Vec<&ChainDef> = Vec::new();
        for c in &new.chains {
            match old_ix.chains.get(c.name.as_str()) {
                Some(o) if o.hook == c.hook => {
                    if force || o.rules != c.rules {
                        batch.flush_chain(t, &c.name);
                        refill.push(c);
                    }
                }
                _ => refill.push(c),
            }
        }
        // A chain's own rules may point at other chains that go: empty every leaving chain
        // before deleting any of them.
        for c in &old.chains {
            if !same_chain(&new_ix, c) {
                batch.flush_chain(t, &c.name);
            }
        }
        let mut additions: Vec<(&str, Vec<Element>)> = Vec::new();
        for s in &new.sets {
            let old_elements = match old_ix.sets.get(s.spec.name.as_str()) {
                Some(o) if o.spec == s.spec => &o.elements[..],
                _ => &[],
            };
            if force && !old_elements.is_empty() {
                batch.flush_set(t, &s.spec.name);
                additions.push((&s.spec.name, s.elements.clone()));
                continue;
            }
            let (was, is): (HashSet<&Element>, HashSet<&Element>) =
                (old_elements.iter().collect(), s.elements.iter().collect());
            let gone: Vec<Element> = old_elements
                .iter()
                .filter(|e| !is.contains(e))
                .cloned()
                .collect();
            if !gone.is_empty() {
                batch.del_elements(t, &s.spec.name, &gone);
            }
            let added: Vec<Element> = s
                .elements
                .iter()
                .filter(|e| !was.contains(e))
                .cloned()
                .collect();
            additions.push((&s.spec.name, added));
        }
        // 2. What is no longer wanted.
        for s in &old.sets {
            if !same_set(&new_ix, s) {
                if !s.elements.is_empty() {
                    batch.flush_set(t, &s.spec.name);
                }
                batch.del_set(t, &s.spec.name);
            }
        }
        for c in &old.chains {
            if !same_chain(&new_ix, c) {
                batch.del_chain(t, &c.name);
            }
        }
        // 3. What is new, then the rules and elements.
        for s in &new.sets {
            if !same_set(&old_ix, s) {
                batch.add_set(t, &s.spec);
            }
        }
        for c in &new.chains {
            if !same_chain(&old_ix, c) {
                batch.add_chain(t, &c.name, c.hook);
            }
        }
        for c in refill {
            for r in &c.rules {
                batch.add_rule(t, &c.name, r);
            }
        }
        for (set, elements) in additions {
            if !elements.is_empty() {
                batch.add_elements(t, set, &elements);
            }
        }
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

/// A ruleset's chains and sets by name.
struct Index<'a> {
    chains: HashMap<&'a str, &'a ChainDef>,
    sets: HashMap<&'a str, &'a SetDef>,
}

impl<'a> Index<'a> {
    fn of(rs: &'a Ruleset) -> Index<'a> {
        Index {
            chains: rs.chains.iter().map(|c| (c.name.as_str(), c)).collect(),
            sets: rs.sets.iter().map(|s| (s.spec.name.as_str(), s)).collect(),
        }
    }
}
