//! One attempt of one job: timeout, cancellation, panic boundary, and the retry decision. The
//! result goes to the batched completer; the worker slot is freed as soon as it is sent.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::lease::lease_end;
use super::policy::{ActionPolicy, attempt_failed, lost_outcome};
use super::runners::{RunError, RunRequest};
use super::{Ctx, Finished};
use crate::store::{ClaimedJob, Completion, Outcome, now_us};

/// An attempt running in this process, as the executor's other tasks see it.
pub(super) struct Attempt {
    /// The attempt number (the lease's fencing token).
    pub attempt: i32,
    /// Fired by a cancel request (API, or another replica through the heartbeat or LISTEN).
    pub cancel: CancellationToken,
    /// Fired by the heartbeat when the database no longer lists this attempt as ours.
    pub taken_over: CancellationToken,
    /// Fired by the heartbeat when the lease ran out without a successful heartbeat.
    pub expired: CancellationToken,
    /// When the claim returned: heartbeats sent before it do not judge this attempt.
    pub claimed_at: Instant,
    /// When the claim was sent: the lease runs from here.
    pub lease_from: Instant,
}

pub(super) async fn run(
    ctx: Arc<Ctx>,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    lease_from: Instant,
    claimed_at: Instant,
) {
    let span = tracing::debug_span!("job", job_id = %job.id, action = %job.action, target = %job.target, attempt = job.attempt);
    run_attempt(&ctx, job, lease_from, claimed_at).instrument(span).await;
    drop(permit);
    ctx.capacity.notify_one();
}

/// Resolves when the attempt's lease has ended locally: no heartbeat succeeded for a whole lease
/// since it started. Backs up the heartbeat loop's own check, for when that loop is stuck in a
/// slow database call.
async fn lease_ended(ctx: &Ctx, lease_from: Instant) {
    loop {
        let end = lease_end(ctx, lease_from);
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep_until(end).await;
    }
}

async fn run_attempt(ctx: &Ctx, job: ClaimedJob, lease_from: Instant, claimed_at: Instant) {
    let token = CancellationToken::new();
    let (taken_over, expired) = (CancellationToken::new(), CancellationToken::new());
    if let Ok(mut running) = ctx.running.lock() {
        running.insert(
            job.id,
            Attempt {
                attempt: job.attempt,
                cancel: token.clone(),
                taken_over: taken_over.clone(),
                expired: expired.clone(),
                claimed_at,
                lease_from,
            },
        );
    }
    let queue_wait =
        job.first_attempt.then(|| Duration::from_micros(job.started_at.saturating_sub(job.created_at).max(0) as u64));
    ctx.metrics.job_started(job.action, queue_wait);
    // Tests count executions with this line: it is written once per attempt that runs.
    tracing::info!(job_id = %job.id, action = %job.action, target = %job.target, attempt = job.attempt, "job attempt started");

    let policy = ctx.catalog.policy(job.action);
    let request = RunRequest {
        action: job.action,
        target: job.target.clone(),
        parameters: job.parameters.clone(),
        attempt: job.attempt,
    };
    let runner = ctx.catalog.get(job.action).map(|e| e.runner.clone());
    // A job stored under an action that has since left the catalog fails once (its policy
    // allows one attempt): there is nothing to run it with.
    let run = async {
        match &runner {
            Some(r) => r.run(&request).await,
            None => Err(RunError(format!("action {} is not in the catalog", job.action))),
        }
    };
    let run = AssertUnwindSafe(run).catch_unwind();
    let outcome = tokio::select! {
        biased;
        _ = token.cancelled() => {
            tracing::info!(job_id = %job.id, action = %job.action, target = %job.target, "job attempt canceled on request");
            Outcome::Canceled
        }
        _ = ctx.hard_stop.cancelled() => {
            // The shutdown grace period ran out. The attempt is cut short as if its worker had
            // died, so the action's lost-job policy decides what happens next.
            tracing::warn!(job_id = %job.id, action = %job.action, target = %job.target, "job attempt interrupted by shutdown");
            lost_outcome(policy.on_lost, policy.max_attempts, job.attempt, "worker lost: interrupted by shutdown".into(), now_us())
        }
        _ = taken_over.cancelled() => lease_lost(&job, &policy, "lease taken over: another process recovered the job"),
        _ = async { tokio::select! { _ = expired.cancelled() => {}, _ = lease_ended(ctx, lease_from) => {} } } => {
            lease_lost(&job, &policy, "lease expired without a successful heartbeat (process paused or cut off from the database)")
        }
        r = tokio::time::timeout(policy.timeout, run) => match r {
            Ok(Ok(Ok(result))) => Outcome::Success(result),
            Ok(Ok(Err(e))) => attempt_failed(&policy, job.attempt, e.to_string()),
            Ok(Err(_panic)) => attempt_failed(&policy, job.attempt, "runner panicked".into()),
            Err(_) => attempt_failed(&policy, job.attempt, format!("timed out after {} ms", policy.timeout.as_millis())),
        },
    };
    let finished = Finished {
        completion: Completion { id: job.id, attempt: job.attempt, outcome },
        action: job.action,
        target: job.target.clone(),
        started_at: job.started_at,
    };
    if ctx.completions.send(finished).is_err() {
        tracing::error!("completer is gone; lease recovery will settle this job");
    }
    if let Ok(mut running) = ctx.running.lock() {
        running.remove(&job.id);
    }
    ctx.metrics.attempt_ended();
}

/// The attempt no longer holds its job: stop it and settle it as its worker had died. When
/// another process took the job over, the completion is refused by the fence and changes
/// nothing; when nobody has yet, it settles the job by the action's lost-job policy.
fn lease_lost(job: &ClaimedJob, policy: &ActionPolicy, reason: &'static str) -> Outcome {
    tracing::warn!(job_id = %job.id, action = %job.action, target = %job.target, attempt = job.attempt, reason, "job attempt stopped: lease lost");
    let why = format!("worker lost: {reason}, during attempt {}", job.attempt);
    lost_outcome(policy.on_lost, policy.max_attempts, job.attempt, why, now_us())
}
