//! The shared informer every control loop and the scheduler read Pods and Nodes from: one watch,
//! one cache without managedFields, and each subscriber told of every object the cache took in
//! (the first list, later applies, deletions), also when it subscribes after the first list.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use r3s_server::api::{ApiState, prepare};
use r3s_server::client;
use r3s_server::controllers::cache;
use r3s_server::controllers::informer::Informer;
use r3s_server::store::{SqliteStore, Store, StoreOptions};
use serde_json::json;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "informer-test"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .expect("pod")
}

/// The names the stream yields until every one of `wanted` was seen (panics after 20 s).
async fn names_until(
    stream: &mut (impl Stream<Item = Arc<Pod>> + Unpin),
    wanted: &[&str],
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !wanted.iter().all(|w| seen.contains(*w)) {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let obj = next
            .unwrap_or_else(|_| panic!("timed out waiting for {wanted:?}; seen {seen:?}"))
            .expect("the informer stream ended");
        seen.insert(obj.metadata.name.clone().unwrap_or_default());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watch_feeds_every_subscriber() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path().join("state.db"), StoreOptions::default()).expect("store"),
    );
    let state = ApiState::new(store, "127.0.0.1:6443");
    prepare(&state).await.expect("prepare");
    let admin = client::in_process(state, client::identity("r3s-test-admin"));
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let params = PostParams::default();
    pods.create(&params, &pod("early")).await.expect("create");

    let informer: Informer<Pod> = Informer::start(Api::all(admin.clone()));
    let mut first = Box::pin(informer.subscribe());
    // The first complete list reaches a subscriber that was there before it.
    names_until(&mut first, &["early"]).await;
    cache::synced(&informer.store()).await.expect("synced");

    let created = pods.create(&params, &pod("later")).await.expect("create");
    names_until(&mut first, &["later"]).await;
    let cached = informer
        .store()
        .state()
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("later"))
        .expect("cached");
    assert_eq!(cached.metadata.uid, created.metadata.uid);
    assert!(
        cached.metadata.managed_fields.is_none(),
        "managedFields are not cached"
    );

    // A loop that subscribes after the first list gets what the cache holds, then the changes.
    let mut late = Box::pin(informer.subscribe());
    names_until(&mut late, &["early", "later"]).await;

    let gone = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete("later", &gone).await.expect("delete");
    for stream in [&mut first, &mut late] {
        // Both hear of the deletion (a loop owning the pod must be woken to replace it).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let obj = tokio::time::timeout_at(deadline, stream.next())
                .await
                .expect("timed out waiting for the deletion")
                .expect("stream ended");
            // The deletion carries a newer resourceVersion than anything seen before.
            if obj.metadata.name.as_deref() == Some("later")
                && obj.metadata.resource_version != created.metadata.resource_version
            {
                break;
            }
        }
    }
    assert_eq!(
        informer
            .store()
            .state()
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>(),
        vec!["early".to_string()]
    );

    // The watch stops with the last handle: subscribers see their stream end.
    drop(informer);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while first.next().await.is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the subscriber stream ends with the informer"
    );
}
