//! The watch hub: recent history in memory and push delivery of committed events to watchers.
//!
//! Backend-independent: a backend calls [`HubGuard::publish`] with each committed batch (in revision
//! order) and builds watch streams from [`HubGuard::subscribe`], supplying its own replay of history
//! older than what the hub still holds (the SQLite backend reads its log).
//!
//! Invariants:
//! - The ring holds every event with revision > `floor` (and nothing at or below it), in order; it is
//!   bounded by a count and a byte budget, evicting the oldest first (which raises `floor`).
//! - Registering a subscriber and publishing happen under the same mutex, so a subscriber sees each
//!   event with revision > its `after` exactly once: from the backlog snapshot taken at registration, or
//!   live, never both and never neither.
//! - Publishing never blocks: a subscriber whose bounded channel is full is dropped and its stream ends
//!   with [`StoreError::Expired`]; the writer never waits for a slow watcher and memory stays bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Event, Revision, StoreError, WatchStream};

/// Bounds of the in-memory history and of each watcher's queue.
#[derive(Clone, Copy, Debug)]
pub struct HubLimits {
    /// At most this many recent events are kept.
    pub history_events: usize,
    /// At most this many bytes of keys and values are kept in recent events (approximate).
    pub history_bytes: usize,
    /// Events queued per watcher before it counts as too slow and is expired.
    pub watch_buffer: usize,
}

const OPEN: u8 = 0;
const LAGGED: u8 = 1;
const CLOSED: u8 = 2;

/// Why a subscriber's channel ended, shared between the hub and the stream.
#[derive(Debug, Default)]
struct SubState {
    reason: AtomicU8,
    /// For a lagged subscriber: the revision of the first event it could not take.
    dropped_at: AtomicI64,
}

struct Subscriber {
    prefix: String,
    after: Revision,
    tx: mpsc::Sender<Event>,
    state: Arc<SubState>,
}

/// The hub. Cheap to share behind an `Arc`.
pub struct Hub {
    inner: Mutex<HubInner>,
    limits: HubLimits,
}

/// The hub's state; reached through [`Hub::lock`].
pub struct HubInner {
    ring: VecDeque<Event>,
    ring_bytes: usize,
    floor: Revision,
    subs: Vec<Subscriber>,
    closed: bool,
}

/// The locked hub. A backend holds it across "apply to the current-state view" and "publish" so that
/// readers that also take it see the view and the ring at the same revision.
pub struct HubGuard<'a> {
    inner: MutexGuard<'a, HubInner>,
    limits: HubLimits,
}

/// What a new subscriber starts with.
pub struct Subscription {
    prefix: String,
    after: Revision,
    /// Events newer than `replay_upto` already in memory, filtered by prefix.
    backlog: Vec<Event>,
    /// When the ring does not reach back to `after`: the backend must first replay (after, upto].
    replay_upto: Option<Revision>,
    rx: mpsc::Receiver<Event>,
    state: Arc<SubState>,
}

impl Subscription {
    /// The revision up to which the backend must replay history before the in-memory backlog, if any.
    pub fn replay_upto(&self) -> Option<Revision> {
        self.replay_upto
    }
}

fn event_bytes(ev: &Event) -> usize {
    // The prev value usually shares its buffer with an older event's value; counting it anyway keeps
    // the budget conservative.
    ev.kv.key.len() + ev.kv.value.len() + ev.prev.as_ref().map_or(0, |p| p.value.len()) + 64
}

impl Hub {
    /// A hub whose history starts after `floor`, seeded with `events` (all newer than `floor`, in order).
    pub fn new(limits: HubLimits, floor: Revision, events: Vec<Event>) -> Hub {
        let hub = Hub {
            inner: Mutex::new(HubInner {
                ring: VecDeque::new(),
                ring_bytes: 0,
                floor,
                subs: Vec::new(),
                closed: false,
            }),
            limits,
        };
        hub.lock().push_history(events);
        hub
    }

    pub fn lock(&self) -> HubGuard<'_> {
        HubGuard {
            inner: self.inner.lock().unwrap_or_else(PoisonError::into_inner),
            limits: self.limits,
        }
    }

    /// Ends every watch stream with [`StoreError::Closed`]; later subscriptions end at once.
    pub fn close(&self) {
        let mut g = self.lock();
        g.inner.closed = true;
        for sub in g.inner.subs.drain(..) {
            sub.state.reason.store(CLOSED, Ordering::SeqCst);
        }
    }
}

impl HubGuard<'_> {
    /// Every event with a revision above this is in memory.
    pub fn floor(&self) -> Revision {
        self.inner.floor
    }

    /// Recent events newer than `after`, oldest first (None if the ring does not reach back that far).
    pub fn events_after(&self, after: Revision) -> Option<impl DoubleEndedIterator<Item = &Event>> {
        if after < self.inner.floor {
            return None;
        }
        Some(self.inner.ring.iter().filter(move |e| e.revision() > after))
    }

    fn push_history(&mut self, events: Vec<Event>) {
        let inner = &mut *self.inner;
        for ev in events {
            inner.ring_bytes += event_bytes(&ev);
            inner.ring.push_back(ev);
        }
        while inner.ring.len() > self.limits.history_events
            || (inner.ring_bytes > self.limits.history_bytes && inner.ring.len() > 1)
        {
            let Some(old) = inner.ring.pop_front() else {
                break;
            };
            inner.ring_bytes = inner.ring_bytes.saturating_sub(event_bytes(&old));
            inner.floor = old.revision();
        }
    }

    /// Records a committed batch (in revision order) and pushes it to matching subscribers.
    pub fn publish(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.inner.subs.retain(|sub| {
            for ev in &events {
                if ev.revision() <= sub.after || !ev.kv.key.starts_with(&sub.prefix) {
                    continue;
                }
                match sub.tx.try_send(ev.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.state.dropped_at.store(ev.revision(), Ordering::SeqCst);
                        sub.state.reason.store(LAGGED, Ordering::SeqCst);
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        self.push_history(events);
    }

    /// Registers a watcher for keys under `prefix` with revisions > `after`.
    pub fn subscribe(&mut self, prefix: &str, after: Revision) -> Subscription {
        let (tx, rx) = mpsc::channel(self.limits.watch_buffer.max(1));
        let state = Arc::new(SubState::default());
        let floor = self.inner.floor;
        let replay_upto = (after < floor).then_some(floor);
        let from = after.max(floor);
        let backlog: Vec<Event> = self
            .inner
            .ring
            .iter()
            .filter(|e| e.revision() > from && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        if self.inner.closed {
            state.reason.store(CLOSED, Ordering::SeqCst);
        } else {
            self.inner.subs.push(Subscriber {
                prefix: prefix.to_owned(),
                after,
                tx,
                state: state.clone(),
            });
        }
        Subscription {
            prefix: prefix.to_owned(),
            after,
            backlog,
            replay_upto,
            rx,
            state,
        }
    }

    /// Number of live subscribers (for tests and metrics).
    pub fn subscriber_count(&self) -> usize {
        self.inner.subs.len()
    }
}

/// Replays history for a watch: called with (prefix, after, upto), it returns the matching events of
/// the next chunk of (after, upto] and the revision it scanned up to (== upto when finished).
pub type Replay =
    Box<dyn FnMut(&str, Revision, Revision) -> BoxFuture<'static, ReplayChunk> + Send + 'static>;

/// One chunk of replayed history: matching events and the revision scanned up to.
pub type ReplayChunk = Result<(Vec<Event>, Revision), StoreError>;

enum Phase {
    Replay { pos: Revision, upto: Revision },
    Live,
    Done,
}

struct StreamState {
    sub: Subscription,
    phase: Phase,
    /// Events ready to be yielded, oldest first.
    pending: VecDeque<Event>,
    /// The in-memory backlog, held back until the replay of older history has finished.
    backlog: Vec<Event>,
    replay: Option<Replay>,
    last: Revision,
}

/// Turns a subscription into the public stream: replayed history (if any), then the backlog, then
/// live events; ends with `Expired` if the watcher lagged, `Closed` if the store shut down.
pub fn into_stream(mut sub: Subscription, replay: Option<Replay>) -> WatchStream {
    let backlog = std::mem::take(&mut sub.backlog);
    let after = sub.after;
    let (phase, pending, backlog) = match (sub.replay_upto, replay.is_some()) {
        (Some(upto), true) => (Phase::Replay { pos: after, upto }, VecDeque::new(), backlog),
        (Some(upto), false) => {
            // No way to replay: report the gap instead of silently skipping it.
            let err = StoreError::Expired {
                requested: after,
                compacted: upto,
            };
            return Box::pin(futures::stream::iter([Err(err)]));
        }
        (None, _) => (Phase::Live, backlog.into(), Vec::new()),
    };
    let state = StreamState {
        sub,
        phase,
        pending,
        backlog,
        replay,
        last: after,
    };
    Box::pin(futures::stream::unfold(state, step))
}

async fn step(mut st: StreamState) -> Option<(Result<Event, StoreError>, StreamState)> {
    loop {
        if let Some(ev) = st.pending.pop_front() {
            st.last = ev.revision();
            return Some((Ok(ev), st));
        }
        match st.phase {
            Phase::Done => return None,
            Phase::Replay { pos, upto } => {
                if pos >= upto {
                    st.pending = std::mem::take(&mut st.backlog).into();
                    st.phase = Phase::Live;
                    continue;
                }
                let Some(replay) = st.replay.as_mut() else {
                    st.phase = Phase::Done;
                    continue;
                };
                match replay(&st.sub.prefix, pos, upto).await {
                    Ok((events, reached)) => {
                        st.pending
                            .extend(events.into_iter().filter(|e| e.revision() > pos));
                        // Guard against a replay that makes no progress.
                        let reached = if reached > pos { reached } else { upto };
                        st.phase = Phase::Replay { pos: reached, upto };
                    }
                    Err(e) => {
                        st.phase = Phase::Done;
                        return Some((Err(e), st));
                    }
                }
            }
            Phase::Live => match st.sub.rx.recv().await {
                Some(ev) => {
                    st.last = ev.revision();
                    return Some((Ok(ev), st));
                }
                None => {
                    st.phase = Phase::Done;
                    let err = match st.sub.state.reason.load(Ordering::SeqCst) {
                        LAGGED => StoreError::Expired {
                            requested: st.last,
                            compacted: st.sub.state.dropped_at.load(Ordering::SeqCst),
                        },
                        OPEN | CLOSED => StoreError::Closed,
                        _ => StoreError::Closed,
                    };
                    return Some((Err(err), st));
                }
            },
        }
    }
}
