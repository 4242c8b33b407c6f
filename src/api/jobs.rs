//! `JobsApi`: create, get, list and cancel jobs. Handlers parse, call the store or the
//! executor, and map the answer; nothing else.

use std::time::Duration;

use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use super::model::{ActionOut, CreateJobRequest, JobAccepted, JobOut, JobPage, JobStatusOut};
use super::problem::{Problem, RETRY_AFTER_SECS};
use super::{ApiTags, State};
use crate::jobs::{JobId, JobStatus, NewJob};
use crate::store::JobFilter;

/// How long a cancel waits for a running job to stop before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// The `/v1/jobs` operations.
pub struct JobsApi;

/// Answers of `POST /v1/jobs`.
#[derive(ApiResponse)]
pub enum CreateResponse {
    /// The job is durably stored and will run asynchronously (or, with a replayed
    /// `Idempotency-Key`, this is the original job).
    #[oai(status = 202)]
    Accepted(Json<JobAccepted>, #[oai(header = "Location")] String),
}

/// Errors of `POST /v1/jobs`.
#[derive(ApiResponse, Debug)]
pub enum CreateError {
    /// Malformed JSON, a wrong type, a missing field or a field over its length limit.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// The `Idempotency-Key` was already used with a different request.
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// The body is larger than the limit.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body is not `application/json`.
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// Unknown action (the supported ones are listed) or an invalid field.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<Problem>),
    /// The queue is full: retry after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    QueueFull(Json<Problem>, #[oai(header = "Retry-After")] u32),
    /// An unexpected error (details in the service log).
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database is unavailable or the service is shutting down: retry after `Retry-After`.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl From<Problem> for CreateError {
    fn from(p: Problem) -> Self {
        match p.status {
            400 => Self::BadRequest(Json(p)),
            409 => Self::Conflict(Json(p)),
            413 => Self::PayloadTooLarge(Json(p)),
            415 => Self::UnsupportedMediaType(Json(p)),
            422 => Self::Unprocessable(Json(p)),
            429 => Self::QueueFull(Json(p), RETRY_AFTER_SECS),
            503 => Self::Unavailable(Json(p), RETRY_AFTER_SECS),
            _ => Self::Internal(Json(Problem::internal())),
        }
    }
}

/// Errors of `GET /v1/jobs/{job_id}`.
#[derive(ApiResponse, Debug)]
pub enum GetError {
    /// The id is not a UUID.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No job with that id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// An unexpected error (details in the service log).
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database is unavailable: retry after `Retry-After` seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl From<Problem> for GetError {
    fn from(p: Problem) -> Self {
        match p.status {
            400 => Self::BadRequest(Json(p)),
            404 => Self::NotFound(Json(p)),
            503 => Self::Unavailable(Json(p), RETRY_AFTER_SECS),
            _ => Self::Internal(Json(Problem::internal())),
        }
    }
}

/// Errors of `GET /v1/jobs`.
#[derive(ApiResponse, Debug)]
pub enum ListError {
    /// A filter, `limit` or `cursor` is invalid.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// An unexpected error (details in the service log).
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database is unavailable: retry after `Retry-After` seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl From<Problem> for ListError {
    fn from(p: Problem) -> Self {
        match p.status {
            400 => Self::BadRequest(Json(p)),
            503 => Self::Unavailable(Json(p), RETRY_AFTER_SECS),
            _ => Self::Internal(Json(Problem::internal())),
        }
    }
}

/// Answers of `POST /v1/jobs/{job_id}/cancel`.
#[derive(ApiResponse)]
pub enum CancelResponse {
    /// The job is CANCELED, or it finished before the cancel took effect and keeps its real
    /// status.
    #[oai(status = 200)]
    Done(Json<JobOut>),
    /// The job is still RUNNING; its cancel is requested (`cancel_requested` is true) and it
    /// will stop shortly.
    #[oai(status = 202)]
    Requested(Json<JobOut>),
}

/// Errors of `POST /v1/jobs/{job_id}/cancel`.
#[derive(ApiResponse, Debug)]
pub enum CancelError {
    /// The id is not a UUID.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No job with that id.
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The job had already finished (SUCCESS, FAILED or CANCELED).
    #[oai(status = 409, content_type = "application/problem+json")]
    Conflict(Json<Problem>),
    /// An unexpected error (details in the service log).
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    /// The database is unavailable: retry after `Retry-After` seconds.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl From<Problem> for CancelError {
    fn from(p: Problem) -> Self {
        match p.status {
            400 => Self::BadRequest(Json(p)),
            404 => Self::NotFound(Json(p)),
            409 => Self::Conflict(Json(p)),
            503 => Self::Unavailable(Json(p), RETRY_AFTER_SECS),
            _ => Self::Internal(Json(Problem::internal())),
        }
    }
}

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

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Trigger an action
    ///
    /// Stores a new job durably (it is committed before the 202 is sent) and runs it
    /// asynchronously. Poll `Location` for its status. With an `Idempotency-Key`, repeating the
    /// same request returns the original job instead of creating a second one.
    #[oai(path = "/jobs", method = "post", operation_id = "jobs.create")]
    async fn create(
        &self,
        state: Data<&State>,
        body: Json<CreateJobRequest>,
        /// Makes retries safe: the same key with the same body returns the original job; with
        /// another body it is refused with 409.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> Result<CreateResponse, CreateError> {
        let req = body.0;
        let job =
            NewJob::parse(&req.action, &req.target, &req.requested_by, req.parameters.map(|m| m.into_iter().collect()))
                .map_err(problem::<CreateError>)?;
        let (action, target) = (job.action, job.target.clone());
        let out = state.store.enqueue(job, idempotency_key.0).await.map_err(problem::<CreateError>)?;
        if out.created {
            state.metrics.job_created(action);
            tracing::info!(job_id = %out.id, action = %action, target = %target, "job accepted");
        }
        let location = format!("/v1/jobs/{}", out.id);
        Ok(CreateResponse::Accepted(Json(JobAccepted { job_id: out.id.0, status: out.status.into() }), location))
    }

    /// Get a job
    ///
    /// The job's status and timestamps; the seven keys of the specification are always present
    /// (null where they do not apply yet).
    #[oai(path = "/jobs/:job_id", method = "get", operation_id = "jobs.get")]
    async fn get(
        &self,
        state: Data<&State>,
        /// The job's id.
        job_id: Path<Uuid>,
    ) -> Result<Json<JobOut>, GetError> {
        match state.store.get(JobId(job_id.0)).await {
            Ok(job) => Ok(Json(job.into())),
            Err(crate::store::Error::NotFound) => Err(GetError::from(Problem::job_not_found(job_id.0))),
            Err(e) => Err(problem(e)),
        }
    }

    /// List jobs
    ///
    /// Newest first, filtered by any of `status`, `action`, `target` and `requested_by`.
    /// Follow `next_cursor` for the next page.
    #[oai(path = "/jobs", method = "get", operation_id = "jobs.list")]
    // poem-openapi takes each query parameter as its own argument.
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&State>,
        /// Only jobs in this status.
        status: Query<Option<JobStatusOut>>,
        /// Only jobs of this action.
        action: Query<Option<ActionOut>>,
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
    ) -> Result<Json<JobPage>, ListError> {
        let before =
            match cursor.0.as_deref() {
                None | Some("") => None,
                Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                    ListError::from(Problem::bad_request("cursor", "not a cursor returned by this API"))
                })?),
            };
        let filter = JobFilter {
            status: status.0.map(JobStatus::from),
            action: action.0.map(Into::into),
            target: target.0,
            requested_by: requested_by.0,
            before,
        };
        let page = state.store.list(&filter, u64::from(limit.0.unwrap_or(50))).await.map_err(problem::<ListError>)?;
        Ok(Json(JobPage {
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
        state: Data<&State>,
        /// The job's id.
        job_id: Path<Uuid>,
    ) -> Result<CancelResponse, CancelError> {
        let id = JobId(job_id.0);
        let status = match state.executor.cancel(id, CANCEL_WAIT).await {
            Ok(s) => s,
            Err(crate::store::Error::NotFound) => {
                return Err(CancelError::from(Problem::job_not_found(id)));
            }
            Err(e) => return Err(problem(e)),
        };
        let job = state.store.get(id).await.map_err(problem::<CancelError>)?;
        tracing::info!(job_id = %id, action = %job.action, target = %job.target, status = %status, "cancel requested");
        if job.status == JobStatus::Running {
            Ok(CancelResponse::Requested(Json(job.into())))
        } else {
            Ok(CancelResponse::Done(Json(job.into())))
        }
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
