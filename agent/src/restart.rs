//! Surviving agent restarts: containers run under per-container shims, pods' state is on disk,
//! and a starting agent re-adopts what a previous run left instead of removing it.
//!
//! **The problem.** libcontainer clones a container's init with `CLONE_PARENT`, so the init is a
//! child of the process that created it, and only that process can `waitpid` it for its exit
//! status. An agent that created its containers itself loses them when it exits (upgrade, crash,
//! `kill -9`): a restarted agent is a new process, the parent of nothing, and cannot tell
//! "exited 0" from "killed". Making the agent a subreaper does not help for the same reason.
//!
//! **The design: one tiny shim per container** (containerd-shim's model, much smaller):
//! [`crate::runtime::shim`]. The agent spawns `r3s-agent shim …` (the same binary; `r3s-server`
//! too for its in-process agent), which in its own session and as a child subreaper creates and
//! starts the container through libcontainer while single-threaded, owns the output pipes and
//! writes the CRI log itself (logs keep flowing while no agent runs), and when the init exits
//! writes `<run-dir>/shims/<id>/exit.json` and exits. The agent waits on the shim with a pidfd,
//! which works just as well for a shim it did not spawn. Signals (SIGTERM, SIGKILL from the pod
//! worker) go through libcontainer's state, from any process; exec runs under a
//! `shim-exec` helper ([`crate::runtime::tenant`]).
//!
//! Each pod worker keeps `<run-dir>/pods/<uid>.json` ([`crate::pods::state`]): the sandbox, the
//! prepared volumes, and per container the start count, back-off, last terminations and the
//! running instance (container id, init pid, shim pid), written after every change.
//!
//! **At start** ([`clean_previous_run`]): every container, bundle, shim directory, sandbox and
//! volume directory a state file names is kept, everything else a previous run left is removed
//! as before; CNI keeps the address leases of kept pods (`gc_pods` with that set), so a pod
//! keeps its IP and its veth. The pod manager then gives each pod its worker as usual, and the
//! worker re-adopts before anything else: a container whose shim still runs is running (same
//! id, pid and log; `restartCount` unchanged; probes start over, so readiness is re-established
//! as kubelet does after a restart); one whose shim recorded an exit meanwhile is processed as
//! an exit with its real code (then the restart policy applies); one with neither is reported
//! as exited with code 255. Pods with a state file that are no longer bound to the node (deleted
//! while no agent ran) get a worker only to be stopped and cleaned up.
//!
//! The shim also holds the stdin pipe of a container with `stdin: true`, fed through the FIFO
//! `<run-dir>/shims/<id>/stdin` by `kubectl attach -i` sessions, so attach works the same on a
//! re-adopted container.
//!
//! **At stop**: the standalone agent leaves its pods running on SIGTERM (kubelet's behaviour;
//! the systemd unit has `KillMode=process` so the shims survive too). The server's in-process
//! agent still stops its pods when the server stops cleanly (as before), and re-adopts them
//! after a crash. Without a shim binary (the agent embedded in a test binary that sets none)
//! the node runs no containers: starting one fails with an error saying so.

#[cfg(target_os = "linux")]
use std::collections::HashSet;
use std::path::PathBuf;

#[cfg(target_os = "linux")]
use crate::layout::Layout;
#[cfg(target_os = "linux")]
use crate::runtime::{Runtime, cleanup};

/// This process's binary if it can run shims: one of ours (`r3s-agent`, `r3s-server`, or a copy
/// renamed with a suffix such as `r3s-agent-arm64`), whose `main`s dispatch `shim` and
/// `shim-exec`; `None` for a test binary embedding the agent (it must set a shim itself).
pub fn default_shim() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let name = exe.file_name()?.to_str()?;
    name.starts_with("r3s").then_some(exe)
}

/// Removes what a previous run left that no pod state file names, and returns the uids of the
/// pods whose containers, sandboxes and volumes were kept for re-adoption.
#[cfg(target_os = "linux")]
pub async fn clean_previous_run(
    layout: &Layout,
    runtime: &Runtime,
    images: &r3s_images::ImageService,
) -> HashSet<String> {
    use crate::pods::state;
    let states = if runtime.shimmed() {
        state::list(&layout.run_dir)
    } else {
        let _ = std::fs::remove_dir_all(state::dir(&layout.run_dir));
        Vec::new()
    };
    let uids: HashSet<String> = states.iter().map(|s| s.uid.clone()).collect();
    let ids: HashSet<String> = states
        .iter()
        .flat_map(|s| s.slots.iter())
        .filter_map(|s| s.running.as_ref().map(|r| r.id.clone()))
        .collect();
    let mut removed = 0;
    for id in runtime.list() {
        if !ids.contains(&id) {
            removed += 1;
            if let Err(e) = runtime.delete(&id).await {
                tracing::warn!("{e}");
            }
        }
    }
    if removed > 0 {
        tracing::warn!(
            containers = removed,
            "removed containers left by a previous run"
        );
    }
    if !ids.is_empty() {
        tracing::info!(
            pods = uids.len(),
            containers = ids.len(),
            "kept containers of a previous run for re-adoption"
        );
    }
    let stale = |dir: PathBuf, keep: &HashSet<String>| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| !e.file_name().to_str().is_some_and(|n| keep.contains(n)))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(shims) = runtime.root().parent().map(|p| p.join("shims")) {
        for dir in stale(shims, &ids) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    // Each old bundle: unmount its rootfs and drop its image lease, then remove it.
    for bundle in stale(layout.containers(), &ids) {
        if let Err(err) = images.release_rootfs(&bundle).await {
            tracing::warn!("releasing {}: {err}", bundle.display());
        }
        cleanup::unmount_below(&bundle);
        let _ = std::fs::remove_dir_all(bundle);
    }
    for dir in stale(layout.sandboxes(), &uids) {
        cleanup::unmount_below(&dir);
        let _ = std::fs::remove_dir_all(dir);
    }
    for dir in stale(layout.agent_dir.join("volumes"), &uids) {
        cleanup::unmount_below(&dir);
        let _ = std::fs::remove_dir_all(dir);
    }
    uids
}
