//! Authentication and authorization at the HTTP edge: the bearer security scheme (so Swagger
//! UI's Authorize button works), 401/403/429 decisions, and the audit and failed-login log
//! lines. Tokens themselves are never logged.

use poem::http::StatusCode;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use super::State;
use super::problem::Problem;
use crate::auth::{Identity, Refusal};
use crate::jobs::Action;

/// `Authorization: Bearer <token>`, as listed in the tokens file (`GATEWAY_AUTH_TOKENS_FILE`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", rename = "bearerAuth", bearer_format = "opaque token")]
pub struct BearerToken(Bearer);

/// The caller's credentials: a bearer token, or none (accepted only while authentication is
/// off).
#[derive(SecurityScheme)]
pub enum Caller {
    /// A bearer token.
    Bearer(BearerToken),
    /// No credentials.
    #[oai(fallback)]
    Anonymous,
}

impl Caller {
    fn token(&self) -> Option<&str> {
        match self {
            Caller::Bearer(BearerToken(b)) => Some(b.token.as_str()),
            Caller::Anonymous => None,
        }
    }
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

// A Problem is built only when a request is refused; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
impl State {
    /// Authenticates the caller (401) and applies the per-identity rate limit (429).
    pub(crate) fn authenticate(&self, caller: &Caller, operation: &str, request_id: &str) -> Result<Identity, Problem> {
        let identity = match self.auth.identify(caller.token()) {
            Ok(i) => i,
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::Missing => "no bearer token",
                    Refusal::Unknown => "unknown token",
                };
                tracing::warn!(event = "auth.failed", reason, operation, request_id, "authentication failed");
                return Err(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    format!("{reason}: send Authorization: Bearer <token>"),
                ));
            }
        };
        if let Err(wait) = self.limiter.check(&identity.name) {
            tracing::warn!(event = "rate.limited", identity = %identity.name, operation, request_id, "rate limit reached");
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!("rate limit of this identity reached; retry in {} ms", wait.as_millis().max(1)),
            ));
        }
        Ok(identity)
    }

    /// Checks the right an operation needs (403).
    pub(crate) fn require(
        &self,
        identity: &Identity,
        need: Need,
        operation: &str,
        request_id: &str,
    ) -> Result<(), Problem> {
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

    /// `authenticate`, then `require`.
    pub(crate) fn authorize(
        &self,
        caller: &Caller,
        need: Need,
        operation: &str,
        request_id: &str,
    ) -> Result<Identity, Problem> {
        let identity = self.authenticate(caller, operation, request_id)?;
        self.require(&identity, need, operation, request_id)?;
        Ok(identity)
    }
}
