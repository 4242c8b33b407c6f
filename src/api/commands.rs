//! The use cases behind the write operations, one function each: everything that happens when a
//! job is created or canceled (validation against the catalog, the right, the store or executor
//! call, the audit line, the metric), whatever the transport. Handlers only parse HTTP and map
//! the answer.

use std::sync::Arc;
use std::time::Duration;

use super::auth::{Need, require};
use super::jobs::visible_job;
use super::model::CreateJobIn;
use super::problem::Problem;
use crate::auth::Identity;
use crate::executor::{ActionCatalog, Executor};
use crate::jobs::{Job, JobId, NewJob};
use crate::live::webhooks::Webhooks;
use crate::store::{Enqueued, Store};
use crate::telemetry::Metrics;

/// What the write use cases touch; built once by `api::routes`.
#[derive(Clone)]
pub(super) struct Commands {
    pub(super) store: Store,
    /// Cancels go through the executor: it interrupts a running attempt.
    pub(super) executor: Arc<Executor>,
    pub(super) catalog: ActionCatalog,
    pub(super) metrics: Arc<Metrics>,
    /// Callback URL checks.
    pub(super) webhooks: Webhooks,
}

/// One audit line per create and cancel: who, what, which job, the outcome, the request (the
/// timestamp is the line's own).
struct AuditEvent<'a> {
    /// `job.create` or `job.cancel`.
    event: &'static str,
    identity: &'a str,
    job_id: Option<&'a str>,
    action: &'a str,
    target: &'a str,
    request_id: &'a str,
}

impl AuditEvent<'_> {
    fn record(&self, outcome: &str) {
        tracing::info!(
            audit = true,
            event = self.event,
            identity = self.identity,
            job_id = self.job_id.unwrap_or(""),
            action = self.action,
            target = self.target,
            outcome,
            request_id = self.request_id,
            "audit"
        );
    }
}

/// Creates a job (or replays the one an idempotency key names): checks the action against the
/// catalog and the token's right, validates, stores, counts and audits. Every refusal is audited.
// A Problem is built only when a request is refused; boxing it would buy nothing.
impl Commands {
    #[allow(clippy::result_large_err)]
    pub(super) async fn create_job(
        &self,
        identity: &Identity,
        request_id: &str,
        req: CreateJobIn,
        key: Option<String>,
        traceparent: Option<&str>,
    ) -> Result<Enqueued, Problem> {
        // Bounded copies for the audit line: the request is the client's.
        let (action_name, target) =
            (req.action.chars().take(64).collect::<String>(), req.target.0.chars().take(253).collect::<String>());
        let refused = |p: Problem| {
            AuditEvent {
                event: "job.create",
                identity: &identity.name,
                job_id: None,
                action: &action_name,
                target: &target,
                request_id,
            }
            .record(&format!("refused {}", p.status));
            p
        };
        let action = self.catalog.resolve(&req.action).map_err(|e| refused(e.into()))?;
        let mut job =
            NewJob::parse(action, &req.target.0, &req.requested_by, req.parameters.map(|m| m.into_iter().collect()))
                .map_err(|e| refused(e.into()))?
                .submitted_by(&identity.name);
        require(identity, Need::Create(action), "jobs.create", request_id).map_err(refused)?;
        // The action's own rules (target allowlist, parameters schema, what its templates need),
        // checked after the right so a caller without it learns none of them.
        if let Some(entry) = self.catalog.get(action) {
            entry.admit(&job.target, &job.parameters).map_err(|e| refused(e.into()))?;
        }
        // The job's own callback, or its action's default (checked at start-up already).
        job.callback_url =
            match req.callback_url {
                Some(url) => Some(self.webhooks.check_url(&url).map_err(|reason| {
                    refused(crate::jobs::Error::Validation { field: "callback_url", reason }.into())
                })?),
                None => self.catalog.get(action).and_then(|e| e.callback_url.clone()),
            };
        // The job keeps the enqueue span's context (or the caller's, when spans are not exported):
        // its attempts continue that trace.
        let span = tracing::debug_span!("enqueue", action = %action);
        job.traceparent = span
            .in_scope(crate::telemetry::trace::current)
            .or_else(|| traceparent.and_then(crate::telemetry::trace::valid).map(str::to_owned));
        let out = tracing::Instrument::instrument(self.store.enqueue(job, key, Some(request_id.to_owned())), span)
            .await
            .map_err(|e| refused(e.into()))?;
        let id = out.id.to_string();
        let audit = AuditEvent {
            event: "job.create",
            identity: &identity.name,
            job_id: Some(&id),
            action: action.as_str(),
            target: &target,
            request_id,
        };
        if out.created {
            self.metrics.job_created(action);
            audit.record("accepted");
        } else {
            audit.record("idempotent replay");
        }
        Ok(out)
    }

    /// Cancels a job the token may see and cancel, waiting up to `wait` for a running one to stop,
    /// and audits it. Returns the job as it is then.
    #[allow(clippy::result_large_err)]
    pub(super) async fn cancel_job(
        &self,
        identity: &Identity,
        request_id: &str,
        id: JobId,
        wait: Duration,
    ) -> Result<Job, Problem> {
        let sid = id.to_string();
        let refused = |p: Problem| {
            AuditEvent {
                event: "job.cancel",
                identity: &identity.name,
                job_id: Some(&sid),
                action: "",
                target: "",
                request_id,
            }
            .record(&format!("refused {}", p.status));
            p
        };
        require(identity, Need::Cancel, "jobs.cancel", request_id).map_err(refused)?;
        visible_job(&self.store, identity, id).await.map_err(refused)?;
        let status = match self.executor.cancel(id, &identity.name, Some(request_id.to_owned()), wait).await {
            Ok(s) => s,
            Err(crate::store::Error::NotFound) => return Err(refused(Problem::job_not_found(id))),
            Err(e) => return Err(refused(e.into())),
        };
        let job = self.store.get(id).await?;
        AuditEvent {
            event: "job.cancel",
            identity: &identity.name,
            job_id: Some(&sid),
            action: job.action.as_str(),
            target: &job.target,
            request_id,
        }
        .record(status.as_str());
        Ok(job)
    }
}
