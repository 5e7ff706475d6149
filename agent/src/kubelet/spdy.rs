//! SPDY/3.1 framing, as far as Kubernetes' streaming protocols use it (kubectl port-forward).
//!
//! A frame is an 8-byte header and a payload. Control frames: `1 | version(15) | type(16) |
//! flags(8) | length(24)`; data frames: `0 | stream id(31) | flags(8) | length(24)`. Header blocks
//! (SYN_STREAM, SYN_REPLY, HEADERS) are `u32 count, (u32 len, name, u32 len, value)*`, compressed
//! with zlib preset with the SPDY/3 dictionary. Invariant: each direction of a connection has one
//! zlib stream for its whole life ([`Deflater`] for what we send, [`Inflater`] for what we
//! receive), every block ends with a sync flush, and the two are never mixed up: a peer cannot
//! decode a block compressed against any other history.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// The largest frame payload accepted (the length field allows 16 MiB; peers send far less).
pub const MAX_PAYLOAD: usize = 1 << 24;
/// The largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;

/// Header name/value pairs, names lowercase.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    /// `(flags, id, value)` entries.
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame type this layer does not interpret (SPDY says: ignore it).
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("SPDY {what} frame too short ({len} bytes)")]
    Short { what: &'static str, len: usize },
    #[error("SPDY frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("SPDY header compression: {0}")]
    Zlib(String),
    #[error("SPDY header block: {0}")]
    HeaderBlock(&'static str),
}

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): length-prefixed
/// header words followed by common value text, 1423 bytes.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
            "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
            "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
            "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivate",
            "max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Compresses the header blocks of one direction.
pub struct Deflater(Compress);

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        // Setting the dictionary on a fresh zlib stream cannot fail.
        let _ = c.set_dictionary(dictionary());
        Self(c)
    }

    fn block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name, value] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 8 + 128);
        let start = self.0.total_in();
        loop {
            let consumed = (self.0.total_in() - start) as usize;
            self.0
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Zlib(e.to_string()))?;
            let consumed = (self.0.total_in() - start) as usize;
            // Spare room after the flush means zlib had nothing more to give.
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(256));
        }
    }
}

/// Decompresses the header blocks of one direction.
pub struct Inflater(Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    pub fn new() -> Self {
        Self(Decompress::new(true))
    }

    fn block(&mut self, data: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(data.len() * 4 + 256);
        let start = self.0.total_in();
        loop {
            let consumed = (self.0.total_in() - start) as usize;
            match self
                .0
                .decompress_vec(&data[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::Zlib(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Zlib(e.to_string())),
            }
            let consumed = (self.0.total_in() - start) as usize;
            if consumed == data.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderBlock("larger than 1 MiB"));
            }
            out.reserve(out.capacity().max(4096));
        }
        parse_block(&out)
    }
}

fn parse_block(raw: &[u8]) -> Result<Headers, SpdyError> {
    let mut pos = 0;
    let u32_at = |pos: &mut usize| -> Result<usize, SpdyError> {
        let b = raw
            .get(*pos..*pos + 4)
            .ok_or(SpdyError::HeaderBlock("truncated"))?;
        *pos += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(&mut pos)?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let mut pair = [String::new(), String::new()];
        for s in &mut pair {
            let len = u32_at(&mut pos)?;
            let bytes = raw
                .get(pos..pos + len)
                .ok_or(SpdyError::HeaderBlock("truncated"))?;
            pos += len;
            *s = String::from_utf8_lossy(bytes).into_owned();
        }
        let [name, value] = pair;
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(payload);
    out
}

/// Serializes a frame, compressing its header block with `deflater`.
pub fn encode(deflater: &mut Deflater, frame: &Frame) -> Result<Vec<u8>, SpdyError> {
    let id = |v: u32| (v & 0x7fff_ffff).to_be_bytes();
    Ok(match frame {
        Frame::Data {
            stream,
            flags,
            data,
        } => {
            if data.len() >= MAX_PAYLOAD {
                return Err(SpdyError::TooLarge(data.len()));
            }
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&id(*stream));
            out.push(*flags);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(data);
            out
        }
        Frame::SynStream {
            stream,
            associated,
            priority,
            flags,
            headers,
        } => {
            let mut p = Vec::new();
            p.extend_from_slice(&id(*stream));
            p.extend_from_slice(&id(*associated));
            p.push((priority & 0x07) << 5);
            p.push(0); // slot
            p.extend_from_slice(&deflater.block(headers)?);
            control(SYN_STREAM, *flags, &p)
        }
        Frame::SynReply {
            stream,
            flags,
            headers,
        } => {
            let mut p = id(*stream).to_vec();
            p.extend_from_slice(&deflater.block(headers)?);
            control(SYN_REPLY, *flags, &p)
        }
        Frame::Headers {
            stream,
            flags,
            headers,
        } => {
            let mut p = id(*stream).to_vec();
            p.extend_from_slice(&deflater.block(headers)?);
            control(HEADERS, *flags, &p)
        }
        Frame::RstStream { stream, status } => {
            let mut p = id(*stream).to_vec();
            p.extend_from_slice(&status.to_be_bytes());
            control(RST_STREAM, 0, &p)
        }
        Frame::Settings { flags, entries } => {
            let mut p = (entries.len() as u32).to_be_bytes().to_vec();
            for (f, key, value) in entries {
                p.push(*f);
                p.extend_from_slice(&key.to_be_bytes()[1..]);
                p.extend_from_slice(&value.to_be_bytes());
            }
            control(SETTINGS, *flags, &p)
        }
        Frame::Ping { id: ping } => control(PING, 0, &ping.to_be_bytes()),
        Frame::GoAway { last_good, status } => {
            let mut p = id(*last_good).to_vec();
            p.extend_from_slice(&status.to_be_bytes());
            control(GOAWAY, 0, &p)
        }
        Frame::WindowUpdate { stream, delta } => {
            let mut p = id(*stream).to_vec();
            p.extend_from_slice(&id(*delta));
            control(WINDOW_UPDATE, 0, &p)
        }
        Frame::Unknown { kind } => control(*kind, 0, &[]),
    })
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes the first frame in `buf`: `Ok(None)` if `buf` does not hold a whole frame yet,
/// otherwise the frame and how many bytes it took.
pub fn decode(inflater: &mut Inflater, buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let flags = buf[4];
    let p = &buf[8..8 + len];
    let total = 8 + len;
    if buf[0] & 0x80 == 0 {
        let stream = be32(buf, 0) & 0x7fff_ffff;
        let frame = Frame::Data {
            stream,
            flags,
            data: p.to_vec(),
        };
        return Ok(Some((frame, total)));
    }
    let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
    if version != VERSION {
        return Err(SpdyError::Version(version));
    }
    let kind = u16::from_be_bytes([buf[2], buf[3]]);
    let need = |what: &'static str, n: usize| {
        if p.len() < n {
            Err(SpdyError::Short { what, len: p.len() })
        } else {
            Ok(())
        }
    };
    let frame = match kind {
        SYN_STREAM => {
            need("SYN_STREAM", 10)?;
            Frame::SynStream {
                stream: be32(p, 0) & 0x7fff_ffff,
                associated: be32(p, 4) & 0x7fff_ffff,
                priority: p[8] >> 5,
                flags,
                headers: inflater.block(&p[10..])?,
            }
        }
        SYN_REPLY => {
            need("SYN_REPLY", 4)?;
            Frame::SynReply {
                stream: be32(p, 0) & 0x7fff_ffff,
                flags,
                headers: inflater.block(&p[4..])?,
            }
        }
        HEADERS => {
            need("HEADERS", 4)?;
            Frame::Headers {
                stream: be32(p, 0) & 0x7fff_ffff,
                flags,
                headers: inflater.block(&p[4..])?,
            }
        }
        RST_STREAM => {
            need("RST_STREAM", 8)?;
            Frame::RstStream {
                stream: be32(p, 0) & 0x7fff_ffff,
                status: be32(p, 4),
            }
        }
        SETTINGS => {
            need("SETTINGS", 4)?;
            let n = be32(p, 0) as usize;
            need("SETTINGS", 4 + n.saturating_mul(8))?;
            let entries = (0..n)
                .map(|i| {
                    let at = 4 + i * 8;
                    (
                        p[at],
                        u32::from_be_bytes([0, p[at + 1], p[at + 2], p[at + 3]]),
                        be32(p, at + 4),
                    )
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        PING => {
            need("PING", 4)?;
            Frame::Ping { id: be32(p, 0) }
        }
        GOAWAY => {
            need("GOAWAY", 8)?;
            Frame::GoAway {
                last_good: be32(p, 0) & 0x7fff_ffff,
                status: be32(p, 4),
            }
        }
        WINDOW_UPDATE => {
            need("WINDOW_UPDATE", 8)?;
            Frame::WindowUpdate {
                stream: be32(p, 0) & 0x7fff_ffff,
                delta: be32(p, 4) & 0x7fff_ffff,
            }
        }
        kind => Frame::Unknown { kind },
    };
    Ok(Some((frame, total)))
}

/// A header's value (first match), names compared lowercase.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn dictionary_is_the_spec_bytes() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
        assert_eq!(
            hex::encode(sha2::Sha256::digest(d)),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    #[test]
    fn data_frame_bytes() {
        let mut d = Deflater::new();
        let f = Frame::Data {
            stream: 3,
            flags: FLAG_FIN,
            data: b"hi".to_vec(),
        };
        let bytes = encode(&mut d, &f).unwrap();
        assert_eq!(bytes, [0, 0, 0, 3, 1, 0, 0, 2, b'h', b'i']);
        let (back, n) = decode(&mut Inflater::new(), &bytes).unwrap().unwrap();
        assert_eq!((back, n), (f, 10));
    }

    #[test]
    fn control_frame_bytes() {
        let mut d = Deflater::new();
        let ping = encode(&mut d, &Frame::Ping { id: 1 }).unwrap();
        assert_eq!(ping, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        let rst = encode(
            &mut d,
            &Frame::RstStream {
                stream: 5,
                status: RST_CANCEL,
            },
        )
        .unwrap();
        assert_eq!(rst, [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5]);
        let goaway = [0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 0];
        let (f, _) = decode(&mut Inflater::new(), &goaway).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::GoAway {
                last_good: 7,
                status: 0
            }
        );
        let settings = [
            0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0x10, 0,
        ];
        let (f, n) = decode(&mut Inflater::new(), &settings).unwrap().unwrap();
        assert_eq!(n, 20);
        assert_eq!(
            f,
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 4096)]
            }
        );
        let wu = [0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0x10, 0];
        let (f, _) = decode(&mut Inflater::new(), &wu).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::WindowUpdate {
                stream: 1,
                delta: 4096
            }
        );
    }

    #[test]
    fn incomplete_and_wrong_version() {
        let mut i = Inflater::new();
        assert!(
            decode(&mut i, &[0x80, 3, 0, 6, 0, 0, 0, 4, 0])
                .unwrap()
                .is_none()
        );
        assert!(decode(&mut i, &[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]).is_err());
    }

    /// The header block of a SYN_STREAM built by hand from the spec: uncompressed layout,
    /// zlib stream with FDICT set to the dictionary's Adler-32, sync-flushed.
    #[test]
    fn syn_stream_header_block_uses_the_dictionary() {
        let headers: Headers = vec![
            ("streamtype".into(), "data".into()),
            ("port".into(), "80".into()),
            ("requestid".into(), "0".into()),
        ];
        let mut d = Deflater::new();
        let bytes = encode(
            &mut d,
            &Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: headers.clone(),
            },
        )
        .unwrap();
        assert_eq!(&bytes[..4], &[0x80, 3, 0, 1]);
        assert_eq!(&bytes[8..16], &[0, 0, 0, 1, 0, 0, 0, 0]);
        let z = &bytes[18..];
        // zlib header: deflate, FDICT flag, then the dictionary id (Adler-32 of the dictionary).
        assert_eq!(z[0] & 0x0f, 8);
        assert_ne!(z[1] & 0x20, 0);
        let mut adler_a: u32 = 1;
        let mut adler_b: u32 = 0;
        for &b in dictionary() {
            adler_a = (adler_a + b as u32) % 65521;
            adler_b = (adler_b + adler_a) % 65521;
        }
        assert_eq!(be32(z, 2), (adler_b << 16) | adler_a);
        // A sync flush ends with an empty stored block.
        assert!(z.ends_with(&[0, 0, 0xff, 0xff]));

        // The uncompressed block, checked with an independent inflater.
        let mut raw = Decompress::new(true);
        let mut out = Vec::with_capacity(4096);
        let e = raw
            .decompress_vec(z, &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert!(e.needs_dictionary().is_some());
        raw.set_dictionary(dictionary()).unwrap();
        let used = raw.total_in() as usize;
        raw.decompress_vec(&z[used..], &mut out, FlushDecompress::Sync)
            .unwrap();
        let mut want = vec![0, 0, 0, 3];
        for (n, v) in &headers {
            want.extend_from_slice(&(n.len() as u32).to_be_bytes());
            want.extend_from_slice(n.as_bytes());
            want.extend_from_slice(&(v.len() as u32).to_be_bytes());
            want.extend_from_slice(v.as_bytes());
        }
        assert_eq!(out, want);
    }

    /// Several blocks over one connection share one compression context per direction.
    #[test]
    fn header_blocks_share_one_context() {
        let mut d = Deflater::new();
        let mut i = Inflater::new();
        let mut wire = Vec::new();
        for n in 0..5u32 {
            let f = Frame::SynReply {
                stream: 2 * n + 1,
                flags: 0,
                headers: vec![("port".into(), format!("{}", 8000 + n))],
            };
            wire.extend(encode(&mut d, &f).unwrap());
        }
        let mut pos = 0;
        for n in 0..5u32 {
            let (f, used) = decode(&mut i, &wire[pos..]).unwrap().unwrap();
            pos += used;
            let Frame::SynReply {
                stream, headers, ..
            } = f
            else {
                panic!("not a reply")
            };
            assert_eq!(stream, 2 * n + 1);
            assert_eq!(
                header(&headers, "PORT"),
                Some(format!("{}", 8000 + n).as_str())
            );
        }
        assert_eq!(pos, wire.len());
    }
}
