//! Forwarding of names outside the cluster to upstream resolvers, with a small answer cache (the
//! `forward` and `cache 30` of k3s's CoreDNS configuration).
//!
//! Upstreams come from the options, or else from the host's resolver configuration
//! ([`host_upstreams`]). Each question goes to the upstreams in order over UDP with a fresh socket
//! and a fresh random ID (so a spoofed answer must guess both the port and the ID), and again over
//! TCP when the answer is truncated. Invariants: an answer is accepted only if its ID and question
//! match; only NOERROR and NXDOMAIN answers are cached, for the smallest TTL in them and at most
//! [`MAX_CACHE_TTL`]; the cache never holds more than [`CACHE_ENTRIES`] answers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets to answer one attempt.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a forwarded answer is kept (k3s's CoreDNS: `cache 30`).
pub const MAX_CACHE_TTL: u32 = 30;
/// The most answers the cache holds.
pub const CACHE_ENTRIES: usize = 4096;
/// The UDP payload size advertised upstream and to clients (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("encoding the query for {upstream}: {source}")]
    Encode {
        upstream: SocketAddr,
        #[source]
        source: hickory_proto::ProtoError,
    },
    #[error("asking {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{upstream} did not answer within {UPSTREAM_TIMEOUT:?}")]
    Timeout { upstream: SocketAddr },
    #[error("{upstream} sent an answer that does not parse or does not match the question")]
    BadAnswer { upstream: SocketAddr },
}

/// The nameservers of a resolv.conf text, in order.
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        // A scoped IPv6 address (`fe80::1%eth0`) cannot be used from a plain socket address.
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Whether a resolver address is usable only from the host itself (loopback or unspecified).
fn host_only(ip: &IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

/// The host's upstream resolvers, chosen as k3s chooses the resolv.conf it hands CoreDNS: the
/// non-loopback nameservers of `/etc/resolv.conf`, else those of systemd-resolved's
/// `/run/systemd/resolve/resolv.conf` (the real upstreams behind its 127.0.0.53 stub). Where k3s
/// then falls back to 8.8.8.8 (its CoreDNS runs in a pod and cannot reach the host's loopback),
/// r3s keeps the loopback servers: this server runs in the host's network namespace, where they
/// answer, and an air-gapped Pi has no 8.8.8.8. `exclude` (the cluster DNS address) is never an
/// upstream: it would forward to itself.
pub fn host_upstreams(etc: &Path, systemd: &Path, exclude: IpAddr) -> Vec<SocketAddr> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| parse_resolv_conf(&t))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| *ip != exclude)
            .collect::<Vec<_>>()
    };
    let etc_servers = read(etc);
    let pick = |servers: &[IpAddr]| -> Vec<SocketAddr> {
        servers
            .iter()
            .filter(|ip| !host_only(ip))
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect()
    };
    let mut chosen = pick(&etc_servers);
    if chosen.is_empty() {
        chosen = pick(&read(systemd));
    }
    if chosen.is_empty() {
        chosen = etc_servers
            .iter()
            .filter(|ip| ip.is_loopback())
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect();
    }
    chosen
}

type CacheKey = (String, RecordType, u16);

struct Cached {
    message: Message,
    stored: Instant,
    ttl: u32,
}

/// Forwards questions to upstream resolvers and caches their answers.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

fn cache_key(q: &Query) -> CacheKey {
    (
        q.name().to_lowercase().to_ascii(),
        q.query_type(),
        u16::from(q.query_class()),
    )
}

/// How long an answer may be cached: the smallest TTL of its records (for a negative answer, the
/// SOA's minimum as RFC 2308 says), at most [`MAX_CACHE_TTL`]; `None` if it must not be cached.
fn cache_ttl(m: &Message) -> Option<u32> {
    if m.metadata.truncation
        || !matches!(
            m.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        )
    {
        return None;
    }
    let mut ttl = MAX_CACHE_TTL;
    for r in m.answers.iter().chain(&m.authorities) {
        ttl = ttl.min(r.ttl);
        if let RData::SOA(soa) = &r.data {
            ttl = ttl.min(soa.minimum);
        }
    }
    (ttl > 0).then_some(ttl)
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The answer to `query` (recursion desired, DNSSEC OK as `dnssec_ok`), from the cache or the
    /// first upstream that answers. The returned message's ID is meaningless: the caller sets it.
    pub async fn resolve(&self, query: &Query, dnssec_ok: bool) -> Result<Message, ForwardError> {
        let key = cache_key(query);
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let mut last = ForwardError::NoUpstream;
        for upstream in &self.upstreams {
            match ask(*upstream, query, dnssec_ok).await {
                Ok(answer) => {
                    if let Some(ttl) = cache_ttl(&answer) {
                        self.store(key, &answer, ttl);
                    }
                    return Ok(answer);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn cached(&self, key: &CacheKey) -> Option<Message> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let hit = cache.get(key)?;
        let age = u32::try_from(hit.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= hit.ttl {
            return None;
        }
        let mut m = hit.message.clone();
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.decrement_ttl(age);
        }
        Some(m)
    }

    fn store(&self, key: CacheKey, m: &Message, ttl: u32) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= CACHE_ENTRIES {
                // Still full of live answers: start afresh rather than track recency.
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                message: m.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// One question to one upstream: UDP, then TCP if the answer was truncated.
async fn ask(
    upstream: SocketAddr,
    query: &Query,
    dnssec_ok: bool,
) -> Result<Message, ForwardError> {
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns.set_dnssec_ok(dnssec_ok);
    m.set_edns(edns);
    let bytes = m
        .to_vec()
        .map_err(|source| ForwardError::Encode { upstream, source })?;
    let io = |source| ForwardError::Io { upstream, source };
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(upstream).await.map_err(io)?;
    sock.send(&bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    let answer = loop {
        let n = timed(upstream, sock.recv(&mut buf)).await?;
        // A datagram that is not the answer (late, spoofed) is skipped; the timeout bounds it all.
        if let Some(a) = matching(&buf[..n], id, query) {
            break a;
        }
    };
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    let mut stream = timed(upstream, TcpStream::connect(upstream)).await?;
    let len = u16::try_from(bytes.len()).map_err(|_| ForwardError::BadAnswer { upstream })?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    timed(upstream, stream.write_all(&framed)).await?;
    let mut len = [0u8; 2];
    timed(upstream, stream.read_exact(&mut len)).await?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    timed(upstream, stream.read_exact(&mut body)).await?;
    matching(&body, id, query).ok_or(ForwardError::BadAnswer { upstream })
}

/// `fut` bounded by [`UPSTREAM_TIMEOUT`], its errors tagged with `upstream`.
async fn timed<T>(
    upstream: SocketAddr,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, ForwardError> {
    tokio::time::timeout(UPSTREAM_TIMEOUT, fut)
        .await
        .map_err(|_| ForwardError::Timeout { upstream })?
        .map_err(|source| ForwardError::Io { upstream, source })
}

fn matching(bytes: &[u8], id: u16, query: &Query) -> Option<Message> {
    let m = Message::from_vec(bytes).ok()?;
    let same_question = m.queries.len() == 1 && cache_key(&m.queries[0]) == cache_key(query);
    (m.metadata.id == id && m.metadata.message_type == MessageType::Response && same_question)
        .then_some(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# comment\nsearch lan\nnameserver 198.51.100.1\nnameserver  fe80::1%eth0\n\
                    nameserver 2001:db8::53\noptions ndots:2\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "198.51.100.1".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn host_upstreams_prefer_non_loopback_then_systemd_then_loopback() {
        let d = tempfile::tempdir().unwrap();
        let dns: IpAddr = "10.43.0.10".parse().unwrap();
        let missing = d.path().join("missing");
        let sa = |s: &str| SocketAddr::new(s.parse().unwrap(), 53);
        // Loopback servers are skipped while real ones exist, and so is the cluster DNS itself.
        let etc = write(
            d.path(),
            "a",
            "nameserver 127.0.0.53\nnameserver 10.43.0.10\nnameserver 198.51.100.1\n",
        );
        assert_eq!(
            host_upstreams(&etc, &missing, dns),
            vec![sa("198.51.100.1")]
        );
        // systemd-resolved's stub only: its real upstreams.
        let etc = write(d.path(), "b", "nameserver 127.0.0.53\n");
        let sd = write(d.path(), "c", "nameserver 203.0.113.53\n");
        assert_eq!(host_upstreams(&etc, &sd, dns), vec![sa("203.0.113.53")]);
        // Nothing but loopback anywhere: the loopback server (reachable from the host netns).
        assert_eq!(host_upstreams(&etc, &missing, dns), vec![sa("127.0.0.53")]);
        assert!(host_upstreams(&missing, &missing, dns).is_empty());
    }

    #[test]
    fn cache_ttl_is_the_smallest_and_capped() {
        let name = Name::from_ascii("a.example.").unwrap();
        let a = |ttl| Record::from_rdata(name.clone(), ttl, RData::A(A::new(203, 0, 113, 1)));
        let mut m = Message::response(1, OpCode::Query);
        m.answers = vec![a(300), a(12)];
        assert_eq!(cache_ttl(&m), Some(12));
        m.answers = vec![a(3600)];
        assert_eq!(cache_ttl(&m), Some(MAX_CACHE_TTL));
        // Negative: the SOA minimum rules.
        m.answers.clear();
        m.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(name.clone(), name.clone(), 1, 1, 1, 1, 7);
        m.authorities = vec![Record::from_rdata(name.clone(), 60, RData::SOA(soa))];
        assert_eq!(cache_ttl(&m), Some(7));
        // Failures and truncated answers are never cached.
        m.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&m), None);
        m.metadata.response_code = ResponseCode::NoError;
        m.metadata.truncation = true;
        assert_eq!(cache_ttl(&m), None);
    }
}
