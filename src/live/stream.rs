//! One subscriber of the event hub: reads what the log holds after its resume position, then
//! follows live events, filtered, into a bounded channel that an SSE response (or a long-poll)
//! drains. A task per subscriber, ended by its client going away, its job's terminal event, a
//! lag too large for the hub's buffer, or shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::hub::{EventHub, LiveEvent, Message};
use crate::jobs::{JobEvent, JobStatus};
use crate::store::EventFilter;

/// Events read from the log per query while catching up.
const PAGE: usize = 500;
/// Events queued for a client before the follower waits for it.
const QUEUE: usize = 64;
/// How long a client may leave a full queue unread before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a stream wants.
#[derive(Debug, Clone, Default)]
pub struct StreamFilter {
    pub events: EventFilter,
    /// Only events after which the job has this status.
    pub status: Option<JobStatus>,
    /// End after the first terminal event (a single job's stream).
    pub until_terminal: bool,
    /// Send what the log holds now, then end (a finished job's stream: nothing more can come,
    /// also when the client resumes after the terminal event).
    pub only_stored: bool,
}

impl StreamFilter {
    fn matches(&self, e: &JobEvent) -> bool {
        let f = &self.events;
        f.job.is_none_or(|j| j == e.job_id)
            && f.action.is_none_or(|a| a == e.action)
            && f.actions.as_ref().is_none_or(|s| s.contains(&e.action))
            && f.target.as_ref().is_none_or(|t| *t == e.target)
            && self.status.is_none_or(|s| s == e.status())
    }
}

/// Starts following the log after position `after` (`None`: only what is committed from now
/// on); events arrive on the returned channel. "Now" is fixed before this returns, so everything
/// committed after a client got its answer's headers reaches it.
pub async fn follow(
    hub: &EventHub,
    after: Option<i64>,
    filter: StreamFilter,
) -> Result<mpsc::Receiver<Arc<LiveEvent>>, crate::store::Error> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let sub = hub.subscribe();
    // The log's horizon read after subscribing, not the hub's position, which lags while it has
    // no subscribers: what follows the horizon arrives live or by a jump.
    let after = match after {
        Some(after) => after,
        None => hub.store().event_horizon().await?,
    };
    tokio::spawn(run(hub.clone(), sub, after, filter, tx));
    Ok(rx)
}

/// Why a follower stops.
enum End {
    /// Its client is gone, or its job's stream is complete.
    Done,
}

async fn run(
    hub: EventHub,
    mut sub: super::hub::Subscription,
    after: i64,
    filter: StreamFilter,
    tx: mpsc::Sender<Arc<LiveEvent>>,
) {
    let mut sent = after;
    // Boxed, here and below: a stream's task lives as long as its client, and is only as large
    // as its largest await, so the database futures must not be part of it.
    let upto = if filter.only_stored {
        // The job ended before this read, so its last event is below the current horizon (the
        // hub's position may lag behind it).
        match Box::pin(hub.store().event_horizon()).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "reading the event log's end failed; the stream ends");
                return;
            }
        }
    } else {
        sub.upto
    };
    if Box::pin(catch_up(&hub, &mut sent, upto, &filter, &tx)).await.is_err() || filter.only_stored {
        return;
    }
    loop {
        let msg = tokio::select! {
            m = sub.rx.recv() => m,
            _ = tx.closed() => return,
            _ = sub.stop.cancelled() => return,
        };
        let result = match msg {
            Ok(Message::Event(e)) if e.id > sent => {
                sent = e.id;
                deliver(&filter, e, &tx).await
            }
            Ok(Message::Event(_)) => Ok(()),
            Ok(Message::Jump { to }) => Box::pin(catch_up(&hub, &mut sent, to, &filter, &tx)).await,
            Err(RecvError::Lagged(n)) => {
                tracing::info!(
                    behind = n,
                    resume_after = sent,
                    "event stream too slow for the live rate; dropped (the client resumes with Last-Event-ID)"
                );
                return;
            }
            Err(RecvError::Closed) => return,
        };
        if result.is_err() {
            return;
        }
    }
}

/// Sends the log's matching events in `(sent, upto]`.
async fn catch_up(
    hub: &EventHub,
    sent: &mut i64,
    upto: i64,
    filter: &StreamFilter,
    tx: &mpsc::Sender<Arc<LiveEvent>>,
) -> Result<(), End> {
    while *sent < upto {
        let page = match hub.store().events_between(*sent, upto, &filter.events, PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading the event log for a stream failed; the stream ends (the client resumes)");
                return Err(End::Done);
            }
        };
        let full = page.len() == PAGE;
        let last = page.last().map(|e| e.id);
        for e in page {
            deliver(filter, LiveEvent::new(e), tx).await?;
        }
        *sent = match (full, last) {
            (true, Some(id)) => id,
            _ => upto,
        };
    }
    Ok(())
}

async fn deliver(filter: &StreamFilter, e: Arc<LiveEvent>, tx: &mpsc::Sender<Arc<LiveEvent>>) -> Result<(), End> {
    if !filter.matches(&e) {
        return Ok(());
    }
    let terminal = e.kind.is_terminal();
    // The queue has room nearly always: no timer then.
    match tx.try_send(e) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(e)) => tx.send_timeout(e, SEND_TIMEOUT).await.map_err(|_| End::Done)?,
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::Done),
    }
    if terminal && filter.until_terminal { Err(End::Done) } else { Ok(()) }
}
