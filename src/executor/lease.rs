//! Leases: heartbeats (which also stop attempts whose lease is gone and pick up remote
//! cancels), recovery of jobs whose lease expired, and (PostgreSQL) LISTEN for wake-ups and
//! cancels from other replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::complete::write_completions;
use super::policy::lost_outcome;
use super::{Ctx, Finished, MAX_COMPLETE, Ticker};
use crate::jobs::JobId;
use crate::store::{self, Completion, Outcome};

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
///
/// The heartbeat renews every row the database lists for this process, and one may not be
/// running here: a claim that committed while its answer was lost (the connection broke at
/// COMMIT, as when PostgreSQL restarts), or results the completer gave up on. Renewed for ever,
/// such a job would stay RUNNING for ever; once one is seen on two beats in a row, its lease is
/// released and recovery settles it by its action's lost-job policy.
pub(super) async fn heartbeat_loop(ctx: Arc<Ctx>, every: Duration) {
    let mut strangers: HashMap<JobId, i32> = HashMap::new();
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
                for (id, attempt) in still_strangers(&ctx, &held, &mut strangers) {
                    tracing::warn!(job_id = %id, attempt, "job held in the database but not running here (a claim whose answer was lost); releasing its lease for recovery");
                    if let Err(e) = ctx.store.release_lease(ctx.owner, id, attempt).await {
                        tracing::warn!(job_id = %id, error = %e, "releasing the lease failed; retried at the next beat");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// The rows a heartbeat renewed for attempts not running here, and of those, the ones the
/// previous beat saw too (a fresh claim is listed within moments of its answer, long before the
/// next beat).
fn still_strangers(ctx: &Ctx, held: &[store::Held], previous: &mut HashMap<JobId, i32>) -> Vec<(JobId, i32)> {
    let Ok(running) = ctx.running.lock() else { return Vec::new() };
    let now: HashMap<JobId, i32> = held
        .iter()
        .filter(|h| running.get(&h.id).is_none_or(|a| a.attempt != h.attempt))
        .map(|h| (h.id, h.attempt))
        .collect();
    let stale = now.iter().filter(|(id, a)| previous.get(id) == Some(a)).map(|(id, a)| (*id, *a)).collect();
    *previous = now;
    stale
}

/// The end of the lease of an attempt whose own lease started at `lease_from`: a lease lasts
/// from the later of its claim and the last successful heartbeat.
pub(super) fn lease_end(ctx: &Ctx, lease_from: Instant) -> Instant {
    end_of_lease(last_beat(ctx), lease_from, ctx.lease)
}

fn last_beat(ctx: &Ctx) -> Option<Instant> {
    ctx.last_beat.lock().ok().and_then(|l| *l)
}

fn end_of_lease(last_beat: Option<Instant>, lease_from: Instant, lease: Duration) -> Instant {
    last_beat.map_or(lease_from, |b| b.max(lease_from)) + lease
}

/// Stops every attempt whose lease ran out without a successful heartbeat.
pub(super) fn expire_overdue(ctx: &Ctx, now: Instant) {
    let last = last_beat(ctx);
    let Ok(running) = ctx.running.lock() else { return };
    for attempt in running.values() {
        if now >= end_of_lease(last, attempt.lease_from, ctx.lease) {
            attempt.expired.cancel();
        }
    }
}

/// Applies a heartbeat's answer: cancels requested elsewhere, and attempts taken over.
pub(super) fn fence_local(ctx: &Ctx, held: &[store::Held], sent: Instant) {
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

pub(super) fn cancel_local(ctx: &Ctx, ids: &[JobId]) {
    if let Ok(running) = ctx.running.lock() {
        for id in ids {
            if let Some(a) = running.get(id) {
                a.cancel.cancel();
            }
        }
    }
}

/// Settles jobs whose lease expired.
pub(super) async fn recovery_loop(ctx: Arc<Ctx>, every: Duration, stop: CancellationToken) {
    let mut ticker = Ticker::new(every, stop.clone());
    while ticker.next().await {
        if let Err(e) = recover(&ctx, false).await {
            tracing::warn!(error = %e, "lease recovery failed");
        }
    }
}

/// The lost-job policy: `fail` marks the job FAILED ("worker lost"); `retry` puts it back to
/// PENDING while attempts remain. A requested cancel wins over both.
pub(super) async fn recover(ctx: &Ctx, all_running: bool) -> Result<(), store::Error> {
    // Jobs resumed by this pass stay RUNNING, so a later round of an `all_running` pass would
    // see them again.
    let mut resumed = std::collections::HashSet::new();
    loop {
        let lost = ctx.store.expired_leases(all_running, MAX_COMPLETE).await?;
        let lost: Vec<_> = lost.into_iter().filter(|l| !resumed.contains(&l.id)).collect();
        if lost.is_empty() {
            return Ok(());
        }
        let now = store::now_us();
        let (resumable, lost): (Vec<_>, Vec<_>) = lost.into_iter().partition(|l| l.resumable);
        let n_resumable = resumable.len();
        for l in resumable {
            resume(ctx, &l, all_running).await?;
            resumed.insert(l.id);
        }
        let batch: Vec<Finished> = lost
            .iter()
            .map(|l| {
                let policy = ctx.catalog.policy(l.action);
                let why = format!("worker lost: lease expired during attempt {}", l.attempt);
                let outcome = if l.cancel_requested {
                    Outcome::Canceled
                } else {
                    lost_outcome(policy.on_lost, policy.max_attempts, l.attempt, why, now)
                };
                tracing::warn!(job_id = %l.id, action = %l.action, target = %l.target, attempt = l.attempt, "recovering job from an expired lease");
                ctx.metrics.lease_lost(l.action);
                Finished { completion: Completion { id: l.id, attempt: l.attempt, outcome, lost: Some(ctx.owner) }, action: l.action, target: l.target.clone(), started_at: l.started_at.unwrap_or(now) }
            })
            .collect();
        let n = batch.len() + n_resumable;
        write_completions(ctx, batch).await;
        if n < MAX_COMPLETE {
            return Ok(());
        }
    }
}

/// Takes over a lost job whose remote run is recorded, whatever its `on_lost`: the run goes on
/// in its backend, so following it to its end is the truth, and launching it again (or failing
/// it blind) is not. Another process may take it first; then nothing happens here.
async fn resume(ctx: &Ctx, lost: &store::LostJob, all_running: bool) -> Result<(), store::Error> {
    let lease_from = Instant::now();
    ctx.metrics.lease_lost(lost.action);
    if let Some(job) = ctx.store.resume_lease(ctx.owner, lost.id, lost.attempt, ctx.lease_us, all_running).await? {
        tracing::warn!(job_id = %lost.id, action = %lost.action, target = %lost.target, attempt = lost.attempt, "recovering job from an expired lease: resuming its recorded remote run");
        // Receiver: the dispatcher, which starts it when a worker slot is free.
        if ctx.resumes.send((job, lease_from)).is_err() {
            tracing::warn!(job_id = %lost.id, "dispatcher stopped; the job is resumed after its lease expires");
        }
    }
    Ok(())
}

/// PostgreSQL LISTEN: wakes the dispatcher when any replica enqueues, and cancels local
/// attempts when any replica asks. Polling covers the gaps while the connection is down.
///
/// Each new connection notifies itself once through the pool, as another replica would: a
/// transaction-mode pooler (PgBouncer, RDS Proxy) accepts LISTEN but never delivers, and then
/// only polling finds other replicas' jobs and cancels. That is worth one warning.
pub(super) async fn listen_loop(ctx: Arc<Ctx>, pool: sqlx::PgPool, poll: Duration, stop: CancellationToken) {
    let wake = ctx.store.enqueued_signal();
    let probe_id = ctx.owner.to_string();
    let mut warned = false;
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
        if let Err(e) = listener.listen_all([store::JOBS_CHANNEL, store::CANCEL_CHANNEL, store::PROBE_CHANNEL]).await {
            tracing::debug!(error = %e, "LISTEN failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything sent while we were not listening is picked up by one claim now.
        wake.notify_one();
        let mut probe_deadline = match sqlx::query("SELECT pg_notify($1, $2)")
            .bind(store::PROBE_CHANNEL)
            .bind(&probe_id)
            .execute(&pool)
            .await
        {
            Ok(_) => Some(tokio::time::Instant::now() + PROBE_WAIT),
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN probe not sent");
                None
            }
        };
        loop {
            let deadline = probe_deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let msg = tokio::select! {
                m = listener.try_recv() => m,
                _ = tokio::time::sleep_until(deadline), if probe_deadline.is_some() => {
                    probe_deadline = None;
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            poll_interval_ms = poll.as_millis() as u64,
                            "PostgreSQL notifications do not reach this replica (a transaction-mode pooler such as PgBouncer or RDS Proxy?): other replicas' jobs and cancels are found by polling, up to poll_interval_ms late; connect to PostgreSQL directly or through a session-mode pooler"
                        );
                    }
                    continue;
                }
                _ = stop.cancelled() => return,
            };
            match msg {
                Ok(Some(n)) if n.channel() == store::CANCEL_CHANNEL => {
                    if let Ok(id) = n.payload().parse::<Uuid>() {
                        cancel_local(&ctx, &[JobId(id)]);
                    }
                }
                Ok(Some(n)) if n.channel() == store::PROBE_CHANNEL => {
                    if n.payload() == probe_id && probe_deadline.take().is_some() {
                        tracing::debug!("LISTEN/NOTIFY verified");
                    }
                }
                Ok(Some(_)) => wake.notify_one(),
                // Connection lost: reconnect (try_recv would resume silently otherwise).
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// How long a replica waits for its own probe notification before it warns.
const PROBE_WAIT: Duration = Duration::from_secs(5);
