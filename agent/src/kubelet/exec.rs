//! `/exec/{namespace}/{pod}/{container}` and `/attach/...` over WebSocket `v5.channel.k8s.io`
//! (or `v4`): see [`super::channel`] for the framing.
//!
//! Exec starts a new process in the container ([`crate::runtime::exec`]) with pipes or a pty,
//! copies its output to channels 1/2, channel 0 to its stdin, resizes the pty on channel 4 and
//! ends with the exit Status on channel 3, then a Close. If the client goes away first, the process
//! is killed (nobody could read its output or give it input any more).
//!
//! Attach streams the output of the container's main process (from its log file, as it is
//! written) until the container stops or the client goes away. With `-i`, channel 0 goes to the
//! container's stdin through its shim's FIFO (containers with `stdin: true` under a shim; see
//! `runtime::shim`); detaching (or the v5 close of stdin) closes it, which with `stdinOnce` is
//! EOF for the container. Anything else gets a clear Failure Status, never a silently ignored
//! stdin.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path as UrlPath, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::debug;

use super::channel::{self, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT};
use super::{KubeletError, find_pod, query_flag, query_pairs, running_container};
use crate::pods::Ctx;
use crate::runtime::Runtime;
use crate::runtime::exec::{ExecRequest, resize};

/// How long output may still drain after the process exited (a background child can hold the
/// pipes open forever).
const DRAIN: Duration = Duration::from_secs(2);

fn upgrade_required(what: &str) -> KubeletError {
    KubeletError::BadRequest(format!(
        "{what} needs a WebSocket upgrade with subprotocol v5.channel.k8s.io or v4.channel.k8s.io (SPDY is not supported for {what})"
    ))
}

/// Picks the subprotocol; `Ok(true)` for v5.
fn negotiate(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    what: &str,
) -> Result<(WebSocketUpgrade, bool), KubeletError> {
    let ws = ws
        .map_err(|_| upgrade_required(what))?
        .protocols(channel::EXEC_PROTOCOLS);
    let v5 = match ws.selected_protocol() {
        Some(p) => p.as_bytes() == channel::EXEC_PROTOCOLS[0].as_bytes(),
        None => return Err(upgrade_required(what)),
    };
    Ok((ws, v5))
}

pub async fn exec(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, KubeletError> {
    let q = query_pairs(uri.query());
    let args: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if args.is_empty() {
        return Err(KubeletError::BadRequest(
            "you must specify at least 1 command".into(),
        ));
    }
    let tty = query_flag(&q, "tty");
    let req = ExecRequest {
        args,
        stdin: query_flag(&q, "stdin"),
        stdout: query_flag(&q, "stdout"),
        stderr: query_flag(&q, "stderr") && !tty,
        tty,
    };
    let pod = find_pod(&ctx, &namespace, &name).await?;
    let id = running_container(&pod, &container)?;
    let (ws, v5) = negotiate(ws, "exec")?;
    Ok(ws
        .on_upgrade(move |socket| exec_session(ctx, id, req, socket, v5))
        .into_response())
}

/// Sends messages to the client from several tasks; closes the socket when all senders are gone.
fn writer(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let task = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    (tx, task)
}

fn binary(channel: u8, data: &[u8]) -> Message {
    Message::Binary(channel::frame(channel, data).into())
}

async fn finish(tx: mpsc::Sender<Message>, status: serde_json::Value) {
    let _ = tx.send(binary(ERROR, status.to_string().as_bytes())).await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

async fn exec_session(ctx: Arc<Ctx>, id: String, req: ExecRequest, socket: WebSocket, v5: bool) {
    let (sink, mut incoming) = socket.split();
    let (tx, writer_task) = writer(sink);
    let process = match ctx.runtime.exec_streaming(&id, req).await {
        Ok(p) => p,
        Err(e) => {
            finish(tx, channel::failure_status(&e.to_string())).await;
            let _ = writer_task.await;
            return;
        }
    };
    let pid = process.started.pid;
    let io = process.io;
    let mut pumps = tokio::task::JoinSet::new();
    for (fd, ch) in [(io.stdout, STDOUT), (io.stderr, STDERR)] {
        if let Some(fd) = fd {
            pumps.spawn(pump_pipe(fd, ch, tx.clone()));
        }
    }
    let pty = match io.pty.map(Pty::new).transpose() {
        Ok(p) => p.map(Arc::new),
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = Runtime::wait(process.started).await;
            finish(tx, channel::failure_status(&format!("pty: {e}"))).await;
            let _ = writer_task.await;
            return;
        }
    };
    if let Some(pty) = &pty {
        pumps.spawn(pump_pty(pty.clone(), tx.clone()));
    }
    let mut stdin = match io.stdin.map(tokio::net::unix::pipe::Sender::from_owned_fd) {
        Some(Ok(s)) => Some(s),
        _ => None,
    };
    let input_pty = pty.clone();
    let mut input = tokio::spawn(async move {
        while let Some(msg) = incoming.next().await {
            let data: Vec<u8> = match msg {
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Text(t)) => t.as_str().as_bytes().to_vec(),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((ch, payload)) = channel::split(&data) else {
                continue;
            };
            match ch {
                STDIN => {
                    if let Some(pty) = &input_pty {
                        if pty.write_all(payload).await.is_err() {
                            debug!("exec: writing to the pty failed");
                        }
                    } else if let Some(s) = stdin.as_mut()
                        && s.write_all(payload).await.is_err()
                    {
                        stdin = None;
                    }
                }
                RESIZE => {
                    if let (Some(pty), Some((w, h))) = (&input_pty, channel::parse_resize(payload))
                    {
                        let _ = resize(&pty.fd, w, h);
                    }
                }
                CLOSE if v5 && payload.first() == Some(&STDIN) => {
                    // EOF for the process; with a pty, EOF is ^D, which the client sends itself.
                    stdin = None;
                }
                _ => {}
            }
        }
    });
    let started = process.started;
    let mut wait = std::pin::pin!(Runtime::wait(started));
    let exit = tokio::select! {
        exit = &mut wait => exit,
        _ = &mut input => {
            // The client is gone: nobody can see this process any more.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            wait.await
        }
    };
    let _ = tokio::time::timeout(DRAIN, async { while pumps.join_next().await.is_some() {} }).await;
    pumps.abort_all();
    let status = match exit {
        Ok(e) => channel::exit_status(e.code),
        Err(e) => channel::failure_status(&e.to_string()),
    };
    finish(tx, status).await;
    let _ = writer_task.await;
    // Keep reading until the client answers the Close (the closing handshake): a socket closed
    // with the client's frames unread is reset, and a reset can destroy the Status still on its
    // way to the client.
    if tokio::time::timeout(DRAIN, &mut input).await.is_err() {
        input.abort();
    }
}

async fn pump_pipe(fd: OwnedFd, ch: u8, tx: mpsc::Sender<Message>) {
    use tokio::io::AsyncReadExt;
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(binary(ch, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A pty master in non-blocking mode, read and written through the reactor.
struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
        // the AsyncFd's whole lifetime.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Reads some output; `Ok(0)` at the end (EIO once every slave descriptor is closed).
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(std::io::Error::from)
            }) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

async fn pump_pty(pty: Arc<Pty>, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match pty.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(binary(STDOUT, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub async fn attach(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, KubeletError> {
    let q = query_pairs(uri.query());
    let pod = find_pod(&ctx, &namespace, &name).await?;
    let id = running_container(&pod, &container)?;
    let (ws, v5) = negotiate(ws, "attach")?;
    let opts = AttachOptions {
        stdin: query_flag(&q, "stdin"),
        stdout: query_flag(&q, "stdout"),
        stderr: query_flag(&q, "stderr"),
        tty: query_flag(&q, "tty"),
        v5,
    };
    let wants_stdin = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
        .is_some_and(|c| c.stdin.unwrap_or(false));
    let fifo = crate::runtime::shim::stdin_fifo(&ctx.runtime.shim_dir(&id));
    let stdin = AttachStdin {
        fifo: (opts.stdin && wants_stdin && ctx.runtime.shimmed()).then_some(fifo),
        declared: wants_stdin,
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = ctx
        .layout
        .pod_logs(&namespace, &name, &uid)
        .join(&container);
    Ok(ws
        .on_upgrade(move |socket| {
            attach_session(ctx, namespace, name, container, dir, opts, stdin, socket)
        })
        .into_response())
}

#[derive(Debug, Clone, Copy)]
struct AttachOptions {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    v5: bool,
}

/// Where `attach -i` input goes: the container's stdin FIFO, when it has one.
struct AttachStdin {
    fifo: Option<std::path::PathBuf>,
    /// The container has `stdin: true`.
    declared: bool,
}

/// Opens the stdin FIFO for writing. The shim's feeder may be between two attachers for a
/// moment, so a missing reader is retried briefly; a missing FIFO means stdin is closed.
async fn open_stdin(fifo: &std::path::Path) -> Result<tokio::net::unix::pipe::Sender, String> {
    for _ in 0..20 {
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(fifo) {
            Ok(s) => return Ok(s),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(format!("opening the container's stdin: {e}")),
        }
    }
    Err("the container's stdin is closed (stdinOnce: an earlier attach used it)".into())
}

#[allow(clippy::too_many_arguments)]
async fn attach_session(
    ctx: Arc<Ctx>,
    namespace: String,
    name: String,
    container: String,
    dir: std::path::PathBuf,
    opts: AttachOptions,
    stdin: AttachStdin,
    socket: WebSocket,
) {
    let (sink, mut incoming) = socket.split();
    let (tx, writer_task) = writer(sink);
    let mut input = None;
    if opts.stdin {
        let opened = match &stdin.fifo {
            Some(fifo) => open_stdin(fifo).await,
            None if !stdin.declared => Err(format!(
                "container {container} was not started with stdin: true; attach without -i to see its output"
            )),
            None => Err(format!(
                "attaching to the stdin of container {container} is not supported by this node (its containers run without shims); attach without -i to see its output"
            )),
        };
        match opened {
            Ok(s) => input = Some(s),
            Err(msg) => {
                finish(tx, channel::failure_status(&msg)).await;
                let _ = writer_task.await;
                // Read what the client sent (its stdin) until it closes: closing a socket with
                // unread input resets it, and the client would lose the Status.
                let _ = tokio::time::timeout(DRAIN, async {
                    while let Some(Ok(m)) = incoming.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
                return;
            }
        }
    }
    let mut follower = super::logs::Tail::at_end(&dir).await;
    let mut tick = 0u32;
    let v5 = opts.v5;
    let mut client_gone = std::pin::pin!(async move {
        while let Some(Ok(m)) = incoming.next().await {
            let data: Vec<u8> = match m {
                Message::Close(_) => break,
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_str().as_bytes().to_vec(),
                _ => continue,
            };
            match channel::split(&data) {
                Some((STDIN, payload)) => {
                    if let Some(s) = input.as_mut()
                        && s.write_all(payload).await.is_err()
                    {
                        input = None;
                    }
                }
                // EOF: the writer's close is what the shim's feeder sees.
                Some((CLOSE, payload)) if v5 && payload.first() == Some(&STDIN) => input = None,
                _ => {}
            }
        }
    });
    loop {
        for (stream, body) in follower.read_new().await {
            let ch = if stream == "stderr" && !opts.tty {
                STDERR
            } else {
                STDOUT
            };
            let wanted = if ch == STDERR {
                opts.stderr
            } else {
                opts.stdout || opts.tty
            };
            if wanted && tx.send(binary(ch, &body)).await.is_err() {
                return;
            }
        }
        if tick.is_multiple_of(4) {
            let running = match find_pod(&ctx, &namespace, &name).await {
                Ok(pod) => running_container(&pod, &container).is_ok(),
                Err(KubeletError::PodNotFound(_)) => false,
                Err(_) => true,
            };
            if !running || follower.superseded() {
                for (stream, body) in follower.read_new().await {
                    let ch = if stream == "stderr" && !opts.tty {
                        STDERR
                    } else {
                        STDOUT
                    };
                    let _ = tx.send(binary(ch, &body)).await;
                }
                break;
            }
        }
        tick = tick.wrapping_add(1);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = &mut client_gone => {
                drop(tx);
                let _ = writer_task.await;
                return;
            }
        }
    }
    finish(tx, channel::exit_status(0)).await;
    let _ = writer_task.await;
}
