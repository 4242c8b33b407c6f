//! The completer: writes what attempts ended with, in batches, and records their metrics.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Ctx, Finished, MAX_COMPLETE};
use crate::jobs::JobStatus;
use crate::store::{self, Completion, Outcome};

/// Batches being written at once. With four in flight, results were split into many small
/// batches, each paying its own statement (and, on PostgreSQL, its planning) and commit; one at a
/// time lets results pile up into larger batches while a commit is under way. Measured
/// interleaved (runs X in `bench/RESULTS.txt`), 4 -> 1: end-to-end +13 % on PostgreSQL and +16 %
/// on SQLite, the `http` runner +12 % / +4 %, the drain +7 % / +13 %. The batches hold disjoint
/// attempts, so more than one could run without conflict.
const IN_FLIGHT: usize = 1;

/// Writes completions in batches: one statement or transaction for everything that finished
/// meanwhile, up to `IN_FLIGHT` batches at a time.
pub(super) async fn complete_loop(ctx: Arc<Ctx>, mut rx: mpsc::UnboundedReceiver<Finished>) {
    let mut writing = tokio::task::JoinSet::new();
    loop {
        let first = tokio::select! {
            biased;
            f = rx.recv(), if writing.len() < IN_FLIGHT => f,
            Some(_) = writing.join_next(), if !writing.is_empty() => continue,
            // All workers are gone, shutdown is complete and every result is written (attempts
            // stay in `running` until then): drain what is left, then stop. A worker that hands
            // its job over lists itself off without sending anything, so nothing would wake this
            // loop when that empties `running`: once stopping, look again every few milliseconds.
            _ = ctx.hard_stop.cancelled() => {
                if rx.is_empty() && ctx.running.lock().map(|r| r.is_empty()).unwrap_or(true) {
                    None
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = Vec::with_capacity(MAX_COMPLETE);
        crate::batch::gather(first, &mut rx, MAX_COMPLETE, &mut batch);
        let ctx = ctx.clone();
        writing.spawn(async move { write_completions(&ctx, batch).await });
    }
    while writing.join_next().await.is_some() {}
    let mut batch = Vec::new();
    while let Ok(f) = rx.try_recv() {
        batch.push(f);
    }
    if !batch.is_empty() {
        write_completions(&ctx, batch).await;
    }
}

pub(super) async fn write_completions(ctx: &Ctx, batch: Vec<Finished>) {
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
                    // No longer listed, the heartbeat stops renewing their leases.
                    forget_written(ctx, &batch);
                    return;
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    };
    forget_written(ctx, &batch);
    // Receivers: cancels waiting in `Executor::cancel`.
    ctx.settled.notify_waiters();
    if !ctx.per_target.is_empty() {
        // A finished job may free its target's slot: the next job in its line can start now,
        // not at the next poll (receiver: the dispatcher).
        ctx.store.enqueued_signal().notify_one();
    }
    let now = store::now_us();
    let mut retries = Vec::new();
    for (f, status) in batch.iter().zip(statuses) {
        let id = f.completion.id;
        match status {
            Some(JobStatus::Pending) => {
                if let Outcome::Retry { run_at, .. } = &f.completion.outcome {
                    retries.push(*run_at);
                }
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
    super::dispatch::schedule_retries(ctx, retries);
}

/// Unlists the workers' attempts whose results were handled (recovery's own results were never
/// listed here).
fn forget_written(ctx: &Ctx, batch: &[Finished]) {
    for f in batch.iter().filter(|f| f.completion.lost.is_none()) {
        super::worker::forget(ctx, f.completion.id, f.completion.attempt);
    }
}
