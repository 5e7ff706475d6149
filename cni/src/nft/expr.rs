//! Rule expressions and verdicts, and their encoding as `NFTA_LIST_ELEM` records.
//!
//! Registers: the verdict register is 0; data registers are the 32-bit ones, [`reg32`]`(0..16)`
//! (kernel numbers 8..24). A value wider than 4 bytes, or a concatenation such as
//! `ip daddr . meta l4proto . th dport`, spans consecutive registers, each field starting on a
//! register boundary; loads zero the unused bytes of their last register, so set keys are the
//! fields each padded to 4 bytes (see [`concat_key`]).

use super::attr::{
    NFTA_DATA_VERDICT, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, put_be32, put_be64, put_data,
    put_nested, put_str, put_u8,
};

/// The first 32-bit data register plus `n` (`NFT_REG32_00 + n`).
pub const fn reg32(n: u32) -> u32 {
    8 + n
}
const NFT_REG_VERDICT: u32 = 0;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

/// Where a payload load starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The IP header.
    Network = 1,
    /// The transport header (`th`): ports at offsets 0 (source) and 2 (destination).
    Transport = 2,
}

/// Packet metadata keys (`NFT_META_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Mark = 3,
    L4Proto = 16,
}

/// Comparison operators (`NFT_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// What a rule (or a verdict map element) decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    /// Run the chain, then continue here.
    Jump(String),
    /// Run the chain instead of the rest of this one.
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }

    fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }

    /// Encodes as `NFTA_DATA_VERDICT` inside an attribute of type `ty`.
    pub(crate) fn put(&self, buf: &mut Vec<u8>, ty: u16) {
        put_nested(buf, ty, |v| {
            put_nested(v, NFTA_DATA_VERDICT, |c| {
                put_be32(c, NFTA_VERDICT_CODE, self.code() as u32);
                if let Some(chain) = self.chain() {
                    put_str(c, NFTA_VERDICT_CHAIN, chain);
                }
            });
        });
    }
}

/// Connection-tracking state bits as `ct state` loads them (host-endian u32).
pub mod ct_state {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
}

/// How `reject` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// ICMP destination unreachable with this code (3 = port unreachable).
    IcmpUnreach(u8),
    TcpReset,
}

/// One rule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load `len` bytes at `offset` from `base` into `dreg`.
    Payload {
        base: Base,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// Load packet metadata into `dreg`.
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    /// Set packet metadata from `sreg`.
    MetaSet {
        key: MetaKey,
        sreg: u32,
    },
    /// `dreg = (sreg & mask) ^ xor`; mask and xor have the operand's length.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Compare `sreg` with `data`; no match ends the rule.
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// Look `sreg` up in a named set; with `verdict_map` the element's verdict is the rule's.
    Lookup {
        set: String,
        sreg: u32,
        verdict_map: bool,
        invert: bool,
    },
    /// `numgen random mod modulus` (or incremental) into `dreg` as a host-endian u32.
    Numgen {
        dreg: u32,
        modulus: u32,
        random: bool,
    },
    /// Load a constant.
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    /// The rule's verdict.
    Verdict(Verdict),
    /// Load a conntrack key; only `ct state` (key 0) is used.
    CtState {
        dreg: u32,
    },
    /// Destination NAT to the IPv4 address in `addr_reg` and, if given, the port in `port_reg`.
    Dnat {
        addr_reg: u32,
        port_reg: Option<u32>,
    },
    /// Source NAT to the outgoing interface's address, source ports fully random.
    Masquerade,
    Reject(Reject),
    /// Add or refresh `sreg` in a dynamic set (`update @set { key }`), with a timeout.
    DynsetUpdate {
        set: String,
        sreg: u32,
        timeout_ms: u64,
    },
    /// Count packets and bytes.
    Counter,
}

/// A set key made of fields each padded to a register boundary, as a concatenation loads them.
pub fn concat_key(fields: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::new();
    for f in fields {
        key.extend_from_slice(f);
        key.resize(key.len().div_ceil(4) * 4, 0);
    }
    key
}

fn named(buf: &mut Vec<u8>, name: &str, body: impl FnOnce(&mut Vec<u8>)) {
    put_str(buf, NFTA_EXPR_NAME, name);
    put_nested(buf, NFTA_EXPR_DATA, body);
}

impl Expr {
    /// Appends this expression as one element of an expression list.
    pub(crate) fn put(&self, buf: &mut Vec<u8>) {
        put_nested(buf, NFTA_LIST_ELEM, |b| match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => named(b, "payload", |d| {
                put_be32(d, 1, *dreg);
                put_be32(d, 2, *base as u32);
                put_be32(d, 3, *offset);
                put_be32(d, 4, *len);
            }),
            Expr::Meta { key, dreg } => named(b, "meta", |d| {
                put_be32(d, 1, *dreg);
                put_be32(d, 2, *key as u32);
            }),
            Expr::MetaSet { key, sreg } => named(b, "meta", |d| {
                put_be32(d, 2, *key as u32);
                put_be32(d, 3, *sreg);
            }),
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => named(b, "bitwise", |d| {
                put_be32(d, 1, *sreg);
                put_be32(d, 2, *dreg);
                put_be32(d, 3, mask.len() as u32);
                put_data(d, 4, mask);
                put_data(d, 5, xor);
            }),
            Expr::Cmp { sreg, op, data } => named(b, "cmp", |d| {
                put_be32(d, 1, *sreg);
                put_be32(d, 2, *op as u32);
                put_data(d, 3, data);
            }),
            Expr::Lookup {
                set,
                sreg,
                verdict_map,
                invert,
            } => named(b, "lookup", |d| {
                put_str(d, 1, set);
                put_be32(d, 2, *sreg);
                if *verdict_map {
                    put_be32(d, 3, NFT_REG_VERDICT);
                }
                if *invert {
                    put_be32(d, 5, 1);
                }
            }),
            Expr::Numgen {
                dreg,
                modulus,
                random,
            } => named(b, "numgen", |d| {
                put_be32(d, 1, *dreg);
                put_be32(d, 2, *modulus);
                put_be32(d, 3, u32::from(*random));
            }),
            Expr::Immediate { dreg, data } => named(b, "immediate", |d| {
                put_be32(d, 1, *dreg);
                put_data(d, 2, data);
            }),
            Expr::Verdict(v) => named(b, "immediate", |d| {
                put_be32(d, 1, NFT_REG_VERDICT);
                v.put(d, 2);
            }),
            Expr::CtState { dreg } => named(b, "ct", |d| {
                put_be32(d, 1, *dreg);
                put_be32(d, 2, 0);
            }),
            Expr::Dnat { addr_reg, port_reg } => named(b, "nat", |d| {
                put_be32(d, 1, 1); // NFT_NAT_DNAT
                put_be32(d, 2, 2); // NFPROTO_IPV4
                put_be32(d, 3, *addr_reg);
                if let Some(p) = port_reg {
                    put_be32(d, 5, *p);
                }
            }),
            Expr::Masquerade => named(b, "masq", |d| {
                // NF_NAT_RANGE_PROTO_RANDOM_FULLY: avoids the SNAT port races flannel works
                // around the same way.
                put_be32(d, 1, 0x10);
            }),
            Expr::Reject(r) => named(b, "reject", |d| match r {
                Reject::IcmpUnreach(code) => {
                    put_be32(d, 1, 0);
                    put_u8(d, 2, *code);
                }
                Reject::TcpReset => put_be32(d, 1, 1),
            }),
            Expr::DynsetUpdate {
                set,
                sreg,
                timeout_ms,
            } => named(b, "dynset", |d| {
                put_str(d, 1, set);
                put_be32(d, 3, 1); // NFT_DYNSET_OP_UPDATE
                put_be32(d, 4, *sreg);
                put_be64(d, 6, *timeout_ms);
            }),
            Expr::Counter => named(b, "counter", |d| {
                // Starts at zero; an empty body is not accepted by every kernel, so say so.
                put_be64(d, 1, 0);
                put_be64(d, 2, 0);
            }),
        });
    }
}

/// Shorthands for the common matches.
pub mod m {
    use super::*;

    /// `ip saddr`/`ip daddr` (offset 12/16) in `net`: load, mask (unless /32), compare.
    pub fn ip_in(offset: u32, addr: [u8; 4], prefix: u8, eq: bool) -> Vec<Expr> {
        let mut v = vec![Expr::Payload {
            base: Base::Network,
            offset,
            len: 4,
            dreg: reg32(0),
        }];
        if prefix < 32 {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            v.push(Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: mask.to_be_bytes().to_vec(),
                xor: vec![0; 4],
            });
        }
        v.push(Expr::Cmp {
            sreg: reg32(0),
            op: if eq { CmpOp::Eq } else { CmpOp::Neq },
            data: addr.to_vec(),
        });
        v
    }

    /// `meta l4proto <proto>`.
    pub fn l4proto(proto: u8) -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: MetaKey::L4Proto,
                dreg: reg32(0),
            },
            Expr::Cmp {
                sreg: reg32(0),
                op: CmpOp::Eq,
                data: vec![proto],
            },
        ]
    }

    /// `ip daddr . meta l4proto . th dport` into registers 0..3 (a 12-byte key).
    pub fn daddr_proto_dport() -> Vec<Expr> {
        vec![
            Expr::Payload {
                base: Base::Network,
                offset: 16,
                len: 4,
                dreg: reg32(0),
            },
            Expr::Meta {
                key: MetaKey::L4Proto,
                dreg: reg32(1),
            },
            Expr::Payload {
                base: Base::Transport,
                offset: 2,
                len: 2,
                dreg: reg32(2),
            },
        ]
    }

    /// `meta l4proto . th dport` into registers 0..2 (an 8-byte key).
    pub fn proto_dport() -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: MetaKey::L4Proto,
                dreg: reg32(0),
            },
            Expr::Payload {
                base: Base::Transport,
                offset: 2,
                len: 2,
                dreg: reg32(1),
            },
        ]
    }

    /// `ct state & bits != 0`.
    pub fn ct_state_any(bits: u32) -> Vec<Expr> {
        vec![
            Expr::CtState { dreg: reg32(0) },
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: bits.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: reg32(0),
                op: CmpOp::Neq,
                data: vec![0; 4],
            },
        ]
    }

    /// `meta mark & bit == 0` (`eq`) or `!= 0`.
    pub fn mark_bit(bit: u32, set: bool) -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: MetaKey::Mark,
                dreg: reg32(0),
            },
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: bit.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: reg32(0),
                op: if set { CmpOp::Neq } else { CmpOp::Eq },
                data: vec![0; 4],
            },
        ]
    }

    /// `meta mark set meta mark | bit`.
    pub fn set_mark_bit(bit: u32) -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: MetaKey::Mark,
                dreg: reg32(0),
            },
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: (!bit).to_ne_bytes().to_vec(),
                xor: bit.to_ne_bytes().to_vec(),
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: reg32(0),
            },
        ]
    }

    /// `dnat to addr:port` (for the protocol matched before it).
    pub fn dnat(addr: [u8; 4], port: u16) -> Vec<Expr> {
        vec![
            Expr::Immediate {
                dreg: reg32(0),
                data: addr.to_vec(),
            },
            Expr::Immediate {
                dreg: reg32(1),
                data: port.to_be_bytes().to_vec(),
            },
            Expr::Dnat {
                addr_reg: reg32(0),
                port_reg: Some(reg32(1)),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_keys_pad_each_field() {
        let key = concat_key(&[&[10, 43, 0, 1], &[6], &80u16.to_be_bytes()]);
        assert_eq!(key, vec![10, 43, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
    }

    #[test]
    fn goto_carries_the_chain_name() {
        let mut b = Vec::new();
        Expr::Verdict(Verdict::Goto("svc".into())).put(&mut b);
        let s = String::from_utf8_lossy(&b);
        assert!(s.contains("immediate") && s.contains("svc"));
        // -4 big-endian
        assert!(b.windows(4).any(|w| w == (-4i32).to_be_bytes()));
    }

    #[test]
    fn masks_follow_the_prefix() {
        let e = m::ip_in(12, [10, 42, 0, 0], 16, true);
        assert_eq!(
            e[1],
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: vec![255, 255, 0, 0],
                xor: vec![0; 4]
            }
        );
        assert_eq!(m::ip_in(16, [1, 2, 3, 4], 32, true).len(), 2);
        assert_eq!(m::ip_in(16, [0, 0, 0, 0], 0, true)[1], {
            Expr::Bitwise {
                sreg: reg32(0),
                dreg: reg32(0),
                mask: vec![0; 4],
                xor: vec![0; 4],
            }
        });
    }
}
