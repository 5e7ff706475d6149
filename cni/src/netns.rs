//! Network namespaces: running code inside one, and opening netlink sockets that live in one.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling *thread* only, so everything here
//! runs on a short-lived helper thread and never moves the caller (an async runtime worker must not
//! wander between namespaces). A netlink socket stays bound to the namespace it was created in, so
//! [`connect`] creates the socket on such a thread and then drives it from the caller's runtime.
//!
//! Namespaces are named by path: `/run/netns/<name>` (as `ip netns add` makes them),
//! `/proc/<pid>/ns/net`, or a bind mount the agent holds for a pod sandbox.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Errors entering a namespace or opening a netlink socket.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("opening a netlink socket{}", in_ns(.path))]
    Socket {
        path: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    #[error("building a runtime for network namespace {path}")]
    Runtime {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("helper thread for network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

fn in_ns(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

/// Opens a namespace file, keeping the path for error messages.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs `f` on a thread that has joined the network namespace at `path`, and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let ns = open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: path.to_path_buf(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Panicked {
                path: path.to_path_buf(),
            })?
    })
}

/// Runs the future made by `make` to completion on a single-threaded runtime inside the namespace
/// at `path`. Tests use this to act as a "host" namespace; so could a tool.
pub fn block_on_in<T, F, Fut>(path: &Path, make: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    run_in(path, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetnsError::Runtime {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(rt.block_on(make()))
    })?
}

/// Opens an rtnetlink connection in the namespace at `path` (or the caller's own namespace for
/// `None`) and spawns its driver on the current tokio runtime. Must be called within a runtime.
pub fn connect(path: Option<&Path>) -> Result<rtnetlink::Handle, NetnsError> {
    let socket_err = |source| NetnsError::Socket {
        path: path.map(Path::to_path_buf),
        source,
    };
    let (conn, handle, _) = match path {
        None => rtnetlink::new_connection().map_err(socket_err)?,
        Some(p) => {
            let rt = tokio::runtime::Handle::current();
            run_in(p, move || {
                // The socket registers with the caller's reactor, so enter it on this thread.
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })?
            .map_err(socket_err)?
        }
    };
    tokio::spawn(conn);
    Ok(handle)
}
