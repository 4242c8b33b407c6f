//! One attempt of one job: timeout, cancellation, panic boundary, and the retry decision. The
//! result goes to the batched completer; the worker slot is freed as soon as it is sent.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::lease::lease_end;
use super::policy::{ActionPolicy, attempt_failed, lost_outcome};
use super::runners::{BoxFuture, ErrorKind, Recorder, RunError, RunRequest, Runner};
use super::{Ctx, Finished};
use crate::jobs::External;
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
    // The attempt continues the trace of the request that created the job, on any replica.
    crate::telemetry::trace::set_parent(&span, job.traceparent.as_deref());
    run_attempt(&ctx, job, permit, lease_from, claimed_at).instrument(span).await;
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

async fn run_attempt(
    ctx: &Ctx,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    lease_from: Instant,
    claimed_at: Instant,
) {
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
    if job.cancel_requested {
        // A resumed job whose cancel arrived while nobody was following it.
        token.cancel();
    }
    let queue_wait =
        job.first_attempt.then(|| Duration::from_micros(job.started_at.saturating_sub(job.created_at).max(0) as u64));
    ctx.metrics.job_started(job.action, queue_wait);
    match &job.external {
        Some(e) => {
            tracing::info!(job_id = %job.id, action = %job.action, target = %job.target, attempt = job.attempt, system = %e.system, external_id = %e.id, url = %e.url, "job attempt resumed")
        }
        // Tests count executions with this line: it is written once per attempt that runs.
        None => {
            tracing::info!(job_id = %job.id, action = %job.action, target = %job.target, attempt = job.attempt, "job attempt started")
        }
    }

    let policy = ctx.catalog.policy(job.action);
    let request = RunRequest {
        job_id: job.id,
        action: job.action,
        target: job.target.clone(),
        requested_by: job.requested_by.clone(),
        parameters: job.parameters.clone(),
        attempt: job.attempt,
        external: job.external.clone(),
    };
    let recorder = AttemptRecorder { ctx, job: &job, recorded: Mutex::new(job.external.clone()) };
    let runner = ctx.catalog.get(job.action).map(|e| e.runner.clone());
    let ended = {
        // A job stored under an action that has since left the catalog fails: there is nothing
        // to run it with.
        let run = async {
            match &runner {
                Some(r) => r.run(&request, &recorder).await,
                None => Err(RunError::permanent(format!("action {} is not in the catalog", job.action))),
            }
        };
        let run = AssertUnwindSafe(run).catch_unwind();
        let remote = || recorder.external().is_some();
        tokio::select! {
            biased;
            _ = token.cancelled() => {
                tracing::info!(job_id = %job.id, action = %job.action, target = %job.target, "job attempt canceled on request");
                Ended::StopRemote(Outcome::Canceled)
            }
            _ = ctx.hard_stop.cancelled() => {
                if remote() {
                    // The remote run goes on without us; the next process resumes following it.
                    Ended::HandOver
                } else {
                    // The shutdown grace period ran out. The attempt is cut short as if its worker
                    // had died, so the action's lost-job policy decides what happens next.
                    tracing::warn!(job_id = %job.id, action = %job.action, target = %job.target, "job attempt interrupted by shutdown");
                    Ended::Settled(lost_outcome(policy.on_lost, policy.max_attempts, job.attempt, "worker lost: interrupted by shutdown".into(), now_us()))
                }
            }
            _ = taken_over.cancelled() => lease_lost(&job, &policy, remote(), "lease taken over: another process recovered the job"),
            _ = async { tokio::select! { _ = expired.cancelled() => {}, _ = lease_ended(ctx, lease_from) => {} } } => {
                lease_lost(&job, &policy, remote(), "lease expired without a successful heartbeat (process paused or cut off from the database)")
            }
            r = tokio::time::timeout(policy.timeout, run) => match r {
                Ok(Ok(Ok(result))) => Ended::Settled(Outcome::Success(result)),
                Ok(Ok(Err(e))) => Ended::Settled(failed(&policy, job.attempt, e)),
                Ok(Err(_panic)) => Ended::Settled(attempt_failed(&policy, job.attempt, "runner panicked".into(), None)),
                Err(_) => Ended::StopRemote(attempt_failed(&policy, job.attempt, format!("timed out after {} ms", policy.timeout.as_millis()), None)),
            },
        }
    };
    let outcome = match ended {
        Ended::Settled(o) => Some(o),
        Ended::StopRemote(o) => {
            if let (Some(r), Some(e)) = (&runner, recorder.external()) {
                stop_remote(r.as_ref(), &request, &e).await;
            }
            Some(o)
        }
        Ended::HandOver => {
            tracing::info!(job_id = %job.id, action = %job.action, target = %job.target, "job handed over at shutdown: its remote run goes on and the next process resumes following it");
            if let Err(e) = ctx.store.release_lease(ctx.owner, job.id, job.attempt).await {
                tracing::warn!(job_id = %job.id, error = %e, "releasing the lease failed; the job is resumed once it expires");
            }
            None
        }
        Ended::Left => {
            // Our heartbeat would otherwise keep extending a lease nobody follows: give it up so
            // whoever recovers the job (this process included) resumes the run.
            release_until_done(ctx, &job);
            None
        }
    };
    // The slot is free before the result is sent: on SQLite the writer claims for free slots in
    // the transaction that writes this result. Receiver of the wake-up: the dispatcher.
    drop(permit);
    ctx.capacity.notify_one();
    // An attempt whose result is on its way stays listed until the completer has written it, so
    // the heartbeat keeps its lease and does not take its row for a stranger.
    let mut handed_over = false;
    if let Some(outcome) = outcome {
        let finished = Finished {
            completion: Completion { id: job.id, attempt: job.attempt, outcome, lost: None },
            action: job.action,
            target: job.target.clone(),
            started_at: job.started_at,
        };
        // Receiver: the completer (`complete::complete_loop`).
        handed_over = ctx.completions.send(finished).is_ok();
        if !handed_over {
            tracing::error!("completer is gone; lease recovery will settle this job");
        }
    }
    if !handed_over {
        forget(ctx, job.id, job.attempt);
    }
    ctx.metrics.attempt_ended();
}

/// Takes an attempt off the list of those running here. Only that attempt: by the time its
/// result is written, the job may have been claimed again (a retry) and listed anew.
pub(super) fn forget(ctx: &Ctx, id: crate::jobs::JobId, attempt: i32) {
    if let Ok(mut running) = ctx.running.lock()
        && running.get(&id).is_some_and(|a| a.attempt == attempt)
    {
        running.remove(&id);
    }
}

/// Releases this attempt's lease in the background, retrying while the database is away (the
/// fence makes a late release harmless: it touches only this attempt of this owner).
fn release_until_done(ctx: &Ctx, job: &ClaimedJob) {
    let (store, owner, id, attempt) = (ctx.store.clone(), ctx.owner, job.id, job.attempt);
    tokio::spawn(async move {
        for _ in 0..600 {
            match store.release_lease(owner, id, attempt).await {
                Ok(()) => return,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        tracing::error!(job_id = %id, "could not release the lease of a job left for resumption");
    });
}

/// How an attempt ended, before its result is written.
enum Ended {
    /// Write this outcome.
    Settled(Outcome),
    /// Stop the remote run (a cancel, a timeout), then write this outcome.
    StopRemote(Outcome),
    /// Shutdown: the remote run goes on; release the lease so it is resumed at once elsewhere.
    HandOver,
    /// The lease is gone and the remote run is recorded: whoever recovers the job resumes it;
    /// write nothing.
    Left,
}

/// What a failed run means: a permanent error ends the job; any other is retried while
/// attempts remain, not sooner than the backend asked.
fn failed(policy: &ActionPolicy, attempt: i32, e: RunError) -> Outcome {
    match e.kind {
        ErrorKind::Permanent => Outcome::Failed(e.message),
        ErrorKind::Retryable => attempt_failed(policy, attempt, e.message, e.retry_after),
    }
}

/// Asks the backend to stop a remote run, bounded: a backend that does not answer must not hold
/// the worker slot.
async fn stop_remote(runner: &dyn Runner, request: &RunRequest, external: &External) {
    match tokio::time::timeout(Duration::from_secs(15), runner.cancel(request, external)).await {
        Ok(Ok(())) => {
            tracing::info!(job_id = %request.job_id, system = %external.system, external_id = %external.id, "remote run canceled")
        }
        Ok(Err(e)) => {
            tracing::warn!(job_id = %request.job_id, system = %external.system, external_id = %external.id, error = %e, "canceling the remote run failed")
        }
        Err(_) => {
            tracing::warn!(job_id = %request.job_id, system = %external.system, external_id = %external.id, "canceling the remote run timed out")
        }
    }
}

/// Stores the remote run of an attempt as soon as its runner reports it.
struct AttemptRecorder<'a> {
    ctx: &'a Ctx,
    job: &'a ClaimedJob,
    /// The latest run reported (or resumed): what a cancel must stop.
    recorded: Mutex<Option<External>>,
}

impl AttemptRecorder<'_> {
    fn external(&self) -> Option<External> {
        self.recorded.lock().ok().and_then(|r| r.clone())
    }
}

impl Recorder for AttemptRecorder<'_> {
    fn record(&self, external: External) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(mut r) = self.recorded.lock() {
                *r = Some(external.clone());
            }
            let job = self.job;
            tracing::info!(job_id = %job.id, action = %job.action, target = %job.target, system = %external.system, external_id = %external.id, url = %external.url, "external run recorded");
            let mut delay = Duration::from_millis(100);
            for _ in 0..8 {
                match self.ctx.store.record_external(job.id, job.attempt, &external).await {
                    Ok(true) => return,
                    Ok(false) => {
                        tracing::warn!(job_id = %job.id, "external run not recorded: the attempt lost its lease");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(job_id = %job.id, error = %e, "recording the external run failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
            tracing::error!(job_id = %job.id, "could not record the external run: following it without crash safety");
        })
    }
}

/// The attempt no longer holds its job: stop it and settle it as its worker had died. When
/// another process took the job over, the completion is refused by the fence and changes
/// nothing; when nobody has yet, it settles the job by the action's lost-job policy.
/// A remote run that is recorded is left for whoever recovers the job, to resume.
fn lease_lost(job: &ClaimedJob, policy: &ActionPolicy, remote: bool, reason: &'static str) -> Ended {
    tracing::warn!(job_id = %job.id, action = %job.action, target = %job.target, attempt = job.attempt, reason, "job attempt stopped: lease lost");
    if remote {
        return Ended::Left;
    }
    let why = format!("worker lost: {reason}, during attempt {}", job.attempt);
    Ended::Settled(lost_outcome(policy.on_lost, policy.max_attempts, job.attempt, why, now_us()))
}
