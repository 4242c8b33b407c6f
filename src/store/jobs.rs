//! Enqueue (group commit, idempotency keys), get, list with a cursor, cancel.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::queue::{CLAIMED_COLUMNS, FinishEffects, PiggybackClaim, Reservation};
use super::rows::{self, JOB_COLUMNS, get};
use super::{Backend, Completion, Error, JOBS_CHANNEL, Store, exec, now_us, values_in_chunks};
use crate::jobs::{Action, EventKind, GATEWAY, Job, JobId, JobStatus, NewEvent, NewJob};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 512;
/// Most new jobs claimed by the statement that inserts them (PostgreSQL).
const MAX_PIGGYBACK_NEW: usize = 256;

/// The answer to an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id.
    pub id: JobId,
    /// Its status now (PENDING for a new job; anything for an idempotent replay).
    pub status: JobStatus,
    /// False when an earlier request with the same idempotency key created it.
    pub created: bool,
}

pub(super) struct EnqueueRequest {
    job: NewJob,
    key: Option<String>,
    request_id: Option<String>,
    reply: oneshot::Sender<Result<Enqueued, Error>>,
}

/// Filters for listing jobs. All optional; combined with AND.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this action.
    pub action: Option<Action>,
    /// Only these actions (a token's scope); `None` for all.
    pub actions: Option<Vec<Action>>,
    /// Only this exact target.
    pub target: Option<String>,
    /// Only this exact `requested_by`.
    pub requested_by: Option<String>,
    /// Only jobs older than this id (the cursor).
    pub before: Option<JobId>,
}

/// One page of jobs, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Job>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next: Option<JobId>,
}

impl Store {
    /// Stores a new job durably and returns its id. Concurrent calls are committed together in
    /// one transaction (group commit), so many requests share one fsync. With an idempotency
    /// key, a repeat of the same request returns the original job; a different request with the
    /// same key is a `Conflict`.
    pub async fn enqueue(
        &self,
        job: NewJob,
        key: Option<String>,
        request_id: Option<String>,
    ) -> Result<Enqueued, Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .write_tx
            .send(WriteRequest::Enqueue(EnqueueRequest { job, key, request_id, reply }))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// One job by id.
    pub async fn get(&self, id: JobId) -> Result<Job, Error> {
        let (reply, rx) = oneshot::channel();
        self.inner.readers.tx.send(super::reads::ReadRequest { id, reply }).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)??.ok_or(Error::NotFound)
    }

    /// A page of jobs, newest first.
    pub async fn list(&self, filter: &JobFilter, limit: u64) -> Result<Page, Error> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1=1");
        let mut values: Vec<Value> = Vec::new();
        fn push(sql: &mut String, values: &mut Vec<Value>, col: &str, v: Value) {
            values.push(v);
            sql.push_str(&format!(" AND {col} ${}", values.len()));
        }
        if let Some(s) = filter.status {
            push(&mut sql, &mut values, "status =", s.as_str().into());
        }
        if let Some(a) = filter.action {
            push(&mut sql, &mut values, "action =", a.as_str().into());
        }
        if let Some(scope) = &filter.actions {
            if scope.is_empty() {
                return Ok(Page { items: Vec::new(), next: None });
            }
            let mut marks = Vec::with_capacity(scope.len());
            for a in scope {
                values.push(a.as_str().into());
                marks.push(format!("${}", values.len()));
            }
            sql.push_str(&format!(" AND action IN ({})", marks.join(",")));
        }
        if let Some(t) = &filter.target {
            push(&mut sql, &mut values, "target =", t.clone().into());
        }
        if let Some(r) = &filter.requested_by {
            push(&mut sql, &mut values, "requested_by =", r.clone().into());
        }
        if let Some(b) = filter.before {
            push(&mut sql, &mut values, "id <", b.0.into());
        }
        values.push(((limit + 1) as i64).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", values.len()));
        let rows = self.inner.read.query_all_raw(self.stmt(&sql, values)).await?;
        let mut items = rows.iter().map(rows::job).collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() as u64 > limit {
            items.truncate(limit as usize);
            items.last().map(|j| j.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Cancels a PENDING job at once (returns `CANCELED`), or marks a RUNNING one for
    /// cancellation (returns `RUNNING`; its worker stops it). Records who asked in the job's
    /// events, in the same transaction. A finished job is a `Conflict` naming its status; an
    /// unknown id is `NotFound`.
    pub async fn cancel(&self, id: JobId, actor: &str, request_id: Option<String>) -> Result<JobStatus, Error> {
        // A few rounds: a job can move from RUNNING back to PENDING (retry) in between.
        for _ in 0..3 {
            let now = now_us();
            let txn = self.inner.write.begin().await?;
            let canceled = txn
                .query_one_raw(self.stmt(
                    &format!(
                        "UPDATE jobs SET status = {canceled}, finished_at = $1, error = 'canceled by request' WHERE id = $2 AND status = {pending} \
                         RETURNING attempts, started_at, callback_url",
                        canceled = rows::sql(JobStatus::Canceled),
                        pending = rows::sql(JobStatus::Pending)
                    ),
                    vec![now.into(), id.0.into()],
                ))
                .await?;
            let mut callback = None;
            let (outcome, detail) = if let Some(row) = canceled {
                callback = get::<Option<String>>(&row, "callback_url")?;
                let attempts: i32 = get(&row, "attempts")?;
                let started: Option<i64> = get(&row, "started_at")?;
                let detail = serde_json::json!({
                    "attempt": (attempts > 0).then_some(attempts),
                    "duration_ms": started.map(|s| (now - s) / 1000),
                });
                (Some(JobStatus::Canceled), detail)
            } else {
                let marked = exec(
                    &txn,
                    self.stmt(
                        &format!(
                            "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND status = {}",
                            rows::sql(JobStatus::Running)
                        ),
                        vec![id.0.into()],
                    ),
                )
                .await?;
                ((marked == 1).then_some(JobStatus::Running), serde_json::Value::Null)
            };
            let Some(outcome) = outcome else {
                txn.rollback().await?;
                let status = self.get_from_writer(id).await?;
                if status.is_terminal() {
                    return Err(Error::Conflict(format!("job is already {status}")));
                }
                continue;
            };
            if let Some(url) = callback {
                super::webhooks::enqueue(&txn, self.inner.backend, now, vec![(id, url)]).await?;
            }
            if outcome == JobStatus::Running && self.inner.backend == Backend::Postgres {
                let note = format!("SELECT pg_notify('{}', $1)", super::CANCEL_CHANNEL);
                txn.execute_raw(self.stmt(&note, vec![id.to_string().into()])).await?;
            }
            let kind = if outcome == JobStatus::Canceled { EventKind::Canceled } else { EventKind::CancelRequested };
            let event = NewEvent { job_id: id, kind, actor: actor.to_owned(), request_id: request_id.clone(), detail };
            super::events::insert(&txn, self.inner.backend, now, vec![event]).await?;
            txn.commit().await?;
            self.note_events_written();
            if outcome == JobStatus::Canceled {
                self.add_pending_estimate(-1);
            }
            return Ok(outcome);
        }
        Err(Error::Conflict("job changed state during cancel; try again".into()))
    }

    /// How many stored jobs each action has in each status.
    pub async fn counts(&self) -> Result<Vec<(Action, JobStatus, i64)>, Error> {
        let rows = self
            .inner
            .read
            .query_all_raw(self.stmt("SELECT action, status, COUNT(*) AS n FROM jobs GROUP BY action, status", vec![]))
            .await?;
        rows.iter()
            .map(|r| {
                let action: String = get(r, "action")?;
                let action =
                    Action::new(&action).map_err(|_| Error::Corrupt(format!("malformed action name '{action}'")))?;
                Ok((action, rows::status(r)?, get(r, "n")?))
            })
            .collect()
    }

    async fn get_from_writer(&self, id: JobId) -> Result<JobStatus, Error> {
        let row = self
            .inner
            .write
            .query_one_raw(self.stmt("SELECT status FROM jobs WHERE id = $1", vec![id.0.into()]))
            .await?
            .ok_or(Error::NotFound)?;
        rows::status(&row)
    }
}

/// What the writer task takes.
pub(super) enum WriteRequest {
    Enqueue(EnqueueRequest),
    /// Finished attempts. Only on SQLite, where they share the one writer connection anyway.
    Finish(FinishRequest),
}

pub(super) struct FinishRequest {
    batch: Vec<Completion>,
    reply: oneshot::Sender<Result<Vec<Option<JobStatus>>, Error>>,
}

/// Writes finished attempts through the writer task (in its next transaction).
pub(super) async fn finish_via_writer(store: &Store, batch: Vec<Completion>) -> Result<Vec<Option<JobStatus>>, Error> {
    let (reply, rx) = oneshot::channel();
    store
        .inner
        .write_tx
        .send(WriteRequest::Finish(FinishRequest { batch, reply }))
        .await
        .map_err(|_| Error::ShuttingDown)?;
    rx.await.map_err(|_| Error::ShuttingDown)?
}

/// PostgreSQL batches of new jobs written at once, each on a pooled connection of its own.
const PG_BATCHES_IN_FLIGHT: usize = 2;

/// The group-commit writer: takes every request waiting in the channel (new jobs and, on
/// SQLite, finished attempts), commits them in one transaction together with a claim of the new
/// jobs this process has free workers for, then answers each. Under load a batch forms while
/// the previous one commits, and one commit (one fsync) carries all three kinds of writes.
///
/// On PostgreSQL a batch is one statement, and the next one starts while it commits (up to
/// `PG_BATCHES_IN_FLIGHT`): the server flushes the commits that wait together, so a batch no
/// longer waits for the one before it. Batches hold their keys in one order (see
/// `pg_insert_with_events`), so two in flight cannot deadlock. SQLite has one writer
/// connection and keeps one batch at a time.
pub(super) async fn run_writer(store: Store, mut rx: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let in_flight_max = if store.inner.backend == Backend::Postgres { PG_BATCHES_IN_FLIGHT } else { 1 };
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        // A free slot first: what arrives meanwhile joins the next batch.
        while in_flight.len() >= in_flight_max {
            in_flight.join_next().await;
        }
        let Some(first) = rx.recv().await else { break };
        crate::batch::gather(first, &mut rx, MAX_BATCH, &mut batch);
        let (mut enqueues, mut finishes) = (Vec::new(), Vec::new());
        for request in batch.drain(..) {
            match request {
                WriteRequest::Enqueue(e) => enqueues.push(e),
                WriteRequest::Finish(f) => finishes.push(f),
            }
        }
        if in_flight_max == 1 {
            write_batch(&store, enqueues, finishes).await;
        } else {
            let store = store.clone();
            in_flight.spawn(async move { write_batch(&store, enqueues, finishes).await });
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Commits a batch, or reports why it did not commit. Nothing here answers before the COMMIT
/// has returned, so a 202 always means the row is on disk. A batch that fails for a reason
/// that is not an outage (one request's row broke a constraint at COMMIT, say) is retried one
/// request at a time, so one bad request cannot fail the others; an outage (full disk, database
/// gone) fails the whole batch at once with a retryable error. Finished attempts in a failed
/// batch are answered with the error: the completer retries them.
async fn write_batch(store: &Store, requests: Vec<EnqueueRequest>, finishes: Vec<FinishRequest>) {
    let completions: Vec<Completion> = finishes.iter().flat_map(|f| f.batch.iter().cloned()).collect();
    let result = commit_together(store, &requests, &completions).await;
    if requests.is_empty() {
        // A finish that commits proves nothing about room for new jobs.
        store.note_write_failure(&result);
    } else {
        store.note_write(&result);
    }
    let results = match result {
        Ok((results, statuses)) => {
            let mut statuses = statuses.into_iter();
            for f in finishes {
                let mine: Vec<_> = statuses.by_ref().take(f.batch.len()).collect();
                let _ = f.reply.send(Ok(mine));
            }
            results
        }
        Err(e) => {
            for f in finishes {
                let _ = f.reply.send(Err(e.clone()));
            }
            if requests.is_empty() {
                return;
            }
            if e.is_transient() || requests.len() == 1 {
                tracing::warn!(error = %e, error.cause = ?std::error::Error::source(&e), jobs = requests.len(), "enqueue batch failed; nothing of it was stored");
                requests.iter().map(|_| Err(e.clone())).collect()
            } else {
                tracing::warn!(error = %e, error.cause = ?std::error::Error::source(&e), jobs = requests.len(), "enqueue batch failed; retrying its requests one by one");
                let mut out = Vec::with_capacity(requests.len());
                for one in requests.chunks(1) {
                    let result = commit_together(store, one, &[]).await;
                    store.note_write(&result);
                    match result {
                        Ok((mut r, _)) => {
                            out.push(r.pop().unwrap_or_else(|| Err(Error::Internal("empty batch result".into()))))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, error.cause = ?std::error::Error::source(&e), "enqueue failed; nothing was stored");
                            out.push(Err(e));
                        }
                    }
                }
                out
            }
        }
    };
    for (req, res) in requests.into_iter().zip(results) {
        let _ = req.reply.send(res);
    }
}

/// One transaction: finished attempts, new jobs, and the claim of runnable jobs for this
/// process's free workers. Announces what it did (wake-ups, estimates, the claimed jobs to the
/// dispatcher) only after the commit.
type Written = (Vec<Result<Enqueued, Error>>, Vec<Option<JobStatus>>);

async fn commit_together(
    store: &Store,
    requests: &[EnqueueRequest],
    completions: &[Completion],
) -> Result<Written, Error> {
    let now = now_us();
    if completions.is_empty() && store.inner.backend == Backend::Postgres {
        // PostgreSQL, new jobs alone (its finishes and dispatcher claims run on the pool): the
        // insert, and the claim of new jobs this process has free workers for, is one
        // statement, atomic on its own, with no BEGIN and COMMIT of its own.
        let reserved = store.reserve_workers(requests.len().min(MAX_PIGGYBACK_NEW));
        let mut inserted = insert_in(store, &store.inner.write, requests, now, reserved.as_ref()).await?;
        let claim = reserved.map(|r| {
            let jobs = std::mem::take(&mut inserted.claimed);
            // New jobs left PENDING (no slot, or older jobs were waiting) wake the dispatcher.
            let maybe_more = jobs.len() < inserted.created;
            r.into_claim(jobs, maybe_more)
        });
        announce(store, &inserted, &claim);
        if let Some(claim) = claim {
            store.deliver_claim(claim);
        }
        return Ok((inserted.results, Vec::new()));
    }
    let txn = store.inner.write.begin().await?;
    let (statuses, effects) = if completions.is_empty() {
        (Vec::new(), FinishEffects::default())
    } else {
        store.finish_in(&txn, completions, now).await?
    };
    let inserted =
        if requests.is_empty() { Inserted::default() } else { insert_in(store, &txn, requests, now, None).await? };
    // New jobs are runnable now. (Not for finished attempts alone: with a backlog, the
    // dispatcher's own claims overlap the writer's transactions, which measured faster than
    // claiming inside them.)
    let claim = if inserted.created > 0 { store.claim_for_workers(&txn, now).await? } else { None };
    txn.commit().await?;

    if !completions.is_empty() {
        store.after_finish(effects);
    }
    announce(store, &inserted, &claim);
    if let Some(claim) = claim {
        store.deliver_claim(claim);
    }
    Ok((inserted.results, statuses))
}

/// After the commit of new jobs (and the claim made with them): the event hub's and the
/// dispatcher's wake-ups and the queue estimate.
fn announce(store: &Store, inserted: &Inserted, claim: &Option<PiggybackClaim>) {
    // Every new job has its `created` event.
    if inserted.created > 0 || claim.as_ref().is_some_and(|c| c.claimed() > 0) {
        store.note_events_written();
    }
    if inserted.created > 0 {
        store.add_pending_estimate(inserted.created as i64);
        // Otherwise the claim took everything runnable: the dispatcher would only find an
        // empty queue. Receiver: `executor::dispatch`.
        if claim.as_ref().is_none_or(|c| c.maybe_more) {
            store.inner.enqueued.notify_one();
        }
    }
}

/// What `insert_in` wrote.
#[derive(Default)]
struct Inserted {
    results: Vec<Result<Enqueued, Error>>,
    created: usize,
    /// New jobs claimed as they were inserted (PostgreSQL, with `reserved` slots).
    claimed: Vec<super::ClaimedJob>,
}

/// Inserts new jobs (and their `created` events) inside `txn`; on PostgreSQL, with `reserved`
/// worker slots, claims new jobs for them in the same statement (see `pg_insert_with_events`).
async fn insert_in(
    store: &Store,
    txn: &impl ConnectionTrait,
    requests: &[EnqueueRequest],
    now: i64,
    reserved: Option<&Reservation>,
) -> Result<Inserted, Error> {
    let inner = &store.inner;

    // Admission: refuse what would push the queue past its maximum. The estimate is exact
    // enough far from the limit; near it, count for real.
    let max = inner.max_pending;
    let mut room = requests.len() as u64;
    let estimate = inner.pending_estimate.load(Ordering::Relaxed).max(0) as u64;
    if estimate + room > max {
        let row = txn
            .query_one_raw(store.stmt(
                &format!("SELECT COUNT(*) AS n FROM jobs WHERE status = {}", rows::sql(JobStatus::Pending)),
                vec![],
            ))
            .await?;
        let pending = row.map(|r| get::<i64>(&r, "n")).transpose()?.unwrap_or(0).max(0) as u64;
        inner.pending_estimate.store(pending as i64, Ordering::Relaxed);
        room = max.saturating_sub(pending).min(room);
    }

    let admitted = &requests[..(room as usize).min(requests.len())];
    let ids: Vec<JobId> = admitted.iter().map(|_| JobId::new()).collect();
    let (inserted, claimed) = match inner.backend {
        Backend::Postgres => pg_insert_with_events(store, txn, admitted, &ids, now, reserved).await?,
        Backend::Sqlite => (sqlite_insert_with_events(txn, admitted, &ids, now).await?, Vec::new()),
    };

    // Requests whose row was not inserted collided on their idempotency key: with an earlier
    // job, or with another request in this very batch.
    let replay_keys: Vec<String> = requests
        .iter()
        .zip(&ids)
        .filter(|(_, id)| !inserted.contains(&id.0))
        .filter_map(|(r, _)| r.key.clone())
        .collect();
    let mut existing: HashMap<String, (JobId, JobStatus, Option<String>)> = HashMap::new();
    if !replay_keys.is_empty() {
        let rows = values_in_chunks(
            txn,
            inner.backend,
            "SELECT id, status, idempotency_key, request_fingerprint FROM jobs WHERE idempotency_key IN (",
            "(#)",
            ")",
            replay_keys.iter().map(|k| vec![k.clone().into()]).collect(),
        )
        .await?;
        for row in rows {
            existing.insert(
                get::<String>(&row, "idempotency_key")?,
                (
                    JobId(get::<Uuid>(&row, "id")?),
                    rows::status(&row)?,
                    get::<Option<String>>(&row, "request_fingerprint")?,
                ),
            );
        }
    }
    let results = requests
        .iter()
        .enumerate()
        .map(|(i, req)| {
            let Some(id) = ids.get(i) else {
                return Err(Error::QueueFull { pending: max, max });
            };
            if inserted.contains(&id.0) {
                return Ok(Enqueued { id: *id, status: JobStatus::Pending, created: true });
            }
            let key = req.key.as_deref().unwrap_or_default();
            match existing.get(key) {
                Some((id, status, fp)) if fp.as_deref() == Some(req.job.fingerprint().as_str()) => {
                    Ok(Enqueued { id: *id, status: *status, created: false })
                }
                Some(_) => Err(Error::Conflict("Idempotency-Key was already used with a different request".into())),
                None => Err(Error::Internal("a row was neither inserted nor found".into())),
            }
        })
        .collect();
    Ok(Inserted { results, created: inserted.len(), claimed })
}

/// SQLite: the new jobs, then their `created` events, as VALUES lists. Returns the ids inserted
/// (the others collided on their idempotency key).
async fn sqlite_insert_with_events(
    txn: &impl ConnectionTrait,
    requests: &[EnqueueRequest],
    ids: &[JobId],
    now: i64,
) -> Result<HashSet<Uuid>, Error> {
    let rows: Vec<Vec<Value>> = requests
        .iter()
        .zip(ids)
        .map(|(req, id)| {
            vec![
                id.0.into(),
                req.job.action.as_str().into(),
                req.job.target.clone().into(),
                req.job.requested_by.clone().into(),
                req.job.parameters.to_string().into(),
                now.into(),
                now.into(),
                req.key.clone().into(),
                req.key.as_ref().map(|_| req.job.fingerprint()).into(),
                req.job.submitted_by.clone().into(),
                req.job.callback_url.clone().into(),
                req.job.traceparent.clone().into(),
            ]
        })
        .collect();
    let inserted: HashSet<Uuid> = values_in_chunks(
        txn,
        Backend::Sqlite,
        "INSERT INTO jobs (id, action, target, requested_by, parameters, status, attempts, created_at, run_at, \
         cancel_requested, idempotency_key, request_fingerprint, submitted_by, callback_url, traceparent)",
        &format!("(#,#,#,#,#,{},0,#,#,FALSE,#,#,#,#,#)", rows::sql(JobStatus::Pending)),
        "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
        rows,
    )
    .await?
    .iter()
    .map(|row| get::<Uuid>(row, "id"))
    .collect::<Result<_, _>>()?;
    super::events::insert(txn, Backend::Sqlite, now, created_events(requests, ids, &inserted)).await?;
    Ok(inserted)
}

/// PostgreSQL: the new jobs, their `created` events and the wake-up of other replicas in one
/// statement, whatever the batch's size: one round trip and one prepared shape, where VALUES
/// lists split into power-of-two chunks took two statements per chunk and a NOTIFY. The batch
/// travels as one JSON array, as in `finish_terminal_pg`. Returns the ids inserted, and the
/// jobs claimed with them.
///
/// With `reserved` worker slots, the first new jobs (up to the slots) are inserted RUNNING with
/// this process's lease, and their `claimed` events follow their `created` ones: the job starts
/// with no claim statement of its own, and a 202 still says PENDING, as it was when accepted.
/// Only when no older job is runnable (read in the statement's snapshot): a new job never
/// overtakes one that waits. Other replicas are notified only of new jobs left PENDING.
///
/// Rows are inserted in idempotency-key order: a client that retries on another replica while
/// its first try is in flight puts the same key in two batches, and each insert waits for the
/// other's row; two batches holding keys in opposite orders would deadlock. Events keep the
/// batch's arrival order (`n`). One NOTIFY per batch, delivered at commit: NOTIFY serialises
/// commits, so never per job.
async fn pg_insert_with_events(
    store: &Store,
    txn: &impl ConnectionTrait,
    requests: &[EnqueueRequest],
    ids: &[JobId],
    now: i64,
    reserved: Option<&Reservation>,
) -> Result<(HashSet<Uuid>, Vec<super::ClaimedJob>), Error> {
    let rows: Vec<serde_json::Value> = requests
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(n, (req, id))| {
            serde_json::json!({
                "n": n,
                "id": id.0,
                "action": req.job.action.as_str(),
                "target": req.job.target,
                "requested_by": req.job.requested_by,
                "parameters": req.job.parameters.to_string(),
                "idempotency_key": req.key,
                "request_fingerprint": req.key.as_ref().map(|_| req.job.fingerprint()),
                "submitted_by": req.job.submitted_by,
                "callback_url": req.job.callback_url,
                "traceparent": req.job.traceparent,
                "request_id": req.request_id,
            })
        })
        .collect();
    let (pending, running) = (rows::sql(JobStatus::Pending), rows::sql(JobStatus::Running));
    let created = EventKind::Created.as_str();
    let batch = "v AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(n int4, id uuid, action text, target text, \
         requested_by text, parameters text, idempotency_key text, request_fingerprint text, submitted_by text, \
         callback_url text, traceparent text, request_id text))";
    let mut values: Vec<Value> = vec![serde_json::Value::Array(rows).to_string().into(), now.into()];
    let Some(reserved) = reserved else {
        let horizon = super::events::pg_horizon_after("ins", &format!(", pg_notify('{JOBS_CHANNEL}', '')"));
        let sql = format!(
            "WITH {batch}, \
             ins AS (INSERT INTO jobs (id, action, target, requested_by, parameters, status, attempts, created_at, \
             run_at, cancel_requested, idempotency_key, request_fingerprint, submitted_by, callback_url, traceparent) \
             SELECT id, action, target, requested_by, parameters, {pending}, 0, $2, $2, FALSE, idempotency_key, \
             request_fingerprint, submitted_by, callback_url, traceparent FROM v ORDER BY idempotency_key, n \
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id), \
             {horizon}, \
             events AS (INSERT INTO job_events (job_id, at, event, actor, request_id, detail) \
             SELECT v.id, $2, '{created}', v.submitted_by, v.request_id, NULL FROM v JOIN ins ON ins.id = v.id \
             CROSS JOIN horizon ORDER BY v.n) \
             SELECT id FROM ins"
        );
        let rows = txn.query_all_raw(store.stmt(&sql, values)).await?;
        let inserted = rows.iter().map(|row| get::<Uuid>(row, "id")).collect::<Result<_, _>>()?;
        return Ok((inserted, Vec::new()));
    };
    // `quiet`: no job was runnable before this batch (the partial index's first entry, in the
    // statement's snapshot, which does not hold the batch's own rows).
    let horizon = super::events::pg_horizon_after(
        "ins",
        &format!(
            ", (SELECT pg_notify('{JOBS_CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM ins WHERE status = {pending}))"
        ),
    );
    let claimed = EventKind::Claimed.as_str();
    let sql = format!(
        "WITH {batch}, \
         quiet AS MATERIALIZED (SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE status = {pending} AND run_at <= $2) AS ok), \
         c AS (SELECT v.*, (quiet.ok AND v.n < $3) AS go FROM v CROSS JOIN quiet), \
         ins AS (INSERT INTO jobs (id, action, target, requested_by, parameters, status, attempts, created_at, \
         run_at, cancel_requested, idempotency_key, request_fingerprint, submitted_by, callback_url, traceparent, \
         lease_owner, lease_until, started_at) \
         SELECT id, action, target, requested_by, parameters, CASE WHEN go THEN {running} ELSE {pending} END, \
         CASE WHEN go THEN 1 ELSE 0 END, $2, $2, FALSE, idempotency_key, request_fingerprint, submitted_by, \
         callback_url, traceparent, CASE WHEN go THEN $4::uuid END, CASE WHEN go THEN $5::int8 END, \
         CASE WHEN go THEN $2::int8 END FROM c ORDER BY idempotency_key, n \
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
         RETURNING status, {CLAIMED_COLUMNS}), \
         {horizon}, \
         events AS (INSERT INTO job_events (job_id, at, event, actor, request_id, detail) \
         SELECT e.id, $2, e.event, e.actor, e.request_id, e.detail FROM ( \
         SELECT v.id, 0 AS phase, v.n, '{created}' AS event, v.submitted_by AS actor, v.request_id, NULL::text AS detail \
         FROM v JOIN ins ON ins.id = v.id \
         UNION ALL \
         SELECT v.id, 1, v.n, '{claimed}', '{GATEWAY}', NULL, \
         jsonb_build_object('attempt', 1, 'replica', $4::uuid::text)::text \
         FROM v JOIN ins ON ins.id = v.id WHERE ins.status = {running}) e \
         CROSS JOIN horizon ORDER BY e.phase, e.n) \
         SELECT * FROM ins"
    );
    values.extend([(reserved.slots as i64).into(), reserved.owner.into(), (now + reserved.lease_us).into()]);
    let rows = txn.query_all_raw(store.stmt(&sql, values)).await?;
    let mut inserted = HashSet::with_capacity(rows.len());
    let mut jobs = Vec::new();
    for row in &rows {
        inserted.insert(get::<Uuid>(row, "id")?);
        if rows::status(row)? == JobStatus::Running {
            jobs.push(rows::claimed(row, now)?);
        }
    }
    Ok((inserted, jobs))
}

/// The `created` event of each inserted job.
fn created_events(requests: &[EnqueueRequest], ids: &[JobId], inserted: &HashSet<Uuid>) -> Vec<NewEvent> {
    requests
        .iter()
        .zip(ids)
        .filter(|(_, id)| inserted.contains(&id.0))
        .map(|(req, id)| NewEvent {
            job_id: *id,
            kind: EventKind::Created,
            actor: req.job.submitted_by.clone(),
            request_id: req.request_id.clone(),
            detail: serde_json::Value::Null,
        })
        .collect()
}
