//! The per-container shim, `r3s-agent shim <state-root> <id> <bundle> <log> <shim-dir> [stdin|stdin-once] [tty]`: the
//! process that creates a container, stays its parent, copies its output into the CRI log, and
//! records how it ended, so the container outlives the agent (see [`crate::restart`]).
//!
//! Protocol with the agent (which spawns the shim and reads its stdout):
//! - on success the shim writes one line `{"pid":<init pid>}` to stdout, then points stdout at
//!   `/dev/null`; on failure one line `{"error":"<text>"}` and exits 1;
//! - when the init exits (and the output pipes drained, or 2 s passed), it writes
//!   `<shim-dir>/exit.json` (`{"code":…,"signal":…,"finished_at":"…"}`) atomically and exits 0.
//!   The agent learns of that through a pidfd on the shim, whether it spawned the shim or
//!   adopted it after a restart, and then reads the file.
//!
//! - with `stdin`/`stdin-once` (a container with `stdin: true`), the container's stdin is a pipe
//!   the shim holds, fed from the FIFO `<shim-dir>/stdin`: each attacher opens the FIFO for
//!   writing and closes it when it detaches; with `stdin-once` the first detach closes the
//!   container's stdin (it reads EOF), otherwise the shim waits for the next attacher.
//! - with `tty` (a container with `tty: true`), the container runs on a pseudo-terminal the shim
//!   allocates: the slave is its stdin, stdout and stderr and its controlling terminal (in the
//!   session libcontainer's init starts), the shim keeps the master. The terminal's output goes to
//!   the log as `stdout` (a terminal has one stream), unfinished lines included (a shell's prompt
//!   must reach an attacher), and attach input from the FIFO is typed into the master, so the
//!   line discipline echoes it and turns `^C` into SIGINT. The slave's path is in
//!   `<shim-dir>/tty` while the terminal is open, for attachers to resize it (`TIOCSWINSZ`);
//!   `stdin-once` stops reading the FIFO after the first attacher but never hangs the terminal up.
//!
//! Once the container started and the pid was answered, the shim `execve`s its own executable as
//! `shim wait …` (see [`super::waiter`]): same pid, same children, but none of the memory that
//! creating the container took; that waiter copies the output, feeds stdin and writes `exit.json`.
//!
//! Invariants: the shim calls libcontainer while it has a single thread (it never starts one), so nothing in libcontainer's raw `clone3` can inherit a
//! half-initialized lock; it runs in its own session (`setsid`), so signals aimed at the agent's
//! process group or terminal never reach it; it is a child subreaper, so it reaps whatever the
//! container leaves behind. It never writes anything but the log, `exit.json` and stdout.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::sys::wait::waitpid;

use super::Exit;

/// What the shim writes into `exit.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    pub code: i32,
    pub signal: Option<i32>,
    pub finished_at: String,
}

impl ExitRecord {
    pub fn exit(&self) -> Exit {
        Exit {
            code: self.code,
            signal: self.signal,
        }
    }
}

/// How the container's stdin is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// `/dev/null` (no `stdin: true`).
    None,
    /// From attachers, until the container exits.
    Open,
    /// From the first attacher, then EOF (`stdinOnce: true`).
    Once,
}

impl Stdin {
    pub(super) fn arg(self) -> Option<&'static str> {
        match self {
            Stdin::None => None,
            Stdin::Open => Some("stdin"),
            Stdin::Once => Some("stdin-once"),
        }
    }
}

/// The FIFO attachers write the container's stdin into.
pub fn stdin_fifo(dir: &Path) -> PathBuf {
    dir.join("stdin")
}

/// The file holding the path of the container's terminal (its pty slave), while it has one.
pub fn tty_file(dir: &Path) -> PathBuf {
    dir.join("tty")
}

/// The file the shim writes when the container ended.
pub fn exit_file(dir: &Path) -> PathBuf {
    dir.join("exit.json")
}

/// Reads `exit.json` in `dir`, if the shim wrote it.
pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&std::fs::read(exit_file(dir)).ok()?).ok()
}

/// The shim's `main`: `args` are the five operands after `shim`.
pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    if let Some((first, rest)) = args.split_first()
        && first == "wait"
    {
        return super::waiter::main(rest);
    }
    let usage = || {
        eprintln!(
            "usage: r3s-agent shim <state-root> <id> <bundle> <log> <shim-dir> [stdin|stdin-once] [tty]"
        );
        ExitCode::from(2)
    };
    let [root, id, bundle, log, dir, modes @ ..] = args else {
        return usage();
    };
    let Some((stdin, tty)) = parse_modes(modes) else {
        return usage();
    };
    let id = id.to_string_lossy().into_owned();
    let (root, bundle, log, dir) = (
        PathBuf::from(root),
        PathBuf::from(bundle),
        PathBuf::from(log),
        PathBuf::from(dir),
    );
    // Its own session: the agent's process group and terminal are not the shim's.
    let _ = nix::unistd::setsid();
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let (pid, wait) = match start(&root, &id, &bundle, &log, &dir, stdin, tty) {
        Ok(v) => v,
        Err(e) => {
            answer(&serde_json::json!({ "error": e }));
            return ExitCode::FAILURE;
        }
    };
    answer(&serde_json::json!({ "pid": pid }));
    // Nobody reads stdout any more (the agent may be gone): keep it off the agent's pipe.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
    // Become the waiter (see super::waiter); if that exec fails, wait in this process.
    let (wait, err) = super::waiter::exec_self(wait);
    eprintln!("r3s-agent shim {id}: exec of the waiter: {err}; waiting in this process");
    super::waiter::run(wait)
}

/// The optional operands after the shim directory: `[stdin|stdin-once] [tty]`, in that order.
fn parse_modes(modes: &[std::ffi::OsString]) -> Option<(Stdin, bool)> {
    let mut stdin = Stdin::None;
    let mut rest = modes;
    if let Some((first, tail)) = rest.split_first() {
        if first == "stdin" {
            stdin = Stdin::Open;
            rest = tail;
        } else if first == "stdin-once" {
            stdin = Stdin::Once;
            rest = tail;
        }
    }
    match rest {
        [] => Some((stdin, false)),
        [t] if t == "tty" => Some((stdin, true)),
        _ => None,
    }
}

/// Writes `exit.json` in `dir` atomically (the shim's last act).
pub(super) fn record_exit(dir: &Path, id: &str, exit: Exit) -> ExitCode {
    let record = ExitRecord {
        code: exit.code,
        signal: exit.signal,
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let tmp = dir.join("exit.json.tmp");
    let written = serde_json::to_vec(&record)
        .map_err(std::io::Error::other)
        .and_then(|body| std::fs::write(&tmp, body))
        .and_then(|()| std::fs::rename(&tmp, exit_file(dir)));
    if let Err(e) = written {
        eprintln!("r3s-agent shim {id}: writing exit.json: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn answer(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Creates and starts the container with its output on two new pipes; returns the init's pid and
/// what the waiter needs. Single-threaded throughout.
fn start(
    root: &Path,
    id: &str,
    bundle: &Path,
    log: &Path,
    dir: &Path,
    stdin: Stdin,
    tty: bool,
) -> Result<(i32, super::waiter::Wait), String> {
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    // Fails early, before a container exists, if the log cannot be written.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("log file {}: {e}", log.display()))?;
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("creating an output pipe: {e}"))
    };
    if tty {
        return start_on_terminal(root, id, bundle, log, dir, stdin);
    }
    let (out_rx, out_tx) = pipe()?;
    let (err_rx, err_tx) = pipe()?;
    let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .map_err(|e| format!("state root: {e}"))?
        .with_executor(DefaultExecutor {});
    let mut feed = None;
    if stdin != Stdin::None {
        let fifo = stdin_fifo(dir);
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("creating {}: {e}", fifo.display()))?;
        let (in_rx, in_tx) = pipe()?;
        builder = builder.with_stdin(in_rx);
        feed = Some((in_tx, stdin));
    }
    let builder = builder
        .with_stdout(out_tx)
        .with_stderr(err_tx)
        .as_init(bundle)
        // InitContainerBuilder defaults to systemd, which needs D-Bus and a systemd PID 1.
        .with_systemd(false)
        .with_detach(true);
    let mut container = builder.build().map_err(|e| format!("create: {e}"))?;
    let pid = container
        .pid()
        .ok_or_else(|| "started but has no pid".to_string())?;
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        let _ = waitpid(pid, None);
        return Err(format!("start: {e}"));
    }
    Ok((
        pid.as_raw(),
        super::waiter::Wait {
            id: id.to_owned(),
            init: pid.as_raw(),
            log: log.to_path_buf(),
            dir: dir.to_path_buf(),
            out: out_rx,
            err: Some(err_rx),
            stdin: feed,
        },
    ))
}

/// [`start`] for a container with `tty: true`: its stdio is the slave of a new pty, whose master
/// the waiter keeps (one descriptor for the output, a second for the input when `stdin` is fed).
fn start_on_terminal(
    root: &Path,
    id: &str,
    bundle: &Path,
    log: &Path,
    dir: &Path,
    stdin: Stdin,
) -> Result<(i32, super::waiter::Wait), String> {
    use std::os::fd::OwnedFd;
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
    let cloexec = |fd: &OwnedFd| {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| format!("pty: {e}"))
    };
    cloexec(&pty.master)?;
    cloexec(&pty.slave)?;
    let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .map_err(|e| format!("pty slave path: {e}"))?;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup pty: {e}"));
    let mut feed = None;
    if stdin != Stdin::None {
        let fifo = stdin_fifo(dir);
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| format!("creating {}: {e}", fifo.display()))?;
        feed = Some((dup(&pty.master)?, stdin));
    }
    let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .map_err(|e| format!("state root: {e}"))?
        // Makes the slave the init's controlling terminal, in the session libcontainer made.
        .with_executor(super::tenant::TerminalExecutor)
        .with_stdin(dup(&pty.slave)?)
        .with_stdout(dup(&pty.slave)?)
        .with_stderr(pty.slave)
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true);
    let mut container = builder.build().map_err(|e| format!("create: {e}"))?;
    let pid = container
        .pid()
        .ok_or_else(|| "started but has no pid".to_string())?;
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        let _ = waitpid(pid, None);
        return Err(format!("start: {e}"));
    }
    // Attachers resize the terminal through its slave; the waiter removes the file at hang-up.
    let _ = std::fs::write(tty_file(dir), slave_path.as_os_str().as_encoded_bytes());
    Ok((
        pid.as_raw(),
        super::waiter::Wait {
            id: id.to_owned(),
            init: pid.as_raw(),
            log: log.to_path_buf(),
            dir: dir.to_path_buf(),
            out: pty.master,
            err: None,
            stdin: feed,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(args: &[&str]) -> Option<(Stdin, bool)> {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        parse_modes(&args)
    }

    #[test]
    fn stdin_and_tty_operands() {
        assert_eq!(modes(&[]), Some((Stdin::None, false)));
        assert_eq!(modes(&["stdin"]), Some((Stdin::Open, false)));
        assert_eq!(modes(&["stdin-once", "tty"]), Some((Stdin::Once, true)));
        assert_eq!(modes(&["tty"]), Some((Stdin::None, true)));
        assert_eq!(modes(&["tty", "stdin"]), None);
        assert_eq!(modes(&["stdin", "stdin"]), None);
        assert_eq!(modes(&["bogus"]), None);
        // What the agent passes is what the shim reads.
        for stdin in [Stdin::None, Stdin::Open, Stdin::Once] {
            for tty in [false, true] {
                let args: Vec<&str> = stdin
                    .arg()
                    .into_iter()
                    .chain(tty.then_some("tty"))
                    .collect();
                assert_eq!(modes(&args), Some((stdin, tty)));
            }
        }
    }
}
