//! The nf_tables netlink wire format, just as much as masquerading needs: a transaction batch of
//! table / chain / rule messages with payload, bitwise, cmp, immediate (verdict) and masq
//! expressions, and the parsing of the kernel's acknowledgements.
//!
//! Format notes (from the kernel's uapi `linux/netfilter/nf_tables.h` and `nfnetlink.h`): every
//! message is an `nlmsghdr` + `nfgenmsg` (family, version 0, resource id) + attributes; attribute
//! integers are big-endian; nested attributes carry `NLA_F_NESTED`; a transaction is framed by
//! `NFNL_MSG_BATCH_BEGIN`/`END` whose resource id names the nftables subsystem.

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NFTA_MASQ_FLAGS: u16 = 1;
/// Source ports chosen fully at random: avoids the SNAT port races flannel works around the same way.
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;

const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_RETURN: i32 = -5;
const NF_ACCEPT: u32 = 1;

/// One rule expression. Matches load into register 1, mask it and compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load `len` bytes at `offset` of the network header into register 1.
    Payload { offset: u32, len: u32 },
    /// Register 1 &= mask.
    Mask([u8; 4]),
    /// Compare register 1 with `data` (equal, or not equal when `eq` is false); no match ends the rule.
    Cmp { eq: bool, data: [u8; 4] },
    /// Verdict `return`.
    Return,
    /// Source NAT to the outgoing interface's address, source ports fully random.
    Masquerade,
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    put_attr(buf, ty, &bytes);
}

fn put_be32(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(buf, ty, &v.to_be_bytes());
}

fn put_nested(buf: &mut Vec<u8>, ty: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    body(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
}

fn put_data(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    put_nested(buf, ty, |b| put_attr(b, NFTA_DATA_VALUE, value));
}

fn put_expr(buf: &mut Vec<u8>, expr: &Expr) {
    put_nested(buf, NFTA_LIST_ELEM, |b| match expr {
        Expr::Payload { offset, len } => {
            put_str(b, NFTA_EXPR_NAME, "payload");
            put_nested(b, NFTA_EXPR_DATA, |d| {
                put_be32(d, NFTA_PAYLOAD_DREG, NFT_REG_1);
                put_be32(d, NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
                put_be32(d, NFTA_PAYLOAD_OFFSET, *offset);
                put_be32(d, NFTA_PAYLOAD_LEN, *len);
            });
        }
        Expr::Mask(mask) => {
            put_str(b, NFTA_EXPR_NAME, "bitwise");
            put_nested(b, NFTA_EXPR_DATA, |d| {
                put_be32(d, NFTA_BITWISE_SREG, NFT_REG_1);
                put_be32(d, NFTA_BITWISE_DREG, NFT_REG_1);
                put_be32(d, NFTA_BITWISE_LEN, mask.len() as u32);
                put_data(d, NFTA_BITWISE_MASK, mask);
                put_data(d, NFTA_BITWISE_XOR, &[0; 4]);
            });
        }
        Expr::Cmp { eq, data } => {
            put_str(b, NFTA_EXPR_NAME, "cmp");
            put_nested(b, NFTA_EXPR_DATA, |d| {
                put_be32(d, NFTA_CMP_SREG, NFT_REG_1);
                put_be32(d, NFTA_CMP_OP, if *eq { NFT_CMP_EQ } else { NFT_CMP_NEQ });
                put_data(d, NFTA_CMP_DATA, data);
            });
        }
        Expr::Return => {
            put_str(b, NFTA_EXPR_NAME, "immediate");
            put_nested(b, NFTA_EXPR_DATA, |d| {
                put_be32(d, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                put_nested(d, NFTA_IMMEDIATE_DATA, |v| {
                    put_nested(v, NFTA_DATA_VERDICT, |c| {
                        put_be32(c, NFTA_VERDICT_CODE, NFT_RETURN as u32);
                    });
                });
            });
        }
        Expr::Masquerade => {
            put_str(b, NFTA_EXPR_NAME, "masq");
            put_nested(b, NFTA_EXPR_DATA, |d| {
                put_be32(d, NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY);
            });
        }
    });
}

/// A transaction under construction.
pub struct Batch {
    buf: Vec<u8>,
    family: u8,
    seq: u32,
    acked: usize,
}

impl Batch {
    pub fn new(family: u8) -> Batch {
        let mut b = Batch {
            buf: Vec::new(),
            family,
            seq: 0,
            acked: 0,
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
    ) {
        let start = self.buf.len();
        self.seq += 1;
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
        if flags & NLM_F_ACK != 0 {
            self.acked += 1;
        }
    }

    fn nft(&mut self, msg: u16, flags: u16, body: impl FnOnce(&mut Vec<u8>)) {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let family = self.family;
        self.message(ty, NLM_F_REQUEST | NLM_F_ACK | flags, family, 0, body);
    }

    pub fn new_table(&mut self, name: &str) {
        self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, |b| {
            put_str(b, NFTA_TABLE_NAME, name)
        });
    }

    pub fn del_table(&mut self, name: &str) {
        self.nft(NFT_MSG_DELTABLE, 0, |b| put_str(b, NFTA_TABLE_NAME, name));
    }

    /// A base chain of type `nat` on `hook` at `priority`, policy accept.
    pub fn new_nat_chain(&mut self, table: &str, name: &str, hook: u32, priority: i32) {
        self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
            put_str(b, NFTA_CHAIN_TABLE, table);
            put_str(b, NFTA_CHAIN_NAME, name);
            put_nested(b, NFTA_CHAIN_HOOK, |h| {
                put_be32(h, NFTA_HOOK_HOOKNUM, hook);
                put_be32(h, NFTA_HOOK_PRIORITY, priority as u32);
            });
            put_be32(b, NFTA_CHAIN_POLICY, NF_ACCEPT);
            put_str(b, NFTA_CHAIN_TYPE, "nat");
        });
    }

    pub fn new_rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
        self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |b| {
            put_str(b, NFTA_RULE_TABLE, table);
            put_str(b, NFTA_RULE_CHAIN, chain);
            put_nested(b, NFTA_RULE_EXPRESSIONS, |l| {
                for e in exprs {
                    put_expr(l, e);
                }
            });
        });
    }

    /// Closes the batch; returns its bytes and how many acknowledgements to expect.
    pub fn finish(mut self) -> (Vec<u8>, usize) {
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        (self.buf, self.acked)
    }
}

/// The error codes (0 = ack, negative errno = failure) of the `NLMSG_ERROR` messages in one
/// datagram; `None` if the datagram is malformed.
pub fn parse_acks(mut data: &[u8]) -> Option<Vec<i32>> {
    let mut codes = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().ok()?);
        if len < 16 || len > data.len() {
            return None;
        }
        match ty {
            NLMSG_ERROR => {
                let code = data.get(16..20)?;
                codes.push(i32::from_ne_bytes(code.try_into().ok()?));
            }
            NLMSG_DONE => {}
            _ => {}
        }
        data = &data[(len + 3) & !3..];
    }
    Some(codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_lengths_patched() {
        let mut b = Vec::new();
        put_nested(&mut b, 4, |n| put_str(n, 1, "nat"));
        // nested header (4) + attr header (4) + "nat\0" (4)
        assert_eq!(b.len(), 12);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 12);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 4 | NLA_F_NESTED);
        let mut b = Vec::new();
        put_str(&mut b, 1, "r3s-masq"); // 9 bytes + 4 header = 13, padded to 16
        assert_eq!(b.len(), 16);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 13);
    }

    #[test]
    fn batch_counts_acks_and_frames_messages() {
        let mut batch = Batch::new(2);
        batch.new_table("t");
        batch.del_table("t");
        batch.new_rule("t", "c", &[Expr::Masquerade]);
        let (bytes, acked) = batch.finish();
        assert_eq!(acked, 3);
        // Walk the framing: begin, 3 messages, end.
        let mut data = &bytes[..];
        let mut types = Vec::new();
        while !data.is_empty() {
            let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
            types.push(u16::from_ne_bytes([data[4], data[5]]));
            data = &data[len..];
        }
        assert_eq!(types, vec![0x10, 0x0a00, 0x0a02, 0x0a06, 0x11]);
    }

    #[test]
    fn parses_acks_and_errors() {
        let mut msg = Vec::new();
        for code in [0i32, -17] {
            msg.extend_from_slice(&36u32.to_ne_bytes());
            msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            msg.extend_from_slice(&[0; 10]);
            msg.extend_from_slice(&code.to_ne_bytes());
            msg.extend_from_slice(&[0; 16]);
        }
        assert_eq!(parse_acks(&msg), Some(vec![0, -17]));
        assert_eq!(
            parse_acks(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
    }
}
