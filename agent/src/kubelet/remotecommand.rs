//! Exec and attach over SPDY/3.1 (`Upgrade: SPDY/3.1`): the remote command protocols
//! `v4.channel.k8s.io`, `v3`, `v2` and `channel.k8s.io` (v1), which kubectl falls back to when the
//! WebSocket upgrade fails, and which older clients and client-go tools use only.
//!
//! The client offers versions in `X-Stream-Protocol-Version` (best first); we take the first one
//! we support (v5 is WebSocket-only, so kubectl 1.32 gets v4) and answer it in the 101. The client
//! then opens one SPDY stream per stdio stream, named by its `streamtype` header: `error` always,
//! `stdin`/`stdout`/`stderr` as the query asked (no `stderr` with a tty), and `resize` with a tty
//! from v3 on. We reply to each and start the session once all expected streams exist. Stdin data
//! and its FIN come on `stdin`, terminal sizes as a sequence of JSON objects
//! (`{"Width":W,"Height":H}`) on `resize`; output goes on `stdout`/`stderr` as data frames. At the
//! end the `error` stream carries the outcome: v4 a JSON `Status` (exit code in
//! `details.causes`), v1-v3 only a failure's message as text. Then every stream we write gets
//! a FIN.
//!
//! Invariant: the session starts only with every expected stream open (or not at all, after
//! [`STREAM_TIMEOUT`]); a frame for a stream we did not accept is ignored.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::debug;

use super::spdy::{self, Deflater, FLAG_FIN, Frame, Inflater};
use super::streams::{Done, Input, Output, Streams, deliver};

/// The versions served over SPDY, best first.
pub const PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long the client may take to open its streams.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// A negotiated protocol version: 1 (`channel.k8s.io`) to 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(pub u8);

impl Version {
    pub fn name(self) -> &'static str {
        PROTOCOLS[usize::from(4 - self.0.clamp(1, 4))]
    }

    /// Resize streams exist from v3 on.
    pub fn resizes(self) -> bool {
        self.0 >= 3
    }
}

/// Picks the first offered version we serve. Header values may each carry several versions,
/// comma-separated. No header at all means a client from before negotiation: v1.
pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Version> {
    let mut any = false;
    for name in offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        any = true;
        if let Some(i) = PROTOCOLS.iter().position(|p| *p == name) {
            return Some(Version(4 - i as u8));
        }
    }
    (!any).then_some(Version(1))
}

/// The streams a session expects the client to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The ids of the streams the client opened.
#[derive(Debug, Default, Clone, Copy)]
struct Ids {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Ids {
    fn complete(&self, version: Version, e: Expect) -> bool {
        let has = |want: bool, id: Option<u32>| !want || id.is_some();
        self.error.is_some()
            && has(e.stdin, self.stdin)
            && has(e.stdout, self.stdout)
            && has(e.stderr && !e.tty, self.stderr)
            && has(e.tty && version.resizes(), self.resize)
    }

    fn record(&mut self, kind: &str, stream: u32) -> bool {
        let slot = match kind {
            "error" => &mut self.error,
            "stdin" => &mut self.stdin,
            "stdout" => &mut self.stdout,
            "stderr" => &mut self.stderr,
            "resize" => &mut self.resize,
            _ => return false,
        };
        *slot = Some(stream);
        true
    }
}

/// What goes on the error stream at the end; `None`: nothing (v1-v3 success).
pub fn status_bytes(version: Version, status: &Value) -> Option<Vec<u8>> {
    if version.0 >= 4 {
        return Some(status.to_string().into_bytes());
    }
    if status["status"] == "Success" {
        return None;
    }
    let message = status["message"].as_str().unwrap_or("unknown error");
    Some(message.as_bytes().to_vec())
}

/// Collects terminal sizes from the resize stream, whose JSON objects may be split across or
/// packed into data frames.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    pub fn push(&mut self, data: &[u8]) -> Vec<(u16, u16)> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut used = 0;
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        loop {
            match values.next() {
                Some(Ok(v)) => {
                    used = values.byte_offset();
                    let w = v["Width"].as_u64().and_then(|w| u16::try_from(w).ok());
                    let h = v["Height"].as_u64().and_then(|h| u16::try_from(h).ok());
                    if let (Some(w), Some(h)) = (w, h) {
                        sizes.push((w, h));
                    }
                }
                // An incomplete object: wait for the rest.
                Some(Err(e)) if e.is_eof() => break,
                // Garbage: drop what we have rather than stall on it forever.
                Some(Err(_)) => {
                    used = self.buf.len();
                    break;
                }
                None => {
                    used = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..used);
        sizes
    }
}

/// Frames from a byte pipe, decoding as bytes arrive.
struct FrameReader {
    inbound: mpsc::Receiver<Vec<u8>>,
    inflater: Inflater,
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next frame; `None` when the client is gone or sent something undecodable.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match spdy::decode(&mut self.inflater, &self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Some(frame);
                }
                Ok(None) => {}
                Err(e) => {
                    debug!("remote command: {e}");
                    return None;
                }
            }
            let chunk = self.inbound.recv().await?;
            self.buf.extend_from_slice(&chunk);
        }
    }
}

/// Runs the SPDY side of an upgraded exec/attach connection: waits for the client's streams,
/// then hands the session its [`Streams`]. `Err` if the client did not open them in time.
pub async fn accept(
    inbound: mpsc::Receiver<Vec<u8>>,
    outbound: mpsc::Sender<Vec<u8>>,
    version: Version,
    expect: Expect,
) -> Result<Streams, String> {
    let (frames, mut frame_rx) = mpsc::channel::<Frame>(64);
    let frame_writer = tokio::spawn(async move {
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
    let mut reader = FrameReader {
        inbound,
        inflater: Inflater::new(),
        buf: Vec::new(),
    };
    let mut ids = Ids::default();
    // Data that arrives before every stream is open (stdin typed early) is kept for the session.
    let mut early: Vec<Frame> = Vec::new();
    let waited = tokio::time::timeout(STREAM_TIMEOUT, async {
        while !ids.complete(version, expect) {
            let frame = reader
                .next()
                .await
                .ok_or("the client closed the connection")?;
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    let kind = spdy::header(&headers, "streamtype").unwrap_or("");
                    let reply = if ids.record(kind, stream) {
                        Frame::SynReply {
                            stream,
                            flags: 0,
                            headers: Vec::new(),
                        }
                    } else {
                        debug!(kind, "remote command: unexpected stream type");
                        Frame::RstStream {
                            stream,
                            status: spdy::RST_PROTOCOL_ERROR,
                        }
                    };
                    frames.send(reply).await.map_err(|_| "connection closed")?;
                }
                Frame::Ping { id } => {
                    let _ = frames.send(Frame::Ping { id }).await;
                }
                Frame::GoAway { .. } => return Err("the client sent GOAWAY"),
                f @ Frame::Data { .. } => early.push(f),
                _ => {}
            }
        }
        Ok(())
    })
    .await;
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            drop(frames);
            let _ = frame_writer.await;
            return Err(e.to_owned());
        }
        Err(_) => {
            drop(frames);
            let _ = frame_writer.await;
            return Err("timed out waiting for the client to create streams".into());
        }
    }
    if version.0 == 1
        && let Some(stdin) = ids.stdin
    {
        // v1 clients wait for the server to close its (unused) half of the stdin stream.
        let _ = frames.send(fin(stdin)).await;
    }
    let (in_tx, in_rx) = mpsc::channel::<Input>(64);
    let (out_tx, out_rx) = mpsc::channel::<Output>(64);
    let reader_frames = frames.clone();
    let read = tokio::spawn(read_loop(reader, ids, early, in_tx, reader_frames));
    let write = tokio::spawn(write_loop(out_rx, ids, version, frames));
    Ok(Streams {
        input: in_rx,
        output: out_tx,
        done: Done::new(write, read).with_flush(frame_writer),
    })
}

fn fin(stream: u32) -> Frame {
    Frame::Data {
        stream,
        flags: FLAG_FIN,
        data: Vec::new(),
    }
}

async fn read_loop(
    mut reader: FrameReader,
    ids: Ids,
    early: Vec<Frame>,
    in_tx: mpsc::Sender<Input>,
    frames: mpsc::Sender<Frame>,
) {
    let mut tx = Some(in_tx);
    let mut resize = ResizeDecoder::default();
    let mut early = early.into_iter();
    loop {
        let frame = match early.next() {
            Some(f) => f,
            None => match reader.next().await {
                Some(f) => f,
                None => return,
            },
        };
        match frame {
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                if Some(stream) == ids.stdin {
                    if !data.is_empty() {
                        deliver(&mut tx, Input::Stdin(data)).await;
                    }
                    if flags & FLAG_FIN != 0 {
                        deliver(&mut tx, Input::StdinEof).await;
                    }
                } else if Some(stream) == ids.resize {
                    for (w, h) in resize.push(&data) {
                        deliver(&mut tx, Input::Resize(w, h)).await;
                    }
                }
            }
            Frame::SynStream { stream, .. } => {
                // Every stream this session needs is open already.
                let _ = frames
                    .send(Frame::RstStream {
                        stream,
                        status: spdy::RST_PROTOCOL_ERROR,
                    })
                    .await;
            }
            Frame::Ping { id } => {
                let _ = frames.send(Frame::Ping { id }).await;
            }
            Frame::GoAway { .. } => return,
            _ => {}
        }
    }
}

async fn write_loop(
    mut out_rx: mpsc::Receiver<Output>,
    ids: Ids,
    version: Version,
    frames: mpsc::Sender<Frame>,
) {
    let data = |stream, data| Frame::Data {
        stream,
        flags: 0,
        data,
    };
    while let Some(out) = out_rx.recv().await {
        let frame = match out {
            Output::Stdout(d) => ids.stdout.map(|s| data(s, d)),
            // With a tty there is no stderr stream: the terminal carries both.
            Output::Stderr(d) => ids.stderr.or(ids.stdout).map(|s| data(s, d)),
            Output::Status(status) => {
                if let (Some(e), Some(bytes)) = (ids.error, status_bytes(version, &status)) {
                    let _ = frames.send(data(e, bytes)).await;
                }
                break;
            }
        };
        if let Some(f) = frame
            && frames.send(f).await.is_err()
        {
            return;
        }
    }
    for stream in [ids.stdout, ids.stderr, ids.error].into_iter().flatten() {
        let _ = frames.send(fin(stream)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn negotiation_takes_the_first_offered_that_we_serve() {
        let kubectl = [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ];
        assert_eq!(negotiate(kubectl), Some(Version(4)));
        assert_eq!(
            negotiate(["v2.channel.k8s.io", "v4.channel.k8s.io"]),
            Some(Version(2))
        );
        assert_eq!(
            negotiate(["v3.channel.k8s.io, channel.k8s.io"]),
            Some(Version(3))
        );
        assert_eq!(negotiate(["channel.k8s.io"]), Some(Version(1)));
        assert_eq!(negotiate(["v5.channel.k8s.io"]), None);
        assert_eq!(negotiate(["portforward.k8s.io"]), None);
        assert_eq!(negotiate([]), Some(Version(1)));
        assert_eq!(Version(4).name(), "v4.channel.k8s.io");
        assert_eq!(Version(1).name(), "channel.k8s.io");
        assert!(Version(3).resizes() && !Version(2).resizes());
    }

    #[test]
    fn expected_streams() {
        let e = Expect {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
        };
        let mut ids = Ids::default();
        assert!(ids.record("error", 1));
        assert!(ids.record("stdin", 3));
        assert!(ids.record("stdout", 5));
        assert!(!ids.complete(Version(4), e), "v4 with a tty needs resize");
        assert!(
            ids.complete(Version(2), e),
            "v2 has no resize, no stderr with a tty"
        );
        assert!(ids.record("resize", 7));
        assert!(ids.complete(Version(4), e));
        assert!(!ids.record("bogus", 9));
        let plain = Expect { tty: false, ..e };
        assert!(!ids.complete(Version(4), plain), "stderr missing");
    }

    #[test]
    fn error_stream_content_per_version() {
        let ok = json!({"metadata": {}, "status": "Success"});
        let exit3 = super::super::channel::exit_status(3);
        assert_eq!(
            status_bytes(Version(4), &ok).unwrap(),
            br#"{"metadata":{},"status":"Success"}"#
        );
        let v4: Value = serde_json::from_slice(&status_bytes(Version(4), &exit3).unwrap()).unwrap();
        assert_eq!(v4["details"]["causes"][0]["message"], "3");
        assert_eq!(status_bytes(Version(3), &ok), None);
        let text = String::from_utf8(status_bytes(Version(2), &exit3).unwrap()).unwrap();
        assert!(
            text.starts_with("command terminated with non-zero exit code"),
            "{text}"
        );
    }

    #[test]
    fn resize_objects_split_and_packed() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"#), vec![]);
        assert_eq!(
            d.push(b"\"Height\":24}\n{\"Width\":100,\"Height\":30}\n"),
            vec![(80, 24), (100, 30)]
        );
        assert_eq!(d.push(b"{\"Width\":1"), vec![]);
        assert_eq!(d.push(b"20,\"Height\":40}"), vec![(120, 40)]);
        assert_eq!(d.push(b"nonsense"), vec![]);
        assert_eq!(d.push(b"{\"Width\":10,\"Height\":5}"), vec![(10, 5)]);
    }

    /// A scripted client over an in-memory pipe: opens the streams kubectl opens for
    /// `exec -i` (v4), sends stdin and its FIN and a resize, and reads back output, the Status
    /// and the FINs.
    #[tokio::test]
    async fn session_over_a_byte_pipe() {
        let (to_server, inbound) = mpsc::channel::<Vec<u8>>(64);
        let (outbound, mut from_server) = mpsc::channel::<Vec<u8>>(64);
        let expect = Expect {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let server = tokio::spawn(accept(inbound, outbound, Version(4), expect));
        let mut client_deflate = Deflater::new();
        let mut send = |f: Frame| spdy::encode(&mut client_deflate, &f).unwrap();
        let syn = |stream: u32, kind: &str| Frame::SynStream {
            stream,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        };
        for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
            to_server.send(send(syn(id, kind))).await.unwrap();
        }
        // Stdin typed before the last stream exists is not lost.
        let early = send(Frame::Data {
            stream: 3,
            flags: 0,
            data: b"early ".to_vec(),
        });
        to_server.send(early).await.unwrap();
        to_server.send(send(syn(7, "stderr"))).await.unwrap();
        let mut streams = server.await.unwrap().unwrap();
        let fin3 = send(Frame::Data {
            stream: 3,
            flags: FLAG_FIN,
            data: b"hi".to_vec(),
        });
        to_server.send(fin3).await.unwrap();
        to_server.send(send(Frame::Ping { id: 1 })).await.unwrap();
        assert_eq!(
            streams.input.recv().await,
            Some(Input::Stdin(b"early ".to_vec()))
        );
        assert_eq!(
            streams.input.recv().await,
            Some(Input::Stdin(b"hi".to_vec()))
        );
        assert_eq!(streams.input.recv().await, Some(Input::StdinEof));
        streams
            .output
            .send(Output::Stdout(b"out".to_vec()))
            .await
            .unwrap();
        streams
            .output
            .send(Output::Stderr(b"err".to_vec()))
            .await
            .unwrap();
        let output = streams.output.clone();
        let finish = tokio::spawn(
            streams
                .done
                .finish(output, super::super::channel::exit_status(3)),
        );
        drop(streams.output);
        drop(streams.input);

        // What the client sees.
        let mut inflater = Inflater::new();
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        while seen
            .iter()
            .filter(|f| matches!(f, Frame::Data { flags, .. } if flags & FLAG_FIN != 0))
            .count()
            < 3
        {
            let chunk = tokio::time::timeout(Duration::from_secs(10), from_server.recv())
                .await
                .expect("server output")
                .expect("server open");
            buf.extend_from_slice(&chunk);
            while let Some((f, used)) = spdy::decode(&mut inflater, &buf).unwrap() {
                buf.drain(..used);
                seen.push(f);
            }
        }
        let replies: Vec<u32> = seen
            .iter()
            .filter_map(|f| match f {
                Frame::SynReply { stream, .. } => Some(*stream),
                _ => None,
            })
            .collect();
        assert_eq!(replies, [1, 3, 5, 7]);
        assert!(seen.contains(&Frame::Ping { id: 1 }));
        let data_on = |id: u32| -> Vec<u8> {
            seen.iter()
                .filter_map(|f| match f {
                    Frame::Data { stream, data, .. } if *stream == id => Some(data.clone()),
                    _ => None,
                })
                .flatten()
                .collect()
        };
        assert_eq!(data_on(5), b"out");
        assert_eq!(data_on(7), b"err");
        let status: Value = serde_json::from_slice(&data_on(1)).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        // The client closes: the session winds down.
        drop(to_server);
        tokio::time::timeout(Duration::from_secs(10), finish)
            .await
            .unwrap()
            .unwrap();
    }

    /// Decodes everything the server sent until `fins` streams were finished.
    async fn client_view(from_server: &mut mpsc::Receiver<Vec<u8>>, fins: usize) -> Vec<Frame> {
        let mut inflater = Inflater::new();
        let (mut buf, mut seen) = (Vec::new(), Vec::new());
        let finished = |seen: &Vec<Frame>| {
            seen.iter()
                .filter(|f| matches!(f, Frame::Data { flags, .. } if flags & FLAG_FIN != 0))
                .count()
        };
        while finished(&seen) < fins {
            let chunk = tokio::time::timeout(Duration::from_secs(10), from_server.recv())
                .await
                .expect("server output")
                .expect("server open");
            buf.extend_from_slice(&chunk);
            while let Some((f, used)) = spdy::decode(&mut inflater, &buf).unwrap() {
                buf.drain(..used);
                seen.push(f);
            }
        }
        seen
    }

    /// v1 with a tty: no resize stream exists before v3, the server closes its half of stdin
    /// at once (v1 clients wait for it), and a failure is plain text on the error stream.
    #[tokio::test]
    async fn v1_session_with_a_tty() {
        let (to_server, inbound) = mpsc::channel::<Vec<u8>>(64);
        let (outbound, mut from_server) = mpsc::channel::<Vec<u8>>(64);
        let expect = Expect {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let server = tokio::spawn(accept(inbound, outbound, Version(1), expect));
        let mut deflater = Deflater::new();
        for (stream, kind) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
            let syn = Frame::SynStream {
                stream,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), kind.into())],
            };
            to_server
                .send(spdy::encode(&mut deflater, &syn).unwrap())
                .await
                .unwrap();
        }
        let streams = server.await.unwrap().unwrap();
        let seen = client_view(&mut from_server, 1).await;
        assert!(seen.contains(&fin(3)), "{seen:?}");
        let output = streams.output.clone();
        let status = super::super::channel::failure_status("boom");
        let finish = tokio::spawn(streams.done.finish(output, status));
        drop(streams.output);
        let seen = client_view(&mut from_server, 2).await;
        let error: Vec<u8> = seen
            .iter()
            .filter_map(|f| match f {
                Frame::Data {
                    stream: 1, data, ..
                } => Some(data.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(error, b"boom");
        drop(to_server);
        tokio::time::timeout(Duration::from_secs(10), finish)
            .await
            .unwrap()
            .unwrap();
    }

    /// A v4 tty session gets its sizes from the resize stream.
    #[tokio::test]
    async fn v4_resize_stream() {
        let (to_server, inbound) = mpsc::channel::<Vec<u8>>(64);
        let (outbound, _from_server) = mpsc::channel::<Vec<u8>>(64);
        let expect = Expect {
            stdin: false,
            stdout: true,
            stderr: true,
            tty: true,
        };
        let server = tokio::spawn(accept(inbound, outbound, Version(4), expect));
        let mut deflater = Deflater::new();
        let mut wire = Vec::new();
        for (stream, kind) in [(1, "error"), (3, "stdout"), (5, "resize")] {
            let syn = Frame::SynStream {
                stream,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), kind.into())],
            };
            wire.extend(spdy::encode(&mut deflater, &syn).unwrap());
        }
        let resize = Frame::Data {
            stream: 5,
            flags: 0,
            data: b"{\"Width\":132,\"Height\":43}\n".to_vec(),
        };
        wire.extend(spdy::encode(&mut deflater, &resize).unwrap());
        // One write carrying every frame: the reader splits them itself.
        to_server.send(wire).await.unwrap();
        let mut streams = server.await.unwrap().unwrap();
        assert_eq!(streams.input.recv().await, Some(Input::Resize(132, 43)));
        drop(to_server);
        assert_eq!(streams.input.recv().await, None, "the client is gone");
    }

    #[tokio::test]
    async fn missing_streams_fail_when_the_client_leaves() {
        let (to_server, inbound) = mpsc::channel::<Vec<u8>>(4);
        let (outbound, _from_server) = mpsc::channel::<Vec<u8>>(4);
        let expect = Expect {
            stdin: false,
            stdout: true,
            stderr: false,
            tty: false,
        };
        drop(to_server);
        let r = accept(inbound, outbound, Version(4), expect).await;
        assert!(r.is_err());
    }
}
