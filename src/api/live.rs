//! Following jobs live: event streams (Server-Sent Events), a job's webhook deliveries, and the
//! job counts the console shows. Streams are fed by the process's event hub (`crate::live`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json, Payload};
use poem_openapi::registry::{MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::ApiTags;
use super::auth::require;
use super::auth::{Caller, Need};
use super::jobs::{GetError, ListError, visible_job};
use super::model::{DeliveriesOut, JobEventOut, JobStatusOut, StatsOut};
use super::problem::Problem;
use super::request_id::ReqId;
use crate::auth::Identity;
use crate::executor::ActionCatalog;
use crate::jobs::{JobId, JobStatus};
use crate::live::StreamFilter;
use crate::live::{EventHub, LiveEvent};
use crate::store::EventFilter;
use crate::store::Store;

/// The live operations, with what they use.
pub struct LiveApi {
    pub(super) store: Store,
    pub(super) catalog: ActionCatalog,
    pub(super) hub: EventHub,
    /// Heartbeat period of event streams.
    pub(super) heartbeat: std::time::Duration,
}

/// An SSE response over a follower's channel: `id` is the log position, `event` the kind, `data`
/// the event as `/events` returns it; a comment line every heartbeat.
///
/// Built here rather than with poem's SSE, which turns the stream into a reader and back
/// (tokio-util's `ReaderStream`): that keeps a 4 KiB buffer per open stream for as long as the
/// stream lives (two resident pages of glibc's heap each, 8 MB for 1 000 idle streams) and copies
/// every event once more. The OpenAPI description is poem-openapi's own `EventStream`'s.
pub struct Events {
    rx: tokio::sync::mpsc::Receiver<std::sync::Arc<LiveEvent>>,
    heartbeat: tokio::time::Interval,
}

/// What the OpenAPI document says of an event stream of `JobEventOut`.
type Described = EventStream<BoxStream<'static, JobEventOut>>;

fn sse(heartbeat: std::time::Duration, rx: tokio::sync::mpsc::Receiver<std::sync::Arc<LiveEvent>>) -> Events {
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    Events { rx, heartbeat }
}

/// One event in the SSE wire format.
fn frame(event: &crate::jobs::JobEvent) -> Bytes {
    let out = JobEventOut::from(event);
    let text = Event::message(out.to_json_string()).id(out.id.to_string()).event_type(out.event.clone()).to_string();
    Bytes::from(text)
}

/// Most events sent in one chunk.
const EVENTS_PER_CHUNK: usize = 64;

impl futures_util::Stream for Events {
    type Item = Result<Bytes, std::io::Error>;

    /// Every event already queued goes out in one chunk: under load a stream has several
    /// waiting, and one chunk is one write instead of one per event.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // One event goes out as its shared frame; several are copied into one chunk.
        let mut first: Option<Bytes> = None;
        let mut joined = BytesMut::new();
        let mut ended = false;
        for _ in 0..EVENTS_PER_CHUNK {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(e)) => {
                    let wire = e.wire(frame);
                    match &first {
                        None => first = Some(wire),
                        Some(f) => {
                            if joined.is_empty() {
                                joined.extend_from_slice(f);
                            }
                            joined.extend_from_slice(&wire);
                        }
                    }
                }
                // The follower ended the stream (terminal event sent, or a slow client dropped).
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !joined.is_empty() {
            return Poll::Ready(Some(Ok(joined.freeze())));
        }
        if let Some(one) = first {
            return Poll::Ready(Some(Ok(one)));
        }
        if ended {
            return Poll::Ready(None);
        }
        self.heartbeat.poll_tick(cx).map(|_| Some(Ok(Bytes::from_static(b":\n\n"))))
    }
}

impl poem::IntoResponse for Events {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type("text/event-stream")
            .header("X-Accel-Buffering", "no")
            .header("Cache-Control", "no-cache")
            .body(poem::Body::from_bytes_stream(self))
    }
}

impl Payload for Events {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        <Described as Payload>::schema_ref()
    }

    fn register(registry: &mut Registry) {
        <Described as Payload>::register(registry);
    }
}

impl ApiResponse for Events {
    fn meta() -> MetaResponses {
        <Described as ApiResponse>::meta()
    }

    fn register(registry: &mut Registry) {
        <Described as ApiResponse>::register(registry);
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Jobs")]
impl LiveApi {
    /// Follow a job
    ///
    /// Server-Sent Events: every event of the job so far, then live ones; the response ends
    /// after the terminal event (`finished` or `canceled`). Each message's `id` is the event's
    /// log position and its `event` the kind; `data` is the event as `/events` returns it. With
    /// `Last-Event-ID`, only events after that position. Comment lines are heartbeats.
    #[oai(path = "/jobs/:job_id/stream", method = "get", operation_id = "jobs.stream")]
    async fn job_stream(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
        /// The job's id.
        job_id: Path<Uuid>,
        /// Resume after this event id (what a reconnecting EventSource sends).
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<i64>>,
    ) -> Result<Events, GetError> {
        require(identity.0, Need::Read, "jobs.stream", &request_id.to_string()).map_err(GetError::from)?;
        let id = JobId(job_id.0);
        let job = visible_job(&self.store, identity.0, id).await.map_err(GetError::from)?;
        let filter = StreamFilter {
            events: EventFilter { job: Some(id), ..EventFilter::default() },
            status: None,
            until_terminal: true,
            only_stored: job.status.is_terminal(),
        };
        let rx = crate::live::follow(&self.hub, Some(last_event_id.0.unwrap_or(0).max(0)), filter)
            .await
            .map_err(|e| GetError::from(Problem::from(e)))?;
        Ok(sse(self.heartbeat, rx))
    }

    /// Follow all jobs
    ///
    /// Server-Sent Events of every job the token may read, live, optionally filtered. Without
    /// `Last-Event-ID` it starts with the events made after the connection; with it, every
    /// stored event after that position comes first (nothing missed, nothing repeated), then
    /// live ones. A client too slow for the event rate is disconnected and resumes with
    /// `Last-Event-ID`. Comment lines are heartbeats.
    #[oai(path = "/events/stream", method = "get", operation_id = "events.stream")]
    // poem-openapi takes each parameter as its own argument.
    #[allow(clippy::too_many_arguments)]
    async fn events_stream(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
        /// Only events of this action's jobs.
        #[oai(validator(max_length = 64))]
        action: Query<Option<String>>,
        /// Only events after which the job has this status.
        status: Query<Option<JobStatusOut>>,
        /// Only events of jobs on this exact target.
        #[oai(validator(max_length = 253))]
        target: Query<Option<String>>,
        /// Resume after this event id (what a reconnecting EventSource sends).
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<i64>>,
    ) -> Result<Events, ListError> {
        let identity = identity.0;
        require(identity, Need::Read, "events.stream", &request_id.to_string()).map_err(ListError::from)?;
        if target.0.as_deref().is_some_and(|t| t.contains('\0')) {
            return Err(Problem::bad_request("target", "must not contain U+0000 (NUL)").into());
        }
        let action = match action.0.as_deref() {
            None => None,
            Some(name) => Some(
                self.catalog
                    .resolve(name)
                    .map_err(|e| ListError::from(Problem::bad_request("action", e.to_string())))?,
            ),
        };
        let filter = StreamFilter {
            events: EventFilter { job: None, actions: identity.scope().map(<[_]>::to_vec), action, target: target.0 },
            status: status.0.map(JobStatus::from),
            until_terminal: false,
            only_stored: false,
        };
        // Without a resume position: live only, from what the hub has published.
        let after = last_event_id.0.map(|id| id.max(0));
        let rx = crate::live::follow(&self.hub, after, filter).await.map_err(|e| ListError::from(Problem::from(e)))?;
        Ok(sse(self.heartbeat, rx))
    }

    /// A job's webhook deliveries
    ///
    /// Where the job is POSTed when it ends, whether that is pending, delivered or given up,
    /// and every try with its time, the receiver's status code, latency and error.
    #[oai(path = "/jobs/:job_id/deliveries", method = "get", operation_id = "jobs.deliveries")]
    async fn deliveries(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
        /// The job's id.
        job_id: Path<Uuid>,
    ) -> Result<Json<DeliveriesOut>, GetError> {
        require(identity.0, Need::Read, "jobs.deliveries", &request_id.to_string()).map_err(GetError::from)?;
        let id = JobId(job_id.0);
        visible_job(&self.store, identity.0, id).await.map_err(GetError::from)?;
        let log = self.store.webhook_log(id).await.map_err(|e| GetError::from(Problem::from(e)))?;
        Ok(Json(log.into()))
    }

    /// Job counts
    ///
    /// The PENDING queue and each action's jobs by status, over the actions the token may read.
    /// Counts every stored job: meant for people (the console), not for tight polling loops
    /// (the metrics are for that).
    #[oai(path = "/stats", method = "get", operation_id = "jobs.stats")]
    async fn stats(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
    ) -> Result<Json<StatsOut>, ListError> {
        let identity = identity.0;
        require(identity, Need::Read, "jobs.stats", &request_id.to_string()).map_err(ListError::from)?;
        let counts = self.store.counts().await.map_err(|e| ListError::from(Problem::from(e)))?;
        let mut out = StatsOut { queue_depth: 0, by_action: Default::default() };
        for entry in self.catalog.entries().iter().filter(|e| identity.in_scope(e.action)) {
            let zeros = JobStatus::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
            out.by_action.insert(entry.action.as_str().to_owned(), zeros);
        }
        for (action, status, n) in counts {
            if !identity.in_scope(action) {
                continue;
            }
            if status == JobStatus::Pending {
                out.queue_depth += n;
            }
            let row = out.by_action.entry(action.as_str().to_owned()).or_default();
            *row.entry(status.as_str().to_owned()).or_default() += n;
        }
        Ok(Json(out))
    }
}

/// Parses a long-poll wait: `500ms`, `30s`, `2m`, or plain seconds.
pub(super) fn parse_wait(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::{Events, LiveEvent, parse_wait, sse};
    use crate::jobs::{Action, EventKind, JobEvent, JobId};
    use futures_util::StreamExt;
    use std::time::Duration;

    fn event(id: i64) -> std::sync::Arc<LiveEvent> {
        LiveEvent::new(JobEvent {
            id,
            job_id: JobId::new(),
            at: 1_700_000_000_000_000,
            kind: EventKind::Created,
            actor: "me".into(),
            request_id: None,
            detail: serde_json::Value::Null,
            action: Action::new("health_check").expect("a valid name"),
            target: "demo".into(),
        })
    }

    async fn next_text(events: &mut Events) -> String {
        let chunk = events.next().await.expect("a chunk").expect("no error");
        String::from_utf8(chunk.to_vec()).expect("UTF-8")
    }

    #[tokio::test]
    async fn queued_events_leave_in_one_chunk_in_log_order() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut events = sse(Duration::from_secs(3600), rx);
        let shared = event(1);
        tx.send(shared.clone()).await.expect("open");
        // One event: its shared frame, as every stream sends it.
        let one = next_text(&mut events).await;
        assert!(one.starts_with("id: 1\nevent: created\ndata: {"), "{one}");
        assert_eq!(one, String::from_utf8(shared.wire(|_| unreachable!("made once")).to_vec()).expect("UTF-8"));
        for id in 2..=4 {
            tx.send(event(id)).await.expect("open");
        }
        let three = next_text(&mut events).await;
        let ids: Vec<&str> = three.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
        assert_eq!(ids, ["2", "3", "4"], "{three}");
        assert_eq!(three.matches("event: created\n").count(), 3, "{three}");
        // The follower ended the stream: the response ends.
        drop(tx);
        assert!(events.next().await.is_none());
    }

    #[test]
    fn waits_parse_with_units() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("10"), Some(Duration::from_secs(10)));
        for bad in ["", "s", "1h", "-1s", "1.5s", "abc"] {
            assert_eq!(parse_wait(bad), None, "{bad}");
        }
    }
}
