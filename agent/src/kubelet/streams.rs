//! The streams of one exec or attach session, whatever carries them: a WebSocket speaking
//! `v5`/`v4.channel.k8s.io` ([`websocket`]) or a SPDY/3.1 connection speaking the remote command
//! protocol (`super::remotecommand`). The session logic (`super::exec`) only sees [`Input`]s
//! coming in and sends [`Output`]s out.
//!
//! Invariants: [`Output::Status`] is the last thing a transport sends (anything after it is
//! dropped); once it is sent the transport closes its side and keeps reading (discarding) until
//! the client closes too or [`DRAIN`] passes, because closing a socket with unread input resets it
//! and a reset can destroy the Status still on its way. `input` ends (`None`) exactly when the
//! client went away.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::channel::{self, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT};

/// How long the client gets to close its side after the Status was sent.
pub const DRAIN: Duration = Duration::from_secs(2);

/// What the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    /// The client closed its stdin (v5 close signal, SPDY FIN on the stdin stream).
    StdinEof,
    /// A new terminal size: width, height.
    Resize(u16, u16),
}

/// What the session sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The final `Status` (success, exit code, failure); ends the session.
    Status(Value),
}

/// One session's transport, seen from the session logic.
pub struct Streams {
    pub input: mpsc::Receiver<Input>,
    pub output: mpsc::Sender<Output>,
    /// Ends once the Status went out and the client closed (or [`DRAIN`] passed).
    pub done: Done,
}

/// The transport's tasks, awaited at the end.
pub struct Done {
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
    /// Ends once everything the writer queued is on the wire (after the reader ended).
    flush: Option<JoinHandle<()>>,
}

impl Done {
    pub fn new(writer: JoinHandle<()>, reader: JoinHandle<()>) -> Self {
        Self {
            writer,
            reader,
            flush: None,
        }
    }

    pub fn with_flush(mut self, flush: JoinHandle<()>) -> Self {
        self.flush = Some(flush);
        self
    }

    /// Sends the final Status on `output` and waits for the transport to wind down.
    pub async fn finish(self, output: mpsc::Sender<Output>, status: Value) {
        let _ = output.send(Output::Status(status)).await;
        drop(output);
        let _ = self.writer.await;
        let mut reader = self.reader;
        if tokio::time::timeout(DRAIN, &mut reader).await.is_err() {
            reader.abort();
            let _ = reader.await;
        }
        if let Some(flush) = self.flush {
            let _ = flush.await;
        }
    }
}

/// Sends `input` to the session; once the session stopped listening, input is discarded (the
/// reader goes on until the client closes, see the module invariants).
pub async fn deliver(tx: &mut Option<mpsc::Sender<Input>>, input: Input) {
    if let Some(s) = tx
        && s.send(input).await.is_err()
    {
        *tx = None;
    }
}

/// The WebSocket transport: channel byte + payload per binary (or text) message; `v5` adds
/// the close signal `[255, 0]` for the end of stdin.
pub fn websocket(socket: WebSocket, v5: bool) -> Streams {
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(64);
    let (in_tx, in_rx) = mpsc::channel::<Input>(64);
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            let (ch, data, last) = match out {
                Output::Stdout(d) => (STDOUT, d, false),
                Output::Stderr(d) => (STDERR, d, false),
                Output::Status(s) => (ERROR, s.to_string().into_bytes(), true),
            };
            let frame = Message::Binary(channel::frame(ch, &data).into());
            if sink.send(frame).await.is_err() {
                return;
            }
            if last {
                let close = CloseFrame {
                    code: 1000,
                    reason: "".into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
        }
        let _ = sink.close().await;
    });
    let reader = tokio::spawn(async move {
        let mut tx = Some(in_tx);
        while let Some(Ok(msg)) = incoming.next().await {
            let data: Vec<u8> = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            let input = match channel::split(&data) {
                Some((STDIN, payload)) => Input::Stdin(payload.to_vec()),
                Some((RESIZE, payload)) => match channel::parse_resize(payload) {
                    Some((w, h)) => Input::Resize(w, h),
                    None => continue,
                },
                Some((CLOSE, payload)) if v5 && payload.first() == Some(&STDIN) => Input::StdinEof,
                _ => continue,
            };
            deliver(&mut tx, input).await;
        }
    });
    Streams {
        input: in_rx,
        output: out_tx,
        done: Done::new(writer, reader),
    }
}
