//! The dispatcher: claims batches of runnable jobs into the bounded worker pool.

use std::sync::Arc;
use std::time::Duration;

use std::cmp::Reverse;
use std::collections::VecDeque;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Ctx, worker};
use crate::store::{ClaimedBatch, ClaimedJob, now_us};

/// Most jobs claimed in one statement.
const MAX_CLAIM: usize = 256;

/// Claims work whenever there are free workers and something may be runnable. A wake-up is
/// never lost: the `Notified` futures are enabled before the claim query runs.
///
/// A claim that finds fewer jobs than free slots proves the queue empty, and until a signal
/// says otherwise (an enqueue, LISTEN, a retry coming due, the poll) none is sent. Claiming
/// again at every freed slot instead cost an empty round trip per finished job (through
/// SQLite's one writer connection), measured as lost end-to-end throughput.
pub(super) async fn dispatch_loop(
    ctx: Arc<Ctx>,
    mut resumes: mpsc::UnboundedReceiver<(ClaimedJob, Instant)>,
    mut claimed: mpsc::UnboundedReceiver<ClaimedBatch>,
    permits: Arc<Semaphore>,
    poll: Duration,
    stop: CancellationToken,
) {
    let enqueued = ctx.store.enqueued_signal();
    // Jobs taken over to resume their remote run, waiting for a slot; they go first.
    let mut waiting: VecDeque<(ClaimedJob, Instant)> = VecDeque::new();
    let mut workers = JoinSet::new();
    let mut backoff = Duration::from_millis(50);
    let pool = permits.available_permits();
    // While a backlog is waiting, claim in batches of at least a quarter of the pool: claiming
    // one job per freed slot would cost one transaction (an fsync on SQLite) per job.
    let batch_min = (pool / 4).clamp(1, MAX_CLAIM);
    let mut backlog = false;
    // Whether a job may be runnable that no claim has looked for yet.
    let mut runnable = true;
    loop {
        let woke = enqueued.notified();
        let freed = ctx.capacity.notified();
        let rescheduled = ctx.rescheduled.notified();
        tokio::pin!(woke, freed, rescheduled);
        woke.as_mut().enable();
        freed.as_mut().enable();
        rescheduled.as_mut().enable();

        while let Ok(r) = resumes.try_recv() {
            waiting.push_back(r);
        }
        while let Ok(b) = claimed.try_recv() {
            start_claimed(&ctx, &mut workers, b);
        }
        while !waiting.is_empty() && !stop.is_cancelled() {
            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
            let Some((job, lease_from)) = waiting.pop_front() else { break };
            workers.spawn(worker::run(ctx.clone(), job, permit, lease_from, Instant::now()));
        }
        let (due, next_retry) = due_retries(&ctx, now_us());
        runnable |= due;
        let free = permits.available_permits().min(MAX_CLAIM);
        let worth_it = runnable && free > 0 && (!backlog || free >= batch_min || free == pool);
        // The slots are reserved before the claim: the store's writer may claim for free
        // workers too (`Store::claim_for_workers`), and every claimed job must have a worker.
        let reserved = if worth_it && !stop.is_cancelled() {
            permits.clone().try_acquire_many_owned(free as u32).ok()
        } else {
            None
        };
        if let Some(mut reserved) = reserved {
            // The lease starts before the claim is sent (the database computes it from its own
            // clock at about that time): the local deadline must never end later than the real one.
            let lease_from = Instant::now();
            match ctx.store.claim_batch(ctx.owner, free, ctx.lease_us, &ctx.per_target).await {
                Ok(jobs) => {
                    let claimed_at = Instant::now();
                    backoff = Duration::from_millis(50);
                    backlog = jobs.len() == free;
                    runnable = backlog;
                    for job in jobs {
                        // Cannot fail: no more jobs were claimed than slots reserved.
                        let Some(permit) = reserved.split(1) else { break };
                        workers.spawn(worker::run(ctx.clone(), job, permit, lease_from, claimed_at));
                    }
                    // Slots left over go back when `reserved` drops.
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
        // Never once stopping: no claim runs then, so `backlog` would stay set and this loop
        // would spin without awaiting anything (seen as a hung shutdown in a test).
        if backlog && !stop.is_cancelled() && permits.available_permits() >= batch_min {
            continue;
        }
        if stop.is_cancelled() {
            break;
        }
        // The poll is the safety net (a lost LISTEN, another replica's retries); a retry
        // scheduled here is claimed when it comes due.
        let nap =
            next_retry.map_or(poll, |at| poll.min(Duration::from_micros(at.saturating_sub(now_us()).max(0) as u64)));
        tokio::select! {
            _ = &mut woke => runnable = true,
            _ = &mut freed, if runnable && permits.available_permits() > 0 => {}
            _ = &mut rescheduled => {}
            _ = tokio::time::sleep(nap) => runnable = true,
            _ = stop.cancelled() => {}
            Some(_) = workers.join_next() => {}
            Some(r) = resumes.recv() => waiting.push_back(r),
            Some(b) = claimed.recv() => start_claimed(&ctx, &mut workers, b),
        }
    }
    // Jobs the writer claimed just before claiming stopped still run.
    while let Ok(b) = claimed.try_recv() {
        start_claimed(&ctx, &mut workers, b);
    }
    // Draining: wait for every attempt (the grace timer interrupts stragglers).
    while workers.join_next().await.is_some() {}
}

/// Starts a worker for each job the store's writer claimed for this process; their slots were
/// reserved before the claim.
fn start_claimed(ctx: &Arc<Ctx>, workers: &mut JoinSet<()>, batch: ClaimedBatch) {
    let claimed_at = Instant::now();
    let mut permit = batch.permit;
    for job in batch.jobs {
        let Some(one) = permit.split(1) else { break };
        workers.spawn(worker::run(ctx.clone(), job, one, batch.lease_from, claimed_at));
    }
}

/// Notes the times retries written here become runnable and wakes the dispatcher to plan for
/// them.
pub(super) fn schedule_retries(ctx: &Ctx, run_at: Vec<i64>) {
    if run_at.is_empty() {
        return;
    }
    if let Ok(mut heap) = ctx.retries.lock() {
        heap.extend(run_at.into_iter().map(Reverse));
    }
    ctx.rescheduled.notify_one();
}

/// Whether a retry scheduled here has come due (they are forgotten once due: the claim that
/// follows finds them, or another replica did), and when the next one does.
fn due_retries(ctx: &Ctx, now: i64) -> (bool, Option<i64>) {
    let Ok(mut heap) = ctx.retries.lock() else { return (false, None) };
    let mut due = false;
    while heap.peek().is_some_and(|Reverse(at)| *at <= now) {
        heap.pop();
        due = true;
    }
    (due, heap.peek().map(|Reverse(at)| *at))
}
