//! Netlink attribute encoding for nf_tables: type-length-value records padded to 4 bytes, nested
//! records flagged `NLA_F_NESTED` with their length patched after the body is written. Integers
//! nf_tables reads as attributes are big-endian; the netlink headers themselves are host-endian.

pub(crate) const NLA_F_NESTED: u16 = 0x8000;

pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFTA_VERDICT_CHAIN: u16 = 2;

pub(crate) fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

pub(crate) fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut bytes = Vec::with_capacity(s.len() + 1);
    bytes.extend_from_slice(s.as_bytes());
    bytes.push(0);
    put_attr(buf, ty, &bytes);
}

pub(crate) fn put_be32(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(buf, ty, &v.to_be_bytes());
}

pub(crate) fn put_be64(buf: &mut Vec<u8>, ty: u16, v: u64) {
    put_attr(buf, ty, &v.to_be_bytes());
}

pub(crate) fn put_u8(buf: &mut Vec<u8>, ty: u16, v: u8) {
    put_attr(buf, ty, &[v]);
}

/// Writes a nested attribute; returns the length of the whole attribute.
pub(crate) fn put_nested(buf: &mut Vec<u8>, ty: u16, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    body(buf);
    let len = buf.len() - start;
    // Lengths beyond u16 would corrupt the message: callers keep nested lists small (see
    // `Batch::add_elements`, which splits big element lists over several messages).
    buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    len
}

/// `NFTA_*_DATA`-style value: a nested `NFTA_DATA_VALUE`.
pub(crate) fn put_data(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    put_nested(buf, ty, |b| put_attr(b, NFTA_DATA_VALUE, value));
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
        let mut b = Vec::new();
        put_be64(&mut b, 2, 1);
        assert_eq!(&b[4..], &[0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
