//! The event hub: one task per process reads the event log in order and fans each event out to
//! every open stream of this process (SSE clients, long-polls).
//!
//! Who wakes whom: a commit that wrote events signals `Store::events_written` (this process's
//! writes); on PostgreSQL the hub also polls every `poll` while it has subscribers, which is how
//! events written by other replicas arrive. Without subscribers it reads nothing; when one
//! arrives the hub jumps to the current horizon and tells subscribers to read the skipped range
//! from the log themselves (`Message::Jump`). A subscriber reads `published` after subscribing,
//! and the hub raises `published` before sending, so whatever a subscriber did not receive live,
//! it finds below `published` in the log: no gap, and duplicates are dropped by id.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::jobs::JobEvent;
use crate::store::{EventFilter, Store};

/// Events read from the log per query.
const PAGE: usize = 500;

/// An event as the streams of this process receive it: one copy shared by all of them, with its
/// wire form made once, by the first stream that sends it, and reused by the others (with 50
/// streams open, each event was serialized 50 times).
#[derive(Debug)]
pub struct LiveEvent {
    event: JobEvent,
    wire: OnceLock<Bytes>,
}

impl LiveEvent {
    pub fn new(event: JobEvent) -> Arc<Self> {
        Arc::new(Self { event, wire: OnceLock::new() })
    }

    /// The event's wire form, made by `make` the first time it is asked for.
    pub fn wire(&self, make: impl FnOnce(&JobEvent) -> Bytes) -> Bytes {
        self.wire.get_or_init(|| make(&self.event)).clone()
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = JobEvent;

    fn deref(&self) -> &JobEvent {
        &self.event
    }
}

/// What subscribers receive.
#[derive(Debug, Clone)]
pub enum Message {
    /// The next event of the log.
    Event(Arc<LiveEvent>),
    /// The hub skipped the log up to `to` (it had no subscribers): read what follows your
    /// position, up to `to`, from the log.
    Jump { to: i64 },
}

/// The process's event fan-out. Cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    tx: broadcast::Sender<Message>,
    /// Every event up to here was sent, or is announced by a `Jump` sent after it was raised.
    published: AtomicI64,
    /// A subscriber arrived (wakes an idle hub).
    arrived: Notify,
    stop: CancellationToken,
}

/// A subscriber's end: live messages, and where the log must be read up to first.
pub struct Subscription {
    pub rx: broadcast::Receiver<Message>,
    /// Read the log up to here (inclusive) before taking live messages.
    pub upto: i64,
    /// Cancelled at shutdown: streams end.
    pub stop: CancellationToken,
}

impl EventHub {
    /// Starts the hub at the log's current end. `buffer` bounds the messages a slow subscriber
    /// may fall behind by before it is dropped; `poll` is how often other replicas' events are
    /// looked for (PostgreSQL), `None` when this process is the only writer (SQLite).
    pub async fn start(store: Store, buffer: usize, poll: Option<Duration>) -> Result<Self, crate::store::Error> {
        let (tx, _) = broadcast::channel(buffer.max(16));
        let start = store.event_horizon().await?;
        let hub = Self {
            inner: Arc::new(Inner {
                store,
                tx,
                published: AtomicI64::new(start),
                arrived: Notify::new(),
                stop: CancellationToken::new(),
            }),
        };
        tokio::spawn(run(hub.inner.clone(), poll));
        Ok(hub)
    }

    pub fn subscribe(&self) -> Subscription {
        let rx = self.inner.tx.subscribe();
        let upto = self.inner.published.load(Ordering::SeqCst);
        // Receiver: the hub's loop, which leaves its idle wait.
        self.inner.arrived.notify_one();
        Subscription { rx, upto, stop: self.inner.stop.clone() }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Ends every stream and the hub (shutdown).
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// Open subscriptions in this process.
    pub fn subscribers(&self) -> usize {
        self.inner.tx.receiver_count()
    }
}

async fn run(inner: Arc<Inner>, poll: Option<Duration>) {
    let written = inner.store.events_written();
    // While idle, `published` is where the hub stopped reading.
    let mut tracking = false;
    loop {
        if inner.tx.receiver_count() == 0 {
            tracking = false;
            tokio::select! {
                _ = inner.arrived.notified() => {}
                // Commits go on while idle: take their permit so it does not wake a later wait.
                _ = written.notified() => continue,
                _ = inner.stop.cancelled() => return,
            }
        } else if tracking {
            let wait = poll.unwrap_or(Duration::from_secs(1));
            tokio::select! {
                _ = written.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = inner.arrived.notified() => {}
                _ = inner.stop.cancelled() => return,
            }
        }
        if inner.tx.receiver_count() == 0 {
            continue;
        }
        let result = if tracking { publish(&inner).await } else { jump(&inner).await };
        match result {
            Ok(()) => tracking = true,
            Err(e) => {
                tracing::warn!(error = %e, "reading the event log failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = inner.stop.cancelled() => return,
                }
            }
        }
    }
}

/// Moves to the current horizon without reading: subscribers read the gap themselves.
async fn jump(inner: &Inner) -> Result<(), crate::store::Error> {
    let to = inner.store.event_horizon().await?;
    inner.published.fetch_max(to, Ordering::SeqCst);
    // No receiver left is fine: the next subscriber reads from `published`.
    let _ = inner.tx.send(Message::Jump { to });
    Ok(())
}

/// Sends every event up to the current horizon.
async fn publish(inner: &Inner) -> Result<(), crate::store::Error> {
    let horizon = inner.store.event_horizon().await?;
    let mut from = inner.published.load(Ordering::SeqCst);
    while from < horizon {
        let events = inner.store.events_between(from, horizon, &EventFilter::default(), PAGE).await?;
        let upto = if events.len() < PAGE { horizon } else { events.last().map_or(horizon, |e| e.id) };
        // Raised before sending: see the module comment.
        inner.published.store(upto, Ordering::SeqCst);
        for e in events {
            let _ = inner.tx.send(Message::Event(LiveEvent::new(e)));
        }
        from = upto;
    }
    Ok(())
}
