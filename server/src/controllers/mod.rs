//! The control loops (kube-controller-manager's role). Each loop lives in its own file, talks to the
//! API only through a `kube::Client` (in r3s-server, [`crate::client::in_process`]), reads from watch
//! caches, and is level-triggered: it never depends on *why* it runs.
//!
//! Entry point: [`run`] starts every loop and returns when `shutdown` resolves.
//!
//! | file | watches | writes |
//! |---|---|---|
//! | `replicaset.rs` | ReplicaSets, Pods | Pods, ReplicaSet status |
//! | `daemonset.rs` | DaemonSets, Pods, Nodes, ControllerRevisions | Pods, ControllerRevisions, DaemonSet status |
//! | `deployment.rs` | Deployments, ReplicaSets | ReplicaSets, Deployment status |
//! | `statefulset.rs` | StatefulSets, Pods, ControllerRevisions | Pods, PVCs, ControllerRevisions, StatefulSet status |
//! | `gc.rs` | every owned kind | dependents of deleted owners, owner finalizers |
//! | `namespace.rs` | Namespaces | contents of terminating namespaces, `finalize` |
//! | `nodelifecycle.rs` | Nodes, Leases, Pods | node conditions and taints, evictions |
//! | `podgc.rs` | Pods, Nodes | deletes pods of deleted nodes, old terminated pods |
//! | `nodeipam.rs` | Nodes | `spec.podCIDR(s)` |
//! | `endpoints.rs` | Services, Pods | Endpoints |
//! | `endpointslice.rs` | Services, Pods, EndpointSlices | EndpointSlices |
//! | `job.rs` | Jobs, Pods | Pods, Job status, deletes finished Jobs (TTL) |
//! | `cronjob.rs` | CronJobs, Jobs | Jobs, CronJob status |
//! | `disruption.rs` | PodDisruptionBudgets, Pods | PodDisruptionBudget status |
//! | `serviceaccount.rs` | Namespaces | `default` ServiceAccount, `kube-root-ca.crt` |
//! | `servicelb.rs` | Services, Nodes | LoadBalancer Service status (ingress = node IPs) |
//! | `resourcequota.rs` | ResourceQuotas, Pods, Services, ConfigMaps, Secrets, PVCs | ResourceQuota status |
//! | `volumebinding.rs` | PVCs, PVs, StorageClasses, Pods, Nodes | PV/PVC binding and status, local-path PVs (`localpath.rs`), reclaim |
//!
//! Pods and Nodes are read from the process-wide shared informers (`informer.rs`: one watch and one
//! cache each, also the scheduler's); other kinds from per-loop caches (`cache.rs`).
//!
//! DaemonSets and StatefulSets keep their template history as ControllerRevisions (`history.rs`).
//! StatefulSet volumeClaimTemplates become PersistentVolumeClaims (`claims.rs`).
//!
//! Leader election (`leader.rs`, off unless [`ControllerOptions::leader_election`] is set; one
//! server needs none): when several servers share one datastore, [`run`] first takes the Lease
//! `kube-system/kube-controller-manager` and runs the loops only while it holds it (the scheduler
//! likewise with `kube-system/kube-scheduler`). Every loop is level-triggered and keeps no state
//! that a new leader could not rebuild from the API (expectations only ever delay work), so
//! hand-over needs nothing more.

pub mod cache;
pub mod claims;
pub mod clock;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod informer;
pub mod job;
pub mod leader;
pub mod localpath;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod pods;
pub mod replicaset;
pub mod resourcequota;
pub mod rollout;
pub mod selector;
pub mod serviceaccount;
pub mod servicelb;
pub mod statefulset;
pub mod volumebinding;

use std::future::Future;
use std::time::Duration;

use futures::FutureExt;

/// Settings of the control loops (upstream's kube-controller-manager flags where one exists).
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// `--node-monitor-grace-period`: how long a node may go without renewing its Lease before it
    /// is marked Ready=Unknown and tainted unreachable (upstream default 40 s).
    pub node_monitor_grace_period: Duration,
    /// How often node health is checked (`--node-monitor-period`, 5 s).
    pub node_monitor_period: Duration,
    /// The tolerationSeconds given to pods without their own toleration of the not-ready and
    /// unreachable taints (`--default-unreachable-toleration-seconds`, 300 s): how long a pod
    /// stays on an unreachable node before it is evicted.
    pub default_toleration_seconds: i64,
    /// `--cluster-cidr` (k3s: 10.42.0.0/16), carved into per-node `/node_cidr_mask_size` ranges.
    pub cluster_cidr: String,
    /// `--node-cidr-mask-size` (24).
    pub node_cidr_mask_size: u8,
    /// How often pod GC sweeps (upstream: 20 s).
    pub pod_gc_period: Duration,
    /// `--terminated-pod-gc-threshold`: terminated pods kept before the oldest are deleted
    /// (upstream 12500; 0 disables).
    pub terminated_pod_gc_threshold: usize,
    /// PEM of the cluster CA, published as `kube-root-ca.crt` in every namespace (none: skipped).
    pub root_ca_pem: Option<String>,
    /// The first delay before a Job's failed pod is replaced, doubled per failure (upstream 10 s).
    pub job_backoff_base: Duration,
    /// The clock CronJob schedules are evaluated against (tests move it forward).
    pub clock: clock::Clock,
    /// The longest a CronJob waits before its schedule is looked at again (normally it wakes at
    /// its next scheduled time; this bounds the wait when the clock is moved).
    pub cronjob_max_requeue: Duration,
    /// Run the loops only while holding this Lease (several servers on one datastore).
    pub leader_election: Option<leader::LeaderElection>,
    /// The built-in `local-path` provisioner and its StorageClass (k3s's `local-storage`
    /// addon); `None` when disabled (`--disable=local-storage`, and in tests).
    pub local_storage: Option<localpath::LocalPath>,
    /// Run ServiceLB (k3s's `servicelb`; `--disable=servicelb` turns it off, leaving
    /// LoadBalancer Services pending for another implementation, as on k3s).
    pub servicelb: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            default_toleration_seconds: 300,
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: 24,
            pod_gc_period: Duration::from_secs(20),
            terminated_pod_gc_threshold: 12500,
            root_ca_pem: None,
            job_backoff_base: Duration::from_secs(10),
            clock: clock::Clock::default(),
            cronjob_max_requeue: Duration::from_secs(300),
            leader_election: None,
            local_storage: None,
            servicelb: true,
        }
    }
}

/// Why a reconcile failed; decides how soon it is retried.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("writing {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the {0} cache stopped")]
    CacheStopped(String),
}

impl ControllerError {
    /// How long to wait before retrying: a lost compare-and-swap is retried almost at once, an
    /// invalid object only after it had time to change, anything else soon.
    pub fn backoff(&self) -> Duration {
        match self {
            ControllerError::Write { source, .. } | ControllerError::Read { source, .. } if matches!(source, kube::Error::Api(e) if e.code == 409) => {
                Duration::from_millis(200)
            }
            ControllerError::Invalid(_) => Duration::from_secs(30),
            _ => Duration::from_secs(2),
        }
    }
}

/// Runs every control loop until `shutdown` resolves (with leader election: while leading).
///
/// `informers` are the shared Pod and Node caches (the scheduler reads the same ones); they keep
/// watching between leadership terms, so a new term starts from a filled cache.
pub async fn run(
    client: kube::Client,
    opts: ControllerOptions,
    informers: informer::Informers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    match opts.leader_election.clone() {
        None => run_loops(client, opts, informers, shutdown).await,
        Some(le) => {
            leader::run(client.clone(), le, shutdown, |stop| {
                run_loops(client.clone(), opts.clone(), informers.clone(), stop)
            })
            .await;
        }
    }
}

async fn run_loops(
    client: kube::Client,
    opts: ControllerOptions,
    informers: informer::Informers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.shared();
    let rs = replicaset::run(client.clone(), &informers, shutdown.clone());
    let deploy = deployment::run(client.clone(), shutdown.clone());
    let gc = gc::run(client.clone(), shutdown.clone());
    let ns = namespace::run(client.clone(), shutdown.clone());
    let nodes = nodelifecycle::run(client.clone(), &informers, opts.clone(), shutdown.clone());
    let ipam = nodeipam::run(client.clone(), &informers, opts.clone(), shutdown.clone());
    let podgc = podgc::run(client.clone(), &informers, opts.clone(), shutdown.clone());
    let eps = endpoints::run(client.clone(), &informers, shutdown.clone());
    let slices = endpointslice::run(client.clone(), &informers, shutdown.clone());
    let pdbs = disruption::run(client.clone(), &informers, shutdown.clone());
    let jobs = job::run(
        client.clone(),
        &informers,
        opts.job_backoff_base,
        shutdown.clone(),
    );
    let cronjobs = cronjob::run(
        client.clone(),
        opts.clock.clone(),
        opts.cronjob_max_requeue,
        shutdown.clone(),
    );
    let ds = daemonset::run(client.clone(), &informers, shutdown.clone());
    let sts = statefulset::run(client.clone(), &informers, shutdown.clone());
    let lb_enabled = opts.servicelb;
    let lb_client = client.clone();
    let lb_informers = informers.clone();
    let lb_shutdown = shutdown.clone();
    let lb = async move {
        if lb_enabled {
            servicelb::run(lb_client, &lb_informers, lb_shutdown).await;
        }
    };
    let quotas = resourcequota::run(client.clone(), shutdown.clone());
    let volumes = volumebinding::run(
        client.clone(),
        &informers,
        opts.local_storage.clone(),
        shutdown.clone(),
    );
    let sa = serviceaccount::run(client, opts, shutdown);
    tokio::join!(
        rs, deploy, ds, sts, gc, ns, nodes, ipam, podgc, eps, slices, pdbs, jobs, cronjobs, sa, lb,
        quotas, volumes
    );
    tracing::info!("control loops stopped");
}
