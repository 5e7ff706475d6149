//! The DNS protocol side: [`Handler`] turns one query message into one response (cluster names
//! from the [`Zone`] rules over the [`View`], everything else through the [`Forwarder`]), and
//! [`serve`] runs it over UDP and TCP (RFC 1035 two-byte length framing) on one address.
//!
//! Invariants: every parsable query gets exactly one response with its ID and question; cluster
//! answers are authoritative (AA) and carry the zone's SOA in the authority section when
//! negative; a UDP response larger than the client accepts (512 bytes, or its EDNS size up to
//! [`EDNS_PAYLOAD`]) is sent truncated (TC) so the client retries over TCP; in-flight work is
//! bounded ([`MAX_INFLIGHT`] UDP queries, [`MAX_TCP`] connections) and dropped beyond that, as a
//! loaded resolver drops, so a flood cannot grow memory without bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

use super::forward::{EDNS_PAYLOAD, Forwarder};
use super::view::View;
use super::zone::{Lookup, Zone};

/// UDP queries handled at once (a forwarded one may wait seconds for its upstream).
pub const MAX_INFLIGHT: usize = 512;
/// TCP connections served at once.
pub const MAX_TCP: usize = 128;
/// A TCP connection idle this long is closed (RFC 7766 suggests seconds, not minutes).
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// CNAMEs followed for one answer before giving up (a loop guard).
const MAX_CHASE: usize = 8;

/// How a query arrived, which bounds the response size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Answers queries; shared by every socket task.
pub struct Handler {
    zone: Zone,
    view: Arc<RwLock<View>>,
    forwarder: Forwarder,
}

impl Handler {
    pub fn new(zone: Zone, view: Arc<RwLock<View>>, forwarder: Forwarder) -> Handler {
        Handler {
            zone,
            view,
            forwarder,
        }
    }

    /// The response bytes to a query's bytes, or `None` for something that is no query at all.
    pub async fn handle(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) if bytes.len() >= 12 => {
                // A header with garbage after it: FORMERR, with the ID so the client stops waiting.
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            Err(_) => return None,
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let response = self.respond(&request).await;
        encode(&request, response, transport)
    }

    /// The response to a parsed query.
    pub async fn respond(&self, req: &Message) -> Message {
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.metadata.checking_disabled = req.metadata.checking_disabled;
        if req.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            resp.set_edns(edns);
        }
        if req.metadata.op_code != OpCode::Query {
            resp.metadata.response_code = ResponseCode::NotImp;
            return resp;
        }
        let [q] = req.queries.as_slice() else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return resp;
        };
        resp.add_query(q.clone());
        if q.query_class() != DNSClass::IN {
            resp.metadata.response_code = ResponseCode::Refused;
            return resp;
        }
        let dnssec_ok = req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let (lookup, soa) = {
            let view = self.view.read().unwrap_or_else(|e| e.into_inner());
            if self.zone.contains(q.name()) && !view.is_synced() {
                // Not a negative answer a client would cache: the view is still loading.
                resp.metadata.response_code = ResponseCode::ServFail;
                return resp;
            }
            (
                self.zone.lookup(&view, q.name(), q.query_type()),
                self.zone.soa(view.serial),
            )
        };
        match lookup {
            Lookup::Found {
                answers,
                additionals,
            } => {
                resp.metadata.authoritative = true;
                resp.answers = answers;
                resp.additionals = additionals;
                self.chase(&mut resp, q.query_type(), dnssec_ok).await;
            }
            Lookup::NoData => {
                resp.metadata.authoritative = true;
                resp.authorities.push(soa);
            }
            Lookup::NxDomain => {
                resp.metadata.authoritative = true;
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.authorities.push(soa);
            }
            Lookup::NotOurs => match self.forwarder.resolve(q, dnssec_ok).await {
                Ok(up) => {
                    resp.metadata.response_code = up.metadata.response_code;
                    resp.metadata.authentic_data = up.metadata.authentic_data;
                    resp.answers = up.answers;
                    resp.authorities = up.authorities;
                    resp.additionals = up.additionals;
                }
                Err(e) => {
                    debug!(name = %q.name(), "forwarding: {e}");
                    resp.metadata.response_code = ResponseCode::ServFail;
                }
            },
        }
        resp
    }

    /// Follows a CNAME answer (an ExternalName Service) to the target's records, as a recursive
    /// resolver must for stub resolvers that do not chase themselves.
    async fn chase(&self, resp: &mut Message, qtype: RecordType, dnssec_ok: bool) {
        if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
            return;
        }
        for _ in 0..MAX_CHASE {
            let Some(RData::CNAME(target)) = resp.answers.last().map(|r| r.data.clone()) else {
                return;
            };
            let target: Name = target.0;
            if self.zone.contains(&target) {
                let lookup = {
                    let view = self.view.read().unwrap_or_else(|e| e.into_inner());
                    self.zone.lookup(&view, &target, qtype)
                };
                match lookup {
                    Lookup::Found { answers, .. } => resp.answers.extend(answers),
                    _ => return,
                }
            } else {
                let q = Query::query(target, qtype);
                match self.forwarder.resolve(&q, dnssec_ok).await {
                    Ok(up) => resp.answers.extend(up.answers),
                    Err(e) => debug!("following a CNAME: {e}"),
                }
                return;
            }
        }
    }
}

/// The response's bytes, truncated for UDP when larger than the client accepts.
fn encode(req: &Message, resp: Message, transport: Transport) -> Option<Vec<u8>> {
    let bytes = resp.to_vec().ok()?;
    let limit = match (transport, &req.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut short = resp.truncate();
    short.metadata.truncation = true;
    short.to_vec().ok()
}

/// A UDP socket and a TCP listener on the same address.
pub struct Sockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Sockets {
    /// Binds UDP and TCP on `addr`; with port 0, TCP takes the port UDP was given.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Sockets> {
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        Ok(Sockets { udp, tcp })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// Serves `handler` on `sockets` until `shutdown` completes; queries in flight are dropped then.
pub async fn serve(handler: Arc<Handler>, sockets: Sockets, shutdown: impl Future<Output = ()>) {
    let udp = Arc::new(sockets.udp);
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let conns = Arc::new(Semaphore::new(MAX_TCP));
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        tokio::select! {
            _ = &mut shutdown => break,
            got = udp.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { continue };
                let Ok(permit) = inflight.clone().try_acquire_owned() else { continue };
                let query = buf[..n].to_vec();
                let (handler, udp) = (handler.clone(), udp.clone());
                tasks.spawn(async move {
                    if let Some(resp) = handler.handle(&query, Transport::Udp).await {
                        let _ = udp.send_to(&resp, peer).await;
                    }
                    drop(permit);
                });
            }
            got = sockets.tcp.accept() => {
                let Ok((stream, _)) = got else { continue };
                let Ok(permit) = conns.clone().try_acquire_owned() else { continue };
                let handler = handler.clone();
                tasks.spawn(async move {
                    let _ = tcp_connection(&handler, stream).await;
                    drop(permit);
                });
            }
        }
    }
    tasks.shutdown().await;
}

/// Answers length-framed queries on one connection, in order, until it closes or idles.
async fn tcp_connection(handler: &Handler, mut stream: TcpStream) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let Some(resp) = handler.handle(&query, Transport::Tcp).await else {
            return Ok(());
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return Ok(());
        };
        let mut framed = n.to_be_bytes().to_vec();
        framed.extend_from_slice(&resp);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::dns::view::{ServiceEntry, ServiceKind};

    fn handler(view: View) -> Handler {
        let zone = Zone::new("cluster.local", 5, None).unwrap();
        Handler::new(zone, Arc::new(RwLock::new(view)), Forwarder::new(vec![]))
    }

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::new(99, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m
    }

    fn service(kind: ServiceKind) -> ServiceEntry {
        ServiceEntry {
            kind,
            ports: vec![],
        }
    }

    #[tokio::test]
    async fn servfail_until_the_view_is_loaded() {
        let h = handler(View::default());
        let r = h
            .respond(&query("web.default.svc.cluster.local.", RecordType::A))
            .await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        let h = handler(View::synced());
        let r = h
            .respond(&query("web.default.svc.cluster.local.", RecordType::A))
            .await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.metadata.authoritative && r.metadata.recursion_available);
        assert_eq!(r.metadata.id, 99);
        assert_eq!(r.authorities.len(), 1);
    }

    #[tokio::test]
    async fn cname_to_a_cluster_name_is_followed() {
        let mut v = View::synced();
        v.services.insert(
            ("a".into(), "alias".into()),
            service(ServiceKind::ExternalName("web.b.svc.cluster.local".into())),
        );
        v.services.insert(
            ("b".into(), "web".into()),
            service(ServiceKind::ClusterIp(vec!["10.43.0.7".parse().unwrap()])),
        );
        let r = handler(v)
            .respond(&query("alias.a.svc.cluster.local.", RecordType::A))
            .await;
        let got: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
        assert_eq!(got, ["web.b.svc.cluster.local.", "10.43.0.7"]);
    }

    #[tokio::test]
    async fn truncates_for_udp_only() {
        let mut v = View::synced();
        v.services
            .insert(("a".into(), "h".into()), service(ServiceKind::Headless));
        v.endpoints.insert(
            ("a".into(), "h".into()),
            (1..=60)
                .map(|i| crate::dns::view::Address {
                    ip: format!("10.42.0.{i}").parse().unwrap(),
                    hostname: None,
                    pod: None,
                    ports: vec![],
                })
                .collect(),
        );
        let h = handler(v);
        let q = query("h.a.svc.cluster.local.", RecordType::A)
            .to_vec()
            .unwrap();
        let udp = Message::from_vec(&h.handle(&q, Transport::Udp).await.unwrap()).unwrap();
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let tcp = Message::from_vec(&h.handle(&q, Transport::Tcp).await.unwrap()).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 60);
    }
}
