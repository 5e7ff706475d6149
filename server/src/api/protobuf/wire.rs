//! The protobuf wire format, just enough to read: varints, length-delimited fields, and skipping
//! fixed-width ones. Every read is bounds-checked; malformed input is an error, never a panic.

/// One field as it appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed64(u64),
    Fixed32(u32),
}

impl Value<'_> {
    /// True for the encoding of a zero value: 0, false, "", or a message whose fields are all
    /// zero (Go marshals unset non-pointer structs as such messages, e.g. an empty `status`).
    /// A length-delimited value that happens to parse as all-zero fields (like the two-byte string
    /// "\n\0") is also taken as zero; unknown fields of that shape carry no data in practice.
    pub fn is_zero(&self) -> bool {
        match self {
            Value::Varint(v) | Value::Fixed64(v) => *v == 0,
            Value::Fixed32(v) => *v == 0,
            Value::Bytes(b) => {
                b.is_empty() || fields(b).all(|item| item.is_ok_and(|(_, value)| value.is_zero()))
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated protobuf data")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u64),
}

/// Iterates over `(field number, value)` pairs of one message.
pub struct Fields<'a> {
    data: &'a [u8],
}

pub fn fields(data: &[u8]) -> Fields<'_> {
    Fields { data }
}

fn varint(data: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = data.split_first().ok_or(WireError::Truncated)?;
        *data = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong)
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if data.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let mut read = || -> Result<(u64, Value<'a>), WireError> {
            let tag = varint(&mut self.data)?;
            let value = match tag & 7 {
                0 => Value::Varint(varint(&mut self.data)?),
                1 => {
                    let b = take(&mut self.data, 8)?;
                    Value::Fixed64(u64::from_le_bytes(
                        b.try_into().map_err(|_| WireError::Truncated)?,
                    ))
                }
                2 => {
                    let len = usize::try_from(varint(&mut self.data)?)
                        .map_err(|_| WireError::Truncated)?;
                    Value::Bytes(take(&mut self.data, len)?)
                }
                5 => {
                    let b = take(&mut self.data, 4)?;
                    Value::Fixed32(u32::from_le_bytes(
                        b.try_into().map_err(|_| WireError::Truncated)?,
                    ))
                }
                other => return Err(WireError::WireType(other)),
            };
            Ok((tag >> 3, value))
        };
        let item = read();
        if item.is_err() {
            // Stop after the first error: the rest of the buffer cannot be framed.
            self.data = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_rejects_truncation() {
        let data = [0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i'];
        let got: Vec<_> = fields(&data).collect::<Result<_, _>>().expect("valid");
        assert_eq!(got, vec![(1, Value::Varint(150)), (2, Value::Bytes(b"hi"))]);
        assert!(Value::Bytes(&[0x0a, 0x04, 0x0a, 0x00, 0x12, 0x00]).is_zero());
        assert!(!Value::Bytes(b"hi").is_zero());
        let truncated = [0x12, 0x05, b'h'];
        assert_eq!(fields(&truncated).next(), Some(Err(WireError::Truncated)));
    }
}
