//! The outer process: it builds the isolation the benchmark runs in, runs the real work as a child
//! (the "inner" process, this same binary) and, however that ends, removes everything the run made.
//!
//! Isolation: two network namespaces, `r3sb<pid>` (the inner process, the server, etcd, the
//! registry) and `r3sba<pid>` (the lone agent), joined by a veth pair on 203.0.113.0/24. The inner
//! process enters the first with `setns` and a mount namespace of its own (`unshare`, propagation
//! slave: the machine's mounts, the cgroup trees under /sys/fs/cgroup included, stay visible, its
//! own overlay and bind mounts stay private and vanish with it). Not `ip netns exec`: that mounts a
//! fresh sysfs over /sys, which hides the cgroup trees, and libcontainer then fails with "failed to
//! detect cgroup setup". The lone agent enters its namespace the same way ([`enter`]).
//!
//! Everything the run writes lives under one directory, `/var/tmp/r3s-bench-<pid>` (data, and
//! `TMPDIR` for the inner process so the registry's temp dirs land there too), plus logs on tmpfs in
//! `/dev/shm/r3s-bench-<pid>`.
//!
//! Interrupts: SIGINT/SIGTERM to the outer process is forwarded to the inner one, which stops its
//! children by PID through its drop guards. The inner process runs in a process group of its own
//! (a terminal's Ctrl-C reaches only the outer one, which orders the shutdown) and gets SIGTERM if
//! the outer process dies (`PR_SET_PDEATHSIG`). After the inner process is gone (or killed, if it
//! does not stop within [`GRACE`] or a second signal comes), the outer one sweeps: every process
//! still in either namespace, every container recorded in a libcontainer or runc state file under
//! the run directory, their cgroups (`/sys/fs/cgroup/*/r3s/pod<uid>` and `r3sb<pid>-*`), the run
//! and log directories, and both namespaces.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::cluster::{AGENT_IP, SERVER_IP};

const ENV_NS: &str = "R3S_BENCH_NETNS";
const ENV_AGENT_NS: &str = "R3S_BENCH_AGENT_NETNS";
const ENV_DIR: &str = "R3S_BENCH_DIR";
const ENV_LOGS: &str = "R3S_BENCH_LOGS";
const ENV_TAG: &str = "R3S_BENCH_TAG";

/// How long the inner process gets to stop its cluster after a forwarded signal.
const GRACE: Duration = Duration::from_secs(150);

/// What the inner process gets from the outer one.
pub struct Inner {
    /// The run directory (data; removed by the outer process).
    pub dir: PathBuf,
    /// The log directory on tmpfs (removed by the outer process).
    pub logs: PathBuf,
    /// `r3sb<outer pid>`: the prefix of every name the run gives (runc container ids, cgroups).
    pub tag: String,
}

/// In the inner process: where to work. `None` in the outer process.
pub fn inner() -> Option<Inner> {
    std::env::var_os(ENV_NS)?;
    Some(Inner {
        dir: std::env::var_os(ENV_DIR)?.into(),
        logs: std::env::var_os(ENV_LOGS)?.into(),
        tag: std::env::var(ENV_TAG).ok()?,
    })
}

/// The lone agent's network namespace, in the inner process.
pub fn agent_netns() -> Option<String> {
    std::env::var(ENV_AGENT_NS).ok()
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ip").args(args).status().context("run ip")?;
    if !st.success() {
        bail!("ip {} failed: {st}", args.join(" "));
    }
    Ok(())
}

/// Makes `cmd` start in network namespace `ns` (a name under /run/netns) and in a mount namespace
/// of its own whose mounts are slaves of the caller's (see the module doc).
pub fn enter(cmd: &mut Command, ns: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("network namespace {ns}"))?;
    // SAFETY: the closure runs between fork and exec and makes only raw system calls (setns,
    // unshare, mount), which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
                None::<&str>,
            )?;
            Ok(())
        });
    }
    Ok(())
}

/// The signal the outer process received last (0: none).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

fn catch_signals() -> anyhow::Result<()> {
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { signal::sigaction(s, &act) }.context("sigaction")?;
    }
    Ok(())
}

/// The run's names and directories, all derived from the outer PID.
struct Run {
    ns: String,
    agent_ns: String,
    dir: PathBuf,
    logs: PathBuf,
    tag: String,
}

impl Drop for Run {
    fn drop(&mut self) {
        sweep(self);
    }
}

/// In the outer process: builds the namespaces and directories, runs the inner process, forwards
/// signals to it and cleans up. Returns `None` when already inside (the caller does the work).
pub fn run_isolated() -> Option<anyhow::Result<i32>> {
    if std::env::var_os(ENV_NS).is_some() {
        return None;
    }
    Some(outer())
}

fn outer() -> anyhow::Result<i32> {
    catch_signals()?;
    let pid = std::process::id();
    let run = Run {
        ns: format!("r3sb{pid}"),
        agent_ns: format!("r3sba{pid}"),
        dir: PathBuf::from(format!("/var/tmp/r3s-bench-{pid}")),
        logs: PathBuf::from(format!("/dev/shm/r3s-bench-{pid}")),
        tag: format!("r3sb{pid}"),
    };
    std::fs::create_dir_all(run.dir.join("tmp"))?;
    std::fs::create_dir_all(&run.logs)?;
    let (v, w) = (format!("r3sbv{pid}"), format!("r3sbw{pid}"));
    let (ns, ans) = (run.ns.as_str(), run.agent_ns.as_str());
    ip(&["netns", "add", ns])?;
    ip(&["netns", "add", ans])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ans, "link", "set", "lo", "up"])?;
    ip(&[
        "link", "add", &v, "netns", ns, "type", "veth", "peer", "name", &w, "netns", ans,
    ])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{SERVER_IP}/24"),
        "dev",
        &v,
    ])?;
    ip(&[
        "-n",
        ans,
        "addr",
        "add",
        &format!("{AGENT_IP}/24"),
        "dev",
        &w,
    ])?;
    ip(&["-n", ns, "link", "set", &v, "up"])?;
    ip(&["-n", ans, "link", "set", &w, "up"])?;

    let mut cmd = Command::new(std::env::current_exe().context("current exe")?);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV_NS, ns)
        .env(ENV_AGENT_NS, ans)
        .env(ENV_DIR, &run.dir)
        .env(ENV_LOGS, &run.logs)
        .env(ENV_TAG, &run.tag)
        .env("TMPDIR", run.dir.join("tmp"))
        .process_group(0);
    enter(&mut cmd, ns)?;
    // SAFETY: prctl is a raw system call, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start the inner process")?;
    let child_pid = Pid::from_raw(child.id() as i32);
    let mut forwarded: Option<(i32, Instant)> = None;
    let code = loop {
        if let Some(st) = child.try_wait()? {
            break st.code().unwrap_or(1);
        }
        let sig = SIGNALLED.swap(0, Ordering::SeqCst);
        match (sig, forwarded) {
            (0, Some((_, at))) if at.elapsed() > GRACE => {
                eprintln!("r3s-bench: the inner process did not stop in {GRACE:?}; killing it");
                let _ = signal::kill(child_pid, Signal::SIGKILL);
            }
            (0, _) => {}
            (s, None) => {
                eprintln!("r3s-bench: signal {s}: stopping the cluster and cleaning up");
                let fwd = Signal::try_from(s).unwrap_or(Signal::SIGTERM);
                let _ = signal::kill(child_pid, fwd);
                forwarded = Some((s, Instant::now()));
            }
            (_, Some(_)) => {
                eprintln!("r3s-bench: second signal: killing the inner process");
                let _ = signal::kill(child_pid, Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(run);
    Ok(if forwarded.is_some() { 130 } else { code })
}

/// The (device, inode) of a namespace file, to compare with /proc/<pid>/ns/net.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// PIDs whose network namespace is one of `ids`.
fn pids_in(ids: &[(u64, u64)]) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != std::process::id() as i32)
        .filter(|&p| {
            ns_id(Path::new(&format!("/proc/{p}/ns/net"))).is_some_and(|i| ids.contains(&i))
        })
        .collect()
}

/// SIGTERM to `pids`, SIGKILL to those still there after `wait`.
fn stop_all(pids: &[i32], wait: Duration) {
    for &p in pids {
        let _ = signal::kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &p in pids {
        if alive(p) {
            let _ = signal::kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

fn alive(pid: i32) -> bool {
    // A zombie of ours still "exists"; its state letter says it is gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|c| c != "Z")
        })
        .unwrap_or(false)
}

/// `state.json` files of libcontainer (the agents) and runc (item 4) under `dir`, not following
/// symlinks, a few levels deep.
fn state_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_dir() && depth > 0 && e.file_name() != "image-store" && e.file_name() != "rootfs" {
            state_files(&p, depth - 1, out);
        } else if t.is_file() && e.file_name() == "state.json" {
            out.push(p);
        }
    }
}

/// The container's init PID and its cgroup path from a libcontainer state dir (state.json +
/// youki_config.json) or a runc one (state.json with init_process_pid and cgroup_paths).
fn container(state: &Path) -> (Option<i32>, Option<PathBuf>) {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    };
    let Some(v) = read(state.to_path_buf()) else {
        return (None, None);
    };
    let pid = v
        .get("pid")
        .or_else(|| v.get("init_process_pid"))
        .and_then(serde_json::Value::as_i64)
        .and_then(|p| i32::try_from(p).ok())
        .filter(|&p| p > 1);
    let cgroup = state
        .parent()
        .and_then(|d| read(d.join("youki_config.json")))
        .and_then(|c| c.get("cgroup_path")?.as_str().map(PathBuf::from));
    (pid, cgroup)
}

/// Cgroup hierarchies: /sys/fs/cgroup itself (v2) and every v1 controller directory.
fn hierarchies() -> Vec<PathBuf> {
    let base = PathBuf::from("/sys/fs/cgroup");
    let mut out = vec![base.clone()];
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() && p.join("cgroup.procs").exists() {
                out.push(p);
            }
        }
    }
    out
}

/// Kills what is left in cgroup `dir` and removes it, children first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = signal::kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    for _ in 0..20 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => return,
        }
    }
}

/// Unmounts whatever is mounted under `dir` in this mount namespace (deepest first).
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes everything the run made (see the module doc). Idempotent; never fails.
fn sweep(run: &Run) {
    let ids: Vec<(u64, u64)> = [&run.ns, &run.agent_ns]
        .iter()
        .filter_map(|n| ns_id(Path::new(&format!("/run/netns/{n}"))))
        .collect();
    let left = pids_in(&ids);
    if !left.is_empty() {
        eprintln!(
            "r3s-bench: stopping {} process(es) left in the run's namespaces",
            left.len()
        );
        stop_all(&left, Duration::from_secs(20));
    }
    let mut states = Vec::new();
    state_files(&run.dir, 8, &mut states);
    let mut cgroups = Vec::new();
    for s in &states {
        let (pid, cgroup) = container(s);
        if let Some(p) = pid
            && alive(p)
        {
            let _ = signal::kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        // Only the per-pod parents the agents make (/r3s/pod<uid>/<container>).
        if let Some(parent) = cgroup.as_deref().and_then(Path::parent)
            && parent.starts_with("/r3s")
            && parent
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pod"))
        {
            cgroups.push(parent.to_path_buf());
        }
    }
    for h in hierarchies() {
        for c in &cgroups {
            let d = h.join(c.strip_prefix("/").unwrap_or(c));
            if d.exists() {
                remove_cgroup_tree(&d);
            }
        }
        // runc's containers of item 4 are named <tag>-<n> and get cgroups of that name.
        if let Ok(entries) = std::fs::read_dir(&h) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", run.tag))
                {
                    remove_cgroup_tree(&e.path());
                }
            }
        }
    }
    unmount_under(&run.dir);
    if run.dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&run.dir)
    {
        eprintln!("r3s-bench: removing {}: {e}", run.dir.display());
    }
    let _ = std::fs::remove_dir_all(&run.logs);
    for n in [&run.ns, &run.agent_ns] {
        if Path::new(&format!("/run/netns/{n}")).exists() {
            let _ = ip(&["netns", "del", n]);
        }
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{n}"));
    }
}
