//! One nf_tables transaction under construction: `NFNL_MSG_BATCH_BEGIN`, table / chain / rule /
//! set / element messages, `NFNL_MSG_BATCH_END`. The kernel applies all of it or none of it.
//!
//! Only the last message before the end asks for an acknowledgement: the kernel reports every
//! failing message anyway (it keeps processing a failed batch to report all errors, then aborts
//! it), so "the ack of the last message has arrived" means "every answer has arrived".

use super::attr::{put_be32, put_be64, put_data, put_nested, put_str};
use super::expr::{Expr, Verdict};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NF_ACCEPT: u32 = 1;

/// Set flags (`NFT_SET_*`).
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// Keeps an element list's nested attribute well under its u16 length limit.
const MAX_ELEMENTS_BYTES: usize = 48 * 1024;

/// A base chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// `nat`, `filter` or `route`.
    pub kind: &'static str,
    /// `NF_INET_*`: 0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting.
    pub hooknum: u32,
    pub priority: i32,
}

pub mod hooks {
    pub const PREROUTING: u32 = 0;
    pub const INPUT: u32 = 1;
    pub const FORWARD: u32 = 2;
    pub const OUTPUT: u32 = 3;
    pub const POSTROUTING: u32 = 4;
    /// `dstnat`.
    pub const PRI_DSTNAT: i32 = -100;
    /// `srcnat`.
    pub const PRI_SRCNAT: i32 = 100;
    /// `filter`.
    pub const PRI_FILTER: i32 = 0;
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    /// nft's data type id of the key (only for listing; 0 = integer).
    pub key_type: u32,
    pub key_len: u32,
    /// Elements map to verdicts.
    pub verdict_map: bool,
    /// Updated from the packet path (`update @set { .. }`), elements expire after this.
    pub dynamic_timeout_ms: Option<u64>,
}

/// A set element: a key and, in a verdict map, its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    pub key: Vec<u8>,
    pub verdict: Option<Verdict>,
}

/// A transaction under construction.
pub struct Batch {
    buf: Vec<u8>,
    family: u8,
    seq: u32,
    /// Offset of the last message that may carry the acknowledgement request.
    last: Option<usize>,
}

impl Batch {
    /// A batch for `family` (2 = `ip`), numbering messages after `first_seq`.
    pub fn new(family: u8, first_seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::new(),
            family,
            seq: first_seq,
            last: None,
        };
        b.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        b
    }

    fn message(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> usize {
        let start = self.buf.len();
        self.seq = self.seq.wrapping_add(1);
        self.buf.extend_from_slice(&[0; 4]); // length, patched below
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(&mut self.buf);
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        start
    }

    fn nft(&mut self, msg: u16, flags: u16, body: impl FnOnce(&mut Vec<u8>)) {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let family = self.family;
        let at = self.message(ty, NLM_F_REQUEST | flags, family, 0, body);
        self.last = Some(at);
    }

    pub fn add_table(&mut self, name: &str) {
        self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, |b| put_str(b, 1, name));
    }

    pub fn del_table(&mut self, name: &str) {
        self.nft(NFT_MSG_DELTABLE, 0, |b| put_str(b, 1, name));
    }

    /// Deletes the table whether or not it exists (add, then delete).
    pub fn reset_table(&mut self, name: &str) {
        self.add_table(name);
        self.del_table(name);
    }

    /// A chain; with `hook`, a base chain with policy accept. Adding an existing chain is a no-op.
    pub fn add_chain(&mut self, table: &str, name: &str, hook: Option<Hook>) {
        self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
            put_str(b, 1, table);
            put_str(b, 3, name);
            if let Some(h) = hook {
                put_nested(b, 4, |n| {
                    put_be32(n, 1, h.hooknum);
                    put_be32(n, 2, h.priority as u32);
                });
                put_be32(b, 5, NF_ACCEPT);
                put_str(b, 7, h.kind);
            }
        });
    }

    /// Deletes a chain (it must have no rules and no references left in the transaction).
    pub fn del_chain(&mut self, table: &str, name: &str) {
        self.nft(NFT_MSG_DELCHAIN, 0, |b| {
            put_str(b, 1, table);
            put_str(b, 3, name);
        });
    }

    /// Appends a rule to a chain.
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
        self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
            put_str(b, 1, table);
            put_str(b, 2, chain);
            put_nested(b, 4, |l| {
                for e in exprs {
                    e.put(l);
                }
            });
        });
    }

    /// Deletes every rule of every chain in the table.
    pub fn flush_rules(&mut self, table: &str) {
        self.nft(NFT_MSG_DELRULE, 0, |b| put_str(b, 1, table));
    }

    /// Deletes every rule of one chain.
    pub fn flush_chain(&mut self, table: &str, chain: &str) {
        self.nft(NFT_MSG_DELRULE, 0, |b| {
            put_str(b, 1, table);
            put_str(b, 2, chain);
        });
    }

    pub fn add_set(&mut self, table: &str, set: &SetSpec) {
        // The kernel requires an id unique within the transaction; this message's number is.
        let id = self.seq.wrapping_add(1);
        self.nft(NFT_MSG_NEWSET, NLM_F_CREATE, |b| {
            put_str(b, 1, table);
            put_str(b, 2, &set.name);
            let mut flags = 0;
            if set.verdict_map {
                flags |= NFT_SET_MAP;
            }
            if set.dynamic_timeout_ms.is_some() {
                flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
            }
            put_be32(b, 3, flags);
            put_be32(b, 4, set.key_type);
            put_be32(b, 5, set.key_len);
            if set.verdict_map {
                put_be32(b, 6, NFT_DATA_VERDICT);
                put_be32(b, 7, 0);
            }
            put_be32(b, 10, id);
            if let Some(ms) = set.dynamic_timeout_ms {
                put_be64(b, 11, ms);
            }
        });
    }

    pub fn del_set(&mut self, table: &str, name: &str) {
        self.nft(NFT_MSG_DELSET, 0, |b| {
            put_str(b, 1, table);
            put_str(b, 2, name);
        });
    }

    /// Adds elements, over as many messages as their size needs.
    pub fn add_elements(&mut self, table: &str, set: &str, elements: &[Element]) {
        self.elements(NFT_MSG_NEWSETELEM, NLM_F_CREATE, table, set, elements);
    }

    /// Deletes elements (by key; verdicts are ignored).
    pub fn del_elements(&mut self, table: &str, set: &str, elements: &[Element]) {
        let keys: Vec<Element> = elements
            .iter()
            .map(|e| Element {
                key: e.key.clone(),
                verdict: None,
            })
            .collect();
        self.elements(NFT_MSG_DELSETELEM, 0, table, set, &keys);
    }

    fn elements(&mut self, msg: u16, flags: u16, table: &str, set: &str, elements: &[Element]) {
        let mut rest = elements;
        while !rest.is_empty() {
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len() && bytes < MAX_ELEMENTS_BYTES {
                bytes += 32 + rest[take].key.len() + 64;
                take += 1;
            }
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            self.nft(msg, flags, |b| {
                put_str(b, 1, table);
                put_str(b, 2, set);
                put_nested(b, 3, |l| {
                    for e in chunk {
                        put_nested(l, 1, |el| {
                            put_data(el, 1, &e.key);
                            if let Some(v) = &e.verdict {
                                v.put(el, 2);
                            }
                        });
                    }
                });
            });
        }
    }

    /// Removes every element of a set.
    pub fn flush_set(&mut self, table: &str, set: &str) {
        self.nft(NFT_MSG_DELSETELEM, 0, |b| {
            put_str(b, 1, table);
            put_str(b, 2, set);
        });
    }

    /// Whether anything besides the framing was added.
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    /// Closes the batch; returns its bytes and the sequence number whose answer ends it.
    pub fn finish(mut self) -> (Vec<u8>, u32) {
        if let Some(at) = self.last {
            let flags_at = at + 6;
            let flags =
                u16::from_ne_bytes([self.buf[flags_at], self.buf[flags_at + 1]]) | NLM_F_ACK;
            self.buf[flags_at..flags_at + 2].copy_from_slice(&flags.to_ne_bytes());
        }
        let last_seq = self.seq;
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        (self.buf, last_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(bytes: &[u8]) -> Vec<(u16, u16)> {
        let mut data = bytes;
        let mut out = Vec::new();
        while !data.is_empty() {
            let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
            out.push((
                u16::from_ne_bytes([data[4], data[5]]),
                u16::from_ne_bytes([data[6], data[7]]),
            ));
            data = &data[len..];
        }
        out
    }

    #[test]
    fn frames_messages_and_acks_only_the_last() {
        let mut batch = Batch::new(2, 100);
        batch.reset_table("t");
        batch.add_rule("t", "c", &[Expr::Masquerade]);
        let (bytes, last) = batch.finish();
        assert_eq!(last, 104);
        let msgs = walk(&bytes);
        let types: Vec<u16> = msgs.iter().map(|m| m.0).collect();
        assert_eq!(types, vec![0x10, 0x0a00, 0x0a02, 0x0a06, 0x11]);
        let acked: Vec<bool> = msgs.iter().map(|m| m.1 & NLM_F_ACK != 0).collect();
        assert_eq!(acked, vec![false, false, false, true, false]);
    }

    #[test]
    fn big_element_lists_are_split() {
        let elements: Vec<Element> = (0..5000u32)
            .map(|i| Element {
                key: i.to_be_bytes().to_vec(),
                verdict: Some(Verdict::Goto(format!("chain-{i}"))),
            })
            .collect();
        let mut batch = Batch::new(2, 0);
        batch.add_elements("t", "s", &elements);
        let (bytes, _) = batch.finish();
        let msgs = walk(&bytes);
        assert!(msgs.len() > 3, "{}", msgs.len());
        // Every message's outer nested list fits its u16 length.
        let mut data = &bytes[..];
        while !data.is_empty() {
            let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
            assert!(len < 65_000);
            data = &data[len..];
        }
    }
}
