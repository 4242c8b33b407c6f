//! Request ids: one per request, made here (a client-chosen id would flow unchecked into logs
//! and audit rows), returned in `x-request-id` and recorded with audit lines and job events.
//! poem ships a `RequestId` middleware too, but it also opens an ERROR-level tracing span per
//! request, which every log filter lets through; our log lines never print span fields, so
//! that span was pure per-request cost.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A fresh request id: a UUID (version 8, custom) whose first half is random per process and
/// whose second half counts requests. Ids must be unique, not unguessable; this way they cost no
/// `getrandom` system call per request, and one process's ids sort in arrival order.
fn next_id() -> Uuid {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| Uuid::new_v4().as_u64_pair().0);
    // The variant takes the top two bits of the second half: the counter keeps clear of them.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & (u64::MAX >> 2);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&process.to_be_bytes());
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Gives each request a fresh id.
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
        let id = next_id().hyphenated().to_string();
        let header = HeaderValue::from_str(&id).ok();
        req.set_data(ReqId(id));
        let mut resp = poem::IntoResponse::into_response(self.0.call(req).await?);
        if let Some(h) = header {
            resp.headers_mut().insert(HEADER, h);
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::next_id;

    #[test]
    fn ids_are_distinct_uuids() {
        let ids: Vec<_> = (0..10_000).map(|_| next_id()).collect();
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.get_version_num(), 8);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id.to_string().parse::<uuid::Uuid>().ok(), Some(*id));
        }
    }
}
