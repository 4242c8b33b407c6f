//! Runs jobs: the dispatcher claims batches of PENDING jobs into a bounded worker pool; each
//! attempt has a timeout, a cancellation path and a panic boundary; failed attempts retry with
//! exponential backoff and jitter; a batched completer writes results; heartbeats keep leases;
//! expired leases of dead workers are recovered by the per-action policy; shutdown drains.
//! Builds no HTTP responses and writes no SQL (the store does).

pub mod runners;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{ActionPolicies, Config, OnLost};
use crate::jobs::{Action, JobId, JobStatus};
use crate::store::{self, Completion, Outcome, Store};
use crate::telemetry::Metrics;
use runners::Runners;

/// Most jobs claimed in one statement.
const MAX_CLAIM: usize = 256;
/// Most completions written in one transaction.
const MAX_COMPLETE: usize = 512;

/// Shared state of one executor.
struct Ctx {
    store: Store,
    metrics: Arc<Metrics>,
    runners: Runners,
    policies: ActionPolicies,
    owner: Uuid,
    lease: Duration,
    lease_us: i64,
    /// The attempts running here, by job. Locked briefly, never across an await.
    running: Mutex<HashMap<JobId, worker::Attempt>>,
    /// When the last heartbeat that succeeded was sent: every lease this process held then
    /// runs until that instant plus the lease, whatever the database's clock says.
    last_beat: Mutex<Option<Instant>>,
    /// Fired when the shutdown grace period is over: interrupts every attempt still running.
    hard_stop: CancellationToken,
    completions: mpsc::UnboundedSender<Finished>,
    /// Signalled when a worker slot frees up.
    capacity: Notify,
}

/// A completion plus what the metrics need.
struct Finished {
    completion: Completion,
    action: Action,
    target: String,
    started_at: i64,
}

/// The running executor. `cancel` serves the API; `shutdown` drains.
pub struct Executor {
    ctx: Arc<Ctx>,
    stop_claiming: CancellationToken,
    tasks: tokio::sync::Mutex<Option<Tasks>>,
    grace: Duration,
}

struct Tasks {
    dispatcher: tokio::task::JoinHandle<()>,
    completer: tokio::task::JoinHandle<()>,
    background: JoinSet<()>,
}

impl Executor {
    /// Recovers what a dead process left behind (on SQLite), then starts the dispatcher, the
    /// completer, heartbeats, lease recovery, the queue sampler and (on PostgreSQL) LISTEN.
    pub async fn start(
        store: Store,
        metrics: Arc<Metrics>,
        runners: Runners,
        config: &Config,
    ) -> Result<Self, store::Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let lease = config.lease();
        let ctx = Arc::new(Ctx {
            store: store.clone(),
            metrics,
            runners,
            policies: config.action_policy.clone(),
            owner: Uuid::new_v4(),
            lease,
            lease_us: lease.as_micros() as i64,
            running: Mutex::new(HashMap::new()),
            last_beat: Mutex::new(None),
            hard_stop: CancellationToken::new(),
            completions: tx,
            capacity: Notify::new(),
        });
        if store.backend() == store::Backend::Sqlite {
            // One process owns a SQLite file: whatever is RUNNING now was left by a dead one.
            recover(&ctx, true).await?;
        }
        let stop_claiming = CancellationToken::new();
        let mut background = JoinSet::new();
        background.spawn(heartbeat_loop(ctx.clone(), lease / 3));
        background.spawn(recovery_loop(ctx.clone(), (lease / 2).max(Duration::from_secs(1)), stop_claiming.clone()));
        background.spawn(sample_loop(ctx.clone(), stop_claiming.clone()));
        if let Some(keep) = config.retention() {
            let every = Duration::from_secs(config.retention_interval_secs);
            background.spawn(retention_loop(ctx.clone(), keep, every, stop_claiming.clone()));
        }
        if let Some(pool) = store.pg_pool() {
            background.spawn(listen_loop(ctx.clone(), pool, stop_claiming.clone()));
        }
        let dispatcher = tokio::spawn(dispatch_loop(
            ctx.clone(),
            Arc::new(Semaphore::new(config.workers as usize)),
            Duration::from_millis(config.poll_interval_ms),
            stop_claiming.clone(),
        ));
        let completer = tokio::spawn(complete_loop(ctx.clone(), rx));
        tracing::info!(owner = %ctx.owner, workers = config.workers, "executor started");
        Ok(Self {
            ctx,
            stop_claiming,
            tasks: tokio::sync::Mutex::new(Some(Tasks { dispatcher, completer, background })),
            grace: Duration::from_secs(config.shutdown_grace_secs),
        })
    }

    /// Cancels a job: a PENDING one at once, a RUNNING one by interrupting its attempt (here or
    /// on another replica). Waits up to `wait` for a running job to settle and returns the
    /// status it has then; a job that finished first keeps its real status.
    pub async fn cancel(
        &self,
        id: JobId,
        actor: &str,
        request_id: Option<String>,
        wait: Duration,
    ) -> Result<JobStatus, store::Error> {
        match self.ctx.store.cancel(id, actor, request_id).await? {
            JobStatus::Canceled => {
                if let Ok(job) = self.ctx.store.get(id).await {
                    tracing::info!(job_id = %id, action = %job.action, target = %job.target, "job canceled while pending");
                    self.ctx.metrics.job_finished(job.action, JobStatus::Canceled, None);
                }
                Ok(JobStatus::Canceled)
            }
            _ => {
                if let Some(attempt) = self.ctx.running.lock().map_err(|_| poisoned())?.get(&id) {
                    attempt.cancel.cancel();
                }
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    let job = self.ctx.store.get(id).await?;
                    if job.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                        return Ok(job.status);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// Graceful shutdown: stop claiming, give running attempts the grace period, interrupt the
    /// rest (they are settled by their action's lost-job policy), flush every result.
    pub async fn shutdown(&self) {
        let Some(tasks) = self.tasks.lock().await.take() else {
            return;
        };
        self.stop_claiming.cancel();
        let hard_stop = self.ctx.hard_stop.clone();
        let grace = self.grace;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            hard_stop.cancel();
        });
        // The dispatcher returns once every attempt it started has ended.
        let _ = tasks.dispatcher.await;
        timer.abort();
        let mut background = tasks.background;
        background.abort_all();
        while background.join_next().await.is_some() {}
        // Every worker has sent its completion: the hard stop tells the completer to drain and end.
        self.ctx.hard_stop.cancel();
        let _ = tasks.completer.await;
        tracing::info!("executor stopped");
    }
}

fn poisoned() -> store::Error {
    store::Error::Other(sea_orm::DbErr::Custom("executor state lock poisoned".into()))
}

/// Claims work whenever there are free workers and something may be runnable. A wake-up is
/// never lost: the `Notified` futures are enabled before the claim query runs.
async fn dispatch_loop(ctx: Arc<Ctx>, permits: Arc<Semaphore>, poll: Duration, stop: CancellationToken) {
    let enqueued = ctx.store.enqueued_signal();
    let mut workers = JoinSet::new();
    let mut backoff = Duration::from_millis(50);
    let pool = permits.available_permits();
    // While a backlog is waiting, claim in batches of at least a quarter of the pool: claiming
    // one job per freed slot would cost one transaction (an fsync on SQLite) per job.
    let batch_min = (pool / 4).clamp(1, MAX_CLAIM);
    let mut backlog = false;
    loop {
        let woke = enqueued.notified();
        let freed = ctx.capacity.notified();
        tokio::pin!(woke, freed);
        woke.as_mut().enable();
        freed.as_mut().enable();

        let free = permits.available_permits().min(MAX_CLAIM);
        let worth_it = free > 0 && (!backlog || free >= batch_min || free == pool);
        if worth_it && !stop.is_cancelled() {
            // The lease starts before the claim is sent (the database computes it from its own
            // clock at about that time): the local deadline must never end later than the real one.
            let lease_from = Instant::now();
            match ctx.store.claim_batch(ctx.owner, free, ctx.lease_us).await {
                Ok(jobs) => {
                    let claimed_at = Instant::now();
                    backoff = Duration::from_millis(50);
                    backlog = jobs.len() == free;
                    for job in jobs {
                        // Cannot fail: we asked for no more jobs than there are free permits
                        // and only this loop takes permits.
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            break;
                        };
                        workers.spawn(worker::run(ctx.clone(), job, permit, lease_from, claimed_at));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming jobs failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        while workers.try_join_next().is_some() {}
        if backlog && permits.available_permits() >= batch_min {
            continue;
        }
        if stop.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = &mut woke => {}
            _ = &mut freed, if permits.available_permits() > 0 => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stop.cancelled() => {}
            Some(_) = workers.join_next() => {}
        }
    }
    // Draining: wait for every attempt (the grace timer interrupts stragglers).
    while workers.join_next().await.is_some() {}
}

/// Writes completions in batches: one transaction for everything that finished meanwhile.
async fn complete_loop(ctx: Arc<Ctx>, mut rx: mpsc::UnboundedReceiver<Finished>) {
    let mut batch = Vec::with_capacity(MAX_COMPLETE);
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            // All workers are gone and shutdown is complete: drain what is left, then stop.
            _ = ctx.hard_stop.cancelled(), if rx.is_empty() && ctx.running.lock().map(|r| r.is_empty()).unwrap_or(true) => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < MAX_COMPLETE {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        write_completions(&ctx, std::mem::take(&mut batch)).await;
    }
    while let Ok(f) = rx.try_recv() {
        batch.push(f);
    }
    if !batch.is_empty() {
        write_completions(&ctx, batch).await;
    }
}

async fn write_completions(ctx: &Ctx, batch: Vec<Finished>) {
    let completions: Vec<Completion> = batch.iter().map(|f| f.completion.clone()).collect();
    let mut delay = Duration::from_millis(50);
    // Keep trying while the database is unavailable; if this process dies meanwhile, the
    // leases expire and recovery settles the jobs.
    let statuses = loop {
        match ctx.store.finish_batch(&completions).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, jobs = completions.len(), "writing job results failed; retrying");
                if delay > Duration::from_secs(60) {
                    tracing::error!(
                        jobs = completions.len(),
                        "giving up on job results; lease recovery will settle them"
                    );
                    return;
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    };
    let now = store::now_us();
    for (f, status) in batch.iter().zip(statuses) {
        let id = f.completion.id;
        match status {
            Some(JobStatus::Pending) => {
                ctx.metrics.job_retried(f.action);
                tracing::info!(job_id = %id, action = %f.action, target = %f.target, attempt = f.completion.attempt, "job attempt failed; retry scheduled");
            }
            Some(status) if status.is_terminal() => {
                let took = Duration::from_micros(now.saturating_sub(f.started_at).max(0) as u64);
                ctx.metrics.job_finished(f.action, status, Some(took));
                tracing::info!(job_id = %id, action = %f.action, target = %f.target, status = %status, duration_ms = took.as_millis() as u64, "job finished");
            }
            Some(_) => {}
            None => {
                tracing::warn!(job_id = %id, action = %f.action, target = %f.target, attempt = f.completion.attempt, "result discarded: the attempt is no longer current (lease lost)")
            }
        }
    }
}

/// Extends this process's leases, stops the attempts whose lease is gone, and picks up cancels
/// requested through other replicas.
///
/// A lease can be lost two ways, and an attempt that lost it must stop at once: with a real
/// runner, a job reported FAILED ("worker lost") by the replica that recovered it must not go on
/// restarting a service. (1) Locally: no heartbeat succeeded for a whole lease (this process was
/// paused, or cut off from the database), so another process may have recovered the job; this
/// needs no database and is checked first, before a new beat could hide the gap. (2) Remotely:
/// the heartbeat's answer no longer lists a job running here, because another process recovered
/// it. Attempts claimed after the beat was sent are not judged by it.
async fn heartbeat_loop(ctx: Arc<Ctx>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Keep heartbeating through the grace period: stop only at the hard stop.
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.hard_stop.cancelled() => return,
        }
        let sent = Instant::now();
        expire_overdue(&ctx, sent);
        // Always beat: rows stay RUNNING after their attempt ends until the completer has written
        // them, and those must keep their lease too.
        match ctx.store.heartbeat(ctx.owner, ctx.lease_us).await {
            Ok(held) => {
                if let Ok(mut last) = ctx.last_beat.lock() {
                    *last = Some(sent);
                }
                fence_local(&ctx, &held, sent);
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// The end of the lease of an attempt whose own lease started at `lease_from`: a lease lasts
/// from the later of its claim and the last successful heartbeat.
fn lease_end(ctx: &Ctx, lease_from: Instant) -> Instant {
    let last = ctx.last_beat.lock().ok().and_then(|l| *l);
    last.map_or(lease_from, |b| b.max(lease_from)) + ctx.lease
}

/// Stops every attempt whose lease ran out without a successful heartbeat.
fn expire_overdue(ctx: &Ctx, now: Instant) {
    let Ok(running) = ctx.running.lock() else { return };
    for attempt in running.values() {
        if now >= lease_end(ctx, attempt.lease_from) {
            attempt.expired.cancel();
        }
    }
}

/// Applies a heartbeat's answer: cancels requested elsewhere, and attempts taken over.
fn fence_local(ctx: &Ctx, held: &[store::Held], sent: Instant) {
    let held: HashMap<JobId, &store::Held> = held.iter().map(|h| (h.id, h)).collect();
    let Ok(running) = ctx.running.lock() else { return };
    for (id, attempt) in running.iter() {
        match held.get(id) {
            Some(h) if h.attempt == attempt.attempt && h.cancel_requested => attempt.cancel.cancel(),
            Some(h) if h.attempt == attempt.attempt => {}
            _ if attempt.claimed_at < sent => attempt.taken_over.cancel(),
            _ => {}
        }
    }
}

fn cancel_local(ctx: &Ctx, ids: &[JobId]) {
    if let Ok(running) = ctx.running.lock() {
        for id in ids {
            if let Some(a) = running.get(id) {
                a.cancel.cancel();
            }
        }
    }
}

/// The clock of a periodic background loop: the first tick at once, then every period (a late
/// tick delays the next rather than bunching), until `stop`.
struct Ticker {
    tick: tokio::time::Interval,
    stop: CancellationToken,
}

impl Ticker {
    fn new(every: Duration, stop: CancellationToken) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick, stop }
    }

    /// Waits for the next tick; false once the loop must stop.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            _ = self.stop.cancelled() => false,
        }
    }
}

/// Settles jobs whose lease expired.
async fn recovery_loop(ctx: Arc<Ctx>, every: Duration, stop: CancellationToken) {
    let mut ticker = Ticker::new(every, stop.clone());
    while ticker.next().await {
        if let Err(e) = recover(&ctx, false).await {
            tracing::warn!(error = %e, "lease recovery failed");
        }
    }
}

/// The lost-job policy: `fail` marks the job FAILED ("worker lost"); `retry` puts it back to
/// PENDING while attempts remain. A requested cancel wins over both.
async fn recover(ctx: &Ctx, all_running: bool) -> Result<(), store::Error> {
    loop {
        let lost = ctx.store.expired_leases(all_running, MAX_COMPLETE).await?;
        if lost.is_empty() {
            return Ok(());
        }
        let now = store::now_us();
        let batch: Vec<Finished> = lost
            .iter()
            .map(|l| {
                let policy = ctx.policies.get(l.action);
                let why = format!("worker lost: lease expired during attempt {}", l.attempt);
                let outcome = if l.cancel_requested {
                    Outcome::Canceled
                } else {
                    lost_outcome(policy.on_lost, policy.max_attempts, l.attempt, why, now)
                };
                tracing::warn!(job_id = %l.id, action = %l.action, target = %l.target, attempt = l.attempt, "recovering job from an expired lease");
                ctx.metrics.lease_lost(l.action);
                Finished { completion: Completion { id: l.id, attempt: l.attempt, outcome }, action: l.action, target: l.target.clone(), started_at: l.started_at.unwrap_or(now) }
            })
            .collect();
        let n = batch.len();
        write_completions(ctx, batch).await;
        if n < MAX_COMPLETE {
            return Ok(());
        }
    }
}

fn lost_outcome(on_lost: OnLost, max_attempts: u32, attempt: i32, why: String, now: i64) -> Outcome {
    match on_lost {
        OnLost::Retry if (attempt as u32) < max_attempts => Outcome::Retry { error: why, run_at: now },
        _ => Outcome::Failed(why),
    }
}

/// Most jobs deleted in one retention transaction: short enough that writers queued behind it
/// (one writer connection on SQLite) wait milliseconds, not seconds.
const PURGE_BATCH: usize = 500;

/// Deletes finished jobs older than `keep`, with their events, in small batches with a pause
/// between them. Runs at start-up, then every `every`.
async fn retention_loop(ctx: Arc<Ctx>, keep: Duration, every: Duration, stop: CancellationToken) {
    let mut ticker = Ticker::new(every, stop.clone());
    while ticker.next().await {
        let cutoff = store::now_us().saturating_sub(keep.as_micros() as i64);
        let mut total = 0u64;
        loop {
            match ctx.store.purge_finished(cutoff, PURGE_BATCH).await {
                Ok(n) => {
                    ctx.metrics.jobs_deleted(n);
                    total += n;
                    if (n as usize) < PURGE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; retrying at the next one");
                    break;
                }
            }
            // Let queued writers in between batches.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop.cancelled() => return,
            }
        }
        if total > 0 {
            tracing::info!(
                deleted = total,
                older_than_days = keep.as_secs_f64() / 86_400.0,
                "retention: finished jobs deleted"
            );
        }
    }
}

/// Reads the global queue figures into the gauges every second, and the database size every
/// tenth second.
async fn sample_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut ticker = Ticker::new(Duration::from_secs(1), stop);
    let mut n = 0u64;
    while ticker.next().await {
        if n.is_multiple_of(10) {
            match ctx.store.database_size().await {
                Ok(bytes) => ctx.metrics.database_size(bytes),
                Err(e) => tracing::debug!(error = %e, "database size sampling failed"),
            }
        }
        n += 1;
        match ctx.store.queue_stats().await {
            Ok(s) => {
                let age_us = s.oldest_run_at.map(|t| store::now_us().saturating_sub(t).max(0)).unwrap_or(0);
                ctx.metrics.queue_sampled(s.pending, Duration::from_micros(age_us as u64));
            }
            Err(e) => tracing::debug!(error = %e, "queue sampling failed"),
        }
    }
}

/// PostgreSQL LISTEN: wakes the dispatcher when any replica enqueues, and cancels local
/// attempts when any replica asks. Polling covers the gaps while the connection is down.
async fn listen_loop(ctx: Arc<Ctx>, pool: sqlx::PgPool, stop: CancellationToken) {
    let wake = ctx.store.enqueued_signal();
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection failed; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen_all([store::JOBS_CHANNEL, store::CANCEL_CHANNEL]).await {
            tracing::debug!(error = %e, "LISTEN failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything sent while we were not listening is picked up by one claim now.
        wake.notify_one();
        loop {
            let msg = tokio::select! {
                m = listener.try_recv() => m,
                _ = stop.cancelled() => return,
            };
            match msg {
                Ok(Some(n)) if n.channel() == store::CANCEL_CHANNEL => {
                    if let Ok(id) = n.payload().parse::<Uuid>() {
                        cancel_local(&ctx, &[JobId(id)]);
                    }
                }
                Ok(Some(_)) => wake.notify_one(),
                // Connection lost: reconnect (try_recv would resume silently otherwise).
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// Delay before the next attempt: `backoff * 2^(attempt-1)`, capped at 5 minutes, with "equal
/// jitter" (half fixed, half random) so retries of many jobs do not arrive in lockstep.
fn retry_delay(backoff: Duration, attempt: i32) -> Duration {
    let exp = backoff.saturating_mul(1u32 << (attempt.clamp(1, 20) - 1) as u32).min(Duration::from_secs(300));
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        for _ in 0..50 {
            let d1 = retry_delay(b, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= b);
            let d3 = retry_delay(b, 3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(retry_delay(b, 30) <= Duration::from_secs(300));
        }
    }

    #[test]
    fn lost_job_policy_is_honoured() {
        assert!(matches!(lost_outcome(OnLost::Fail, 3, 1, "x".into(), 0), Outcome::Failed(_)));
        assert!(matches!(lost_outcome(OnLost::Retry, 3, 1, "x".into(), 0), Outcome::Retry { .. }));
        assert!(matches!(lost_outcome(OnLost::Retry, 3, 3, "x".into(), 0), Outcome::Failed(_)));
    }
}
