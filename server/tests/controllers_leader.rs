//! Leader election on one store: two contenders for one Lease, only the holder's work runs; when
//! the holder dies without releasing, the other takes over once the Lease has not been renewed
//! for its duration (kubectl shows the holder and the transition).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use r3s_server::client::{self, CONTROLLER_MANAGER_USER};
use r3s_server::controllers::ControllerOptions;
use r3s_server::controllers::leader::{self, LeaderElection};

fn election(identity: &str) -> LeaderElection {
    LeaderElection {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(200),
        ..LeaderElection::new("r3s-test-lock", identity)
    }
}

/// A contender whose work counts ticks while it leads.
fn contender(
    cluster: &support::Cluster,
    identity: &str,
    ticks: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let c = client::in_process(
        cluster.state.clone(),
        client::identity(CONTROLLER_MANAGER_USER),
    );
    let le = election(identity);
    tokio::spawn(async move {
        leader::run(c, le, futures::future::pending::<()>(), move |stop| {
            let ticks = ticks.clone();
            async move {
                let mut stop = stop.fuse();
                loop {
                    futures::select! {
                        () = stop => return,
                        () = tokio::time::sleep(Duration::from_millis(50)).fuse() => {
                            ticks.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        })
        .await;
    })
}

async fn holder(c: &support::Cluster) -> String {
    c.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "r3s-test-lock",
        "-o",
        "jsonpath={.spec.holderIdentity} {.spec.leaseTransitions}",
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_acts_and_the_other_takes_over() {
    if !support::have_kubectl() {
        return;
    }
    let cluster = support::start(&[], ControllerOptions::default()).await;
    let a_ticks = Arc::new(AtomicU64::new(0));
    let b_ticks = Arc::new(AtomicU64::new(0));
    let a = contender(&cluster, "server-a", a_ticks.clone());
    support::wait_for("a to lead", Duration::from_secs(10), || async {
        a_ticks.load(Ordering::SeqCst) > 0
    })
    .await;
    let b = contender(&cluster, "server-b", b_ticks.clone());
    // Several lease durations with both running: only a works.
    let before = a_ticks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(a_ticks.load(Ordering::SeqCst) > before, "a keeps working");
    assert_eq!(b_ticks.load(Ordering::SeqCst), 0, "b never worked");
    assert_eq!(holder(&cluster).await, "server-a 0");

    // a dies without releasing: b takes over after the lease duration.
    a.abort();
    let _ = a.await;
    let stopped_at = a_ticks.load(Ordering::SeqCst);
    support::wait_for("b to take over", Duration::from_secs(20), || async {
        b_ticks.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(a_ticks.load(Ordering::SeqCst), stopped_at);
    assert_eq!(holder(&cluster).await, "server-b 1");
    b.abort();
}
