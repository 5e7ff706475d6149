//! One worker per pod bound to this node: a task that owns the pod's sandbox and containers and
//! drives them toward the pod spec, kubelet's pod worker as a state machine.
//!
//! ```text
//!  Desired::Run ──► Syncing ──────────────────────────────► (phase Succeeded/Failed: idle)
//!                    │  sandbox → init containers in order → containers, restarts with back-off
//!                    │
//!  deletionTimestamp / Gone / Shutdown
//!                    ▼
//!                 Terminating: SIGTERM to every init ──(grace period)──► SIGKILL to the cgroup
//!                    │
//!                    ▼
//!                 Terminated: containers deleted, rootfs unmounted, CNI DEL, namespaces
//!                    unmounted, pod cgroup removed; the API object deleted with
//!                    gracePeriodSeconds=0 and a uid precondition (only if it still exists)
//! ```
//!
//! Variants of [`Desired`]: `Run(pod)` is the latest object from the API; `Gone(pod)` means it was
//! deleted outright (the API server does not implement graceful pod deletion yet, so this is the
//! usual path); `Shutdown` means the agent is stopping and the pod must be stopped without any
//! API write, or, with `Ctx::keep_pods_on_stop`, left running with its state file saved.
//!
//! Re-adoption: a worker whose pod has a state file (`pods::state`, written after every loop
//! turn when containers run under shims) restores the sandbox, volumes, start counts and
//! back-off from it and re-adopts running containers before anything else (see
//! [`crate::restart`]). A container waiting out a back-off when the agent stopped is started at
//! once by the next agent.
//!
//! Restarts: the first restart is immediate; later ones wait 10 s doubling to 5 min, reset after
//! 10 min of running (kubelet's CrashLoopBackOff). Invariant: at most one instance of each
//! container runs at any time, and only this task touches the pod's containers.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::events::{self, Kind};
use super::probe::{self, ProbeEvent, Which};
use super::sandbox::{self, Isolation, Sandbox};
use super::status::{self, ContainerView, PodView, State, Terminated};
use super::{Ctx, container, env};
use crate::runtime::{Exit, Runtime, spec};

/// Back-off before the second restart.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container running this long has its back-off reset.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How long to wait before writing a status again after a failed write.
const STATUS_RETRY: Duration = Duration::from_secs(2);
/// How long to wait for exits after SIGKILL before deleting anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What the pod manager wants of a worker.
#[derive(Debug, Clone)]
pub enum Desired {
    Run(Arc<Pod>),
    Gone(Arc<Pod>),
    Shutdown,
}

struct Running {
    id: String,
    /// The init's pid, and its shim's when a shim runs it (saved for re-adoption).
    pid: i32,
    shim_pid: Option<i32>,
    started_at: String,
    since: Instant,
    copiers: Vec<tokio::task::JoinHandle<()>>,
    probers: Vec<tokio::task::JoinHandle<()>>,
    /// Past the startup probe (true at once without one); gates the other probes.
    started: watch::Sender<bool>,
    /// The readiness probe's last verdict (false until its first success).
    ready: bool,
}

impl Running {
    fn stop_probers(&mut self) {
        for p in self.probers.drain(..) {
            p.abort();
        }
    }
}

impl Drop for Running {
    // A prober must never outlive its container instance.
    fn drop(&mut self) {
        self.stop_probers();
    }
}

struct Slot {
    spec: Container,
    init: bool,
    starts: u32,
    running: Option<Running>,
    last: Option<Terminated>,
    prior: Option<Terminated>,
    /// Set when the container will not run again (init succeeded, or restart policy says no).
    done: bool,
    waiting: (String, Option<String>),
    backoff: Option<Duration>,
    not_before: Option<Instant>,
    image: Option<String>,
    image_id: Option<String>,
}

impl Slot {
    fn new(spec: Container, init: bool) -> Self {
        Self {
            spec,
            init,
            starts: 0,
            running: None,
            last: None,
            prior: None,
            done: false,
            waiting: (
                if init {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                }
                .into(),
                None,
            ),
            backoff: None,
            not_before: None,
            image: None,
            image_id: None,
        }
    }

    fn view(&self) -> ContainerView {
        let state = if let Some(r) = &self.running {
            State::Running {
                container_id: r.id.clone(),
                started_at: r.started_at.clone(),
            }
        } else if self.done && self.last.is_some() {
            State::Terminated(self.last.clone().unwrap_or_else(unreachable_terminated))
        } else {
            State::Waiting {
                reason: self.waiting.0.clone(),
                message: self.waiting.1.clone(),
            }
        };
        let last = if self.done && self.running.is_none() {
            self.prior.clone()
        } else {
            self.last.clone()
        };
        let started = self.running.as_ref().is_some_and(|r| *r.started.borrow());
        let ready = started
            && self
                .running
                .as_ref()
                .is_some_and(|r| r.ready || self.spec.readiness_probe.is_none());
        ContainerView {
            ready,
            started,
            name: self.spec.name.clone(),
            image: self
                .image
                .clone()
                .unwrap_or_else(|| self.spec.image.clone().unwrap_or_default()),
            image_id: self.image_id.clone(),
            restart_count: self.starts.saturating_sub(1),
            state,
            last,
        }
    }

    /// Schedules the next start after a failure, with back-off.
    fn back_off(&mut self, ran_for: Option<Duration>) -> Duration {
        if ran_for.is_some_and(|d| d >= BACKOFF_RESET) {
            self.backoff = None;
        }
        let delay = self.backoff.unwrap_or(Duration::ZERO);
        self.backoff = Some(match self.backoff {
            None => BACKOFF_INITIAL,
            Some(d) => (d * 2).min(BACKOFF_MAX),
        });
        self.not_before = Some(Instant::now() + delay);
        delay
    }
}

fn unreachable_terminated() -> Terminated {
    Terminated {
        exit_code: 0,
        signal: None,
        reason: "Unknown".into(),
        started_at: None,
        finished_at: now(),
        container_id: None,
    }
}

struct ExitEvent {
    id: String,
    exit: Result<Exit, String>,
    oom: bool,
    finished_at: String,
}

/// The worker of one pod.
pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    uid: String,
    namespace: String,
    name: String,
    slots: Vec<Slot>,
    sandbox: Option<Sandbox>,
    sandbox_error: Option<String>,
    sandbox_retry: Option<Instant>,
    volumes: super::volumes::Prepared,
    /// When token-holding projected volumes are due for a rewrite.
    rotation: super::volumes::Rotation,
    exits: mpsc::UnboundedSender<ExitEvent>,
    exits_rx: mpsc::UnboundedReceiver<ExitEvent>,
    probes: mpsc::UnboundedSender<ProbeEvent>,
    probes_rx: mpsc::UnboundedReceiver<ProbeEvent>,
    last_status: Value,
    start_time: String,
    /// The pod reached a terminal phase before this worker (or the agent) started it.
    finished: bool,
    /// When to retry a status write that failed (API server unreachable).
    status_retry: Option<Instant>,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Worker {
    pub fn new(ctx: Arc<Ctx>, pod: Arc<Pod>) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut slots: Vec<Slot> = spec
            .init_containers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| Slot::new(c, true))
            .collect();
        slots.extend(spec.containers.iter().cloned().map(|c| Slot::new(c, false)));
        let (exits, exits_rx) = mpsc::unbounded_channel();
        let (probes, probes_rx) = mpsc::unbounded_channel();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let last_status = pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let sync_frequency = ctx.sync_frequency;
        let start_time = last_status["startTime"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(now);
        Self {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ctx,
            pod,
            slots,
            sandbox: None,
            sandbox_error: None,
            sandbox_retry: None,
            volumes: Default::default(),
            rotation: super::volumes::Rotation::new(sync_frequency),
            exits,
            exits_rx,
            probes,
            probes_rx,
            last_status,
            start_time,
            finished: phase == "Succeeded" || phase == "Failed",
            status_retry: None,
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn grace(pod: &Pod, deleting: bool) -> Duration {
        let from_delete = if deleting {
            pod.metadata.deletion_grace_period_seconds
        } else {
            None
        };
        let secs = from_delete
            .or(pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0);
        // Kubelet gives at least 2 s between SIGTERM and SIGKILL.
        Duration::from_secs(secs.max(2) as u64)
    }

    /// Runs until the pod is terminated and cleaned up.
    pub async fn run(mut self, mut rx: watch::Receiver<Desired>) {
        info!(pod = %self.key(), "pod worker started");
        if self.ctx.runtime.shimmed() {
            self.adopt().await;
        }
        loop {
            let desired = rx.borrow_and_update().clone();
            match desired {
                Desired::Run(pod) if pod.metadata.deletion_timestamp.is_some() => {
                    let grace = Self::grace(&pod, true);
                    self.pod = pod;
                    self.terminate(grace).await;
                    self.delete_object().await;
                    break;
                }
                Desired::Run(pod) => self.pod = pod,
                Desired::Gone(pod) => {
                    let grace = Self::grace(&pod, false);
                    self.terminate(grace).await;
                    break;
                }
                Desired::Shutdown if self.ctx.keep_pods_on_stop => {
                    self.save_state();
                    info!(pod = %self.key(), "leaving the pod running for the next start");
                    break;
                }
                Desired::Shutdown => {
                    let grace = Self::grace(&self.pod, false);
                    self.terminate(grace).await;
                    break;
                }
            }
            if !self.finished {
                self.sync().await;
            }
            self.write_status().await;
            self.save_state();
            let deadline = self.next_deadline();
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The manager is gone: stop as on shutdown.
                        if self.ctx.keep_pods_on_stop {
                            self.save_state();
                            break;
                        }
                        let grace = Self::grace(&self.pod, false);
                        self.terminate(grace).await;
                        break;
                    }
                }
                Some(ev) = self.exits_rx.recv() => {
                    if self.on_exit(ev, true).await {
                        // Every container is done for good: the pod is finished and its
                        // sandbox can go (kubelet tears it down too; the status stays).
                        self.finished = true;
                        self.kill_all(Duration::from_secs(2)).await;
                        self.teardown_sandbox().await;
                    }
                }
                Some(ev) = self.probes_rx.recv() => self.on_probe(ev),
                _ = sleep_until(deadline) => {}
            }
        }
        info!(pod = %self.key(), "pod worker finished");
    }

    fn event(&self, container: Option<&str>, kind: Kind, reason: &str, message: String) {
        events::record(
            &self.ctx.client,
            &self.ctx.node_name,
            &self.pod,
            container,
            kind,
            reason,
            message,
        );
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Writes the pod's state file (only when containers outlive the agent; see `pods::state`).
    fn save_state(&self) {
        use super::state::{PodState, RunningState, SandboxState, SlotState};
        if !self.ctx.runtime.shimmed() {
            return;
        }
        let st = PodState {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            start_time: self.start_time.clone(),
            sandbox: self.sandbox.as_ref().map(|sb| SandboxState {
                dir: sb.dir.clone(),
                net: sb.net.clone(),
                ipc: sb.ipc.clone(),
                uts: sb.uts.clone(),
                pod_ip: sb.pod_ip,
                cni: sb.cni,
            }),
            volumes: self.volumes.clone(),
            slots: self
                .slots
                .iter()
                .map(|s| SlotState {
                    name: s.spec.name.clone(),
                    init: s.init,
                    starts: s.starts,
                    done: s.done,
                    backoff_secs: s.backoff.map(|d| d.as_secs()),
                    last: s.last.clone(),
                    prior: s.prior.clone(),
                    running: s.running.as_ref().and_then(|r| {
                        Some(RunningState {
                            id: r.id.clone(),
                            pid: r.pid,
                            shim_pid: r.shim_pid?,
                            started_at: r.started_at.clone(),
                        })
                    }),
                    image: s.image.clone(),
                    image_id: s.image_id.clone(),
                })
                .collect(),
        };
        if let Err(e) = super::state::save(&self.ctx.layout.run_dir, &st) {
            warn!(pod = %self.key(), "saving the pod's state: {e}");
        }
    }

    /// Takes over what a previous run of the agent left of this pod (see [`crate::restart`]):
    /// the sandbox, volumes, start counts, and running containers, whose exits (including those
    /// that happened while no agent ran) then arrive as usual.
    async fn adopt(&mut self) {
        let Some(st) = super::state::load(&self.ctx.layout.run_dir, &self.uid) else {
            return;
        };
        info!(pod = %self.key(), "re-adopting the pod from a previous run");
        self.start_time = st.start_time;
        if let Some(sb) = st.sandbox {
            self.sandbox = Some(Sandbox {
                dir: sb.dir,
                net: sb.net,
                ipc: sb.ipc,
                uts: sb.uts,
                pod_ip: sb.pod_ip,
                cni: sb.cni,
            });
        }
        self.volumes = st.volumes;
        for ss in st.slots {
            let i = match self
                .slots
                .iter()
                .position(|s| s.spec.name == ss.name && s.init == ss.init)
            {
                Some(i) => i,
                None => {
                    // Not in the pod (only for a pod adopted to be stopped): a slot just for it.
                    let spec = Container {
                        name: ss.name.clone(),
                        ..Default::default()
                    };
                    self.slots.push(Slot::new(spec, ss.init));
                    self.slots.len() - 1
                }
            };
            {
                let slot = &mut self.slots[i];
                slot.starts = ss.starts;
                slot.done = ss.done;
                slot.backoff = ss.backoff_secs.map(Duration::from_secs);
                slot.last = ss.last;
                slot.prior = ss.prior;
                slot.image = ss.image;
                slot.image_id = ss.image_id;
                if ss.running.is_none() && ss.starts > 0 && !ss.done {
                    slot.waiting = ("CrashLoopBackOff".into(), None);
                }
            }
            let Some(r) = ss.running else { continue };
            match self.ctx.runtime.adopt(&r.id, r.shim_pid).await {
                crate::runtime::Adopted::Running(started) => {
                    info!(pod = %self.key(), container = %ss.name, id = %r.id, pid = started.pid, "container re-adopted");
                    self.watch(i, started, r.started_at);
                }
                other => {
                    let (exit, finished_at) = match other {
                        crate::runtime::Adopted::Exited(e, at) => (Ok(e), at),
                        _ => (
                            Err("its shim ended without recording the exit".to_string()),
                            now(),
                        ),
                    };
                    info!(pod = %self.key(), container = %ss.name, id = %r.id, "container exited while the agent was away");
                    let cgroup = self.cgroup_parent().join(&ss.name);
                    let oom =
                        exit.as_ref().is_ok_and(|e| e.signal == Some(9)) && oom_killed(&cgroup);
                    let (started_tx, _) = watch::channel(true);
                    self.slots[i].running = Some(Running {
                        id: r.id.clone(),
                        pid: r.pid,
                        shim_pid: Some(r.shim_pid),
                        started_at: r.started_at,
                        since: Instant::now(),
                        copiers: Vec::new(),
                        probers: Vec::new(),
                        started: started_tx,
                        ready: false,
                    });
                    let _ = self.exits.send(ExitEvent {
                        id: r.id,
                        exit,
                        oom,
                        finished_at,
                    });
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.running.is_none() && !s.done)
            .filter_map(|s| s.not_before)
            .chain(self.sandbox_retry)
            .chain(self.status_retry)
            // Token renewal runs in `sync`, which a finished pod no longer gets.
            .chain(
                self.sandbox
                    .as_ref()
                    .filter(|_| !self.finished)
                    .and_then(|_| self.rotation.next()),
            )
            .min()
    }

    async fn sync(&mut self) {
        if self.sandbox.is_none() {
            if self.sandbox_retry.is_some_and(|t| Instant::now() < t) {
                return;
            }
            match self.create_sandbox().await {
                Ok(sb) => {
                    self.sandbox = Some(sb);
                    self.sandbox_error = None;
                    self.sandbox_retry = None;
                }
                Err(e) => {
                    warn!(pod = %self.key(), "sandbox: {e}");
                    self.sandbox_error = Some(e);
                    self.sandbox_retry = Some(Instant::now() + BACKOFF_INITIAL);
                    return;
                }
            }
        }
        if let Some(sb) = &self.sandbox {
            let facts = self.facts(sb.pod_ip);
            let vdir = self.ctx.layout.volumes(&self.uid);
            super::volumes::refresh(
                &self.ctx.client,
                &self.pod,
                &vdir,
                &facts,
                &mut self.rotation,
            )
            .await;
        }
        let now_i = Instant::now();
        let inits_done = self.slots.iter().filter(|s| s.init).all(|s| s.done);
        if !inits_done {
            let i = self
                .slots
                .iter()
                .position(|s| s.init && !s.done)
                .unwrap_or(0);
            let s = &self.slots[i];
            if s.running.is_none()
                && s.last.as_ref().is_none_or(|t| t.exit_code != 0)
                && s.not_before.is_none_or(|t| now_i >= t)
                && !self.init_failed()
            {
                self.start(i).await;
            }
            return;
        }
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.init || s.running.is_some() || s.done {
                continue;
            }
            if s.not_before.is_none_or(|t| now_i >= t) {
                self.start(i).await;
            }
        }
    }

    fn init_failed(&self) -> bool {
        self.restart_policy() == "Never"
            && self
                .slots
                .iter()
                .any(|s| s.init && s.last.as_ref().is_some_and(|t| t.exit_code != 0))
    }

    async fn create_sandbox(&mut self) -> Result<Sandbox, String> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let host_net = spec.host_network.unwrap_or(false);
        let iso = Isolation {
            net: !host_net,
            ipc: !spec.host_ipc.unwrap_or(false),
            uts: !host_net,
        };
        let hostname: String = spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.name.clone())
            .chars()
            .take(63)
            .collect();
        let dir = self.ctx.layout.sandbox(&self.uid);
        let h = hostname.clone();
        let d = dir.clone();
        let mut sb = tokio::task::spawn_blocking(move || sandbox::create_namespaces(&d, iso, &h))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let fail = |e: String, dir: &PathBuf| {
            sandbox::remove(dir);
            e
        };
        if let Some(net) = sb.net.clone() {
            if let Err(e) = sandbox::loopback_up(&net).await {
                return Err(fail(e.to_string(), &dir));
            }
            if let Some(network) = self.ctx.network.get() {
                use r3s_cni::node::NodeNetwork;
                match network.add_pod(&self.uid, &net, "eth0").await {
                    Ok(link) => {
                        sb.pod_ip = Some(IpAddr::V4(link.address.addr()));
                        sb.cni = true;
                    }
                    Err(e) => return Err(fail(format!("CNI ADD: {e}"), &dir)),
                }
            }
        } else {
            sb.pod_ip = Some(self.ctx.host_ip);
        }
        if iso.ipc
            && let Err(e) = sandbox::mount_shm(&dir)
        {
            return Err(fail(e.to_string(), &dir));
        }
        let hosts = if host_net {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            let aliases: Vec<(String, Vec<String>)> = spec
                .host_aliases
                .iter()
                .flatten()
                .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
                .collect();
            sandbox::hosts_file(sb.pod_ip, &hostname, &aliases)
        };
        let resolv = self.resolv_conf(&spec, host_net);
        let files = [
            (sb.hosts(), hosts),
            (sb.resolv_conf(), resolv),
            (
                sb.hostname(),
                format!(
                    "{}\n",
                    if host_net {
                        crate::node::info::hostname()
                    } else {
                        hostname
                    }
                ),
            ),
        ];
        for (path, body) in files {
            if let Err(e) = std::fs::write(&path, body) {
                return Err(fail(format!("writing {}: {e}", path.display()), &dir));
            }
        }
        let vdir = self.ctx.layout.volumes(&self.uid);
        let facts = self.facts(sb.pod_ip);
        match super::volumes::prepare(
            &self.ctx.client,
            &self.pod,
            &vdir,
            &facts,
            &mut self.rotation,
        )
        .await
        {
            Ok(v) => self.volumes = v,
            Err(e) => {
                super::volumes::remove(&vdir);
                return Err(fail(e, &dir));
            }
        }
        info!(pod = %self.key(), ip = ?sb.pod_ip, "sandbox ready");
        Ok(sb)
    }

    /// What downward API volumes and fieldRefs read besides the pod.
    fn facts(&self, pod_ip: Option<IpAddr>) -> env::Facts {
        env::Facts {
            host_ip: self.ctx.host_ip,
            pod_ip,
            node_milli_cpu: self.ctx.node_milli_cpu,
            node_memory_bytes: self.ctx.node_memory_bytes,
        }
    }

    fn resolv_conf(&self, spec: &k8s_openapi::api::core::v1::PodSpec, host_net: bool) -> String {
        let policy = spec
            .dns_policy
            .clone()
            .unwrap_or_else(|| "ClusterFirst".into());
        let cluster = match (policy.as_str(), self.ctx.cluster_dns) {
            ("ClusterFirstWithHostNet", Some(dns)) => Some(dns),
            ("ClusterFirst", Some(dns)) if !host_net => Some(dns),
            _ => None,
        };
        let mut text = match (policy.as_str(), cluster) {
            ("None", _) => String::new(),
            (_, Some(dns)) => {
                sandbox::cluster_resolv_conf(dns, &self.namespace, &self.ctx.cluster_domain)
            }
            _ => host_resolv_conf(),
        };
        if let Some(cfg) = &spec.dns_config {
            for ns in cfg.nameservers.iter().flatten() {
                text.push_str(&format!("nameserver {ns}\n"));
            }
            if let Some(s) = &cfg.searches {
                text.push_str(&format!("search {}\n", s.join(" ")));
            }
            for o in cfg.options.iter().flatten() {
                match &o.value {
                    Some(v) => text.push_str(&format!(
                        "options {}:{v}\n",
                        o.name.clone().unwrap_or_default()
                    )),
                    None => {
                        text.push_str(&format!("options {}\n", o.name.clone().unwrap_or_default()))
                    }
                }
            }
        }
        text
    }

    async fn keyring(&self) -> r3s_images::Keyring {
        let mut keyring = r3s_images::Keyring::default();
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect();
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        for n in names {
            match api.get_opt(&n).await {
                Ok(Some(s)) => {
                    for key in [".dockerconfigjson", ".dockercfg"] {
                        if let Some(v) = s.data.as_ref().and_then(|d| d.get(key))
                            && let Err(e) = keyring.add_docker_config(&v.0)
                        {
                            warn!(pod = %self.key(), "imagePullSecret {n}: {e}");
                        }
                    }
                }
                Ok(None) => warn!(pod = %self.key(), "imagePullSecret {n} not found"),
                Err(e) => warn!(pod = %self.key(), "imagePullSecret {n}: {e}"),
            }
        }
        keyring
    }

    /// Makes the image present according to the pull policy; returns its info.
    async fn ensure_image(&self, c: &Container) -> Result<r3s_images::ImageInfo, (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        let images = &self.ctx.images;
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_pull_policy(&image).into());
        let present = matches!(images.get(&image), Ok(Some(_)));
        let pull = match policy.as_str() {
            "Always" => true,
            "Never" if !present => {
                self.event(
                    Some(&c.name),
                    Kind::Warning,
                    "ErrImageNeverPull",
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                );
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                ));
            }
            _ => !present,
        };
        if pull {
            let opts = r3s_images::PullOptions {
                keyring: self.keyring().await,
                ..Default::default()
            };
            info!(pod = %self.key(), %image, "pulling image");
            self.event(
                Some(&c.name),
                Kind::Normal,
                "Pulling",
                format!("Pulling image \"{image}\""),
            );
            let t0 = std::time::Instant::now();
            if let Err(e) = images.pull(&image, &opts).await {
                self.event(
                    Some(&c.name),
                    Kind::Warning,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {e}"),
                );
                return Err(("ErrImagePull".into(), e.to_string()));
            }
            self.event(
                Some(&c.name),
                Kind::Normal,
                "Pulled",
                format!(
                    "Successfully pulled image \"{image}\" in {:.3}s",
                    t0.elapsed().as_secs_f64()
                ),
            );
        } else {
            self.event(
                Some(&c.name),
                Kind::Normal,
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            );
        }
        images
            .inspect(&image)
            .map_err(|e| ("ErrImagePull".into(), e.to_string()))
    }

    async fn start(&mut self, i: usize) {
        let c = self.slots[i].spec.clone();
        let info = match self.ensure_image(&c).await {
            Ok(info) => info,
            Err((reason, message)) => {
                warn!(pod = %self.key(), container = %c.name, "{reason}: {message}");
                let slot = &mut self.slots[i];
                // After a failed pull the next attempts are in back-off.
                let reason =
                    if slot.waiting.0 == "ErrImagePull" || slot.waiting.0 == "ImagePullBackOff" {
                        "ImagePullBackOff".to_string()
                    } else {
                        reason
                    };
                slot.waiting = (reason, Some(message));
                slot.back_off(None);
                return;
            }
        };
        self.slots[i].image = Some(info.record.name.clone());
        self.slots[i].image_id = Some(image_id(&info.record));
        if let Err((reason, message)) = self.create_and_start(i, &c, &info).await {
            warn!(pod = %self.key(), container = %c.name, "{reason}: {message}");
            self.event(
                Some(&c.name),
                Kind::Warning,
                "Failed",
                format!("Error: {message}"),
            );
            let slot = &mut self.slots[i];
            slot.waiting = (reason, Some(message));
            slot.back_off(None);
        }
    }

    fn cgroup_parent(&self) -> PathBuf {
        self.ctx.cgroup_root.join(format!("pod{}", self.uid))
    }

    async fn create_and_start(
        &mut self,
        i: usize,
        c: &Container,
        info: &r3s_images::ImageInfo,
    ) -> Result<(), (String, String)> {
        let sb = self
            .sandbox
            .clone()
            .ok_or_else(|| ("CreateContainerError".to_string(), "no sandbox".to_string()))?;
        let ctx = self.ctx.clone();
        let facts = env::Facts {
            host_ip: ctx.host_ip,
            pod_ip: sb.pod_ip,
            node_milli_cpu: ctx.node_milli_cpu,
            node_memory_bytes: ctx.node_memory_bytes,
        };
        let image_env: Vec<String> = info
            .config
            .config()
            .as_ref()
            .and_then(|c| c.env().clone())
            .unwrap_or_default();
        if let Some(why) = probe::unsupported(c) {
            return Err(("CreateContainerConfigError".into(), why));
        }
        let envs = env::resolve(&ctx.client, &self.pod, c, &image_env, &facts)
            .await
            .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;

        let id = new_container_id();
        let bundle = ctx.layout.bundle(&id);
        let mount = ctx
            .images
            .prepare_rootfs(&info.record.name, &bundle)
            .await
            .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
        let undo = |ctx: Arc<Ctx>, bundle: PathBuf| async move {
            let _ = ctx.images.release_rootfs(&bundle).await;
            let _ = tokio::fs::remove_dir_all(&bundle).await;
        };
        let host_pid = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_pid)
            .unwrap_or(false);
        let cfg = match container::config(container::Inputs {
            pod: &self.pod,
            container: c,
            image: &info.config,
            env: envs,
            rootfs: &mount.target,
            sandbox: &sb,
            cgroups_path: self.cgroup_parent().join(&c.name),
            host_pid,
            volumes: &self.volumes,
        }) {
            Ok(cfg) => cfg,
            Err(e) => {
                undo(ctx, bundle).await;
                return Err(("CreateContainerConfigError".into(), e.to_string()));
            }
        };
        let saved = spec::build(&cfg, mount.target.clone())
            .and_then(|s| s.save(bundle.join("config.json")));
        if let Err(e) = saved {
            undo(ctx, bundle).await;
            return Err(("CreateContainerError".into(), e.to_string()));
        }
        let restart = self.slots[i].starts;
        let log =
            ctx.layout
                .container_log(&self.namespace, &self.name, &self.uid, &c.name, restart);
        let stdin = match (c.stdin.unwrap_or(false), c.stdin_once.unwrap_or(false)) {
            (false, _) => crate::runtime::shim::Stdin::None,
            (true, false) => crate::runtime::shim::Stdin::Open,
            (true, true) => crate::runtime::shim::Stdin::Once,
        };
        let started = match ctx
            .runtime
            .run(&id, &bundle, &log, stdin, c.tty.unwrap_or(false))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let _ = ctx.runtime.delete(&id).await;
                undo(ctx, bundle).await;
                return Err(("RunContainerError".into(), e.to_string()));
            }
        };
        info!(pod = %self.key(), container = %c.name, id = %id, pid = started.pid, "container started");
        self.event(
            Some(&c.name),
            Kind::Normal,
            "Created",
            format!("Created container {}", c.name),
        );
        self.event(
            Some(&c.name),
            Kind::Normal,
            "Started",
            format!("Started container {}", c.name),
        );
        self.slots[i].starts += 1;
        self.watch(i, started, now());
        self.slots[i].waiting = ("ContainerCreating".into(), None);
        Ok(())
    }

    /// Makes `started` slot `i`'s running instance: a task waits for its exit, probers start.
    fn watch(&mut self, i: usize, mut started: crate::runtime::Started, started_at: String) {
        let c = self.slots[i].spec.clone();
        let id = started.id.clone();
        let pid = started.pid;
        let shim_pid = started.shim_pid;
        let copiers = std::mem::take(&mut started.copiers);
        let tx = self.exits.clone();
        let cgroup = self.cgroup_parent().join(&c.name);
        let wid = id.clone();
        tokio::spawn(async move {
            let exit = Runtime::wait(started).await.map_err(|e| e.to_string());
            let oom = exit.as_ref().is_ok_and(|e| e.signal == Some(9)) && oom_killed(&cgroup);
            let _ = tx.send(ExitEvent {
                id: wid,
                exit,
                oom,
                finished_at: now(),
            });
        });
        let probers = self.start_probers(&c, &id);
        let (started_tx, _) = probers.1;
        let slot = &mut self.slots[i];
        slot.running = Some(Running {
            id,
            pid,
            shim_pid,
            started_at,
            since: Instant::now(),
            copiers,
            probers: probers.0,
            started: started_tx,
            ready: false,
        });
    }

    /// Starts the container's probers; returns them and the "started" flag they watch.
    #[allow(clippy::type_complexity)]
    fn start_probers(
        &self,
        c: &Container,
        id: &str,
    ) -> (
        Vec<tokio::task::JoinHandle<()>>,
        (watch::Sender<bool>, watch::Receiver<bool>),
    ) {
        let (started_tx, started_rx) = watch::channel(c.startup_probe.is_none());
        let sb = self.sandbox.as_ref();
        let pod_ip = sb.and_then(|s| s.pod_ip);
        let target = probe::Target {
            ip: pod_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            netns: if pod_ip.is_none() {
                sb.and_then(|s| s.net.clone())
            } else {
                None
            },
            exec: Some((self.ctx.runtime.clone(), id.to_owned())),
        };
        let mut probers = Vec::new();
        for (which, p) in [
            (Which::Startup, &c.startup_probe),
            (Which::Liveness, &c.liveness_probe),
            (Which::Readiness, &c.readiness_probe),
        ] {
            if let Some(p) = p {
                probers.push(tokio::spawn(probe::prober(
                    c.clone(),
                    p.clone(),
                    which,
                    id.to_owned(),
                    target.clone(),
                    started_rx.clone(),
                    self.probes.clone(),
                )));
            }
        }
        (probers, (started_tx, started_rx))
    }

    /// Records an exit, removes the dead container, decides about a restart. True when the pod
    /// is finished (no container will run again).
    async fn on_exit(&mut self, ev: ExitEvent, may_restart: bool) -> bool {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.running.as_ref().is_some_and(|r| r.id == ev.id))
        else {
            return false;
        };
        let policy = self.restart_policy();
        let Some(run) = self.slots[i].running.take() else {
            return false;
        };
        let mut run = run;
        run.stop_probers();
        self.remove_container(&run.id).await;
        for c in std::mem::take(&mut run.copiers) {
            let _ = c.await;
        }
        let (code, signal) = match &ev.exit {
            Ok(e) => (e.code, e.signal),
            Err(msg) => {
                warn!(pod = %self.key(), "waiting for {}: {msg}", run.id);
                (255, None)
            }
        };
        let reason = if ev.oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let key = self.key();
        let slot = &mut self.slots[i];
        info!(pod = %key, container = %slot.spec.name, code, reason, "container exited");
        slot.prior = slot.last.take();
        slot.last = Some(Terminated {
            exit_code: code,
            signal,
            reason: reason.into(),
            started_at: Some(run.started_at.clone()),
            finished_at: ev.finished_at,
            container_id: Some(run.id.clone()),
        });
        let restart = may_restart
            && match (slot.init, policy.as_str()) {
                (true, "Never") => false,
                (true, _) => code != 0,
                (false, "Always") => true,
                (false, "OnFailure") => code != 0,
                _ => false,
            };
        if slot.init && code == 0 {
            slot.done = true;
        } else if restart {
            let delay = slot.back_off(Some(run.since.elapsed()));
            if !delay.is_zero() {
                let msg = format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    delay.as_secs(),
                    slot.spec.name,
                    self.name,
                    self.namespace,
                    self.uid
                );
                slot.waiting = ("CrashLoopBackOff".into(), Some(msg));
                let name = slot.spec.name.clone();
                self.event(
                    Some(&name),
                    Kind::Warning,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        self.name, self.namespace, self.uid
                    ),
                );
            }
        } else {
            slot.done = true;
        }
        may_restart
            && (self.slots.iter().all(|s| s.done && s.running.is_none()) || self.init_failed())
    }

    /// A probe result changed: readiness goes into the status; a failed liveness or startup
    /// probe kills the container, whose exit then follows the restart policy.
    fn on_probe(&mut self, ev: ProbeEvent) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.running.as_ref().is_some_and(|r| r.id == ev.container_id))
        else {
            return;
        };
        let name = self.slots[i].spec.name.clone();
        let Some(run) = self.slots[i].running.as_mut() else {
            return;
        };
        match (ev.which, ev.ok) {
            (Which::Readiness, ok) => run.ready = ok,
            (Which::Startup, true) => {
                let _ = run.started.send(true);
            }
            (which, false) => {
                let what = if which == Which::Startup {
                    "startup"
                } else {
                    "liveness"
                };
                let msg = format!("{} probe failed: {}", capitalize(what), ev.message);
                self.event(Some(&name), Kind::Warning, "Unhealthy", msg);
                self.event(
                    Some(&name),
                    Kind::Normal,
                    "Killing",
                    format!("Container {name} failed {what} probe, will be restarted"),
                );
                let runtime = self.ctx.runtime.clone();
                let id = ev.container_id.clone();
                let grace = Self::grace(&self.pod, false);
                tokio::spawn(async move {
                    let _ = runtime.kill(&id, Signal::SIGTERM, false).await;
                    tokio::time::sleep(grace).await;
                    let _ = runtime.kill(&id, Signal::SIGKILL, true).await;
                });
            }
            (Which::Liveness, true) => {}
        }
        if ev.which == Which::Readiness && !ev.ok {
            self.event(
                Some(&name),
                Kind::Warning,
                "Unhealthy",
                format!("Readiness probe failed: {}", ev.message),
            );
        }
    }

    async fn remove_container(&self, id: &str) {
        if let Err(e) = self.ctx.runtime.delete(id).await {
            warn!(pod = %self.key(), "delete {id}: {e}");
        }
        let bundle = self.ctx.layout.bundle(id);
        if let Err(e) = self.ctx.images.release_rootfs(&bundle).await {
            warn!(pod = %self.key(), "release rootfs of {id}: {e}");
        }
        let _ = tokio::fs::remove_dir_all(&bundle).await;
    }

    /// SIGTERM to every running container, SIGKILL after `grace`, then wait for the exits.
    async fn kill_all(&mut self, grace: Duration) {
        let ids: Vec<String> = self
            .slots
            .iter()
            .filter_map(|s| s.running.as_ref().map(|r| r.id.clone()))
            .collect();
        if ids.is_empty() {
            return;
        }
        info!(pod = %self.key(), containers = ids.len(), grace = grace.as_secs(), "killing containers");
        for s in &self.slots {
            if s.running.is_some() {
                self.event(
                    Some(&s.spec.name),
                    Kind::Normal,
                    "Killing",
                    format!("Stopping container {}", s.spec.name),
                );
            }
        }
        for id in &ids {
            if let Err(e) = self.ctx.runtime.kill(id, Signal::SIGTERM, false).await {
                debug!(pod = %self.key(), "SIGTERM {id}: {e}");
            }
        }
        let term_deadline = Instant::now() + grace;
        let mut killed = false;
        while self.slots.iter().any(|s| s.running.is_some()) {
            let deadline = if killed {
                term_deadline + KILL_WAIT
            } else {
                term_deadline
            };
            tokio::select! {
                Some(ev) = self.exits_rx.recv() => { self.on_exit(ev, false).await; }
                _ = tokio::time::sleep_until(deadline) => {
                    if killed {
                        warn!(pod = %self.key(), "containers did not exit after SIGKILL; deleting them");
                        let left: Vec<String> = self.slots.iter_mut().filter_map(|s| s.running.take().map(|r| r.id.clone())).collect();
                        for id in left {
                            self.remove_container(&id).await;
                        }
                        break;
                    }
                    killed = true;
                    for s in &self.slots {
                        if let Some(r) = &s.running
                            && let Err(e) = self.ctx.runtime.kill(&r.id, Signal::SIGKILL, true).await
                        {
                            debug!(pod = %self.key(), "SIGKILL {}: {e}", r.id);
                        }
                    }
                }
            }
        }
    }

    async fn teardown_sandbox(&mut self) {
        if let Some(sb) = self.sandbox.take() {
            if sb.cni
                && let Some(network) = self.ctx.network.get()
            {
                use r3s_cni::node::NodeNetwork;
                if let Err(e) = network.del_pod(&self.uid, "eth0").await {
                    warn!(pod = %self.key(), "CNI DEL: {e}");
                }
            }
            sandbox::remove(&sb.dir);
        }
        super::volumes::remove(&self.ctx.layout.volumes(&self.uid));
        let parent = self.cgroup_parent();
        tokio::task::spawn_blocking(move || crate::runtime::cleanup::remove_cgroup(&parent))
            .await
            .ok();
    }

    async fn terminate(&mut self, grace: Duration) {
        self.kill_all(grace).await;
        self.teardown_sandbox().await;
        // A sandbox might have been half-made by an earlier failed attempt.
        sandbox::remove(&self.ctx.layout.sandbox(&self.uid));
        super::state::remove(&self.ctx.layout.run_dir, &self.uid);
    }

    /// Removes the API object once everything is stopped (after a graceful delete).
    async fn delete_object(&self) {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&self.name, &dp).await {
            Ok(_) => info!(pod = %self.key(), "pod object removed"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => warn!(pod = %self.key(), "removing the pod object: {e}"),
        }
    }

    fn view(&self) -> PodView {
        let init: Vec<ContainerView> = self
            .slots
            .iter()
            .filter(|s| s.init)
            .map(Slot::view)
            .collect();
        let mut containers: Vec<ContainerView> = self
            .slots
            .iter()
            .filter(|s| !s.init)
            .map(Slot::view)
            .collect();
        let initialized = self
            .slots
            .iter()
            .filter(|s| s.init)
            .all(|s| s.done && s.last.as_ref().is_some_and(|t| t.exit_code == 0));
        if !initialized {
            for c in &mut containers {
                if let State::Waiting { reason, .. } = &mut c.state {
                    *reason = "PodInitializing".into();
                }
            }
        }
        PodView {
            init,
            containers,
            restart_policy: self.restart_policy(),
            host_ip: self.ctx.host_ip.to_string(),
            pod_ip: self
                .sandbox
                .as_ref()
                .and_then(|s| s.pod_ip)
                .map(|ip| ip.to_string())
                .or_else(|| self.last_status["podIP"].as_str().map(str::to_owned)),
            start_time: self.start_time.clone(),
            qos_class: status::qos_class(&self.pod).into(),
            sandbox_ready: self.sandbox.is_some(),
            initialized,
            message: self.sandbox_error.clone(),
        }
    }

    async fn write_status(&mut self) {
        if self.finished
            && self.last_status["phase"]
                .as_str()
                .is_some_and(|p| p == "Succeeded" || p == "Failed")
            && self.slots.iter().all(|s| s.last.is_none())
        {
            // Finished before this worker started: leave the recorded status alone.
            return;
        }
        let st = status::status(&self.view(), &self.last_status, &now());
        if st == self.last_status {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let patch = json!({"status": st});
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                debug!(pod = %self.key(), phase = %st["phase"], "status written");
                self.last_status = st;
                self.status_retry = None;
            }
            Err(e) => {
                warn!(pod = %self.key(), "writing status: {e}");
                self.status_retry = Some(Instant::now() + STATUS_RETRY);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// kubelet's default: `Always` for `:latest` or untagged images, else `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        _ if image.contains('@') => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// `imageID` as containerd reports it: the repository with the digest the name resolved to.
pub fn image_id(r: &r3s_images::ImageRecord) -> String {
    let repo = match r.name.rsplit_once('@') {
        Some((repo, _)) => repo.to_owned(),
        None => {
            // Strip a tag (a ':' after the last '/').
            match r.name.rfind(':') {
                Some(i) if i > r.name.rfind('/').unwrap_or(0) => r.name[..i].to_owned(),
                _ => r.name.clone(),
            }
        }
    };
    format!("{repo}@{}", r.target.as_str())
}

/// 64 hex digits, like containerd's ids.
pub fn new_container_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The host's resolv.conf; with only loopback resolvers (systemd-resolved's stub), the upstream
/// list systemd-resolved keeps, since a pod cannot reach the host's loopback.
fn host_resolv_conf() -> String {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let all_loopback = !servers.is_empty()
        && servers
            .iter()
            .all(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    if all_loopback
        && let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf")
    {
        return upstream;
    }
    text
}

/// Whether the kernel OOM-killed something in the container's memory cgroup (v1 or v2).
fn oom_killed(cgroup: &std::path::Path) -> bool {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let files = [
        PathBuf::from("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
        PathBuf::from("/sys/fs/cgroup")
            .join(rel)
            .join("memory.events"),
    ];
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("127.0.0.1:5000/busybox"), "Always");
        assert_eq!(
            default_pull_policy("127.0.0.1:5000/busybox:1"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn back_off_sequence() {
        let mut s = Slot::new(Container::default(), false);
        let delays: Vec<u64> = (0..8).map(|_| s.back_off(None).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(s.back_off(Some(BACKOFF_RESET)).as_secs(), 0);
        assert_eq!(new_container_id().len(), 64);
    }
}
