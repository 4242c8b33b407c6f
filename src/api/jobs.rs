//! `JobsApi`: create, get, list and cancel jobs. Handlers parse, call the store or the
//! executor, and map the answer; nothing else.

use std::time::Duration;

use super::request_id::ReqId;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::ApiTags;
use super::auth::require;
use super::auth::{Caller, Need};
use super::commands::Commands;
use super::json::JsonOut;
use super::model::{CreateJobIn, JobAcceptedOut, JobEventOut, JobOut, JobPageOut, JobStatusOut};
use super::problem::{Problem, RETRY_AFTER_SECS};
use super::responses::problem_responses;
use super::strict::StrictJson;
use crate::auth::Identity;
use crate::jobs::{JobId, JobStatus};
use crate::live::EventHub;
use crate::store::JobFilter;
use crate::store::Store;

/// How long a cancel waits for a running job to stop before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// Longest long-poll `wait`.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The `/v1/jobs` operations, with what they use.
pub struct JobsApi {
    pub(super) commands: Commands,
    pub(super) store: Store,
    pub(super) catalog: crate::executor::ActionCatalog,
    pub(super) hub: EventHub,
    /// Longest long-poll (below the request timeout, which would cut it).
    pub(super) max_wait: Duration,
}

/// Answers of `POST /v1/jobs`.
#[derive(ApiResponse)]
pub enum CreateResponse {
    /// The job is durably stored and will run asynchronously (or, with a replayed
    /// `Idempotency-Key`, this is the original job).
    #[oai(status = 202)]
    Accepted(Json<JobAcceptedOut>, #[oai(header = "Location")] String),
}

problem_responses! {
    /// Errors of `POST /v1/jobs`.
    CreateError {
        400 BadRequest => "Malformed JSON, a wrong type, a missing field or a field over its length limit.",
        401 Unauthorized ["WWW-Authenticate": String = BEARER.into()] => "No bearer token, or an unknown one (authentication is on).",
        403 Forbidden => "The token may not trigger this action.",
        409 Conflict => "The `Idempotency-Key` was already used with a different request.",
        408 RequestTimeout => "The body did not arrive within the request timeout.",
        413 PayloadTooLarge => "The body is larger than the limit.",
        415 UnsupportedMediaType => "The body is not `application/json`.",
        422 Unprocessable => "Unknown action (the supported ones are listed) or an invalid field.",
        429 TooMany ["Retry-After": u32 = RETRY_AFTER_SECS] => "The queue is full, or this identity's rate limit is reached: retry after `Retry-After`.",
        500 Internal => "An unexpected error (details in the service log).",
        503 Unavailable ["Retry-After": u32 = RETRY_AFTER_SECS] => "The database is unavailable or the service is shutting down: retry after `Retry-After`.",
    }
}

problem_responses! {
    /// Errors of `GET /v1/jobs/{job_id}` and the other reads of one job.
    GetError {
        400 BadRequest => "The id is not a UUID, or `wait` is not a duration up to 60 s.",
        401 Unauthorized ["WWW-Authenticate": String = BEARER.into()] => "No bearer token, or an unknown one (authentication is on).",
        403 Forbidden => "The token may not read jobs.",
        404 NotFound => "No job with that id.",
        429 TooMany ["Retry-After": u32 = RETRY_AFTER_SECS] => "This identity's rate limit is reached: retry after `Retry-After` seconds.",
        500 Internal => "An unexpected error (details in the service log).",
        503 Unavailable ["Retry-After": u32 = RETRY_AFTER_SECS] => "The database is unavailable: retry after `Retry-After` seconds.",
    }
}

problem_responses! {
    /// Errors of `GET /v1/jobs`.
    ListError {
        400 BadRequest => "A filter, `limit` or `cursor` is invalid.",
        401 Unauthorized ["WWW-Authenticate": String = BEARER.into()] => "No bearer token, or an unknown one (authentication is on).",
        403 Forbidden => "The token may not read jobs.",
        429 TooMany ["Retry-After": u32 = RETRY_AFTER_SECS] => "This identity's rate limit is reached: retry after `Retry-After` seconds.",
        500 Internal => "An unexpected error (details in the service log).",
        503 Unavailable ["Retry-After": u32 = RETRY_AFTER_SECS] => "The database is unavailable: retry after `Retry-After` seconds.",
    }
}

/// Answers of `POST /v1/jobs/{job_id}/cancel`.
#[derive(ApiResponse)]
pub enum CancelResponse {
    /// The job is CANCELED, or it finished before the cancel took effect and keeps its real
    /// status.
    #[oai(status = 200)]
    Done(JsonOut<JobOut>),
    /// The job is still RUNNING; its cancel is requested (`cancel_requested` is true) and it
    /// will stop shortly.
    #[oai(status = 202)]
    Requested(JsonOut<JobOut>),
}

problem_responses! {
    /// Errors of `POST /v1/jobs/{job_id}/cancel`.
    CancelError {
        400 BadRequest => "The id is not a UUID.",
        401 Unauthorized ["WWW-Authenticate": String = BEARER.into()] => "No bearer token, or an unknown one (authentication is on).",
        403 Forbidden => "The token may not cancel jobs.",
        404 NotFound => "No job with that id.",
        409 Conflict => "The job had already finished (SUCCESS, FAILED or CANCELED).",
        429 TooMany ["Retry-After": u32 = RETRY_AFTER_SECS] => "This identity's rate limit is reached: retry after `Retry-After` seconds.",
        500 Internal => "An unexpected error (details in the service log).",
        503 Unavailable ["Retry-After": u32 = RETRY_AFTER_SECS] => "The database is unavailable: retry after `Retry-After` seconds.",
    }
}

/// The `WWW-Authenticate` challenge of a 401.
pub(super) const BEARER: &str = "Bearer realm=\"automation-gateway\"";

fn problem<E: From<Problem>>(e: impl Into<Problem>) -> E {
    E::from(e.into())
}

/// Cursors are opaque to clients; today they carry the last id of the page.
fn encode_cursor(id: JobId) -> String {
    format!("c1_{}", id.0.simple())
}

fn decode_cursor(s: &str) -> Option<JobId> {
    s.strip_prefix("c1_").and_then(|hex| Uuid::try_parse(hex).ok()).map(JobId)
}

/// The `Idempotency-Key` header, read from its raw bytes: any UTF-8 text is honoured byte for
/// byte (poem-openapi's header parsing drops a value that is not visible ASCII, which would have
/// made a retry create a second job); anything else is refused, never ignored.
// A Problem is built only when a request is refused; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn idempotency_key(req: &poem::Request) -> Result<Option<String>, Problem> {
    let mut values = req.headers().get_all("idempotency-key").iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(Problem::bad_request("Idempotency-Key", "sent more than once"));
    }
    let key = std::str::from_utf8(value.as_bytes())
        .map_err(|_| Problem::bad_request("Idempotency-Key", "must be UTF-8 text"))?;
    let len = key.chars().count();
    if !(1..=255).contains(&len) {
        return Err(Problem::bad_request("Idempotency-Key", "must be 1 to 255 characters"));
    }
    if key.chars().any(crate::jobs::is_invisible) {
        return Err(Problem::bad_request("Idempotency-Key", "must not contain control or format characters"));
    }
    Ok(Some(key.to_owned()))
}

/// Refuses U+0000 in a text query parameter: PostgreSQL cannot compare text with it, and no
/// stored value holds one.
#[allow(clippy::result_large_err)]
fn no_nul(field: &str, value: &Option<String>) -> Result<(), Problem> {
    match value {
        Some(v) if v.contains('\0') => Err(Problem::bad_request(field, "must not contain U+0000 (NUL)")),
        _ => Ok(()),
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Trigger an action
    ///
    /// Stores a new job durably (it is committed before the 202 is sent) and runs it
    /// asynchronously. Poll `Location` for its status. With an `Idempotency-Key`, repeating the
    /// same request returns the original job instead of creating a second one.
    #[oai(path = "/jobs", method = "post", operation_id = "jobs.create")]
    // poem-openapi takes each extractor as its own argument.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
        raw: &poem::Request,
        body: StrictJson<CreateJobIn>,
        /// Makes retries safe: the same key with the same body returns the original job; with
        /// another body it is refused with 409. Any UTF-8 text of 1 to 255 characters, compared
        /// byte for byte.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        _idempotency_key: Header<Option<String>>,
    ) -> Result<CreateResponse, CreateError> {
        let key = idempotency_key(raw).map_err(CreateError::from)?;
        let traceparent = raw.headers().get("traceparent").and_then(|v| v.to_str().ok());
        let out = self
            .commands
            .create_job(identity.0, &request_id.to_string(), body.0, key, traceparent)
            .await
            .map_err(CreateError::from)?;
        let location = format!("/v1/jobs/{}", out.id);
        Ok(CreateResponse::Accepted(Json(JobAcceptedOut { job_id: out.id.0, status: out.status.into() }), location))
    }

    /// Get a job
    ///
    /// The job's status and timestamps; the seven keys of the specification are always present
    /// (null where they do not apply yet). A job outside the token's scope (its `actions`, or `scope`)
    /// is a 404, as if it did not exist.
    #[oai(path = "/jobs/:job_id", method = "get", operation_id = "jobs.get")]
    async fn get(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
        /// The job's id.
        job_id: Path<Uuid>,
        /// Long-poll: answer as soon as the job is SUCCESS, FAILED or CANCELED, or when this
        /// much time has passed (then with the job as it is). `500ms`, `30s`, `1m` or plain
        /// seconds; at most 60 s (and less than the request timeout).
        #[oai(validator(max_length = 16))]
        wait: Query<Option<String>>,
    ) -> Result<JsonOut<JobOut>, GetError> {
        require(identity.0, Need::Read, "jobs.get", &request_id.to_string()).map_err(GetError::from)?;
        let id = JobId(job_id.0);
        let wait = match wait.0.as_deref() {
            None => None,
            Some(w) => match super::live::parse_wait(w) {
                Some(d) if d <= MAX_WAIT => Some(d.min(self.max_wait)),
                _ => return Err(Problem::bad_request("wait", "a duration up to 60s: 500ms, 30s, 1m or seconds").into()),
            },
        };
        let job = visible_job(&self.store, identity.0, id).await.map_err(GetError::from)?;
        let Some(wait) = wait.filter(|_| !job.status.is_terminal()) else { return Ok(JsonOut(job.into())) };
        // Follows the job's events from the start of its log, so a terminal event written since
        // the read above is seen at once.
        let filter = crate::live::StreamFilter {
            events: crate::store::EventFilter { job: Some(id), ..Default::default() },
            status: None,
            until_terminal: true,
            only_stored: false,
        };
        let mut rx = crate::live::follow(&self.hub, Some(0), filter).await.map_err(problem::<GetError>)?;
        let _ = tokio::time::timeout(wait, async {
            while let Some(e) = rx.recv().await {
                if e.kind.is_terminal() {
                    break;
                }
            }
        })
        .await;
        Ok(JsonOut(visible_job(&self.store, identity.0, id).await.map_err(GetError::from)?.into()))
    }

    /// A job's events
    ///
    /// Every transition of the job, oldest first: created, each attempt claimed (and by which
    /// replica), remote runs recorded, failed attempts and scheduled retries, lost and recovered
    /// leases, cancel requests, and the terminal `finished` or `canceled`. The same events
    /// `/stream` sends live.
    #[oai(path = "/jobs/:job_id/events", method = "get", operation_id = "jobs.events")]
    async fn events(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
        /// The job's id.
        job_id: Path<Uuid>,
    ) -> Result<Json<Vec<JobEventOut>>, GetError> {
        require(identity.0, Need::Read, "jobs.events", &request_id.to_string()).map_err(GetError::from)?;
        let id = JobId(job_id.0);
        visible_job(&self.store, identity.0, id).await.map_err(GetError::from)?;
        let events = self.store.events(id, 0).await.map_err(problem::<GetError>)?;
        Ok(Json(events.iter().map(JobEventOut::from).collect()))
    }

    /// List jobs
    ///
    /// Newest first, filtered by any of `status`, `action`, `target` and `requested_by`; only
    /// jobs in the token's scope. Follow `next_cursor` for the next page.
    #[oai(path = "/jobs", method = "get", operation_id = "jobs.list")]
    // poem-openapi takes each query parameter as its own argument.
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
        /// Only jobs in this status.
        status: Query<Option<JobStatusOut>>,
        /// Only jobs of this action: one of {action_names}.
        #[oai(validator(max_length = 64))]
        action: Query<Option<String>>,
        /// Only jobs on this exact target.
        #[oai(validator(max_length = 253))]
        target: Query<Option<String>>,
        /// Only jobs requested by exactly this caller.
        #[oai(validator(max_length = 320))]
        requested_by: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page.
        #[oai(validator(max_length = 64))]
        cursor: Query<Option<String>>,
    ) -> Result<JsonOut<JobPageOut>, ListError> {
        let identity = identity.0;
        require(identity, Need::Read, "jobs.list", &request_id.to_string()).map_err(ListError::from)?;
        no_nul("target", &target.0).map_err(ListError::from)?;
        no_nul("requested_by", &requested_by.0).map_err(ListError::from)?;
        let before =
            match cursor.0.as_deref() {
                None | Some("") => None,
                Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                    ListError::from(Problem::bad_request("cursor", "not a cursor returned by this API"))
                })?),
            };
        let action = match action.0.as_deref() {
            None => None,
            Some(name) => Some(
                self.catalog
                    .resolve(name)
                    .map_err(|e| ListError::from(Problem::bad_request("action", e.to_string())))?,
            ),
        };
        if action.is_some_and(|a| !identity.in_scope(a)) {
            // Outside the token's scope: nothing it may see.
            return Ok(JsonOut(JobPageOut { items: Vec::new(), next_cursor: None }));
        }
        let filter = JobFilter {
            status: status.0.map(JobStatus::from),
            action,
            actions: identity.scope().map(<[_]>::to_vec),
            target: target.0,
            requested_by: requested_by.0,
            before,
        };
        let page = self.store.list(&filter, u64::from(limit.0.unwrap_or(50))).await.map_err(problem::<ListError>)?;
        Ok(JsonOut(JobPageOut {
            items: page.items.into_iter().map(JobOut::from).collect(),
            next_cursor: page.next.map(encode_cursor),
        }))
    }

    /// Cancel a job
    ///
    /// A PENDING job becomes CANCELED at once. A RUNNING job is interrupted and becomes
    /// CANCELED; the call waits up to 5 s for that and answers 202 if the job is still stopping.
    /// A job that finished before the cancel took effect keeps its real status. A job that had
    /// already finished is a 409.
    #[oai(path = "/jobs/:job_id/cancel", method = "post", operation_id = "jobs.cancel")]
    async fn cancel(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
        /// The job's id.
        job_id: Path<Uuid>,
    ) -> Result<CancelResponse, CancelError> {
        let job = self
            .commands
            .cancel_job(identity.0, &request_id.to_string(), JobId(job_id.0), CANCEL_WAIT)
            .await
            .map_err(CancelError::from)?;
        if job.status == JobStatus::Running {
            Ok(CancelResponse::Requested(JsonOut(job.into())))
        } else {
            Ok(CancelResponse::Done(JsonOut(job.into())))
        }
    }
}

/// The job, if it exists and its action is within the caller's scope; 404 otherwise, so a token
/// learns nothing about jobs it may not see.
pub(super) async fn visible_job(store: &Store, identity: &Identity, id: JobId) -> Result<crate::jobs::Job, Problem> {
    match store.get(id).await {
        Ok(job) if identity.in_scope(job.action) => Ok(job),
        Ok(_) | Err(crate::store::Error::NotFound) => Err(Problem::job_not_found(id)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = JobId::new();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert_eq!(decode_cursor("nope"), None);
    }
}
