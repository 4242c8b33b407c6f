//! The queue side of the store: claim a batch, heartbeat, finish a batch, recover expired
//! leases, and the queue statistics. Every state change out of RUNNING is fenced by
//! `attempts` and `status = 'RUNNING'`, so a worker whose lease was taken over can never
//! overwrite the newer attempt's result.

use std::sync::atomic::Ordering;

use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use serde_json::Value as Json;
use uuid::Uuid;

use super::rows::{self, get};
use super::{Backend, Error, Store, now_us};

/// What a claim returns.
pub(super) const CLAIMED_COLUMNS: &str = "id, action, target, parameters, attempts, created_at, started_at, requested_by, external, cancel_requested, traceparent";

/// The advisory lock claims take while some action limits its jobs per target (PostgreSQL).
const CLAIM_LOCK_KEY: i64 = 0x0061_6763_6c61_696d; // "agclaim"

/// The claim's extra condition when actions limit their RUNNING jobs per target: a PENDING job
/// of such an action is claimable only while its place in its target's line plus the target's
/// RUNNING jobs stays within the limit. Action names are `[a-z][a-z0-9_]*`, safe as literals.
fn capped_targets(per_target: &[(Action, u32)]) -> String {
    if per_target.is_empty() {
        return String::new();
    }
    let names: Vec<String> = per_target.iter().map(|(a, _)| format!("'{a}'")).collect();
    let names = names.join(", ");
    let whens: String = per_target.iter().map(|(a, n)| format!(" WHEN '{a}' THEN {n}")).collect();
    let (pending, running) = (rows::sql(JobStatus::Pending), rows::sql(JobStatus::Running));
    format!(
        "AND (action NOT IN ({names}) OR id IN (\
         SELECT w.id FROM (SELECT p.id, p.action, p.target, \
         ROW_NUMBER() OVER (PARTITION BY p.action, p.target ORDER BY p.run_at, p.id) AS rn, \
         CASE p.action{whens} END AS cap \
         FROM jobs p WHERE p.status = {pending} AND p.run_at <= $3 AND p.action IN ({names})) w \
         WHERE w.rn + (SELECT COUNT(*) FROM jobs r WHERE r.status = {running} AND r.action = w.action AND r.target = w.target) <= w.cap))"
    )
}
use crate::jobs::{Action, EventKind, JobId, JobStatus, NewEvent};
use serde_json::json;

/// A job handed to a worker, with the lease this process now holds on it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: JobId,
    pub action: Action,
    pub target: String,
    pub parameters: Json,
    /// This attempt's number, from 1: the fencing token for every later write.
    pub attempt: i32,
    /// When the job was accepted (µs).
    pub created_at: i64,
    /// When its first attempt started (µs).
    pub started_at: i64,
    /// True when this is the first attempt.
    pub first_attempt: bool,
    /// Who asked (templates may use it).
    pub requested_by: String,
    /// The remote run an earlier attempt launched and recorded: resume it, launch nothing.
    pub external: Option<crate::jobs::External>,
    /// A cancel was requested (a resumed job may carry one).
    pub cancel_requested: bool,
    /// The trace the attempt continues.
    pub traceparent: Option<String>,
}

/// How an attempt ended, as the executor decided.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done: SUCCESS with the runner's result.
    Success(Json),
    /// Done: FAILED with this error.
    Failed(String),
    /// Canceled on request.
    Canceled,
    /// Failed, but another attempt will run at `run_at` (µs); it becomes CANCELED instead if a
    /// cancel was requested meanwhile.
    Retry {
        /// Why this attempt failed.
        error: String,
        /// When the next attempt may start.
        run_at: i64,
    },
}

/// One finished attempt, to be written by `finish_batch`.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: JobId,
    /// The attempt that finished (fencing token).
    pub attempt: i32,
    pub outcome: Outcome,
    /// The attempt's lease expired and this process (the id) settles it: a `lease_lost` event.
    pub lost: Option<Uuid>,
}

/// What a committed finish announces: jobs back in PENDING, events, due webhooks.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FinishEffects {
    pub(super) requeued: i64,
    pub(super) wrote_events: bool,
    pub(super) outbox: bool,
}

/// Most jobs claimed inside the writer's transaction at once.
const MAX_PIGGYBACK: usize = 256;

/// The dispatcher of this process, attached to the store so the writer can claim for it (see
/// `Store::claim_for_workers`, and on PostgreSQL `jobs::pg_insert_with_events`). Only without per-target limits: those claims take a lock and
/// count a target's RUNNING jobs, which stays the dispatcher's own business.
pub struct Claimer {
    /// The lease owner (this process).
    pub owner: Uuid,
    pub lease_us: i64,
    /// The worker slots; the writer reserves some before it claims.
    pub permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// Receiver: the dispatcher, which starts a worker per job.
    pub tx: tokio::sync::mpsc::UnboundedSender<ClaimedBatch>,
    /// Claiming stops at shutdown.
    pub stop: tokio_util::sync::CancellationToken,
}

/// Jobs claimed for this process, each with its worker slot already taken.
pub struct ClaimedBatch {
    pub jobs: Vec<ClaimedJob>,
    /// One permit per job (and possibly more, released when dropped).
    pub permit: tokio::sync::OwnedSemaphorePermit,
    /// When the lease was taken (the local lease deadline counts from here).
    pub lease_from: tokio::time::Instant,
}

/// Worker slots of the attached claimer, taken before a claim made by the writer so that every
/// job it claims has a worker (unused ones go back when the claim is delivered or dropped).
pub(super) struct Reservation {
    pub(super) owner: Uuid,
    pub(super) lease_us: i64,
    /// How many slots are held.
    pub(super) slots: usize,
    permit: tokio::sync::OwnedSemaphorePermit,
    /// Taken before the claim is sent: the local lease deadline must never end later than the
    /// one the database computes.
    lease_from: tokio::time::Instant,
}

impl Reservation {
    pub(super) fn into_claim(self, jobs: Vec<ClaimedJob>, maybe_more: bool) -> PiggybackClaim {
        PiggybackClaim { batch: ClaimedBatch { jobs, permit: self.permit, lease_from: self.lease_from }, maybe_more }
    }
}

/// A claim made inside the writer's transaction, delivered once it commits.
pub(super) struct PiggybackClaim {
    batch: ClaimedBatch,
    /// Runnable jobs may be left that this claim did not take: the dispatcher is woken.
    pub(super) maybe_more: bool,
}

impl PiggybackClaim {
    pub(super) fn claimed(&self) -> usize {
        self.batch.jobs.len()
    }
}

/// A job whose lease expired: its worker died or hung.
#[derive(Debug, Clone)]
pub struct LostJob {
    pub id: JobId,
    /// Its action (the lost-job policy is per action).
    pub action: Action,
    pub target: String,
    /// The attempt that was lost.
    pub attempt: i32,
    /// When its first attempt started (µs).
    pub started_at: Option<i64>,
    /// Whether a cancel was requested.
    pub cancel_requested: bool,
    /// Its remote run is recorded: it is resumed, not settled by the lost-job policy.
    pub resumable: bool,
}

/// A job whose lease a heartbeat extended.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub id: JobId,
    /// The attempt the lease belongs to.
    pub attempt: i32,
    /// Whether a cancel was requested.
    pub cancel_requested: bool,
}

/// Global queue figures, read from the database.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    /// Jobs in PENDING.
    pub pending: i64,
    /// Earliest `run_at` among PENDING jobs (µs), if any.
    pub oldest_run_at: Option<i64>,
}

impl Store {
    /// Claims up to `limit` runnable PENDING jobs for `owner`, sets them RUNNING with a lease
    /// until `lease_until` (µs), and returns them. On PostgreSQL `SKIP LOCKED` lets replicas
    /// claim concurrently without waiting on each other's rows.
    pub async fn claim_batch(
        &self,
        owner: Uuid,
        limit: usize,
        lease_us: i64,
        per_target: &[(Action, u32)],
    ) -> Result<Vec<ClaimedJob>, Error> {
        let now = now_us();
        let (sql, values) = self.claim_statement(owner, limit, lease_us, per_target, now);
        let rows = self.claim_with_events(&sql, values, !per_target.is_empty(), owner, now).await;
        self.note_write_failure(&rows);
        let jobs = rows?;
        self.add_pending_estimate(-(jobs.len() as i64));
        Ok(jobs)
    }

    fn claim_statement(
        &self,
        owner: Uuid,
        limit: usize,
        lease_us: i64,
        per_target: &[(Action, u32)],
        now: i64,
    ) -> (String, Vec<Value>) {
        // SQLite's planner prefers the (status, id) index here and then sorts every PENDING row;
        // pinning the small run-order index keeps a claim independent of the queue's length.
        let (index, lock) = match self.inner.backend {
            Backend::Postgres => ("", "FOR UPDATE SKIP LOCKED"),
            Backend::Sqlite => ("INDEXED BY jobs_pending_idx", ""),
        };
        let (running, pending) = (rows::sql(JobStatus::Running), rows::sql(JobStatus::Pending));
        let capped = capped_targets(per_target);
        let sql = format!(
            "UPDATE jobs SET status = {running}, attempts = attempts + 1, lease_owner = $1, lease_until = $2, \
             started_at = COALESCE(started_at, $3) \
             WHERE id IN (SELECT id FROM jobs {index} WHERE status = {pending} AND run_at <= $3 {capped} ORDER BY run_at, id LIMIT $4 {lock}) \
             RETURNING {CLAIMED_COLUMNS}"
        );
        let values = vec![owner.into(), (now + lease_us).into(), now.into(), (limit as i64).into()];
        (sql, values)
    }

    /// The claim and its `claimed` events, in one transaction. With per-target limits the claim
    /// counts the RUNNING jobs of a target under a lock every replica's claim takes: two replicas
    /// counting at once would each see the free slot and both take it. (SQLite has one writer,
    /// which serializes claims already.)
    async fn claim_with_events(
        &self,
        sql: &str,
        values: Vec<Value>,
        serialize: bool,
        owner: Uuid,
        now: i64,
    ) -> Result<Vec<ClaimedJob>, Error> {
        if !serialize && self.inner.backend == Backend::Postgres {
            // One statement (see `claim_in`) is its own transaction: one round trip.
            let jobs = self.claim_in(&self.inner.write, sql, values, owner, now).await?;
            if !jobs.is_empty() {
                self.note_events_written();
            }
            return Ok(jobs);
        }
        let txn = self.inner.write.begin().await?;
        if serialize && self.inner.backend == Backend::Postgres {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({CLAIM_LOCK_KEY})")).await?;
        }
        let jobs = self.claim_in(&txn, sql, values, owner, now).await?;
        if jobs.is_empty() {
            txn.rollback().await?;
            return Ok(jobs);
        }
        txn.commit().await?;
        self.note_events_written();
        Ok(jobs)
    }

    /// The claim statement and the `claimed` events, inside `txn`.
    async fn claim_in(
        &self,
        txn: &impl ConnectionTrait,
        sql: &str,
        values: Vec<Value>,
        owner: Uuid,
        now: i64,
    ) -> Result<Vec<ClaimedJob>, Error> {
        if self.inner.backend == Backend::Postgres {
            // The claim and its events in one statement, one round trip.
            let events = super::events::pg_events_from(
                "claimed",
                EventKind::Claimed,
                "$3::int8",
                "jsonb_build_object('attempt', s.attempts, 'replica', $1::uuid::text)",
            );
            let sql = format!("WITH claimed AS ({sql}), {events} SELECT * FROM claimed");
            let rows = txn.query_all_raw(self.stmt(&sql, values)).await?;
            return rows.iter().map(|r| rows::claimed(r, now)).collect();
        }
        let rows = txn.query_all_raw(self.stmt(sql, values)).await?;
        let jobs = rows.iter().map(|r| rows::claimed(r, now)).collect::<Result<Vec<_>, _>>()?;
        if jobs.is_empty() {
            return Ok(jobs);
        }
        let replica = owner.to_string();
        let events = jobs
            .iter()
            .map(|j| NewEvent::by_gateway(j.id, EventKind::Claimed, json!({"attempt": j.attempt, "replica": replica})))
            .collect();
        super::events::insert(txn, self.inner.backend, now, events).await?;
        Ok(jobs)
    }

    /// Reserves up to `max` of the attached claimer's free worker slots for a claim made by the
    /// writer. `None` when no claimer is attached, it is stopping, or no worker is free.
    pub(super) fn reserve_workers(&self, max: usize) -> Option<Reservation> {
        let claimer = self.inner.claimer.get()?;
        if claimer.stop.is_cancelled() {
            return None;
        }
        let slots = claimer.permits.available_permits().min(max);
        if slots == 0 {
            return None;
        }
        let permit = claimer.permits.clone().try_acquire_many_owned(slots as u32).ok()?;
        Some(Reservation {
            owner: claimer.owner,
            lease_us: claimer.lease_us,
            slots,
            permit,
            lease_from: tokio::time::Instant::now(),
        })
    }

    /// Claims, inside the writer's transaction, as many runnable jobs as the attached claimer
    /// has free workers: the jobs that transaction just made runnable start without a claim
    /// transaction of their own. Permits are reserved before the claim, so every claimed job has
    /// a worker; `None` when no claimer is attached, it is stopping, or no worker is free.
    pub(super) async fn claim_for_workers(
        &self,
        txn: &impl ConnectionTrait,
        now: i64,
    ) -> Result<Option<PiggybackClaim>, Error> {
        let Some(r) = self.reserve_workers(MAX_PIGGYBACK) else { return Ok(None) };
        let (sql, values) = self.claim_statement(r.owner, r.slots, r.lease_us, &[], now);
        let jobs = self.claim_in(txn, &sql, values, r.owner, now).await?;
        // Fewer jobs than slots means nothing else was runnable.
        let maybe_more = jobs.len() >= r.slots;
        Ok(Some(r.into_claim(jobs, maybe_more)))
    }

    /// Hands a claim made in a committed transaction to the claimer's dispatcher.
    pub(super) fn deliver_claim(&self, claim: PiggybackClaim) {
        let n = claim.batch.jobs.len();
        if n == 0 {
            return;
        }
        self.add_pending_estimate(-(n as i64));
        if let Some(claimer) = self.inner.claimer.get()
            && let Err(e) = claimer.tx.send(claim.batch)
        {
            // The dispatcher is gone (shutdown): the leases expire and recovery runs the jobs
            // again, as after a crash.
            tracing::warn!(jobs = e.0.jobs.len(), "claimed jobs had no dispatcher left; their leases will expire");
        }
    }

    /// Takes over the lease of a RUNNING job whose remote run is recorded (its lease expired, or
    /// its process handed it over), as a new attempt of this process: the worker resumes
    /// following the run. `None` when another process took it first (the fence: same attempt,
    /// still RUNNING, lease still expired).
    pub async fn resume_lease(
        &self,
        owner: Uuid,
        id: JobId,
        attempt: i32,
        lease_us: i64,
        all_running: bool,
    ) -> Result<Option<ClaimedJob>, Error> {
        let now = now_us();
        // At SQLite start-up every RUNNING job is a dead process's, whatever its lease says.
        let cutoff = if all_running { i64::MAX } else { now };
        let sql = format!(
            "UPDATE jobs SET attempts = attempts + 1, lease_owner = $1, lease_until = $2 \
             WHERE id = $3 AND attempts = $4 AND status = {running} AND lease_until < $5 AND external IS NOT NULL \
             RETURNING {CLAIMED_COLUMNS}",
            running = rows::sql(JobStatus::Running)
        );
        let txn = self.inner.write.begin().await?;
        let row = txn
            .query_one_raw(
                self.stmt(
                    &sql,
                    vec![owner.into(), (now + lease_us).into(), id.0.into(), attempt.into(), cutoff.into()],
                ),
            )
            .await?;
        let Some(job) = row.map(|r| rows::claimed(&r, now)).transpose()? else {
            txn.rollback().await?;
            return Ok(None);
        };
        let replica = owner.to_string();
        let events = vec![
            NewEvent::by_gateway(id, EventKind::LeaseLost, json!({"attempt": attempt, "recovered_by": replica})),
            NewEvent::by_gateway(id, EventKind::LeaseRecovered, json!({"attempt": job.attempt, "replica": replica})),
        ];
        super::events::insert(&txn, self.inner.backend, now, events).await?;
        txn.commit().await?;
        self.note_events_written();
        Ok(Some(job))
    }

    /// Records the remote run an attempt launched, before the runner follows it. False when the
    /// attempt is no longer current (its lease was lost).
    pub async fn record_external(
        &self,
        id: JobId,
        attempt: i32,
        external: &crate::jobs::External,
    ) -> Result<bool, Error> {
        let text = serde_json::to_string(external).map_err(|e| Error::Internal(e.to_string()))?;
        let sql = format!(
            "UPDATE jobs SET external = $1 WHERE id = $2 AND attempts = $3 AND status = {running}",
            running = rows::sql(JobStatus::Running)
        );
        let done = self.write_external(&sql, text, id, attempt, external).await;
        self.note_write_failure(&done);
        done
    }

    async fn write_external(
        &self,
        sql: &str,
        text: String,
        id: JobId,
        attempt: i32,
        external: &crate::jobs::External,
    ) -> Result<bool, Error> {
        let txn = self.inner.write.begin().await?;
        let n = txn.execute_raw(self.stmt(sql, vec![text.into(), id.0.into(), attempt.into()])).await?.rows_affected();
        if n != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        let detail = json!({"attempt": attempt, "system": external.system, "id": external.id, "url": external.url});
        let event = NewEvent::by_gateway(id, EventKind::ExternalRecorded, detail);
        super::events::insert(&txn, self.inner.backend, now_us(), vec![event]).await?;
        txn.commit().await?;
        self.note_events_written();
        Ok(true)
    }

    /// Gives up this process's lease on a job whose remote run goes on (shutdown): any process
    /// may resume it at once instead of after the lease.
    pub async fn release_lease(&self, owner: Uuid, id: JobId, attempt: i32) -> Result<(), Error> {
        let sql = format!(
            "UPDATE jobs SET lease_owner = NULL, lease_until = 0 \
             WHERE id = $1 AND attempts = $2 AND lease_owner = $3 AND status = {running}",
            running = rows::sql(JobStatus::Running)
        );
        self.inner.write.execute_raw(self.stmt(&sql, vec![id.0.into(), attempt.into(), owner.into()])).await?;
        Ok(())
    }

    /// Extends the lease of every job `owner` still holds, and returns them: id, attempt, and
    /// whether a cancel was requested (possibly through another replica). A job running here
    /// that is missing from the answer was taken over (its lease expired and another process
    /// recovered it): its attempt must stop.
    pub async fn heartbeat(&self, owner: Uuid, lease_us: i64) -> Result<Vec<Held>, Error> {
        let until = now_us() + lease_us;
        // Rows are locked in id order, as every writer of several jobs locks them (see
        // `PG_LOCK_IN_ID_ORDER`), so a heartbeat and a completion batch never deadlock.
        let lock = match self.inner.backend {
            Backend::Postgres => "ORDER BY id FOR NO KEY UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET lease_until = $1 WHERE id IN \
             (SELECT id FROM jobs WHERE lease_owner = $2 AND status = {running} {lock}) \
             RETURNING id, attempts, cancel_requested",
            running = rows::sql(JobStatus::Running)
        );
        let rows = self.inner.write.query_all_raw(self.stmt(&sql, vec![until.into(), owner.into()])).await?;
        rows.iter().map(rows::held).collect()
    }

    /// Writes a batch of finished attempts in one transaction, one statement per chunk. Returns,
    /// for each, the status it now has, or `None` when the fence refused it (the attempt was no
    /// longer current).
    pub async fn finish_batch(&self, batch: &[Completion]) -> Result<Vec<Option<JobStatus>>, Error> {
        if self.inner.backend == Backend::Sqlite {
            // One writer: completions join the writer task's next transaction, with the jobs
            // being enqueued and the claims they make possible (see `jobs::run_writer`).
            return super::jobs::finish_via_writer(self, batch.to_vec()).await;
        }
        let result = self.write_finished(batch).await;
        self.note_write_failure(&result);
        result
    }

    async fn write_finished(&self, batch: &[Completion]) -> Result<Vec<Option<JobStatus>>, Error> {
        let now = now_us();
        if batch.iter().all(|c| c.lost.is_none() && matches!(c.outcome, Outcome::Success(_) | Outcome::Failed(_))) {
            return self.finish_terminal_pg(batch, now).await;
        }
        let txn = self.inner.write.begin().await?;
        let (statuses, effects) = self.finish_in(&txn, batch, now).await?;
        txn.commit().await?;
        self.after_finish(effects);
        Ok(statuses)
    }

    /// PostgreSQL, attempts that all end their job (success or failure, none taken over): the
    /// update, `finished` events and webhook outbox rows in one statement, so one round trip
    /// instead of a transaction of four. The batch travels as one JSON array whatever its size:
    /// one statement (atomic on its own) and one prepared shape, where a VALUES list split into
    /// power-of-two chunks took several statements inside a transaction. The rows and events
    /// are `finish_in`'s, built in SQL.
    async fn finish_terminal_pg(&self, batch: &[Completion], now: i64) -> Result<Vec<Option<JobStatus>>, Error> {
        let (sql, values) = finish_terminal_pg_statement(batch, now);
        let written = self.inner.write.query_all_raw(self.stmt(&sql, values)).await?;
        let mut by_id = std::collections::HashMap::with_capacity(written.len());
        let mut outbox = false;
        for r in &written {
            by_id.insert(rows::id(r)?, rows::status(r)?);
            outbox |= get::<Option<String>>(r, "callback_url")?.is_some();
        }
        self.after_finish(FinishEffects { requeued: 0, wrote_events: !written.is_empty(), outbox });
        Ok(batch.iter().map(|c| by_id.get(&c.id).copied()).collect())
    }

    /// What a committed finish still has to announce.
    pub(super) fn after_finish(&self, effects: FinishEffects) {
        self.add_pending_estimate(effects.requeued);
        if effects.wrote_events {
            self.note_events_written();
        }
        if effects.outbox {
            self.note_webhooks_due();
        }
    }

    /// Writes finished attempts inside `txn`: the fenced update, events, webhook outbox rows.
    pub(super) async fn finish_in(
        &self,
        txn: &impl ConnectionTrait,
        batch: &[Completion],
        now: i64,
    ) -> Result<(Vec<Option<JobStatus>>, FinishEffects), Error> {
        // Rows in id order (see `heartbeat`): the join visits them in that order.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].id);
        let rows: Vec<Vec<Value>> = order
            .iter()
            .map(|&i| {
                let c = &batch[i];
                let (status, result, error, run_at): (&str, Option<String>, Option<String>, Option<i64>) =
                    match &c.outcome {
                        Outcome::Success(r) => (JobStatus::Success.as_str(), Some(r.to_string()), None, None),
                        Outcome::Failed(e) => (JobStatus::Failed.as_str(), None, Some(e.clone()), None),
                        Outcome::Canceled => {
                            (JobStatus::Canceled.as_str(), None, Some("canceled by request".to_owned()), None)
                        }
                        Outcome::Retry { error, run_at } => {
                            (JobStatus::Pending.as_str(), None, Some(error.clone()), Some(*run_at))
                        }
                    };
                vec![
                    c.id.0.into(),
                    c.attempt.into(),
                    status.into(),
                    result.into(),
                    error.into(),
                    run_at.into(),
                    now.into(),
                ]
            })
            .collect();
        if self.inner.backend == Backend::Postgres {
            // The rows' locks first, in id order (see `PG_LOCK_IN_ID_ORDER`): the update's own
            // order is its plan's.
            let ids = order.iter().map(|&i| batch[i].id.0.to_string()).collect::<Vec<_>>().join(",");
            txn.execute_raw(self.stmt(PG_LOCK_IN_ID_ORDER, vec![format!("{{{ids}}}").into()])).await?;
        }
        let (prefix, row, suffix) = finish_statement(self.inner.backend);
        let written = super::values_in_chunks(txn, self.inner.backend, &prefix, row, &suffix, rows).await?;
        let mut by_id = std::collections::HashMap::with_capacity(written.len());
        let mut callbacks = Vec::new();
        let mut events = Vec::with_capacity(written.len() * 2);
        let index: std::collections::HashMap<JobId, &Completion> = batch.iter().map(|c| (c.id, c)).collect();
        for r in &written {
            let (id, status) = (rows::id(r)?, rows::status(r)?);
            by_id.insert(id, status);
            if let Some(c) = index.get(&id) {
                let started: Option<i64> = get(r, "started_at")?;
                finish_events(c, status, started.map(|s| (now - s) / 1000), &mut events);
            }
            if status.is_terminal()
                && let Some(url) = get::<Option<String>>(r, "callback_url")?
            {
                callbacks.push((id, url));
            }
        }
        let requeued = by_id.values().filter(|s| **s == JobStatus::Pending).count() as i64;
        if requeued > 0 && self.inner.backend == Backend::Postgres {
            txn.execute_unprepared(&format!("NOTIFY {}", super::JOBS_CHANNEL)).await?;
        }
        let outbox = !callbacks.is_empty();
        super::webhooks::enqueue(txn, self.inner.backend, now, callbacks).await?;
        let wrote_events = !events.is_empty();
        super::events::insert(txn, self.inner.backend, now, events).await?;
        let statuses = batch.iter().map(|c| by_id.get(&c.id).copied()).collect();
        Ok((statuses, FinishEffects { requeued, wrote_events, outbox }))
    }

    /// RUNNING jobs whose lease ended before now. With `all_running`, every RUNNING job
    /// (SQLite at start-up: one process owns the file, so whatever runs is from a dead one).
    pub async fn expired_leases(&self, all_running: bool, limit: usize) -> Result<Vec<LostJob>, Error> {
        let cutoff = if all_running { i64::MAX } else { now_us() };
        let rows = self
            .inner
            .write
            .query_all_raw(self.stmt(
                &format!(
                    "SELECT id, action, target, attempts, started_at, cancel_requested, external FROM jobs WHERE status = {} AND lease_until < $1 LIMIT $2",
                    rows::sql(JobStatus::Running)
                ),
                vec![cutoff.into(), (limit as i64).into()],
            ))
            .await?;
        rows.iter().map(rows::lost).collect()
    }

    /// Global queue figures. Also resynchronises the admission estimate.
    pub async fn queue_stats(&self) -> Result<QueueStats, Error> {
        let row = self
            .inner
            .read
            .query_one_raw(self.stmt(
                &format!(
                    "SELECT COUNT(*) AS n, MIN(run_at) AS oldest FROM jobs {} WHERE status = {}",
                    match self.inner.backend {
                        Backend::Sqlite => "INDEXED BY jobs_pending_idx",
                        Backend::Postgres => "",
                    },
                    rows::sql(JobStatus::Pending)
                ),
                vec![],
            ))
            .await?;
        let stats = match row {
            Some(r) => QueueStats { pending: get(&r, "n")?, oldest_run_at: get(&r, "oldest")? },
            None => QueueStats::default(),
        };
        self.inner.pending_estimate.store(stats.pending, Ordering::Relaxed);
        Ok(stats)
    }

    /// Deletes up to `limit` finished jobs that finished before `cutoff` (µs), oldest first, with
    /// their events, in one short transaction. Returns how many jobs were deleted. Replicas may
    /// run this at once: on PostgreSQL each skips the rows another is deleting.
    pub async fn purge_finished(&self, cutoff: i64, limit: usize) -> Result<u64, Error> {
        let lock = match self.inner.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let txn = self.inner.write.begin().await?;
        let rows = txn
            .query_all_raw(self.stmt(
                &format!(
                    "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 \
                     AND status IN ({success}, {failed}, {canceled}) ORDER BY finished_at LIMIT $2 {lock}",
                    success = rows::sql(JobStatus::Success),
                    failed = rows::sql(JobStatus::Failed),
                    canceled = rows::sql(JobStatus::Canceled)
                ),
                vec![cutoff.into(), (limit as i64).into()],
            ))
            .await?;
        let ids: Vec<Vec<Value>> =
            rows.iter().map(|r| rows::id(r).map(|id| vec![id.0.into()])).collect::<Result<_, _>>()?;
        let n = ids.len() as u64;
        if n > 0 {
            let backend = self.inner.backend;
            let row = if backend == Backend::Postgres { "(#::uuid)" } else { "(#)" };
            for table in ["job_events", "webhook_attempts", "webhook_outbox"] {
                let prefix = format!("DELETE FROM {table} WHERE job_id IN (");
                super::values_in_chunks(&txn, backend, &prefix, row, ")", ids.clone()).await?;
            }
            super::values_in_chunks(&txn, backend, "DELETE FROM jobs WHERE id IN (", row, ")", ids).await?;
        }
        let result = txn.commit().await.map_err(Error::from);
        self.note_write_failure(&result);
        result?;
        Ok(n)
    }

    /// Bytes the database takes: the SQLite file's pages, or PostgreSQL's job tables with their
    /// indexes and TOAST.
    pub async fn database_size(&self) -> Result<i64, Error> {
        let sql = match self.inner.backend {
            Backend::Sqlite => "SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()",
            Backend::Postgres => {
                "SELECT (pg_total_relation_size('jobs') + pg_total_relation_size('job_events'))::int8 AS n"
            }
        };
        let row = self.inner.read.query_one_raw(self.stmt(sql, vec![])).await?;
        row.map(|r| get::<i64>(&r, "n")).transpose().map(|n| n.unwrap_or(0))
    }

    /// A cheap query that succeeds when the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        self.inner.read.query_one_raw(self.stmt("SELECT 1 AS one", vec![])).await?;
        Ok(())
    }
}

/// `finish_terminal_pg`'s statement and parameters for `batch` finishing at `now` (µs).
fn finish_terminal_pg_statement(batch: &[Completion], now: i64) -> (String, Vec<Value>) {
    // Rows in id order, as in `finish_in`. The status term is written so that no index can
    // serve it: PostgreSQL would otherwise read every RUNNING entry of `jobs_running_idx`
    // (dead ones included, until VACUUM) and hash-join them with the batch, 5 ms for 20
    // jobs after 50 000 had run, instead of one primary-key lookup per job (0.5 ms). The LIMIT
    // (the batch's size, so never binding) tells the planner how many rows the batch has: it
    // counts 100 for any set-returning function, which made a scan of the whole table look
    // cheaper than 100 lookups for tables up to about 20 000 jobs.
    let mut order: Vec<&Completion> = batch.iter().collect();
    order.sort_by_key(|c| c.id);
    let rows: Vec<Json> = order
        .into_iter()
        .map(|c| {
            let (status, result, error) = match &c.outcome {
                Outcome::Success(r) => (JobStatus::Success, Some(r.to_string()), None),
                Outcome::Failed(e) => (JobStatus::Failed, None, Some(e.clone())),
                // Filtered out by the caller.
                Outcome::Canceled | Outcome::Retry { .. } => (JobStatus::Failed, None, None),
            };
            json!({"id": c.id.0, "attempt": c.attempt, "status": status.as_str(), "result": result, "error": error})
        })
        .collect();
    let running = rows::sql(JobStatus::Running);
    let events = super::events::pg_events_from(
        "done",
        EventKind::Finished,
        "s.finished_at",
        "jsonb_build_object('attempt', s.attempt, 'status', s.status, \
         'duration_ms', (s.finished_at - s.started_at) / 1000, 'error', s.error)",
    );
    // `locked` takes the rows' locks in id order before any is updated (see `PG_LOCK_IN_ID_ORDER`);
    // the update only touches rows it has already locked. It carries the batch's values along so
    // the update joins one set by primary key: joining `v` again beside it made the planner test
    // every pair (a nested loop with a join filter, quadratic in the batch: 40 ms for 256 jobs).
    let sql = format!(
        "WITH v AS (SELECT * FROM jsonb_to_recordset($1::jsonb) \
         AS r(id uuid, attempt int4, status text, result text, error text) LIMIT $3), \
         locked AS MATERIALIZED (SELECT jobs.id, v.attempt, v.status, v.result, v.error FROM jobs JOIN v ON jobs.id = v.id \
         ORDER BY jobs.id FOR NO KEY UPDATE OF jobs), \
         done AS (UPDATE jobs SET status = l.status, finished_at = $2, result = l.result, \
         error = l.error, lease_owner = NULL, lease_until = NULL FROM locked l \
         WHERE jobs.id = l.id AND jobs.attempts = l.attempt AND (jobs.status || '') = {running} \
         RETURNING jobs.id AS id, jobs.status AS status, jobs.started_at AS started_at, \
         jobs.callback_url AS callback_url, jobs.finished_at AS finished_at, l.attempt AS attempt, l.error AS error), \
         {events}, \
         outbox AS (INSERT INTO webhook_outbox (job_id, url, state, attempts, next_at, created_at) \
         SELECT id, callback_url, 'pending', 0, finished_at, finished_at FROM done WHERE callback_url IS NOT NULL \
         ON CONFLICT (job_id) DO NOTHING) \
         SELECT id, status, callback_url FROM done"
    );
    let n = rows.len() as i64;
    let values: Vec<Value> = vec![Json::Array(rows).to_string().into(), now.into(), n.into()];
    (sql, values)
}

/// PostgreSQL: locks the jobs whose ids are in `$1` (an array literal) in id order, inside the
/// transaction that then writes them. Every statement that writes several jobs takes their locks
/// in id order (the heartbeat, the finishes): two that took them in different orders could each
/// hold a row the other waits for, and PostgreSQL would abort one as a deadlock. An update's own
/// order is its plan's: on a small table a scan meets rows in their physical order, which each
/// new row version changes.
const PG_LOCK_IN_ID_ORDER: &str = "SELECT id FROM jobs WHERE id = ANY($1::text::uuid[]) ORDER BY id FOR NO KEY UPDATE";

/// `finish_in`'s fenced update as `values_in_chunks` parts: each row is (id, attempt, status,
/// result, error, run_at for a retry, finished_at). A retry becomes CANCELED instead when a
/// cancel was requested meanwhile.
fn finish_statement(backend: Backend) -> (String, &'static str, String) {
    let (pending, canceled, running) =
        (rows::sql(JobStatus::Pending), rows::sql(JobStatus::Canceled), rows::sql(JobStatus::Running));
    let prefix = format!(
        "UPDATE jobs SET \
         status = CASE WHEN v.column3 = {pending} AND jobs.cancel_requested THEN {canceled} ELSE v.column3 END, \
         finished_at = CASE WHEN v.column3 = {pending} AND NOT jobs.cancel_requested THEN NULL ELSE v.column7 END, \
         result = v.column4, error = v.column5, run_at = COALESCE(v.column6, jobs.run_at), \
         external = CASE WHEN v.column3 = {pending} THEN NULL ELSE jobs.external END, \
         lease_owner = NULL, lease_until = NULL \
         FROM ("
    );
    let (row, status) = match backend {
        // PostgreSQL types the VALUES list from its first row; say what each column is. The
        // status term is kept out of index use for the reason `finish_terminal_pg` gives.
        Backend::Postgres => ("(#::uuid,#::int4,#::text,#::text,#::text,#::int8,#::int8)", "(jobs.status || '')"),
        // The unary plus keeps SQLite (3.51) from reading every RUNNING job through the status
        // index and scanning the VALUES list for each: a batch cost the number of running jobs
        // times its size (about 50 us per finished job with 256 workers, against 10 by id).
        Backend::Sqlite => ("(#,#,#,#,#,#,#)", "+jobs.status"),
    };
    let suffix = format!(
        ") AS v WHERE jobs.id = v.column1 AND jobs.attempts = v.column2 AND {status} = {running} \
         RETURNING jobs.id AS id, jobs.status AS status, jobs.started_at AS started_at, jobs.callback_url AS callback_url"
    );
    (prefix, row, suffix)
}

/// The events of a written completion: `status` is the job's status now, `duration_ms` since its
/// first attempt started.
fn finish_events(c: &Completion, status: JobStatus, duration_ms: Option<i64>, out: &mut Vec<NewEvent>) {
    let (id, attempt) = (c.id, c.attempt);
    if let Some(by) = c.lost {
        out.push(NewEvent::by_gateway(
            id,
            EventKind::LeaseLost,
            json!({"attempt": attempt, "recovered_by": by.to_string()}),
        ));
    }
    let canceled =
        || NewEvent::by_gateway(id, EventKind::Canceled, json!({"attempt": attempt, "duration_ms": duration_ms}));
    match &c.outcome {
        Outcome::Success(_) => out.push(NewEvent::by_gateway(
            id,
            EventKind::Finished,
            json!({"attempt": attempt, "status": "SUCCESS", "duration_ms": duration_ms, "error": null}),
        )),
        Outcome::Failed(e) => out.push(NewEvent::by_gateway(
            id,
            EventKind::Finished,
            json!({"attempt": attempt, "status": "FAILED", "duration_ms": duration_ms, "error": e}),
        )),
        Outcome::Canceled => out.push(canceled()),
        Outcome::Retry { error, run_at } => {
            if c.lost.is_none() {
                out.push(NewEvent::by_gateway(
                    id,
                    EventKind::AttemptFailed,
                    json!({"attempt": attempt, "error": error}),
                ));
            }
            if status == JobStatus::Canceled {
                out.push(canceled());
            } else {
                let at = chrono::DateTime::from_timestamp_micros(*run_at)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
                out.push(NewEvent::by_gateway(
                    id,
                    EventKind::RetryScheduled,
                    json!({"attempt": attempt, "run_at": at}),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{DbBackend, QueryResult, Statement};

    /// A store on `url`, migrated.
    async fn migrated_store(
        url: impl AsRef<str>,
        db_max_connections: u32,
        max_pending: u64,
    ) -> Result<Store, Box<dyn std::error::Error>> {
        let settings = super::super::Settings {
            database_url: url.as_ref().parse()?,
            db_max_connections,
            max_pending,
            sqlite_max_size_mb: 0,
        };
        let store = Store::connect(&settings).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Streams opened together share reads of the event log's horizon (a thousand at once made
    /// a thousand queries, and the requests waiting on them fragmented the heap), yet no caller
    /// gets a horizon from before its call: an event committed before the call is at or below it.
    #[tokio::test]
    async fn concurrent_horizon_reads_are_shared_and_never_older_than_the_call()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = migrated_store(format!("sqlite://{}/h.db?mode=rwc", dir.path().display()), 4, 1000).await?;
        let job = health_check_job()?;
        let last_event = |store: Store| async move {
            let rows = store
                .inner
                .read
                .query_all_raw(Statement::from_string(DbBackend::Sqlite, "SELECT MAX(id) AS n FROM job_events"))
                .await?;
            Ok::<i64, Box<dyn std::error::Error>>(get::<i64>(&rows[0], "n")?)
        };
        for round in 0..5 {
            store.enqueue(job(&format!("t{round}")), None, None).await?;
            let committed = last_event(store.clone()).await?;
            let before = store.inner.horizon.started.load(Ordering::SeqCst);
            let calls: Vec<_> = (0..200)
                .map(|_| {
                    tokio::spawn({
                        let store = store.clone();
                        async move { store.event_horizon().await }
                    })
                })
                .collect();
            for call in calls {
                let horizon = call.await??;
                assert!(horizon >= committed, "round {round}: horizon {horizon} is older than event {committed}");
            }
            let reads = store.inner.horizon.started.load(Ordering::SeqCst) - before;
            assert!((1..=20).contains(&reads), "round {round}: 200 callers made {reads} reads");
        }
        // SQLite, no event committed since the last read: later callers take it without a query.
        let before = store.inner.horizon.started.load(Ordering::SeqCst);
        let again = store.event_horizon().await?;
        assert_eq!(again, last_event(store.clone()).await?);
        assert_eq!(store.inner.horizon.started.load(Ordering::SeqCst), before, "a read with nothing new to see");
        Ok(())
    }

    /// A maker of `health_check` jobs on a given target.
    fn health_check_job() -> Result<impl Fn(&str) -> crate::jobs::NewJob, Box<dyn std::error::Error>> {
        let action = crate::jobs::Action::new("health_check").map_err(|e| e.to_string())?;
        Ok(move |target: &str| crate::jobs::NewJob {
            action,
            target: target.to_owned(),
            requested_by: "test".to_owned(),
            parameters: json!({}),
            submitted_by: "tester".to_owned(),
            callback_url: None,
            traceparent: None,
        })
    }

    /// Claims up to `n` jobs for `owner` and returns their successful completions.
    async fn claimed_as_successes(store: &Store, owner: Uuid, n: usize) -> Result<Vec<Completion>, Error> {
        let jobs = store.claim_batch(owner, n, 60_000_000, &[]).await?;
        Ok(jobs
            .iter()
            .map(|j| Completion { id: j.id, attempt: j.attempt, outcome: Outcome::Success(json!({})), lost: None })
            .collect())
    }

    /// An EXPLAIN's rows as one text.
    fn plan_text(rows: &[QueryResult]) -> Result<String, Box<dyn std::error::Error>> {
        let lines: Vec<String> = rows.iter().map(|r| get::<String>(r, "QUERY PLAN")).collect::<Result<_, _>>()?;
        Ok(lines.join("\n"))
    }

    /// The finish looks each job up by its id, whatever the batch size and however many jobs
    /// are RUNNING: SQLite's plan for it once walked every RUNNING job for each batch.
    #[tokio::test]
    async fn sqlite_finish_finds_jobs_by_id() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = migrated_store(format!("sqlite://{}/plan.db?mode=rwc", dir.path().display()), 16, 1000).await?;
        let (prefix, row, suffix) = finish_statement(Backend::Sqlite);
        for n in [1usize, 3, 64, 256] {
            let rows = vec![vec![Value::String(None); 7]; n];
            let plan = super::super::values_in_chunks(
                &store.inner.write,
                Backend::Sqlite,
                &format!("EXPLAIN QUERY PLAN {prefix}"),
                row,
                &suffix,
                rows,
            )
            .await?;
            let steps: Vec<String> = plan.iter().map(|r| get::<String>(r, "detail")).collect::<Result<_, _>>()?;
            let jobs: Vec<&String> = steps.iter().filter(|d| d.contains(" jobs ")).collect();
            assert!(
                !jobs.is_empty() && jobs.iter().all(|d| d.starts_with("SEARCH jobs") && d.contains("id=?)")),
                "{n} rows: jobs must be searched by id, plan: {steps:?}"
            );
        }
        Ok(())
    }

    /// On PostgreSQL the claim and the terminal finish stay index lookups on a database that was
    /// never analyzed (a new one, or autovacuum off) once thousands of jobs have run: the claim reads
    /// `jobs_pending_idx` in order (no sort of the queue, no bitmap scan, which never marks dead
    /// entries), the finish looks each job up by its primary key.
    #[tokio::test]
    async fn postgres_claim_and_finish_plans_stay_index_lookups() -> Result<(), Box<dyn std::error::Error>> {
        in_fresh_pg_database(|url| async move { plans_after_history(&url).await }).await
    }

    /// Runs `test` against a new PostgreSQL database (TEST_PG_URL's server, or 127.0.0.1:5432),
    /// dropped afterwards whatever the outcome.
    async fn in_fresh_pg_database<F, Fut>(test: F) -> Result<(), Box<dyn std::error::Error>>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
    {
        use sqlx::Connection;
        let admin =
            std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("ag_unit_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .map_err(|e| format!("this test needs PostgreSQL at {admin} (set TEST_PG_URL): {e}"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
        let mut url = url::Url::parse(&admin)?;
        url.set_path(&name);
        let result = test(url.to_string()).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await?;
        result
    }

    /// Every statement that writes several jobs locks their rows in id order, whatever plan the
    /// database picks, as the heartbeat does: two writers that lock in different orders can
    /// deadlock, and PostgreSQL then aborts one of them (seen in CI as a heartbeat aborted at
    /// shutdown while a completion batch waited on it). Here a session holds the lower id and
    /// then asks for the higher one, the way a heartbeat walks its jobs, while a batch finishes
    /// both. The rows' physical order is the reverse of their id order, which is the order a
    /// scan of this small table meets them in.
    #[tokio::test]
    async fn postgres_finishes_lock_jobs_in_id_order() -> Result<(), Box<dyn std::error::Error>> {
        in_fresh_pg_database(|url| async move {
            use sqlx::Connection;
            let store = migrated_store(&url, 4, 1000).await?;
            store.inner.write.execute_unprepared(&insert_jobs(4)).await?;
            let owner = Uuid::new_v4();
            let mut jobs = store.claim_batch(owner, 4, 60_000_000, &[]).await?;
            jobs.sort_by_key(|j| j.id);
            assert_eq!(jobs.len(), 4);
            // The lower job of each pair gets a newer row version, placed after the higher one.
            for j in [&jobs[0], &jobs[2]] {
                store
                    .inner
                    .write
                    .execute_raw(
                        store.stmt("UPDATE jobs SET lease_until = lease_until WHERE id = $1", vec![j.id.0.into()]),
                    )
                    .await?;
            }
            let done = |j: &ClaimedJob, lost: Option<Uuid>| Completion {
                id: j.id,
                attempt: j.attempt,
                outcome: Outcome::Success(json!({})),
                lost,
            };
            // Workers' results (one statement) and recovery's (a transaction).
            let cases = [
                ("results of this process's workers", [done(&jobs[0], None), done(&jobs[1], None)]),
                ("results of lease recovery", [done(&jobs[2], Some(owner)), done(&jobs[3], Some(owner))]),
            ];
            for (what, batch) in cases {
                let (low, high) = (batch[0].id, batch[1].id);
                let mut walker = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql("BEGIN; SET LOCAL lock_timeout = '10s'").execute(&mut walker).await?;
                let lock = "SELECT id FROM jobs WHERE id = $1 FOR NO KEY UPDATE";
                sqlx::query(lock).bind(low.0).execute(&mut walker).await?;
                let finishing = tokio::spawn({
                    let (store, batch) = (store.clone(), batch.to_vec());
                    async move { store.finish_batch(&batch).await }
                });
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let second = sqlx::query(lock).bind(high.0).execute(&mut walker).await;
                sqlx::raw_sql("COMMIT").execute(&mut walker).await?;
                let finished = finishing.await?;
                assert!(second.is_ok(), "{what}: the session walking in id order was refused: {second:?}");
                let statuses = finished.map_err(|e| format!("{what}: the batch failed: {e}"))?;
                assert_eq!(statuses, vec![Some(JobStatus::Success); 2], "{what}");
            }
            Ok(())
        })
        .await
    }

    /// A batch whose insert waits on an idempotency key another transaction holds (a client's
    /// retry on another replica while its first try is in flight) must not hold the event
    /// log's shared lock meanwhile: a horizon reader would queue behind it, and the other
    /// transaction's own events would queue behind the reader, a three-way wait PostgreSQL ends
    /// by aborting one. Here the horizon answers while the batch waits, the batch then settles
    /// (its new job created with one `created` event carrying its request id, the held key a
    /// conflict), and nothing waits on anything else.
    #[tokio::test]
    async fn postgres_enqueue_waiting_on_a_key_in_flight_keeps_the_event_horizon_free()
    -> Result<(), Box<dyn std::error::Error>> {
        in_fresh_pg_database(|url| async move {
            use crate::jobs::EventKind;
            use sqlx::Connection;
            use std::time::Duration;
            let store = migrated_store(&url, 4, 1000).await?;
            let job = health_check_job()?;
            let mut other = sqlx::PgConnection::connect(&url).await?;
            sqlx::raw_sql(
                "BEGIN; INSERT INTO jobs (id, action, target, requested_by, parameters, status, attempts, created_at, \
                 run_at, idempotency_key, request_fingerprint) VALUES (gen_random_uuid(), 'health_check', 'held', \
                 'test', '{}', 'PENDING', 0, 1, 1, 'held-key', 'another request')",
            )
            .execute(&mut other)
            .await?;
            let held = tokio::spawn({
                let (store, job) = (store.clone(), job("held"));
                async move { store.enqueue(job, Some("held-key".into()), Some("r-held".into())).await }
            });
            let fresh = tokio::spawn({
                let (store, job) = (store.clone(), job("fresh"));
                async move { store.enqueue(job, Some("fresh-key".into()), Some("r-fresh".into())).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!held.is_finished(), "the batch did not wait on the key in flight");
            let horizon = tokio::time::timeout(Duration::from_secs(3), store.event_horizon()).await;
            assert!(
                matches!(horizon, Ok(Ok(_))),
                "the event horizon waited on a batch that was itself waiting: {horizon:?}"
            );
            sqlx::raw_sql("COMMIT").execute(&mut other).await?;
            let held = tokio::time::timeout(Duration::from_secs(10), held).await??;
            let fresh = tokio::time::timeout(Duration::from_secs(10), fresh).await??;
            assert!(matches!(held, Err(Error::Conflict(_))), "the key held by another request: {held:?}");
            let fresh = fresh?;
            assert!(fresh.created);
            let events = store.events(fresh.id, 0).await?;
            let created: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Created).collect();
            assert_eq!(created.len(), 1, "one created event: {events:?}");
            assert_eq!(created[0].request_id.as_deref(), Some("r-fresh"));
            assert_eq!(created[0].actor, "tester");
            Ok(())
        })
        .await
    }

    /// On PostgreSQL the statement that inserts new jobs claims them for this process's free
    /// workers (RUNNING with its lease, `claimed` after `created`, handed to the dispatcher, no
    /// wake-up), while the 202's answer stays PENDING; never while an older job waits (it would
    /// overtake it) or when no worker is free, and then the dispatcher is woken as before.
    #[tokio::test]
    async fn postgres_insert_claims_new_jobs_only_for_free_workers_and_never_past_older_ones()
    -> Result<(), Box<dyn std::error::Error>> {
        in_fresh_pg_database(|url| async move {
            use std::time::Duration;
            let store = migrated_store(&url, 4, 1000).await?;
            let job = health_check_job()?;
            let woken = store.enqueued_signal();
            let was_woken = |w: std::sync::Arc<tokio::sync::Notify>| async move {
                tokio::time::timeout(Duration::from_millis(100), w.notified()).await.is_ok()
            };
            let older = store.enqueue(job("older"), None, None).await?;

            let (owner, permits) = (Uuid::new_v4(), std::sync::Arc::new(tokio::sync::Semaphore::new(4)));
            let (tx, mut claimed) = tokio::sync::mpsc::unbounded_channel();
            let stop = tokio_util::sync::CancellationToken::new();
            let claimer = Claimer { owner, lease_us: 60_000_000, permits: permits.clone(), tx, stop };
            assert!(store.attach_claimer(claimer).is_ok());

            // An older job waits: the new one stays PENDING behind it.
            was_woken(woken.clone()).await;
            let behind = store.enqueue(job("behind"), None, None).await?;
            assert_eq!(behind.status, JobStatus::Pending);
            assert_eq!(store.get(behind.id).await?.status, JobStatus::Pending, "a new job overtook an older one");
            assert!(claimed.try_recv().is_err());
            assert!(was_woken(woken.clone()).await, "jobs left PENDING must wake the dispatcher");
            assert_eq!(permits.available_permits(), 4, "reserved slots are given back");
            // (RETURNING's order is unspecified.)
            let mut ids: Vec<JobId> =
                store.claim_batch(Uuid::new_v4(), 10, 60_000_000, &[]).await?.iter().map(|j| j.id).collect();
            ids.sort_by_key(|id| id.0);
            let mut waiting = vec![older.id, behind.id];
            waiting.sort_by_key(|id| id.0);
            assert_eq!(ids, waiting);

            // Nothing waits and a worker is free: claimed by its insert.
            let new = store.enqueue(job("new"), None, Some("r-new".into())).await?;
            assert_eq!(new.status, JobStatus::Pending, "the 202 says PENDING, as the job was when accepted");
            let batch = claimed.try_recv()?;
            assert_eq!(batch.jobs.len(), 1);
            assert_eq!((batch.jobs[0].id, batch.jobs[0].attempt, batch.jobs[0].first_attempt), (new.id, 1, true));
            assert_eq!(permits.available_permits(), 3, "the claimed job holds its worker slot");
            drop(batch);
            assert!(!was_woken(woken.clone()).await, "a claim that took every new job needs no dispatcher");
            let stored = store.get(new.id).await?;
            assert_eq!((stored.status, stored.attempts), (JobStatus::Running, 1));
            let events = store.events(new.id, 0).await?;
            let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
            assert_eq!(kinds, vec![EventKind::Created, EventKind::Claimed]);
            assert_eq!(events[0].request_id.as_deref(), Some("r-new"));
            assert_eq!(events[1].detail, json!({"attempt": 1, "replica": owner.to_string()}));
            assert_eq!(store.claim_batch(Uuid::new_v4(), 10, 60_000_000, &[]).await?.len(), 0);

            // No worker free: PENDING, for the dispatcher.
            let all = permits.clone().acquire_many_owned(4).await?;
            let waits = store.enqueue(job("waits"), None, None).await?;
            assert_eq!(store.get(waits.id).await?.status, JobStatus::Pending);
            assert!(claimed.try_recv().is_err());
            assert!(was_woken(woken.clone()).await);
            drop(all);
            Ok(())
        })
        .await
    }

    /// `n` PENDING jobs, written directly.
    fn insert_jobs(n: u32) -> String {
        format!(
            "INSERT INTO jobs (id, action, target, requested_by, parameters, status, attempts, created_at, run_at) \
             SELECT (lpad(to_hex(i), 12, '0') || '7000' || lpad(to_hex(i), 16, '0'))::uuid, 'health_check', 'plan', \
             'test', '{{}}', 'PENDING', 0, i, i FROM generate_series(1, {n}) i"
        )
    }

    /// The claim and the finish are prepared once per connection, and PostgreSQL may keep a
    /// generic plan for them, made with the statistics of that moment. Made on a table of three
    /// jobs, that plan once read the whole table for every batch, however large it grew. Here the
    /// generic plans are forced on such a table and must still go through the indexes.
    #[tokio::test]
    async fn postgres_generic_plans_made_on_a_new_table_use_the_indexes() -> Result<(), Box<dyn std::error::Error>> {
        in_fresh_pg_database(|url| async move { generic_plans_on_a_new_table(&url).await }).await
    }

    async fn generic_plans_on_a_new_table(url: &str) -> Result<(), Box<dyn std::error::Error>> {
        let store = migrated_store(url, 2, 1000).await?;
        store.inner.write.execute_unprepared(&insert_jobs(3)).await?;
        let owner = Uuid::new_v4();
        let running = claimed_as_successes(&store, owner, 2).await?;
        assert_eq!(running.len(), 2);
        // One connection for PREPARE and EXPLAIN EXECUTE: a transaction holds it.
        let txn = store.inner.write.begin().await?;
        txn.execute_unprepared("SET LOCAL plan_cache_mode = force_generic_plan").await?;
        let generic_plan = |name: &'static str, sql: String, values: Vec<Value>| {
            let txn = &txn;
            async move {
                txn.execute_unprepared(&format!("PREPARE {name} AS {sql}")).await?;
                let args: Vec<String> = (1..=values.len()).map(|i| format!("${i}")).collect();
                // EXECUTE takes its arguments as literals; the statement's Display writes them.
                let explain = Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    format!("EXPLAIN EXECUTE {name}({})", args.join(", ")),
                    values,
                )
                .to_string();
                let rows = txn.query_all_raw(Statement::from_string(DbBackend::Postgres, explain)).await?;
                plan_text(&rows)
            }
        };
        let (claim, values) = store.claim_statement(owner, 256, 60_000_000, &[], now_us());
        let plan = generic_plan("claim", claim, values).await?;
        assert!(
            plan.contains("Index Scan using jobs_pending_idx") && !plan.contains("Seq Scan"),
            "the claim's generic plan must read the pending index:\n{plan}"
        );
        let (finish, values) = finish_terminal_pg_statement(&running, now_us());
        let plan = generic_plan("finish", finish, values).await?;
        assert!(
            plan.contains("Index Scan using jobs_pkey") && !plan.contains("Seq Scan on jobs"),
            "the finish's generic plan must look each job up by id:\n{plan}"
        );
        txn.rollback().await?;
        Ok(())
    }

    async fn plans_after_history(url: &str) -> Result<(), Box<dyn std::error::Error>> {
        let store = migrated_store(url, 4, 100_000).await?;
        // 40 000 queued jobs; 20 claims of 256 run and finish, leaving dead index entries behind.
        store.inner.write.execute_unprepared(&insert_jobs(40_000)).await?;
        let owner = Uuid::new_v4();
        for _ in 0..20 {
            let batch = claimed_as_successes(&store, owner, 256).await?;
            assert_eq!(batch.len(), 256);
            let statuses = store.finish_batch(&batch).await?;
            assert!(statuses.iter().all(|s| *s == Some(JobStatus::Success)), "{statuses:?}");
        }
        let running = claimed_as_successes(&store, owner, 64).await?;
        let explain = |sql: String, values: Vec<Value>| {
            let store = store.clone();
            async move {
                let rows = store.inner.write.query_all_raw(store.stmt(&format!("EXPLAIN {sql}"), values)).await?;
                plan_text(&rows)
            }
        };
        let (claim, values) = store.claim_statement(owner, 256, 60_000_000, &[], now_us());
        let plan = explain(claim, values).await?;
        assert!(
            plan.contains("Index Scan using jobs_pending_idx") && !plan.contains("Sort") && !plan.contains("Bitmap"),
            "the claim must read the pending index in order:\n{plan}"
        );
        for n in [1, 20, 64] {
            let (finish, values) = finish_terminal_pg_statement(&running[..n], now_us());
            let plan = explain(finish, values).await?;
            assert!(
                plan.contains("Index Scan using jobs_pkey")
                    && !plan.contains("Seq Scan on jobs")
                    && !plan.contains("Bitmap")
                    && !plan.contains("Join Filter"),
                "{n} jobs: the finish must look each job up by id, once:\n{plan}"
            );
        }
        Ok(())
    }
}
