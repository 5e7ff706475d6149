//! Leader election through a coordination.k8s.io Lease, as kube-controller-manager and
//! kube-scheduler do (`kube-system/kube-controller-manager`, `kube-system/kube-scheduler`), so that
//! several servers sharing one datastore never run the same loops at once.
//!
//! A contender takes the Lease when it does not exist, when it already holds it, or when the
//! record (holder, renewTime) has not changed for `leaseDurationSeconds` as timed on *this*
//! process's clock (so clock skew between servers does not matter). The leader renews every
//! `renew_every`; each write is a compare-and-swap on the resourceVersion it read. The work runs
//! only while leading: it gets a stop signal the moment a renewal fails or the renew deadline
//! passes without one, and the contender goes back to waiting once the work has returned.
//!
//! Invariant: at most one contender's work runs per Lease at any time, provided work stops within
//! `lease_duration - renew_deadline` of its stop signal (the loops are level-triggered and keep no
//! state a new leader cannot rebuild, so stopping mid-way is safe).

use std::future::Future;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Where and how one Lease is contended for.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// The Lease's namespace (`kube-system`).
    pub namespace: String,
    /// `kube-controller-manager` or `kube-scheduler`.
    pub name: String,
    /// This contender's `holderIdentity` (unique per server).
    pub identity: String,
    /// `leaseDurationSeconds` (upstream 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal (upstream 10 s).
    pub renew_deadline: Duration,
    /// How often the leader renews and a follower retries (upstream 2 s).
    pub retry_period: Duration,
}

impl LeaderElection {
    /// Upstream's timings for the Lease `kube-system/<name>`.
    pub fn new(name: &str, identity: &str) -> LeaderElection {
        LeaderElection {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What the follower last saw of the Lease and when it saw it change.
struct Observed {
    record: Option<(Option<String>, Option<Timestamp>)>,
    since: Instant,
}

fn record(lease: &Lease) -> (Option<String>, Option<Timestamp>) {
    let spec = lease.spec.as_ref();
    (
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
    )
}

/// One attempt to take or renew the Lease; true if this contender holds it afterwards.
async fn try_acquire(api: &Api<Lease>, le: &LeaderElection, seen: &mut Observed) -> bool {
    let now = MicroTime(Timestamp::now());
    let secs = i32::try_from(le.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let existing = match api.get_opt(&le.name).await {
        Ok(l) => l,
        Err(error) => {
            tracing::info!(%error, lease = %le.name, "reading the leader lease failed");
            return false;
        }
    };
    let Some(mut lease) = existing else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(le.name.clone()),
                namespace: Some(le.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(le.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return api.create(&PostParams::default(), &lease).await.is_ok();
    };
    let current = record(&lease);
    if seen.record.as_ref() != Some(&current) {
        seen.record = Some(current.clone());
        seen.since = Instant::now();
    }
    let mine = current.0.as_deref() == Some(le.identity.as_str());
    let held_by_other = current.0.as_deref().is_some_and(|h| !h.is_empty()) && !mine;
    let duration = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .map_or(le.lease_duration, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
    if held_by_other && seen.since.elapsed() < duration {
        return false;
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if !mine {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(le.identity.clone());
    }
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(now);
    // `replace` carries the resourceVersion read above: a concurrent writer makes this fail.
    match api.replace(&le.name, &PostParams::default(), &lease).await {
        Ok(written) => {
            seen.record = Some(record(&written));
            seen.since = Instant::now();
            true
        }
        Err(_) => false,
    }
}

/// Runs `work` whenever this contender leads, until `shutdown`. `work` gets a future that
/// resolves when leadership is lost (or on shutdown) and must return soon after.
pub async fn run<W, Fut>(
    client: kube::Client,
    le: LeaderElection,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut work: W,
) where
    W: FnMut(futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &le.namespace);
    let shutdown = shutdown.shared();
    let mut seen = Observed {
        record: None,
        since: Instant::now(),
    };
    loop {
        // Follower: retry until the Lease is ours.
        loop {
            if try_acquire(&api, &le, &mut seen).await {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(le.retry_period) => {}
                () = shutdown.clone() => return,
            }
        }
        tracing::info!(lease = %le.name, identity = %le.identity, "became leader");
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut rx = stop_rx.clone();
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        }
        .boxed();
        let renewing = async {
            let mut last_renewal = Instant::now();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(le.retry_period) => {}
                    () = shutdown.clone() => break,
                }
                if try_acquire(&api, &le, &mut seen).await {
                    last_renewal = Instant::now();
                } else if last_renewal.elapsed() >= le.renew_deadline
                    || seen
                        .record
                        .as_ref()
                        .is_some_and(|r| r.0.as_deref() != Some(le.identity.as_str()))
                {
                    tracing::warn!(lease = %le.name, "lost leadership; stopping");
                    break;
                }
            }
            let _ = stop_tx.send(true);
        };
        tokio::join!(work(stopped), renewing);
        if shutdown.clone().now_or_never().is_some() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_timings() {
        let le = LeaderElection::new("kube-scheduler", "a");
        assert_eq!(le.namespace, "kube-system");
        assert!(le.retry_period < le.renew_deadline && le.renew_deadline < le.lease_duration);
    }
}
