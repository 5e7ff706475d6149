//! `/portForward/{namespace}/{pod}`: connections to ports on the pod's loopback, dialled inside
//! the pod's network namespace, in three framings:
//!
//! - SPDY/3.1 on a raw `Upgrade: SPDY/3.1` connection (kubectl's fallback), or tunnelled in the
//!   binary messages of a WebSocket with subprotocol `SPDY/3.1+portforward.k8s.io` (kubectl 1.32's
//!   first try). Per forwarded connection the client opens an `error` and a `data` stream with the
//!   same `requestid` and a `port` header; we reply to both, dial, and pipe the data stream to the
//!   connection; a failure is written on the error stream.
//! - WebSocket `v4.channel.k8s.io` with `?ports=a,b` (kube-rs, the Python client): one connection
//!   per port, channel `2i` data and `2i+1` errors, each opened by a `[channel, port]` message.
//!
//! Invariant: everything dials `127.0.0.1:<port>` in the pod's own network namespace (or the
//! host's, for a hostNetwork pod) and nothing else; the session's byte pipes are the only state
//! shared between tasks, and ending a session ends every connection it carried.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::spdy::{self, Deflater, FLAG_FIN, Frame, Inflater};
use super::{KubeletError, find_pod, query_get, query_pairs};
use crate::pods::Ctx;

/// The WebSocket subprotocol kubectl tunnels SPDY in.
pub const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The port-forward protocol named in `X-Stream-Protocol-Version`.
pub const PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";
const V4: &str = "v4.channel.k8s.io";

/// Largest chunk read from a pod connection at once.
const CHUNK: usize = 32 * 1024;

/// Where to dial: the pod's network namespace (`None`: the host's).
#[derive(Debug, Clone)]
struct Target {
    netns: Option<PathBuf>,
    pod: String,
}

async fn dial(target: &Target, port: u16) -> Result<tokio::net::TcpStream, String> {
    let netns = target.netns.clone();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let connect = move || {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(s)
    };
    let joined = tokio::task::spawn_blocking(move || match &netns {
        None => connect().map_err(|e| e.to_string()),
        Some(ns) => match r3s_cni::netns::run_in(ns, connect) {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let std = joined.map_err(|e| {
        format!(
            "error forwarding port {port} to pod {}: dial {addr} in the pod's network namespace: {e}",
            target.pod
        )
    })?;
    tokio::net::TcpStream::from_std(std).map_err(|e| e.to_string())
}

pub async fn handle(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
    request: Request,
) -> Result<Response, KubeletError> {
    let pod = find_pod(&ctx, &namespace, &name).await?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Running") {
        return Err(KubeletError::BadRequest(format!(
            "pod {name} is not running (phase {})",
            phase.unwrap_or("Pending")
        )));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let ns_file = ctx.layout.sandbox(&uid).join("net");
    let target = Target {
        netns: (!host_network && ns_file.exists()).then_some(ns_file),
        pod: format!("{namespace}/{name}"),
    };
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        let q = query_pairs(request.uri().query());
        let (mut parts, _) = request.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| KubeletError::BadRequest(e.to_string()))?
            .protocols([SPDY_TUNNEL, V4, "v5.channel.k8s.io"]);
        let tunnel = match ws.selected_protocol().map(|p| p.as_bytes().to_vec()) {
            Some(p) if p == SPDY_TUNNEL.as_bytes() => true,
            Some(_) => false,
            None => {
                return Err(KubeletError::BadRequest(format!(
                    "port-forward needs subprotocol {SPDY_TUNNEL} or {V4}"
                )));
            }
        };
        if tunnel {
            return Ok(ws
                .on_upgrade(move |socket| async move {
                    let (inbound, outbound, pump) = websocket_pipe(socket);
                    spdy_session(target, inbound, outbound).await;
                    pump.abort();
                })
                .into_response());
        }
        let ports = parse_ports(query_get(&q, "ports").unwrap_or(""))?;
        return Ok(ws
            .on_upgrade(move |socket| v4_session(target, ports, socket))
            .into_response());
    }
    if upgrade.starts_with("spdy/3.1") {
        let mut request = request;
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let (inbound, outbound, pump) = io_pipe(TokioIo::new(upgraded));
                    spdy_session(target, inbound, outbound).await;
                    pump.abort();
                }
                Err(e) => debug!("port-forward: SPDY upgrade failed: {e}"),
            }
        });
        return Ok((
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, "Upgrade"),
                (header::UPGRADE, "SPDY/3.1"),
                (
                    header::HeaderName::from_static("x-stream-protocol-version"),
                    PORTFORWARD_PROTOCOL,
                ),
            ],
        )
            .into_response());
    }
    Err(KubeletError::BadRequest(
        "port-forward needs an upgrade: WebSocket (SPDY/3.1+portforward.k8s.io or v4.channel.k8s.io) or SPDY/3.1".into(),
    ))
}

fn parse_ports(s: &str) -> Result<Vec<u16>, KubeletError> {
    let ports: Result<Vec<u16>, _> = s
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().parse::<u16>())
        .collect();
    match ports {
        Ok(p) if !p.is_empty() && !p.contains(&0) => Ok(p),
        _ => Err(KubeletError::BadRequest(format!(
            "invalid or missing ports {s:?}: want ?ports=N[,M...]"
        ))),
    }
}

pub(super) type Pipe = (
    mpsc::Receiver<Vec<u8>>,
    mpsc::Sender<Vec<u8>>,
    tokio::task::JoinHandle<()>,
);

/// A WebSocket as a byte pipe: binary message boundaries mean nothing to SPDY.
fn websocket_pipe(socket: WebSocket) -> Pipe {
    let (mut sink, mut stream) = socket.split();
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let task = tokio::spawn(async move {
        let reader = async {
            while let Some(Ok(m)) = stream.next().await {
                match m {
                    Message::Binary(b) if in_tx.send(b.to_vec()).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            drop(in_tx);
        };
        let writer = async {
            while let Some(bytes) = out_rx.recv().await {
                if sink.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        };
        tokio::join!(reader, writer);
    });
    (in_rx, out_tx, task)
}

/// An upgraded connection as a byte pipe.
pub(super) fn io_pipe<T>(io: T) -> Pipe
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(io);
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let task = tokio::spawn(async move {
        let reader = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if in_tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
            drop(in_tx);
        };
        let writer = async {
            while let Some(bytes) = out_rx.recv().await {
                if w.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
        };
        tokio::join!(reader, writer);
    });
    (in_rx, out_tx, task)
}

/// One forwarded connection's pending streams.
#[derive(Default)]
struct PendingRequest {
    error: Option<u32>,
}

/// Runs the SPDY server side of one port-forward connection until the client goes away.
async fn spdy_session(
    target: Target,
    mut inbound: mpsc::Receiver<Vec<u8>>,
    outbound: mpsc::Sender<Vec<u8>>,
) {
    let (frames, mut frame_rx) = mpsc::channel::<Frame>(64);
    let writer = tokio::spawn(async move {
        let mut deflater = Deflater::new();
        while let Some(f) = frame_rx.recv().await {
            let Ok(bytes) = spdy::encode(&mut deflater, &f) else {
                break;
            };
            if outbound.send(bytes).await.is_err() {
                break;
            }
        }
    });
    debug!(pod = %target.pod, "port-forward: SPDY session started");
    let mut inflater = Inflater::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut requests: HashMap<String, PendingRequest> = HashMap::new();
    let mut data_streams: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    'session: while let Some(chunk) = inbound.recv().await {
        buf.extend_from_slice(&chunk);
        loop {
            let (frame, used) = match spdy::decode(&mut inflater, &buf) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    debug!("port-forward: {e}");
                    let _ = frames
                        .send(Frame::GoAway {
                            last_good: 0,
                            status: spdy::RST_PROTOCOL_ERROR,
                        })
                        .await;
                    break 'session;
                }
            };
            buf.drain(..used);
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    let _ = frames
                        .send(Frame::SynReply {
                            stream,
                            flags: 0,
                            headers: Vec::new(),
                        })
                        .await;
                    let kind = spdy::header(&headers, "streamtype").unwrap_or("");
                    let request = spdy::header(&headers, "requestid").unwrap_or("").to_owned();
                    let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                    match kind {
                        "error" => {
                            requests.entry(request).or_default().error = Some(stream);
                        }
                        "data" => {
                            let error = requests.remove(&request).and_then(|r| r.error);
                            let Some(port) = port else {
                                let _ = frames
                                    .send(Frame::RstStream {
                                        stream,
                                        status: spdy::RST_PROTOCOL_ERROR,
                                    })
                                    .await;
                                continue;
                            };
                            let (tx, rx) = mpsc::channel(64);
                            data_streams.insert(stream, tx);
                            tasks.spawn(forward(
                                target.clone(),
                                port,
                                stream,
                                error,
                                rx,
                                frames.clone(),
                            ));
                        }
                        _ => {
                            let _ = frames
                                .send(Frame::RstStream {
                                    stream,
                                    status: spdy::RST_PROTOCOL_ERROR,
                                })
                                .await;
                        }
                    }
                }
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    if let Some(tx) = data_streams.get(&stream) {
                        if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                            data_streams.remove(&stream);
                        } else if flags & FLAG_FIN != 0 {
                            let _ = tx.send(None).await;
                            data_streams.remove(&stream);
                        }
                    }
                }
                Frame::RstStream { stream, .. } => {
                    data_streams.remove(&stream);
                }
                Frame::Ping { id } => {
                    let _ = frames.send(Frame::Ping { id }).await;
                }
                Frame::GoAway { .. } => break 'session,
                _ => {}
            }
        }
    }
    tasks.abort_all();
    drop(frames);
    let _ = writer.await;
}

/// Pipes one SPDY data stream to a new connection to `port`.
async fn forward(
    target: Target,
    port: u16,
    data: u32,
    error: Option<u32>,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    frames: mpsc::Sender<Frame>,
) {
    let fin = |stream| Frame::Data {
        stream,
        flags: FLAG_FIN,
        data: Vec::new(),
    };
    let tcp = match dial(&target, port).await {
        Ok(t) => t,
        Err(msg) => {
            if let Some(e) = error {
                let _ = frames
                    .send(Frame::Data {
                        stream: e,
                        flags: 0,
                        data: msg.into_bytes(),
                    })
                    .await;
                let _ = frames.send(fin(e)).await;
            }
            let _ = frames.send(fin(data)).await;
            return;
        }
    };
    let (mut r, mut w) = tcp.into_split();
    let up = async {
        while let Some(msg) = from_client.recv().await {
            match msg {
                Some(bytes) => {
                    if w.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let f = Frame::Data {
                        stream: data,
                        flags: 0,
                        data: buf[..n].to_vec(),
                    };
                    if frames.send(f).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = frames.send(fin(data)).await;
        if let Some(e) = error {
            let _ = frames.send(fin(e)).await;
        }
    };
    tokio::join!(up, down);
}

/// The plain WebSocket port-forward of kube-rs and the Python client.
async fn v4_session(target: Target, ports: Vec<u16>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(Message::Binary(m.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut writers = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let data_ch = (2 * i) as u8;
        let err_ch = data_ch + 1;
        let _ = tx.send(super::channel::port_header(data_ch, port)).await;
        let _ = tx.send(super::channel::port_header(err_ch, port)).await;
        match dial(&target, port).await {
            Ok(tcp) => {
                let (mut r, w) = tcp.into_split();
                writers.push(Some(w));
                let tx = tx.clone();
                tasks.spawn(async move {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx
                                    .send(super::channel::frame(data_ch, &buf[..n]))
                                    .await
                                    .is_err()
                                {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
            Err(msg) => {
                writers.push(None);
                let _ = tx.send(super::channel::frame(err_ch, msg.as_bytes())).await;
            }
        }
    }
    drop(tx);
    while let Some(Ok(m)) = stream.next().await {
        let data = match m {
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((ch, payload)) = super::channel::split(&data) else {
            continue;
        };
        let index = (ch / 2) as usize;
        if ch % 2 == 0 {
            let failed = match writers.get_mut(index) {
                Some(Some(w)) => w.write_all(payload).await.is_err(),
                _ => false,
            };
            if failed {
                writers[index] = None;
            }
        }
    }
    tasks.abort_all();
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_query() {
        assert_eq!(parse_ports("80,443").unwrap(), [80, 443]);
        assert!(parse_ports("").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("x").is_err());
    }
}
