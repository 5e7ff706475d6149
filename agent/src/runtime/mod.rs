//! The container runtime: the only module that links libcontainer (youki). It creates, starts,
//! signals, waits for and deletes containers from OCI bundles, and writes their output as CRI
//! log files.
//!
//! Invariants:
//! - Every container is created with `with_systemd(false)` and an absolute cgroups path (see
//!   [`spec`]), so libcgroups uses plain cgroupfs on v1, hybrid and v2 alike.
//! - libcontainer is blocking; every call into it runs on the blocking pool.
//! - A container's init is cloned with `CLONE_PARENT`, so it is a child of *this* process and only
//!   this process can reap it; [`Runtime::wait`] does so through a pidfd (no thread parked in
//!   `waitpid` per container). Surviving an agent restart therefore needs a design of its own:
//!   see [`crate::restart`]. With a shim binary ([`Runtime::with_shim`]) every container is
//!   created by its own [`shim`] process instead, which is its parent, writes its log and
//!   records its exit; the agent waits on the shim through a pidfd and can adopt it after a
//!   restart ([`Runtime::adopt`]).
//! - No seccomp profile is ever put in a spec: the crate is built without libseccomp, and
//!   libcontainer would silently skip the profile.

pub mod cleanup;
pub mod exec;
pub mod logs;
pub mod shim;
pub mod spec;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// Serializes every libcontainer call in this process.
///
/// libcontainer forks with a raw `clone3` from whichever thread calls it, and the child runs Rust
/// code (libcgroups, pathrs) that initializes process-wide lazy statics. If another thread of the
/// agent is in the middle of initializing one of those when the clone happens, the child inherits
/// a cell marked "being initialized" by a thread that does not exist in it, and waits forever
/// (seen here: an intermediate process parked in pathrs's procfs `Lazy`). With one libcontainer
/// call at a time no other thread is inside that code at clone time. Container operations are
/// short (tens of ms), so the lock costs little. Containers started under a shim are created in
/// the shim's own single-threaded process; the lock still covers exec, kill and delete here.
static LIBCONTAINER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn libcontainer_lock() -> std::sync::MutexGuard<'static, ()> {
    // A panic while holding the lock leaves nothing to repair: the guard protects no data.
    LIBCONTAINER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a libcontainer call that forks container processes with tracing silenced on this thread.
///
/// The forked processes inherit the thread's tracing dispatcher and write events to *their*
/// stderr, which by then is the container's: libcontainer's own warnings (e.g. "seccomp not
/// available") would otherwise appear in the container's log, in `kubectl logs`, and in exec
/// output. The failure itself still comes back as the call's error.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), f)
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
    /// A process that is this process's child (an exec'd process), waited on through `pidfd`.
    pub(crate) fn child(id: String, pid: i32, pidfd: OwnedFd) -> Self {
        Self {
            id,
            pid,
            shim_pid: None,
            copiers: Vec::new(),
            waiter: Waiter::Init(pidfd),
        }
    }
}

/// What [`Runtime::wait`] waits on.
#[derive(Debug)]
enum Waiter {
    /// The init is this process's child: a pidfd on it, then `waitpid`.
    Init(OwnedFd),
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
    /// `stdin` (only under a shim; without one, stdin is `/dev/null`).
    pub async fn run(
        &self,
        id: &str,
        bundle: &Path,
        log: &Path,
        stdin: shim::Stdin,
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
                spawn_shim(&bin, &root, &id2, &bundle, &log, &dir, stdin)
            })
            .await
            .map_err(task)?;
        }
        let pipes = logs::start(log).await.map_err(|e| RuntimeError::Io {
            id: id.to_owned(),
            op: "log pipes",
            source: std::io::Error::other(e.to_string()),
        })?;
        let (stdout, stderr) = (pipes.stdout, pipes.stderr);
        let mut started =
            tokio::task::spawn_blocking(move || run_blocking(&root, &id2, &bundle, stdout, stderr))
                .await
                .map_err(task)??;
        started.copiers = pipes.copiers;
        Ok(started)
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
        let pid = started.pid;
        let io = |source| RuntimeError::Io {
            id: id.clone(),
            op: "wait",
            source,
        };
        let pidfd = match started.waiter {
            Waiter::Init(fd) => fd,
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
                return shim::read_exit(&dir)
                    .map(|r| r.exit())
                    .ok_or_else(|| RuntimeError::Shim {
                        id: id.clone(),
                        reason: format!(
                            "ended without recording the exit; see {}",
                            dir.join("shim.log").display()
                        ),
                    });
            }
        };
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
        // the AsyncFd's whole lifetime.
        let fd = unsafe { AsyncFd::register(pidfd) }.map_err(|e| io(e.into_parts().1))?;
        loop {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Exit { code, signal: None }),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Ok(Exit {
                        code: 128 + sig as i32,
                        signal: Some(sig as i32),
                    });
                }
                Ok(_) => {}
                // Already reaped elsewhere (should not happen): report it as unknown.
                Err(nix::errno::Errno::ECHILD) => {
                    return Ok(Exit {
                        code: 255,
                        signal: None,
                    });
                }
                Err(e) => return Err(io(e.into())),
            }
            // The pidfd becomes readable when the process exits.
            let mut guard = fd.readable().await.map_err(io)?;
            guard.clear_ready();
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
        let null = || std::fs::OpenOptions::new().write(true).open("/dev/null");
        let out = null().map_err(io("open /dev/null"))?;
        let err = null().map_err(io("open /dev/null"))?;
        let lock = libcontainer_lock();
        let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(&self.root)
            .map_err(|source| RuntimeError::Libcontainer {
                id: id.to_owned(),
                op: "state root",
                source: Box::new(source),
            })?
            .with_executor(DefaultExecutor {})
            .with_stdout(out)
            .with_stderr(err)
            .as_tenant()
            .with_container_args(args)
            .with_detach(true);
        let pid = quietly(|| builder.build()).map_err(|source| RuntimeError::Libcontainer {
            id: id.to_owned(),
            op: "exec",
            source: Box::new(source),
        })?;
        // Waiting for the probe's process needs no lock.
        drop(lock);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(128 + sig as i32)),
                Ok(_) => {}
                Err(e) => return Err(io("wait for exec")(e.into())),
            }
            if std::time::Instant::now() >= deadline {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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

fn run_blocking(
    root: &Path,
    id: &str,
    bundle: &Path,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Started, RuntimeError> {
    let lc = |op: &'static str| {
        move |source| RuntimeError::Libcontainer {
            id: id.to_owned(),
            op,
            source: Box::new(source),
        }
    };
    std::fs::create_dir_all(root).map_err(|source| RuntimeError::Io {
        id: id.to_owned(),
        op: "create state root",
        source,
    })?;
    let _lock = libcontainer_lock();
    let builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(root)
        .map_err(lc("state root"))?
        .with_executor(DefaultExecutor {})
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_init(bundle)
        // InitContainerBuilder defaults to systemd, which needs D-Bus and a systemd PID 1.
        .with_systemd(false)
        .with_detach(true);
    let mut container = quietly(|| builder.build()).map_err(lc("create"))?;
    let pid = container
        .pid()
        .ok_or_else(|| RuntimeError::NoPid { id: id.to_owned() })?;
    // Open the pidfd before start: the init is our (unreaped) child, so the pid cannot be reused.
    let pidfd = pidfd_open(pid.as_raw()).map_err(|source| RuntimeError::Io {
        id: id.to_owned(),
        op: "pidfd_open",
        source,
    })?;
    if let Err(e) = quietly(|| container.start()) {
        let _ = container.delete(true);
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
        return Err(lc("start")(e));
    }
    Ok(Started {
        id: id.to_owned(),
        pid: pid.as_raw(),
        shim_pid: None,
        copiers: Vec::new(),
        waiter: Waiter::Init(pidfd),
    })
}

/// Spawns `<bin> shim …` for container `id` and reads its one-line answer (see [`shim`]).
fn spawn_shim(
    bin: &Path,
    root: &Path,
    id: &str,
    bundle: &Path,
    log: &Path,
    dir: &Path,
    stdin: shim::Stdin,
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
