//! The watch caches the control loops read from: one reflector store per kind, filled by a
//! watch with upstream-like back-off, plus the stream of changed objects that wakes the loop's
//! owners (`Controller::owns_stream` / `watches_stream`). One function so every loop watches the
//! same way.

use std::fmt::Debug;
use std::hash::Hash;

use futures::Stream;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde::de::DeserializeOwned;

/// A cache of every `K` in the cluster and the stream that keeps it current (poll the stream,
/// or the store never fills).
pub fn watched<K>(
    client: &kube::Client,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let events = reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    (store, events)
}
