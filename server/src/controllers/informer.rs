//! Shared informers: ONE watch and ONE cache per kind for every control loop and the scheduler
//! (upstream's `SharedInformerFactory`). Before, each loop kept its own reflector of all Pods and
//! Nodes: about eleven deserialized copies of every pod, 1.2 GiB at 4,000 pods.
//!
//! An [`Informer`] drives its watch on a task of its own, keeps the store, and hands every
//! subscriber each object the store has taken in: applied and deleted objects, every object after
//! a complete (re)list (the store only changes then), and the objects a relist found gone. Each
//! subscriber has its own unbounded queue of `Arc`s, so a slow loop never holds up the watch or the
//! other loops, and nothing is copied per subscriber. Objects are cached without
//! `metadata.managedFields` (as upstream's controller manager and scheduler do): no loop reads
//! them, and they are often the larger half of a pod.
//!
//! The task stops when the last clone of the [`Informer`] is dropped.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// The kinds several loops read: one informer each, created once per process.
#[derive(Clone)]
pub struct Informers {
    pub pods: Informer<Pod>,
    pub nodes: Informer<Node>,
}

impl Informers {
    /// Starts the watches (on the current tokio runtime) with `client`'s identity, which must be
    /// allowed to list and watch Pods and Nodes cluster-wide.
    pub fn start(client: &kube::Client) -> Self {
        Informers {
            pods: Informer::start(Api::all(client.clone())),
            nodes: Informer::start(Api::all(client.clone())),
        }
    }
}

/// A shared cache of every `K` and the changes it takes in (see the module docs).
pub struct Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    subscribers: Subscribers<K>,
    _task: Arc<AbortOnDrop>,
}

impl<K> Clone for Informer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Informer {
            store: self.store.clone(),
            subscribers: self.subscribers.clone(),
            _task: self._task.clone(),
        }
    }
}

/// Each subscriber's queue: `Some` for a touched object, `None` after a complete (re)list (which
/// may have touched nothing, yet a loop waiting for the sync needs to hear of it).
type Subscribers<K> = Arc<Mutex<Vec<mpsc::UnboundedSender<Option<Arc<K>>>>>>;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    /// Starts watching everything `api` lists.
    pub fn start(api: Api<K>) -> Self {
        let (store, writer) = reflector::store();
        let subscribers: Subscribers<K> = Arc::default();
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|obj| obj.meta_mut().managed_fields = None);
        let task = tokio::spawn(drive(events, writer, subscribers.clone()));
        Informer {
            store,
            subscribers,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// The cache (fills when the first list is complete: see [`super::cache::synced`]).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object the cache takes in from now on; a cache already listed first replays what it
    /// holds, so a loop that subscribes late sees the same as one that was there from the start.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.queue().filter_map(std::future::ready)
    }

    /// One `()` per change the cache took in, and one per complete (re)list, for loops that
    /// re-read the whole cache.
    pub fn wakes(&self) -> impl Stream<Item = ()> + Send + 'static {
        self.queue().map(|_| ())
    }

    fn queue(&self) -> UnboundedReceiverStream<Option<Arc<K>>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if super::cache::is_synced(&self.store) {
            for obj in self.store.state() {
                let _ = tx.send(Some(obj));
            }
            let _ = tx.send(None);
        }
        subscribers.push(tx);
        UnboundedReceiverStream::new(rx)
    }
}

/// Applies each watch event to the store, then hands the objects it touched to the subscribers.
async fn drive<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    mut writer: reflector::store::Writer<K>,
    subscribers: Subscribers<K>,
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let store = writer.as_reader();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::info!(kind = %K::kind(&Default::default()), %error, "watch failed; retrying");
                continue;
            }
        };
        let before = matches!(event, watcher::Event::InitDone).then(|| store.state());
        writer.apply_watcher_event(&event);
        let touched: Vec<Option<Arc<K>>> = match event {
            watcher::Event::Apply(obj) => vec![store.get(&ObjectRef::from_obj(&obj))],
            watcher::Event::Delete(obj) => vec![Some(Arc::new(obj))],
            watcher::Event::InitDone => {
                let now = store.state();
                let kept: HashSet<ObjectRef<K>> =
                    now.iter().map(|o| ObjectRef::from_obj(&**o)).collect();
                let gone = before
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| !kept.contains(&ObjectRef::from_obj(&**o)));
                now.into_iter()
                    .chain(gone)
                    .map(Some)
                    .chain([None])
                    .collect()
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => continue,
        };
        let mut subscribers = subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A loop that stopped dropped its receiver: forget it.
        subscribers.retain(|tx| touched.iter().all(|obj| tx.send(obj.clone()).is_ok()));
    }
}
