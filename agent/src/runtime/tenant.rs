//! `r3s-agent shim-exec <state-root> <id> <arg>…`: starts one process inside a running container
//! (for `kubectl exec` and exec probes), stays its parent and reports how it ended.
//!
//! Why a process of its own: libcontainer forks with a raw `clone3`, which skips libc's fork
//! handlers, and the child runs Rust code that allocates before it execs. Cloned from the
//! multi-threaded agent, the child can inherit a malloc lock another thread held at that instant
//! and wait for it forever (seen in CI: an exec probe's child parked in `realloc`). This helper is
//! a fresh, single-threaded process, so nothing is held when libcontainer clones.
//!
//! Protocol with the agent, which spawns it with the process's stdin, stdout and stderr as the
//! helper's own 0, 1 and 2, and the write end of a control pipe as descriptor 3:
//! - one line `{"pid":<pid>}` on fd 3 once the process runs, or `{"error":"<text>"}` and exit 1;
//! - one line `{"code":<n>,"signal":<n|null>}` on fd 3 when the process ended (the helper reaps
//!   it), then exit 0.
//!
//! The helper never writes to its stdout or stderr: they belong to the exec'd process.
//!
//! A terminal handed in as stdin (or stdout/stderr) becomes the process's controlling terminal
//! ([`TerminalExecutor`]), so the terminal's line discipline turns a typed `^C` into SIGINT for
//! the foreground job, as `kubectl exec -t` users expect.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::sys::wait::{WaitStatus, waitpid};
use oci_spec::runtime::Spec;

/// The descriptor the agent hands the control pipe on.
pub const CONTROL_FD: i32 = 3;

pub fn main(args: &[OsString]) -> ExitCode {
    // SAFETY: F_GETFD reads the descriptor's flags and touches no memory.
    if unsafe { libc::fcntl(CONTROL_FD, libc::F_GETFD) } < 0 {
        eprintln!(
            "r3s shim-exec: descriptor {CONTROL_FD} is not open; this helper is started by the agent"
        );
        return ExitCode::from(2);
    }
    // SAFETY: descriptor 3 is open (checked above) and nothing else in this process owns it.
    let mut control = unsafe { std::fs::File::from_raw_fd(CONTROL_FD) };
    let mut answer = |v: serde_json::Value| {
        let _ = writeln!(control, "{v}");
        let _ = control.flush();
    };
    let [root, id, command @ ..] = args else {
        answer(serde_json::json!({"error": "usage: shim-exec <state-root> <id> <arg>..."}));
        return ExitCode::from(2);
    };
    let command: Option<Vec<String>> = command
        .iter()
        .map(|a| a.to_str().map(String::from))
        .collect();
    let Some(command) = command.filter(|c| !c.is_empty()) else {
        answer(serde_json::json!({"error": "no command, or a command that is not UTF-8"}));
        return ExitCode::from(2);
    };
    let id = id.to_string_lossy().into_owned();
    let pid = match start(PathBuf::from(root), &id, command) {
        Ok(pid) => pid,
        Err(e) => {
            answer(serde_json::json!({ "error": e }));
            return ExitCode::FAILURE;
        }
    };
    answer(serde_json::json!({ "pid": pid.as_raw() }));
    let (code, signal) = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (128 + sig as i32, Some(sig as i32)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break (255, None),
        }
    };
    answer(serde_json::json!({ "code": code, "signal": signal }));
    ExitCode::SUCCESS
}

/// Starts `command` as a tenant of container `id`, with this process's stdio as its own.
fn start(root: PathBuf, id: &str, command: Vec<String>) -> Result<nix::unistd::Pid, String> {
    let dup = |fd: i32| {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) returns a new descriptor this process then owns alone.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if new < 0 {
            return Err(format!(
                "stdio descriptor {fd}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `new` was just returned by the kernel and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    };
    let (stdin, stdout, stderr) = (dup(0)?, dup(1)?, dup(2)?);
    ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .map_err(|e| format!("state root: {e}"))?
        .with_executor(TerminalExecutor)
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_tenant()
        .with_container_args(command)
        .with_detach(true)
        .build()
        .map_err(|e| format!("exec: {e}"))
}

/// Runs the workload as libcontainer's default executor does, after making the first of the
/// standard descriptors that is a terminal the controlling terminal. It runs in the container's
/// init process, which libcontainer has already made a session leader without a terminal
/// (`setsid`), the one state in which `TIOCSCTTY` succeeds; the session's process group then is
/// the terminal's foreground group, and a shell's job control can take it from there.
#[derive(Clone)]
pub(super) struct TerminalExecutor;

impl Executor for TerminalExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        for fd in 0..3 {
            // SAFETY: isatty and ioctl(TIOCSCTTY, 0) only read the descriptor's state; neither
            // touches memory of this process.
            if unsafe { libc::isatty(fd) } == 1 {
                if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
                    // Without it the terminal still works, only ^C stays a byte: not fatal.
                    tracing::debug!(
                        "TIOCSCTTY on descriptor {fd}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                break;
            }
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(
        &self,
        envs: std::collections::HashMap<String, String>,
    ) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}
