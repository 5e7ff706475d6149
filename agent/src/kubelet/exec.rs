//! `/exec/{namespace}/{pod}/{container}` and `/attach/...`, over WebSocket `v5.channel.k8s.io`
//! (or `v4`; see [`super::channel`]) or over SPDY/3.1 (`v4.channel.k8s.io` down to
//! `channel.k8s.io`; see [`super::remotecommand`]). Both transports become the same
//! [`Streams`], so the session logic here exists once.
//!
//! Exec starts a new process in the container ([`crate::runtime::exec`]) with pipes or a pty
//! (the pty is its controlling terminal, so `^C` typed by the user interrupts its foreground
//! job), copies its output to stdout/stderr, stdin to its stdin, resizes the pty and ends with
//! the exit Status. If the client goes away first, the process is killed (nobody could read its
//! output or give it input any more).
//!
//! Attach streams the output of the container's main process (from its log file, as it is
//! written) until the container stops or the client goes away. With `-i`, stdin goes to the
//! container's stdin through its shim's FIFO (containers with `stdin: true` under a shim; see
//! `runtime::shim`); detaching (or closing stdin) closes it, which with `stdinOnce` is EOF for the
//! container. Anything else gets a clear Failure Status, never a silently ignored stdin.
//! A container with `tty: true` runs on a terminal its shim holds: its output (one stream, in
//! the log as `stdout`, prompts included) and its input go through that shim as above, and
//! resize messages set the terminal's size through its slave (the path in the shim's `tty`
//! file), which signals SIGWINCH to its foreground job. For a container without one, kubectl
//! (which reads `tty` from the pod spec) warns `Unable to use a TTY` and attaches without one;
//! a raw client asking for a tty anyway gets stdout and stderr merged.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::debug;

use super::remotecommand::{self, Expect};
use super::streams::{self, Input, Output, Streams};
use super::{KubeletError, channel, find_pod, query_flag, query_pairs, running_container};
use crate::pods::Ctx;
use crate::runtime::Runtime;
use crate::runtime::exec::{ExecRequest, resize};

/// How long output may still drain after the process exited (a background child can hold the
/// pipes open forever).
const DRAIN: Duration = Duration::from_secs(2);

const STREAM_PROTOCOL: &str = "x-stream-protocol-version";

/// Upgrades `request` to whichever transport it asks for and runs `session` on its streams.
async fn upgrade<F, Fut>(
    request: Request,
    what: &'static str,
    expect: Expect,
    session: F,
) -> Result<Response, KubeletError>
where
    F: FnOnce(Streams) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let kind = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if kind == "websocket" {
        let (mut parts, _) = request.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| KubeletError::BadRequest(e.to_string()))?
            .protocols(channel::EXEC_PROTOCOLS);
        let v5 = match ws.selected_protocol() {
            Some(p) => p.as_bytes() == channel::EXEC_PROTOCOLS[0].as_bytes(),
            None => return Err(upgrade_required(what)),
        };
        return Ok(ws
            .on_upgrade(move |socket| session(streams::websocket(socket, v5)))
            .into_response());
    }
    if !kind.starts_with("spdy/3.1") {
        return Err(upgrade_required(what));
    }
    let offered: Vec<String> = request
        .headers()
        .get_all(STREAM_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let Some(version) = remotecommand::negotiate(offered.iter().map(String::as_str)) else {
        return Ok(not_negotiated(&offered));
    };
    let mut request = request;
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!("{what}: SPDY upgrade failed: {e}");
                return;
            }
        };
        let (inbound, outbound, mut pump) = super::portforward::io_pipe(TokioIo::new(upgraded));
        match remotecommand::accept(inbound, outbound, version, expect).await {
            Ok(streams) => session(streams).await,
            Err(e) => debug!("{what}: {e}"),
        }
        // Everything is queued: let it reach the client, unless the client hangs.
        if tokio::time::timeout(DRAIN, &mut pump).await.is_err() {
            pump.abort();
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("Upgrade")),
            (header::UPGRADE, HeaderValue::from_static("SPDY/3.1")),
            (
                header::HeaderName::from_static(STREAM_PROTOCOL),
                HeaderValue::from_static(version.name()),
            ),
        ],
    )
        .into_response())
}

fn upgrade_required(what: &str) -> KubeletError {
    KubeletError::BadRequest(format!(
        "{what} needs an upgrade: WebSocket with subprotocol v5.channel.k8s.io or v4.channel.k8s.io, or SPDY/3.1"
    ))
}

/// Upstream's answer when no offered version is served: 403, the versions we accept.
fn not_negotiated(offered: &[String]) -> Response {
    let mut response = (
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {:?}\n",
            remotecommand::PROTOCOLS
        ),
    )
        .into_response();
    for p in remotecommand::PROTOCOLS {
        response.headers_mut().append(
            header::HeaderName::from_static("x-accepted-stream-protocol-versions"),
            HeaderValue::from_static(p),
        );
    }
    response
}

pub async fn exec(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    request: Request,
) -> Result<Response, KubeletError> {
    let q = query_pairs(request.uri().query());
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
    let expect = Expect {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
        tty,
    };
    upgrade(request, "exec", expect, move |streams| {
        exec_session(ctx, id, req, streams)
    })
    .await
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

async fn exec_session(ctx: Arc<Ctx>, id: String, req: ExecRequest, streams: Streams) {
    let Streams {
        input: mut incoming,
        output,
        done,
    } = streams;
    let process = match ctx.runtime.exec_streaming(&id, req).await {
        Ok(p) => p,
        Err(e) => {
            done.finish(output, channel::failure_status(&e.to_string()))
                .await;
            return;
        }
    };
    let pid = process.started.pid;
    let io = process.io;
    let mut pumps = tokio::task::JoinSet::new();
    if let Some(fd) = io.stdout {
        pumps.spawn(pump_pipe(fd, Output::Stdout, output.clone()));
    }
    if let Some(fd) = io.stderr {
        pumps.spawn(pump_pipe(fd, Output::Stderr, output.clone()));
    }
    let pty = match io.pty.map(Pty::new).transpose() {
        Ok(p) => p.map(Arc::new),
        Err(e) => {
            kill(pid);
            let _ = Runtime::wait(process.started).await;
            done.finish(output, channel::failure_status(&format!("pty: {e}")))
                .await;
            return;
        }
    };
    if let Some(pty) = &pty {
        pumps.spawn(pump_pty(pty.clone(), output.clone()));
    }
    let mut stdin = match io.stdin.map(tokio::net::unix::pipe::Sender::from_owned_fd) {
        Some(Ok(s)) => Some(s),
        _ => None,
    };
    let input_pty = pty.clone();
    let mut input = tokio::spawn(async move {
        while let Some(msg) = incoming.recv().await {
            match msg {
                Input::Stdin(payload) => {
                    if let Some(pty) = &input_pty {
                        if pty.write_all(&payload).await.is_err() {
                            debug!("exec: writing to the pty failed");
                        }
                    } else if let Some(s) = stdin.as_mut()
                        && s.write_all(&payload).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Input::Resize(w, h) => {
                    if let Some(pty) = &input_pty {
                        let _ = resize(&pty.fd, w, h);
                    }
                }
                // EOF for the process; with a pty, EOF is ^D, which the client sends itself.
                Input::StdinEof => stdin = None,
            }
        }
    });
    let started = process.started;
    let mut wait = std::pin::pin!(Runtime::wait(started));
    let exit = tokio::select! {
        exit = &mut wait => exit,
        _ = &mut input => {
            // The client is gone: nobody can see this process any more.
            kill(pid);
            wait.await
        }
    };
    input.abort();
    let _ = tokio::time::timeout(DRAIN, async { while pumps.join_next().await.is_some() {} }).await;
    pumps.abort_all();
    let status = match exit {
        Ok(e) => channel::exit_status(e.code),
        Err(e) => channel::failure_status(&e.to_string()),
    };
    done.finish(output, status).await;
}

async fn pump_pipe(fd: OwnedFd, wrap: fn(Vec<u8>) -> Output, tx: mpsc::Sender<Output>) {
    use tokio::io::AsyncReadExt;
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
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

async fn pump_pty(pty: Arc<Pty>, tx: mpsc::Sender<Output>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match pty.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(Output::Stdout(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub async fn attach(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((namespace, name, container)): UrlPath<(String, String, String)>,
    request: Request,
) -> Result<Response, KubeletError> {
    let q = query_pairs(request.uri().query());
    let pod = find_pod(&ctx, &namespace, &name).await?;
    let id = running_container(&pod, &container)?;
    let opts = AttachOptions {
        stdin: query_flag(&q, "stdin"),
        stdout: query_flag(&q, "stdout"),
        stderr: query_flag(&q, "stderr"),
        tty: query_flag(&q, "tty"),
    };
    let wants_stdin = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
        .is_some_and(|c| c.stdin.unwrap_or(false));
    let shim_dir = ctx.runtime.shim_dir(&id);
    let fifo = crate::runtime::shim::stdin_fifo(&shim_dir);
    let stdin = AttachStdin {
        fifo: (opts.stdin && wants_stdin && ctx.runtime.shimmed()).then_some(fifo),
        declared: wants_stdin,
        terminal: crate::runtime::shim::tty_file(&shim_dir),
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = ctx
        .layout
        .pod_logs(&namespace, &name, &uid)
        .join(&container);
    let expect = Expect {
        stdin: opts.stdin,
        stdout: opts.stdout,
        stderr: opts.stderr,
        tty: opts.tty,
    };
    let target = AttachTarget {
        namespace,
        name,
        container,
        dir,
    };
    upgrade(request, "attach", expect, move |streams| {
        attach_session(ctx, target, opts, stdin, streams)
    })
    .await
}

#[derive(Debug, Clone, Copy)]
struct AttachOptions {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// The container attached to, and the directory of its log files.
struct AttachTarget {
    namespace: String,
    name: String,
    container: String,
    dir: std::path::PathBuf,
}

/// Where `attach -i` input goes: the container's stdin FIFO, when it has one.
struct AttachStdin {
    fifo: Option<std::path::PathBuf>,
    /// The container has `stdin: true`.
    declared: bool,
    /// The shim's file naming the container's terminal (absent without one).
    terminal: std::path::PathBuf,
}

/// Sets the size of the container terminal named in `file` (see `runtime::shim::tty_file`);
/// nothing when the container has no terminal (any more).
async fn resize_terminal(file: &std::path::Path, width: u16, height: u16) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(path) = tokio::fs::read_to_string(file).await else {
        return;
    };
    // Only ever a terminal: the file is the shim's, but a stray path must open nothing else.
    if !path.starts_with("/dev/pts/") || path.contains("..") {
        return;
    }
    // O_NOCTTY: the agent must never acquire the container's terminal as its own.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path.trim_end());
    match opened {
        Ok(f) => {
            if let Err(e) = resize(&f, width, height) {
                debug!("attach: resizing {path}: {e}");
            }
        }
        Err(e) => debug!("attach: opening {path}: {e}"),
    }
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

/// A log chunk as output: stderr keeps its stream unless a terminal was asked for (which has
/// only one); `None` for a stream the client did not ask for.
fn attach_output(opts: AttachOptions, stream: &str, body: Vec<u8>) -> Option<Output> {
    if stream == "stderr" && !opts.tty {
        opts.stderr.then_some(Output::Stderr(body))
    } else {
        (opts.stdout || opts.tty).then_some(Output::Stdout(body))
    }
}

async fn attach_session(
    ctx: Arc<Ctx>,
    target: AttachTarget,
    opts: AttachOptions,
    stdin: AttachStdin,
    streams: Streams,
) {
    let Streams {
        input: mut incoming,
        output,
        done,
    } = streams;
    let AttachTarget {
        namespace,
        name,
        container,
        dir,
    } = target;
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
                done.finish(output, channel::failure_status(&msg)).await;
                return;
            }
        }
    }
    let mut follower = super::logs::Tail::at_end(&dir).await;
    let mut tick = 0u32;
    let terminal = stdin.terminal;
    let mut client_gone = std::pin::pin!(async move {
        while let Some(m) = incoming.recv().await {
            match m {
                Input::Stdin(payload) => {
                    if let Some(s) = input.as_mut()
                        && s.write_all(&payload).await.is_err()
                    {
                        input = None;
                    }
                }
                // EOF: the writer's close is what the shim's feeder sees.
                Input::StdinEof => input = None,
                Input::Resize(w, h) if opts.tty => resize_terminal(&terminal, w, h).await,
                Input::Resize(..) => {}
            }
        }
    });
    loop {
        for (stream, body) in follower.read_new().await {
            if let Some(out) = attach_output(opts, &stream, body)
                && output.send(out).await.is_err()
            {
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
                    if let Some(out) = attach_output(opts, &stream, body) {
                        let _ = output.send(out).await;
                    }
                }
                break;
            }
        }
        tick = tick.wrapping_add(1);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = &mut client_gone => {
                done.finish(output, channel::exit_status(0)).await;
                return;
            }
        }
    }
    done.finish(output, channel::exit_status(0)).await;
}
