//! The container runtime: the only module that links libcontainer (youki). It creates, starts,
//! signals, waits for and deletes containers from OCI bundles, and writes their output as CRI
//! log files.
//!
//! Invariants:
//! - Every container is created with `with_systemd(false)` and an absolute cgroups path (see
//!   [`spec`]), so libcgroups uses plain cgroupfs on v1, hybrid and v2 alike.
//! - libcontainer is blocking; every call into it runs on the blocking pool.
//! - Every container is created by its own [`shim`] process (the binary given to
//!   [`Runtime::with_shim`], run as `<bin> shim …`), which is its parent, writes its log and
//!   records its exit; the agent waits on the shim through a pidfd (no thread parked in
//!   `waitpid` per container) and can adopt it after a restart ([`Runtime::adopt`], see
//!   [`crate::restart`]). Exec'd processes likewise start under a [`tenant`] helper
//!   (`<bin> shim-exec …`). This process never forks through libcontainer itself.
//! - No seccomp profile is ever put in a spec: the crate is built without libseccomp, and
//!   libcontainer would silently skip the profile.

pub mod cleanup;
pub mod exec;
pub mod logs;
pub mod shim;
pub mod spec;
pub mod tenant;
pub mod waiter;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// Serializes the libcontainer calls this process still makes itself (kill, delete: neither
/// forks). Everything that forks container processes (create, exec) runs in a fresh
/// single-threaded process instead, a [`shim`] or a [`tenant`] helper: libcontainer clones with a
/// raw `clone3` that skips libc's fork handlers, and a child cloned from this multi-threaded
/// process could inherit a lock (malloc's, a lazy static's) held by another thread and wait for
/// it forever.
static LIBCONTAINER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn libcontainer_lock() -> std::sync::MutexGuard<'static, ()> {
    // A panic while holding the lock leaves nothing to repair: the guard protects no data.
    LIBCONTAINER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runtime failures, each naming the container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container {id}: {op}: {source}")]
    Libcontainer {
        id: String,
        op: &'static str,
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    #[error("container {id}: {op}: {source}")]
    Io {
        id: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: writing config.json: {source}")]
    Spec {
        id: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("container {id}: started but has no pid")]
    NoPid { id: String },
    #[error("container {id}: shim: {reason}")]
    Shim { id: String, reason: String },
    #[error("container {id}: runtime task failed: {source}")]
    Task {
        id: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// How a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The shell convention: the exit status, or 128 + signal number.
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

/// A started container: its id and the pid of its init in the host's PID namespace.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub pid: i32,
    /// The pid of the container's shim, when a shim runs it.
    pub shim_pid: Option<i32>,
    /// The tasks copying the output into the log (none when a shim does it).
    pub copiers: Vec<tokio::task::JoinHandle<()>>,
    waiter: Waiter,
}

impl Started {
    /// A process a `shim-exec` helper started (an exec'd process).
    pub(crate) fn tenant(id: String, tenant: Tenant) -> Self {
        Self {
            id,
            pid: tenant.pid,
            shim_pid: None,
            copiers: Vec::new(),
            waiter: Waiter::Tenant(tenant),
        }
    }
}

/// What [`Runtime::wait`] waits on.
#[derive(Debug)]
enum Waiter {
    /// A `shim-exec` helper runs the process and reports its exit.
    Tenant(Tenant),
    /// A shim runs the container: a pidfd on the shim (and the shim's `Child` when this process
    /// spawned it, to reap it), then its `exit.json` in `dir`.
    Shim {
        pidfd: OwnedFd,
        child: Option<std::process::Child>,
        dir: PathBuf,
    },
}

/// What [`Runtime::adopt`] found of a container a previous agent started.
#[derive(Debug)]
pub enum Adopted {
    /// Its shim still runs: wait on it as on a container this agent started.
    Running(Started),
    /// It ended while no agent watched; how.
    Exited(Exit, String),
    /// Neither a shim nor an exit record: its end is unknown.
    Lost,
}

/// A handle on libcontainer's state directory (`<root>/<id>/state.json`, like `runc --root`).
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    /// The binary to run as `<bin> shim …` for every container; `None` = containers are this
    /// process's children and do not survive it.
    shim: Option<PathBuf>,
}

impl Runtime {
    /// A runtime keeping container state under `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            shim: None,
        }
    }

    /// Runs every container under a shim, `<bin> shim …` (see [`shim`]).
    pub fn with_shim(mut self, bin: Option<PathBuf>) -> Self {
        self.shim = bin;
        self
    }

    /// Whether containers outlive this process (they run under shims).
    pub fn shimmed(&self) -> bool {
        self.shim.is_some()
    }

    /// The shim's directory of container `id` (`exit.json`, the shim's own stderr): beside the
    /// state root, `<run-dir>/shims/<id>`.
    pub fn shim_dir(&self, id: &str) -> PathBuf {
        self.root.with_file_name("shims").join(id)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates and starts the container of the bundle at `bundle` (which holds `config.json`),
    /// with its output appended to the CRI log at `log`, and its stdin fed by attachers per
    /// `stdin`; with `tty`, on a pseudo-terminal its shim holds (see [`shim`]).
    pub async fn run(
        &self,
        id: &str,
        bundle: &Path,
        log: &Path,
        stdin: shim::Stdin,
        tty: bool,
    ) -> Result<Started, RuntimeError> {
        let root = self.root.clone();
        let bundle = bundle.to_path_buf();
        let id2 = id.to_owned();
        let task = |source| RuntimeError::Task {
            id: id.to_owned(),
            source,
        };
        if let Some(bin) = self.shim.clone() {
            let dir = self.shim_dir(id);
            let log = log.to_path_buf();
            return tokio::task::spawn_blocking(move || {
                spawn_shim(&bin, &root, &id2, &bundle, &log, &dir, stdin, tty)
            })
            .await
            .map_err(task)?;
        }
        Err(RuntimeError::Shim {
            id: id.to_owned(),
            reason: "no shim binary: containers run under `r3s-agent shim`; start the node from the r3s-agent or r3s-server binary".into(),
        })
    }

    /// Takes over container `id`, started by a previous agent under the shim `shim_pid`.
    pub async fn adopt(&self, id: &str, shim_pid: i32) -> Adopted {
        let dir = self.shim_dir(id);
        let pid = self.init_pid(id);
        // The pidfd first, then the check that the pid is still that shim: a pid reused by
        // another process after the check could not be mistaken for it.
        if let Ok(pidfd) = pidfd_open(shim_pid)
            && std::fs::read(format!("/proc/{shim_pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == id.as_bytes()))
        {
            return Adopted::Running(Started {
                id: id.to_owned(),
                pid: pid.unwrap_or(0),
                shim_pid: Some(shim_pid),
                copiers: Vec::new(),
                waiter: Waiter::Shim {
                    pidfd,
                    child: None,
                    dir,
                },
            });
        }
        match shim::read_exit(&dir) {
            Some(r) => Adopted::Exited(r.exit(), r.finished_at),
            None => Adopted::Lost,
        }
    }

    /// The init's pid from libcontainer's state, if there is one.
    fn init_pid(&self, id: &str) -> Option<i32> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.root.join(id).join("state.json")).ok()?)
                .ok()?;
        let pid = v
            .get("pid")
            .or_else(|| v.get("init_process_pid"))?
            .as_i64()?;
        i32::try_from(pid).ok()
    }

    /// Waits for the container's init to exit (and reaps it, or its shim).
    pub async fn wait(started: Started) -> Result<Exit, RuntimeError> {
        let id = started.id.clone();
        let io = |source| RuntimeError::Io {
            id: id.clone(),
            op: "wait",
            source,
        };
        match started.waiter {
            Waiter::Tenant(t) => t.finish_async(&id).await,
            Waiter::Shim {
                pidfd,
                mut child,
                dir,
            } => {
                // SAFETY: the AsyncFd owns the OwnedFd for its whole lifetime.
                let fd = unsafe { AsyncFd::register(pidfd) }.map_err(|e| io(e.into_parts().1))?;
                // The pidfd becomes readable when the shim exits.
                let guard = fd.readable().await.map_err(io)?;
                drop(guard);
                if let Some(c) = child.as_mut() {
                    let _ = c.wait();
                }
                shim::read_exit(&dir)
                    .map(|r| r.exit())
                    .ok_or_else(|| RuntimeError::Shim {
                        id: id.clone(),
                        reason: format!(
                            "ended without recording the exit; see {}",
                            dir.join("shim.log").display()
                        ),
                    })
            }
        }
    }

    /// Sends `signal` to the container's init (`all = false`) or to every process in its cgroup.
    pub async fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), RuntimeError> {
        let dir = self.root.join(id);
        let id2 = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let _lock = libcontainer_lock();
            let mut c = Container::load(dir).map_err(|source| RuntimeError::Libcontainer {
                id: id2.clone(),
                op: "load",
                source: Box::new(source),
            })?;
            c.kill(signal, all)
                .map_err(|source| RuntimeError::Libcontainer {
                    id: id2,
                    op: "kill",
                    source: Box::new(source),
                })
        })
        .await
        .map_err(|source| RuntimeError::Task {
            id: id.to_owned(),
            source,
        })?
    }

    /// Deletes the container (killing what is left in its cgroup) and its cgroups and state.
    /// Deleting a container that does not exist is not an error.
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.root.join(id);
        let id2 = id.to_owned();
        let shim_dir = self.shim_dir(id);
        tokio::task::spawn_blocking(move || {
            let r = delete_blocking(&dir, &id2);
            let _ = std::fs::remove_dir_all(&shim_dir);
            r
        })
        .await
        .map_err(|source| RuntimeError::Task {
            id: id.to_owned(),
            source,
        })?
    }

    /// Runs `args` inside the running container `id` (a tenant process in its namespaces and
    /// cgroup, with the container's environment), output discarded; returns its exit code, or
    /// `None` after `timeout` (the process is then killed). Blocking: call from the blocking pool.
    pub fn exec_blocking(
        &self,
        id: &str,
        args: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        let io = |op: &'static str| {
            move |source| RuntimeError::Io {
                id: id.to_owned(),
                op,
                source,
            }
        };
        let null = |write: bool| -> Result<OwnedFd, RuntimeError> {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(io("open /dev/null"))
        };
        let tenant = self.spawn_tenant(id, &args, [null(false)?, null(true)?, null(true)?])?;
        let deadline = std::time::Instant::now() + timeout;
        if !tenant.ended_by(deadline) {
            let _ = nix::sys::signal::kill(Pid::from_raw(tenant.pid), Signal::SIGKILL);
            let _ = tenant.finish(id);
            return Ok(None);
        }
        tenant.finish(id).map(|e| Some(e.code))
    }

    /// Starts `args` in container `id` through a `shim-exec` helper (see [`tenant`]) with
    /// `stdio` as the process's stdin, stdout and stderr. Blocking.
    pub(crate) fn spawn_tenant(
        &self,
        id: &str,
        args: &[String],
        stdio: [OwnedFd; 3],
    ) -> Result<Tenant, RuntimeError> {
        use std::io::BufRead;
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let io = |op: &'static str| {
            move |source| RuntimeError::Io {
                id: id.to_owned(),
                op,
                source,
            }
        };
        let Some(bin) = &self.shim else {
            return Err(RuntimeError::Shim {
                id: id.to_owned(),
                reason: "no shim binary: exec runs under `r3s-agent shim-exec`; start the node from the r3s-agent or r3s-server binary".into(),
            });
        };
        let (ctl_rx, ctl_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io("control pipe")(e.into()))?;
        let raw = ctl_tx.as_raw_fd();
        let [stdin, stdout, stderr] = stdio;
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("shim-exec")
            .arg(&self.root)
            .arg(id)
            .args(args)
            .stdin(std::process::Stdio::from(stdin))
            .stdout(std::process::Stdio::from(stdout))
            .stderr(std::process::Stdio::from(stderr));
        // SAFETY: the closure runs in the forked child before exec and only calls dup2 and
        // fcntl, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let target = tenant::CONTROL_FD;
                let rc = if raw == target {
                    libc::fcntl(target, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, target)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let spawned = cmd.spawn();
        // The child has its copies; ours of its stdio and of the control pipe's write end must
        // close, or the reader never sees end-of-file.
        drop(cmd);
        drop(ctl_tx);
        let mut child = spawned.map_err(io("spawn shim-exec"))?;
        let mut control = std::io::BufReader::new(std::fs::File::from(ctl_rx));
        let mut line = String::new();
        let _ = control.read_line(&mut line);
        let answer: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        let Some(pid) = answer["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) else {
            let _ = child.wait();
            return Err(RuntimeError::Shim {
                id: id.to_owned(),
                reason: answer["error"]
                    .as_str()
                    .unwrap_or("shim-exec ended without an answer")
                    .to_owned(),
            });
        };
        Ok(Tenant {
            pid,
            control,
            child,
        })
    }

    /// Ids of every container with state under the root.
    pub fn list(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

/// A process started by a `shim-exec` helper: its pid, the helper's control pipe (which
/// reports the exit) and the helper itself.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub pid: i32,
    control: std::io::BufReader<std::fs::File>,
    child: std::process::Child,
}

impl Tenant {
    /// Whether the exit report arrived by `deadline` (then [`Tenant::finish`] returns at once).
    fn ended_by(&self, deadline: std::time::Instant) -> bool {
        use std::os::fd::AsRawFd;
        if !self.control.buffer().is_empty() {
            return true;
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            let mut fd = libc::pollfd {
                fd: self.control.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll reads and writes exactly one pollfd, which outlives the call.
            let n = unsafe { libc::poll(&mut fd, 1, ms) };
            if n > 0 {
                return true;
            }
            if n == 0 && left.is_zero() {
                return false;
            }
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return true;
            }
        }
    }

    /// Waits for the exit report and reaps the helper. Blocking.
    fn finish(mut self, id: &str) -> Result<Exit, RuntimeError> {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = self.control.read_line(&mut line);
        let _ = self.child.wait();
        Self::report(id, line.as_bytes())
    }

    /// [`Tenant::finish`] without holding a thread while the process runs.
    async fn finish_async(self, id: &str) -> Result<Exit, RuntimeError> {
        use tokio::io::AsyncReadExt;
        let Tenant {
            control, mut child, ..
        } = self;
        let mut text = control.buffer().to_vec();
        if !text.contains(&b'\n') {
            let rx = tokio::net::unix::pipe::Receiver::from_file(control.into_inner());
            if let Ok(mut rx) = rx {
                let _ = rx.read_to_end(&mut text).await;
            }
        }
        // The helper exits right after its report.
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        Self::report(id, &text)
    }

    fn report(id: &str, text: &[u8]) -> Result<Exit, RuntimeError> {
        let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
        let Some(code) = v["code"].as_i64().and_then(|c| i32::try_from(c).ok()) else {
            return Err(RuntimeError::Shim {
                id: id.to_owned(),
                reason: "shim-exec ended without reporting the exit".into(),
            });
        };
        Ok(Exit {
            code,
            signal: v["signal"].as_i64().and_then(|c| i32::try_from(c).ok()),
        })
    }
}

/// Spawns `<bin> shim …` for container `id` and reads its one-line answer (see [`shim`]).
#[allow(clippy::too_many_arguments)]
fn spawn_shim(
    bin: &Path,
    root: &Path,
    id: &str,
    bundle: &Path,
    log: &Path,
    dir: &Path,
    stdin: shim::Stdin,
    tty: bool,
) -> Result<Started, RuntimeError> {
    use std::io::BufRead;
    let io = |op: &'static str| {
        move |source| RuntimeError::Io {
            id: id.to_owned(),
            op,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create shim directory"))?;
    let errlog = std::fs::File::create(dir.join("shim.log")).map_err(io("create shim.log"))?;
    let mut child = std::process::Command::new(bin)
        .arg("shim")
        .arg(root)
        .arg(id)
        .arg(bundle)
        .arg(log)
        .arg(dir)
        .args(stdin.arg())
        .args(tty.then_some("tty"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(errlog)
        .spawn()
        .map_err(io("spawn shim"))?;
    let shim_pid = i32::try_from(child.id()).map_err(|_| RuntimeError::Shim {
        id: id.to_owned(),
        reason: "pid out of range".into(),
    })?;
    // Opened before anything can reap the shim, so it names this shim.
    let pidfd = pidfd_open(shim_pid).map_err(io("pidfd_open"))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    let answer: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
    let Some(pid) = answer["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) else {
        let _ = child.wait();
        let reason = match answer["error"].as_str() {
            Some(e) => e.to_owned(),
            None => {
                let log = std::fs::read_to_string(dir.join("shim.log")).unwrap_or_default();
                format!("no answer ({})", log.trim())
            }
        };
        let _ = std::fs::remove_dir_all(dir);
        return Err(RuntimeError::Shim {
            id: id.to_owned(),
            reason,
        });
    };
    Ok(Started {
        id: id.to_owned(),
        pid,
        shim_pid: Some(shim_pid),
        copiers: Vec::new(),
        waiter: Waiter::Shim {
            pidfd,
            child: Some(child),
            dir: dir.to_path_buf(),
        },
    })
}

fn delete_blocking(dir: &Path, id: &str) -> Result<(), RuntimeError> {
    let _lock = libcontainer_lock();
    if !dir.join("state.json").exists() {
        let _ = std::fs::remove_dir_all(dir);
        return Ok(());
    }
    let mut c =
        Container::load(dir.to_path_buf()).map_err(|source| RuntimeError::Libcontainer {
            id: id.to_owned(),
            op: "load",
            source: Box::new(source),
        })?;
    c.delete(true).map_err(|source| RuntimeError::Libcontainer {
        id: id.to_owned(),
        op: "delete",
        source: Box::new(source),
    })
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
