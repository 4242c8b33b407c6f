//! RFC 9457 problem details: the one body of every 4xx and 5xx, the mapping of domain and store
//! errors to statuses (only here), and the middleware that turns the framework's own errors
//! (parse failures, unknown routes, 405, body too large, panics) into problems too.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::Object;

use crate::jobs;
use crate::store;

/// Problem type URIs are relative references into the README's error section.
const TYPE_BASE: &str = "https://github.com/example-org/automation-gateway/blob/main/README.md#problem-";

/// Seconds a client should wait before retrying a 429 or 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// A problem detail (RFC 9457).
#[derive(Object, Debug, Clone, PartialEq)]
#[oai(example)]
pub struct Problem {
    /// A URI identifying the kind of problem; stable, match on it rather than on `detail`.
    #[oai(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The fields at fault, when the problem is invalid input.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldError>>,
    /// The actions the gateway supports (on an unknown action).
    #[oai(skip_serializing_if_is_none)]
    pub supported_actions: Option<Vec<String>>,
}

/// One invalid field.
#[derive(Object, Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The field's name on the wire.
    pub field: String,
    /// Why it was refused.
    pub message: String,
}

fn problem_example() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "no job with id 0192f0a0-7c5e-7a8e-9d1a-2b3c4d5e6f70")
}

impl Problem {
    /// A problem with the standard title of its status.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("{TYPE_BASE}{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: None,
            supported_actions: None,
        }
    }

    /// 404 for a job id.
    pub fn job_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", format!("no job with id {id}"))
    }

    /// 500, opaque: the cause goes to the log, never to the client.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the service log")
    }

    /// 400 for a bad parameter.
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut p = Self::new(StatusCode::BAD_REQUEST, "bad-request", format!("{field}: {message}"));
        p.errors = Some(vec![FieldError { field: field.to_owned(), message }]);
        p
    }
}

impl From<jobs::Error> for Problem {
    fn from(e: jobs::Error) -> Self {
        match &e {
            jobs::Error::UnknownAction { supported, .. } => {
                let mut p = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown-action", e.to_string());
                p.errors = Some(vec![FieldError { field: "action".into(), message: e.to_string() }]);
                p.supported_actions = Some(supported.iter().map(|s| (*s).to_owned()).collect());
                p
            }
            jobs::Error::Validation { field, reason } => {
                let mut p = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", e.to_string());
                p.errors = Some(vec![FieldError { field: (*field).into(), message: reason.clone() }]);
                p
            }
        }
    }
}

impl From<store::Error> for Problem {
    fn from(e: store::Error) -> Self {
        match &e {
            store::Error::NotFound => Self::new(StatusCode::NOT_FOUND, "not-found", "no such job"),
            store::Error::Conflict(why) => Self::new(StatusCode::CONFLICT, "conflict", why.clone()),
            store::Error::QueueFull { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "queue-full", format!("{e}; retry later"))
            }
            store::Error::Unavailable(_) => {
                tracing::warn!(error = %e, error.cause = ?std::error::Error::source(&e), "database unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the database is unavailable; retry later")
            }
            store::Error::StorageFull(_) => {
                tracing::warn!(error = %e, error.cause = ?std::error::Error::source(&e), "database storage full");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-full",
                    "the database has no room left for this write (disk full or size cap); nothing was stored, retry later",
                )
            }
            store::Error::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting-down",
                "the service is shutting down; retry on another replica",
            ),
            store::Error::Other(_)
            | store::Error::Corrupt(_)
            | store::Error::Settings(_)
            | store::Error::Internal(_) => {
                tracing::error!(error = %e, error.cause = ?std::error::Error::source(&e), "internal error");
                Self::internal()
            }
        }
    }
}

/// Builds a problem+json response (for answers produced outside poem-openapi).
pub fn response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = poem_openapi::types::ToJSON::to_json_string(p);
    let mut resp = Response::builder().status(status).content_type("application/problem+json").body(body);
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    resp
}

/// Rewrites every error that escapes the endpoints (and every bare 4xx/5xx) as problem+json,
/// and enforces the body size limit on the bytes actually sent, with or without Content-Length.
pub struct Problems {
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Longest a request may take, body included.
    pub request_timeout: std::time::Duration,
}

impl<E: Endpoint> Middleware<E> for Problems {
    type Output = ProblemsEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ProblemsEndpoint { inner: ep, max_body_bytes: self.max_body_bytes, request_timeout: self.request_timeout }
    }
}

/// The wrapped endpoint.
pub struct ProblemsEndpoint<E> {
    inner: E,
    max_body_bytes: usize,
    request_timeout: std::time::Duration,
}

impl<E: Endpoint> Endpoint for ProblemsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        match tokio::time::timeout_at(deadline, self.handle(req, deadline)).await {
            Ok(r) => r,
            Err(_) => Ok(response(&Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took longer than the configured request timeout",
            ))),
        }
    }
}

impl<E: Endpoint> ProblemsEndpoint<E> {
    async fn handle(&self, mut req: Request, deadline: tokio::time::Instant) -> poem::Result<Response> {
        // The rest of such a body is never read, so the connection cannot carry another request:
        // say so, or a client would reuse it and see its next request fail.
        let closing = |mut r: Response| {
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        };
        let too_large = || {
            closing(response(&Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "request body is larger than the limit",
            )))
        };
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Ok(too_large());
        }
        if declared.is_some_and(|n| n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING) {
            // A body trickled in slower than the request timeout is a slow client: 408.
            let read = tokio::time::timeout_at(deadline, req.take_body().into_bytes_limit(self.max_body_bytes));
            match read.await {
                Err(_) => {
                    return Ok(closing(response(&Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request-timeout",
                        "the request body did not arrive in time",
                    ))));
                }
                Ok(Ok(bytes)) => req.set_body(bytes),
                Ok(Err(poem::error::ReadBodyError::PayloadTooLarge)) => return Ok(too_large()),
                Ok(Err(e)) => {
                    return Ok(response(&Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad-request",
                        format!("could not read the body: {e}"),
                    )));
                }
            }
        }
        let resp = match self.inner.call(req).await {
            Ok(r) => r.into_response(),
            Err(e) => {
                let status = e.status();
                let message = e.to_string();
                // Our own error answers travel as errors too: keep them as they are.
                let original = e.into_response();
                if original
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"))
                {
                    return Ok(original);
                }
                let e = message;
                let detail = if status.is_server_error() {
                    tracing::error!(error = %e, "request failed");
                    "internal error; see the service log".to_owned()
                } else {
                    e
                };
                let slug = match status {
                    StatusCode::NOT_FOUND => "not-found",
                    StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
                    StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
                    s if s.is_server_error() => "internal",
                    _ => "bad-request",
                };
                return Ok(response(&Problem::new(status, slug, detail)));
            }
        };
        // A JSON error body is an answer of ours (problem+json, or `/readyz`'s 503 with its
        // reason): keep it. Only the framework's bare errors become problems.
        let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v.starts_with(b"application/problem+json") || v.starts_with(b"application/json")
        });
        if (resp.status().is_client_error() || resp.status().is_server_error()) && !is_json {
            let status = resp.status();
            return Ok(response(&Problem::new(status, "error", status.canonical_reason().unwrap_or("error"))));
        }
        Ok(resp)
    }
}

impl poem_openapi::types::Example for Problem {
    fn example() -> Self {
        problem_example()
    }
}
