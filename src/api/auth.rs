//! Authentication and authorization at the HTTP edge: the gate that authenticates every `/v1`
//! request (and `/metrics` when it needs a token) before its body is read, the per-identity and
//! per-address rate limits, 401/403/429 decisions, the failed-login log lines (themselves
//! rate-limited) and the bearer security scheme of the OpenAPI document (so Swagger UI's
//! Authorize button works). Tokens themselves are never logged.

use std::net::IpAddr;
use std::sync::Arc;

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use super::problem::{Problem, response};
use super::request_id::ReqId;
use crate::auth::{Identity, Refusal, bearer_token};
use crate::jobs::Action;
use crate::telemetry::metrics::AuthFailure;

/// Failed authentications a client address may make per second, once its burst is spent.
pub const FAILURES_PER_SEC: u32 = 5;
/// Failed authentications a client address may make in a burst.
pub const FAILURES_BURST: u32 = 20;

/// `Authorization: Bearer <token>`, as listed in the tokens file (`GATEWAY_AUTH_TOKENS_FILE`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth", bearer_format = "opaque token")]
pub struct BearerToken(pub Bearer);

/// The caller's credentials as the OpenAPI document describes them: a bearer token, or none
/// (accepted only while authentication is off). Operations take it for the document; the
/// decision itself is `Gate`'s, which hands the operation an `Identity`.
#[derive(SecurityScheme)]
pub enum Caller {
    /// A bearer token.
    Bearer(BearerToken),
    /// No credentials.
    #[oai(fallback)]
    Anonymous,
}

/// The right an operation needs.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// Trigger this action.
    Create(Action),
    /// Read jobs.
    Read,
    /// Cancel jobs.
    Cancel,
}

/// Authenticates before anything else happens to a request: `/v1` always (while authentication
/// is off every caller is `anonymous`), `/metrics` when it needs a token. A refused caller gets
/// its 401 (or 429) as soon as its headers are in; its body is never read, so an anonymous
/// client cannot make the service buffer anything, and learns nothing about the input rules.
#[derive(Clone)]
pub struct Gate {
    /// Who may call.
    pub auth: crate::auth::Authenticator,
    /// The per-identity rate limit (per client address while authentication is off).
    pub limiter: Arc<crate::auth::RateLimiter>,
    /// Failed authentications allowed per client address.
    pub failures: Arc<crate::auth::RateLimiter>,
    /// Log lines about failed authentications allowed per second.
    pub failure_log: Arc<crate::auth::LogBudget>,
    /// Whether `/metrics` needs a token too.
    pub metrics_require_token: bool,
    /// Failed authentications are counted.
    pub metrics: Arc<crate::telemetry::Metrics>,
}

impl<E: Endpoint> Middleware<E> for Gate {
    type Output = GateEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        GateEndpoint { inner, state: self.clone() }
    }
}

/// The wrapped endpoint.
pub struct GateEndpoint<E> {
    inner: E,
    state: Gate,
}

impl<E: Endpoint> Endpoint for GateEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let path = req.uri().path();
        let api = path == "/v1" || path.starts_with("/v1/");
        let metrics = path == "/metrics" && self.state.metrics_require_token && self.state.auth.enabled();
        if !api && !metrics {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let client = client_ip(&req);
        let presented = req.headers().get(header::AUTHORIZATION);
        let bearer = presented.and_then(|v| bearer_token(v.as_bytes()));
        let identity = match self.state.auth.identify(bearer) {
            Ok(identity) => identity,
            Err(refusal) => {
                // A header that is there but unusable is as bad as a wrong token.
                let reason = match (refusal, presented) {
                    (Refusal::Missing, None) => AuthFailure::Missing,
                    _ => AuthFailure::Unknown,
                };
                return Ok(self.state.refuse(&req, client, reason));
            }
        };
        if api {
            // Per token; with authentication off every caller is `anonymous`, so the bucket is
            // per client address instead, or one noisy client would starve the others.
            let limited = if !self.state.limiter.enabled() {
                Ok(())
            } else if self.state.auth.enabled() {
                self.state.limiter.check(&identity.name)
            } else {
                self.state.limiter.check(&client.map(|ip| ip.to_string()).unwrap_or_default())
            };
            if let Err(wait) = limited {
                tracing::warn!(event = "rate.limited", identity = %identity.name, operation = %operation(&req), request_id = %request_id(&req), "rate limit reached");
                let p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    format!("rate limit of this identity reached; retry in {} ms", wait.as_millis().max(1)),
                );
                return Ok(closing_if_body(&req, response(&p)));
            }
        }
        req.extensions_mut().insert(identity);
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

fn client_ip(req: &Request) -> Option<IpAddr> {
    req.remote_addr().as_socket_addr().map(|a| a.ip())
}

fn request_id(req: &Request) -> String {
    req.extensions().get::<ReqId>().map(ToString::to_string).unwrap_or_default()
}

/// `METHOD /path` for log lines, bounded (the path is the client's).
fn operation(req: &Request) -> String {
    let path: String = req.uri().path().chars().take(96).collect();
    format!("{} {path}", req.method())
}

/// The body of a refused request is never read: the connection cannot carry another request,
/// so say it closes.
fn closing_if_body(req: &Request, mut resp: Response) -> Response {
    let declared = req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if declared || req.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

// A Problem is built only when a request is refused; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
impl Gate {
    /// A failed authentication: 401, or 429 once this address has failed too often. Every one
    /// is counted; log lines are capped (a flood must not become a flood of log lines).
    fn refuse(&self, req: &Request, client: Option<IpAddr>, reason: AuthFailure) -> Response {
        let key = client.map(|ip| ip.to_string()).unwrap_or_default();
        if let Err(wait) = self.failures.check(&key) {
            self.metrics.auth_failed(AuthFailure::RateLimited);
            let p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!("too many failed authentications from this address; retry in {} ms", wait.as_millis().max(1)),
            );
            return closing_if_body(req, response(&p));
        }
        self.metrics.auth_failed(reason);
        let why = match reason {
            AuthFailure::Missing => "no bearer token",
            _ => "unknown token",
        };
        if let Some(suppressed) = self.failure_log.allow() {
            tracing::warn!(
                event = "auth.failed",
                reason = why,
                operation = %operation(req),
                request_id = %request_id(req),
                client = %key,
                suppressed_since_last = suppressed,
                "authentication failed"
            );
        }
        let p = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("{why}: send Authorization: Bearer <token>"),
        );
        let mut resp = response(&p);
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(super::jobs::BEARER));
        closing_if_body(req, resp)
    }
}

/// Checks the right an operation needs (403).
#[allow(clippy::result_large_err)]
pub(crate) fn require(identity: &Identity, need: Need, operation: &str, request_id: &str) -> Result<(), Problem> {
    let allowed = match need {
        Need::Create(action) => identity.may_create(action),
        Need::Read => identity.may_read(),
        Need::Cancel => identity.may_cancel(),
    };
    if allowed {
        return Ok(());
    }
    let what = match need {
        Need::Create(a) => format!("trigger {a}"),
        Need::Read => "read jobs".into(),
        Need::Cancel => "cancel jobs".into(),
    };
    tracing::warn!(event = "auth.forbidden", identity = %identity.name, operation, request_id, "permission denied");
    Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", format!("token '{}' may not {what}", identity.name)))
}
