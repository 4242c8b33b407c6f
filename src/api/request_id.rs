//! Request ids: one per request, made here (a client-chosen id would flow unchecked into logs
//! and audit rows), returned in `x-request-id` and recorded with audit lines and job events.
//! poem ships a `RequestId` middleware too, but it also opens an ERROR-level tracing span per
//! request, which every log filter lets through; our log lines never print span fields, so
//! that span was pure per-request cost.

use poem::http::HeaderValue;
use poem::{Endpoint, FromRequest, Middleware, Request, RequestBody, Response, Result};
use uuid::Uuid;

/// The header carrying the id on every answer.
pub const HEADER: &str = "x-request-id";

/// The request's id, as a handler parameter.
#[derive(Clone, Debug)]
pub struct ReqId(String);

impl std::fmt::Display for ReqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> FromRequest<'a> for ReqId {
    async fn from_request(req: &'a Request, _: &mut RequestBody) -> Result<Self> {
        // Outside the middleware (never in this service) there is no id to report.
        Ok(req.extensions().get::<ReqId>().cloned().unwrap_or_else(|| ReqId(String::new())))
    }
}

/// Gives each request a fresh UUID v4.
pub struct RequestIds;

impl<E: Endpoint> Middleware<E> for RequestIds {
    type Output = RequestIdsEndpoint<E>;

    fn transform(&self, next: E) -> Self::Output {
        RequestIdsEndpoint(next)
    }
}

/// The wrapped endpoint.
pub struct RequestIdsEndpoint<E>(E);

impl<E: Endpoint> Endpoint for RequestIdsEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> Result<Response> {
        let id = Uuid::new_v4().hyphenated().to_string();
        let header = HeaderValue::from_str(&id).ok();
        req.set_data(ReqId(id));
        let mut resp = poem::IntoResponse::into_response(self.0.call(req).await?);
        if let Some(h) = header {
            resp.headers_mut().insert(HEADER, h);
        }
        Ok(resp)
    }
}
