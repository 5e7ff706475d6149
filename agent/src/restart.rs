//! Surviving agent restarts: the design (not implemented yet).
//!
//! **The problem.** libcontainer clones a container's init with `CLONE_PARENT`, so the init is a
//! child of the agent and only the agent can `waitpid` it for its exit status. If the agent
//! exits (upgrade, crash, `kill -9`), the inits are re-parented to the nearest subreaper or PID
//! 1, their exit codes are lost to r3s, and a restarted agent cannot tell "exited 0" from
//! "killed". Today the agent therefore stops its pods when it shuts down and, at start, deletes
//! every container it finds under its state root (its pods are then started afresh: a restart
//! of every container, with `restartCount` starting again at 0). That is honest but not
//! kubelet's behaviour, which the issue requires.
//!
//! **The design: one tiny shim per container** (containerd-shim's model, with a much smaller
//! shim). The agent forks `r3s-agent shim <id>` (the same binary, a different `main`), which:
//! 1. calls `prctl(PR_SET_CHILD_SUBREAPER)` and `setsid()`, so it outlives the agent and reaps
//!    the container's init even though the init is cloned as a sibling;
//! 2. creates and starts the container through libcontainer (single-threaded: libcontainer's
//!    clone3 runs in a process with no tokio threads, the conservative choice noted in
//!    runtime-notes.md);
//! 3. owns the stdout/stderr pipes and writes the CRI log itself, so logs keep flowing while
//!    the agent is down;
//! 4. on the init's exit writes `<run-dir>/containers/<id>/exit.json` (code, signal, OOM flag,
//!    finish time) atomically, then waits until the agent acknowledges (deletes it) or for a
//!    timeout, and exits;
//! 5. listens on `<run-dir>/containers/<id>/shim.sock` for kill/attach/exec requests.
//!
//! The agent keeps, per pod, `<data-dir>/agent/pods/<ns>_<name>_<uid>/state.json` (container ids
//! per slot, start counts, back-off, last termination) written before each start. On start-up it
//! re-adopts instead of deleting: for each state file, containers whose shim socket answers are
//! running (their pid is in libcontainer's state.json), those with an `exit.json` have exited
//! while the agent was away and are processed as exits, and anything else is deleted. Sandboxes
//! are re-adopted from their bind mounts (`<run-dir>/sandboxes/<uid>`), CNI from its IPAM
//! leases (`NodeNetwork::gc_pods` with the adopted set).
//!
//! The cheaper alternative, making the agent itself a subreaper, does not help: a restarted
//! agent is a new process and is not the parent of anything the old one started.
