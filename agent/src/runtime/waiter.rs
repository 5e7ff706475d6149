//! The second half of a container's shim, `<bin> shim wait <id> <init-pid> <log> <shim-dir>
//! <out-fd> <err-fd|tty> [<stdin-fd> stdin|stdin-once]`: what the shim becomes, by `execve` of its own
//! executable, once the container started. It only waits: it reaps the container's init (and
//! whatever the container leaves behind, the shim being a child subreaper), copies the output
//! pipes into the CRI log, feeds the container's stdin from the attach FIFO, and records the exit
//! (`exit.json`, see [`super::shim`]).
//!
//! Why an `execve`: the shim that created the container mapped and touched libcontainer, the OCI
//! spec parser and their heap, none of which it needs afterwards, and one such process runs per
//! container. `execve` keeps what the waiting needs (the pid, so the agent's pidfd and the
//! container's parent stay the same; the children; the subreaper flag; the session; the file
//! descriptors without close-on-exec) and drops everything else: the new image touches only the
//! pages of this module's code path. It is single-threaded (one `poll` loop over the pipes, the
//! FIFO and a `signalfd` for SIGCHLD), so no thread stacks and no per-thread malloc arenas.
//!
//! With `tty` in place of the stderr descriptor, `<out-fd>` is the master of the container's
//! terminal (one stream, logged as `stdout`, each read logged at once, a partial line as a `P`
//! record, so an attacher sees a prompt that has no newline yet) and `<stdin-fd>` a second
//! descriptor of that master: input is typed into the terminal, and stopping the feed closes only
//! that second descriptor, never hanging the terminal up.
//!
//! Invariants: the container's id stays in the command line (the agent recognises an adopted
//! shim by it, see [`super::Runtime::adopt`]); a full log disk never blocks the container (the
//! pipes are drained whatever the write returned); stdin is written without blocking (a container
//! that does not read its stdin cannot stop its output from being copied).

use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::Exit;
use super::logs::CriWriter;
use super::shim::{self, Stdin};

/// How long the waiter waits, after the init exited, for other holders of the output pipes
/// (processes of a host-PID container that outlived it) before recording the exit anyway.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// What the waiter is given: the container and the descriptors the shim created for it.
pub struct Wait {
    pub id: String,
    pub init: i32,
    pub log: PathBuf,
    pub dir: PathBuf,
    pub out: OwnedFd,
    /// `None` when `out` is a terminal's master (a terminal has one stream).
    pub err: Option<OwnedFd>,
    /// The write end of the container's stdin and how it is fed (never [`Stdin::None`]).
    pub stdin: Option<(OwnedFd, Stdin)>,
}

/// Replaces this process with `<own executable> shim wait …` for `w`. Returns only on failure,
/// giving `w` back so the caller can wait in this process instead.
pub fn exec_self(w: Wait) -> (Wait, std::io::Error) {
    let fds: Vec<RawFd> = std::iter::once(w.out.as_raw_fd())
        .chain(w.err.as_ref().map(|fd| fd.as_raw_fd()))
        .chain(w.stdin.as_ref().map(|(fd, _)| fd.as_raw_fd()))
        .collect();
    for &fd in &fds {
        // SAFETY: F_SETFD with 0 only clears close-on-exec on a descriptor `w` owns.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return (w, std::io::Error::last_os_error());
        }
    }
    let mut args: Vec<OsString> = vec![
        std::env::args_os()
            .next()
            .unwrap_or_else(|| "r3s-shim".into()),
        "shim".into(),
        "wait".into(),
        w.id.clone().into(),
        w.init.to_string().into(),
        w.log.clone().into(),
        w.dir.clone().into(),
        w.out.as_raw_fd().to_string().into(),
        w.err
            .as_ref()
            .map_or_else(|| "tty".into(), |fd| fd.as_raw_fd().to_string().into()),
    ];
    if let Some((fd, mode)) = &w.stdin {
        args.push(fd.as_raw_fd().to_string().into());
        args.push(mode.arg().unwrap_or("stdin").into());
    }
    let argv: Result<Vec<CString>, _> = args.iter().map(|a| CString::new(a.as_bytes())).collect();
    let err = match argv {
        Ok(argv) => match nix::unistd::execv(c"/proc/self/exe", &argv) {
            Err(e) => std::io::Error::from(e),
            Ok(never) => match never {},
        },
        Err(e) => std::io::Error::other(e),
    };
    (w, err)
}

/// `shim wait …`: `args` are the operands after `wait`.
pub fn main(args: &[OsString]) -> ExitCode {
    match parse(args) {
        Ok(w) => run(w),
        Err(e) => {
            eprintln!("r3s shim wait: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: &[OsString]) -> Result<Wait, String> {
    let fd = |a: &OsString| -> Result<OwnedFd, String> {
        let n: RawFd = a
            .to_str()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n > 2)
            .ok_or_else(|| format!("not a descriptor: {}", a.to_string_lossy()))?;
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
            return Err(format!("descriptor {n} is not open"));
        }
        // SAFETY: the shim passed this open descriptor to this process image for it alone;
        // nothing else here owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    };
    let (id, init, log, dir, out, err, rest) = match args {
        [id, init, log, dir, out, err, rest @ ..] => (id, init, log, dir, out, err, rest),
        _ => return Err("usage: shim wait <id> <init-pid> <log> <shim-dir> <out-fd> <err-fd|tty> [<stdin-fd> stdin|stdin-once]".into()),
    };
    let stdin = match rest {
        [] => None,
        [f, m] if m == "stdin" => Some((fd(f)?, Stdin::Open)),
        [f, m] if m == "stdin-once" => Some((fd(f)?, Stdin::Once)),
        _ => return Err("stdin: expected <fd> stdin|stdin-once".into()),
    };
    Ok(Wait {
        id: id.to_string_lossy().into_owned(),
        init: init
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or("bad init pid")?,
        log: PathBuf::from(log),
        dir: PathBuf::from(dir),
        out: fd(out)?,
        err: if err == "tty" { None } else { Some(fd(err)?) },
        stdin,
    })
}

/// One output pipe and its records.
struct Stream {
    rx: std::fs::File,
    w: CriWriter,
    /// A terminal: log each read at once, an unfinished line included.
    tty: bool,
}

/// The attach FIFO and the container's stdin.
struct Feed {
    fifo: PathBuf,
    rx: Option<std::fs::File>,
    tx: std::fs::File,
    buf: Vec<u8>,
    once: bool,
    /// With `stdin-once`, the first attacher left: close stdin once `buf` is written.
    closing: bool,
}

impl Feed {
    fn open(fifo: &Path) -> Option<std::fs::File> {
        // Non-blocking: opening for reading does not wait for a writer, and poll reports a
        // hang-up only after a writer that came since this open left.
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .ok()
    }

    /// The FIFO is readable or hung up.
    fn on_fifo(&mut self, scratch: &mut [u8]) {
        let Some(rx) = &mut self.rx else { return };
        match rx.read(scratch) {
            Ok(0) => {
                // The attacher detached.
                if self.once {
                    // Later attachers find no FIFO: stdin is closed for good.
                    let _ = std::fs::remove_file(&self.fifo);
                    self.rx = None;
                    self.closing = true;
                } else {
                    self.rx = Self::open(&self.fifo);
                }
            }
            Ok(n) => self.buf.extend_from_slice(&scratch[..n]),
            Err(e) if would_wait(&e) => {}
            Err(_) => self.rx = Self::open(&self.fifo),
        }
    }

    /// The container's stdin is writable; `false` once it is closed (nothing more to feed).
    fn on_stdin(&mut self) -> bool {
        match self.tx.write(&self.buf) {
            Ok(n) => {
                self.buf.drain(..n);
                true
            }
            Err(e) if would_wait(&e) => true,
            Err(_) => {
                // The container closed its stdin.
                let _ = std::fs::remove_file(&self.fifo);
                false
            }
        }
    }
}

fn would_wait(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// A `signalfd` for SIGCHLD (blocked, so it is only reported there).
fn sigchld_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset initialise it.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `mask` is a valid sigset_t; sigprocmask and signalfd only read it, and this process
    // is single-threaded.
    let fd = unsafe {
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reaps every exited child; returns the init's end when it is among them.
fn sweep(init: i32) -> Option<Exit> {
    let mut exit = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == init => {
                exit = Some(Exit { code, signal: None });
            }
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == init => {
                exit = Some(Exit {
                    code: 128 + sig as i32,
                    signal: Some(sig as i32),
                });
            }
            Ok(WaitStatus::StillAlive) => return exit,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // No children left without having seen the init: should not happen.
            Err(_) => {
                return exit.or(Some(Exit {
                    code: 255,
                    signal: None,
                }));
            }
        }
    }
}

/// Waits for the container and records its exit (in this process, after `execve` or not).
pub fn run(w: Wait) -> ExitCode {
    let sigfd = match sigchld_fd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("r3s shim wait {}: signalfd: {e}", w.id);
            return ExitCode::FAILURE;
        }
    };
    let open_log = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&w.log)
    };
    let (f1, f2) = match (open_log(), open_log()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("r3s shim wait {}: log file {}: {e}", w.id, w.log.display());
            return ExitCode::FAILURE;
        }
    };
    let tty = w.err.is_none();
    let tty_file = shim::tty_file(&w.dir);
    let mut streams = [
        Some(Stream {
            rx: w.out.into(),
            w: CriWriter::new(f1, "stdout"),
            tty,
        }),
        w.err.map(|err| Stream {
            rx: err.into(),
            w: CriWriter::new(f2, "stderr"),
            tty: false,
        }),
    ];
    let mut feed = w.stdin.map(|(tx, mode)| {
        // SAFETY: F_SETFL with O_NONBLOCK on a descriptor `tx` owns; the container's end of the
        // pipe (or the terminal's slave) is a separate open file description and stays blocking.
        // A terminal's master shares this one with the output stream, which is polled anyway.
        unsafe { libc::fcntl(tx.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let fifo = shim::stdin_fifo(&w.dir);
        Feed {
            rx: Feed::open(&fifo),
            fifo,
            tx: tx.into(),
            buf: Vec::new(),
            once: mode == Stdin::Once,
            closing: false,
        }
    });
    let mut scratch = vec![0u8; 8192];
    // The init may have exited before the signalfd existed.
    let mut exit = sweep(w.init);
    let mut deadline = exit.map(|_| Instant::now() + DRAIN_WAIT);
    loop {
        if exit.is_some() {
            // Stdin no longer matters.
            feed = None;
            if streams.iter().all(Option::is_none) {
                break;
            }
        }
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        };
        // Slots: 0 signalfd, 1 stdout, 2 stderr, 3 FIFO, 4 container stdin (-1 = not polled).
        let mut pfds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 5];
        pfds[0] = pollfd(sigfd.as_raw_fd(), libc::POLLIN);
        for (i, s) in streams.iter().enumerate() {
            if let Some(s) = s {
                pfds[1 + i] = pollfd(s.rx.as_raw_fd(), libc::POLLIN);
            }
        }
        if let Some(f) = &feed {
            if f.buf.is_empty() {
                if let Some(rx) = &f.rx {
                    pfds[3] = pollfd(rx.as_raw_fd(), libc::POLLIN);
                }
            } else {
                pfds[4] = pollfd(f.tx.as_raw_fd(), libc::POLLOUT);
            }
        }
        // SAFETY: `pfds` is a valid array of 5 pollfd; negative fds are ignored by poll.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("r3s shim wait {}: poll: {e}", w.id);
            break;
        }
        if pfds[0].revents != 0 {
            // Drain the queued signals, then reap.
            let mut info = [0u8; 128];
            // SAFETY: reads into a local buffer of the size given.
            while unsafe { libc::read(sigfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0
            {
            }
            if exit.is_none() {
                exit = sweep(w.init);
                if exit.is_some() {
                    deadline = Some(Instant::now() + DRAIN_WAIT);
                }
            } else {
                let _ = sweep(w.init);
            }
        }
        for (i, slot) in streams.iter_mut().enumerate() {
            if pfds[1 + i].revents == 0 {
                continue;
            }
            let Some(s) = slot else { continue };
            match s.rx.read(&mut scratch) {
                Ok(n) if n > 0 => {
                    s.w.push(&scratch[..n]);
                    if s.tty {
                        s.w.flush_partial();
                    }
                }
                Err(e) if would_wait(&e) => {}
                // End of file, or EIO from a terminal's master once no slave is open.
                _ => {
                    if let Some(s) = slot.take() {
                        if s.tty {
                            let _ = std::fs::remove_file(&tty_file);
                        }
                        s.w.finish();
                    }
                }
            }
        }
        if let Some(f) = &mut feed {
            if pfds[3].revents != 0 {
                f.on_fifo(&mut scratch);
            }
            let open = pfds[4].revents == 0 || f.on_stdin();
            if !open || (f.closing && f.buf.is_empty()) {
                // Dropping the feed closes the container's stdin (it reads EOF).
                feed = None;
            }
        }
    }
    // Records whatever the streams still hold (the deadline passed with a writer left).
    for s in streams.into_iter().flatten() {
        s.w.finish();
    }
    if tty {
        let _ = std::fs::remove_file(&tty_file);
    }
    let exit = exit.unwrap_or(Exit {
        code: 255,
        signal: None,
    });
    shim::record_exit(&w.dir, &w.id, exit)
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}
