//! The watch caches the control loops read from: one reflector store per kind, filled by a
//! watch with upstream-like back-off, plus the stream of changed objects that wakes the loop's
//! owners (`Controller::owns_stream` / `watches_stream`). One function so every loop watches the
//! same way.

use std::fmt::Debug;
use std::hash::Hash;

use futures::{FutureExt, Stream, StreamExt, future};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde::de::DeserializeOwned;

use super::ControllerError;

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

/// A cache of every `K` (those matching `config`) and a stream that yields once for every change
/// the store has taken in. The store only fills when a (re)list is complete (`InitDone`), which
/// `touched_objects` does not report: a loop woken by it could read an empty cache during the
/// first list and then never be woken again for objects that existed at start.
pub fn changes<K>(
    client: &kube::Client,
    config: watcher::Config,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let events =
        reflector(writer, watcher(Api::<K>::all(client.clone()), config)).default_backoff();
    (store, wakes(events))
}

/// One `()` per reflector event after which the store may read differently (see [`changes`]).
pub fn wakes<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = ()> + Send + 'static {
    events.filter_map(|event| {
        future::ready(match event {
            // The store has not changed yet: the list is still being buffered.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
            _ => Some(()),
        })
    })
}

/// Waits for `store`'s first complete list (upstream's `WaitForCacheSync`). A reconciler that read
/// a half-filled cache would act on what it has not seen yet: create a second pod, publish an
/// empty endpoint list.
pub async fn synced<K>(store: &Store<K>) -> Result<(), ControllerError>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    store
        .wait_until_ready()
        .await
        .map_err(|_| ControllerError::CacheStopped(K::kind(&Default::default()).into_owned()))
}

/// True once `store` holds a complete list; never waits.
pub fn is_synced<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}
