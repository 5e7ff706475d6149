//! Streaming exec: a tenant process in a running container with its stdio connected to pipes
//! (or to one pseudo-terminal), for `kubectl exec`.
//!
//! Invariants: the caller's ends of the pipes and the pty master are close-on-exec, so no
//! container process ever inherits them; a stream the caller did not ask for is `/dev/null`
//! (never the agent's own stdio). A `shim-exec` helper starts the process, is its parent and
//! reports its exit (see [`super::tenant`]); [`super::Runtime::wait`] waits for that report. With a TTY the process gets the pty's slave
//! as stdin, stdout and stderr, and as its controlling terminal (the helper's executor sets it in
//! the process's fresh session), so line discipline, window size and `^C` as SIGINT all work.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;

use super::{Runtime, RuntimeError, Started};

/// What to run and which streams to connect.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub args: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The agent's ends of a started exec process's streams.
#[derive(Debug)]
pub struct ExecIo {
    /// Write end of the process's stdin (`None` with a TTY: write to `pty` instead).
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The pty master: read the terminal's output, write its input, resize it.
    pub pty: Option<OwnedFd>,
}

/// A started exec process.
#[derive(Debug)]
pub struct ExecProcess {
    pub started: Started,
    pub io: ExecIo,
}

impl Runtime {
    /// Starts `req.args` in the running container `id` with the requested streams.
    pub async fn exec_streaming(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> Result<ExecProcess, RuntimeError> {
        let rt = self.clone();
        let id2 = id.to_owned();
        tokio::task::spawn_blocking(move || rt.exec_streaming_blocking(&id2, &req))
            .await
            .map_err(|source| RuntimeError::Task {
                id: id.to_owned(),
                source,
            })?
    }

    fn exec_streaming_blocking(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<ExecProcess, RuntimeError> {
        let io = |op: &'static str| {
            move |source: std::io::Error| RuntimeError::Io {
                id: id.to_owned(),
                op,
                source,
            }
        };
        let null = |write: bool| -> Result<OwnedFd, RuntimeError> {
            let f = std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open("/dev/null")
                .map_err(io("open /dev/null"))?;
            Ok(f.into())
        };
        let pipe = || -> Result<(OwnedFd, OwnedFd), RuntimeError> {
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))
        };
        let mut ours = ExecIo {
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
        };
        let (child_in, child_out, child_err): (OwnedFd, OwnedFd, OwnedFd) = if req.tty {
            let pty = nix::pty::openpty(None, None).map_err(|e| io("openpty")(e.into()))?;
            set_cloexec(&pty.master).map_err(io("pty master"))?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(io("dup pty"));
            let stdin = if req.stdin {
                dup(&pty.slave)?
            } else {
                null(false)?
            };
            let out = (dup(&pty.slave)?, dup(&pty.slave)?);
            ours.pty = Some(pty.master);
            (stdin, out.0, out.1)
        } else {
            let stdin = if req.stdin {
                let (r, w) = pipe()?;
                ours.stdin = Some(w);
                r
            } else {
                null(false)?
            };
            let stdout = if req.stdout {
                let (r, w) = pipe()?;
                ours.stdout = Some(r);
                w
            } else {
                null(true)?
            };
            let stderr = if req.stderr {
                let (r, w) = pipe()?;
                ours.stderr = Some(r);
                w
            } else {
                null(true)?
            };
            (stdin, stdout, stderr)
        };
        let tenant = self.spawn_tenant(id, &req.args, [child_in, child_out, child_err])?;
        Ok(ExecProcess {
            started: Started::tenant(id.to_owned(), tenant),
            io: ours,
        })
    }
}

fn set_cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map(|_| ())
    .map_err(Into::into)
}

/// Sets the terminal size of the pty whose master is `fd`.
pub fn resize(fd: &impl AsRawFd, width: u16, height: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
