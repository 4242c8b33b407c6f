//! `GET /v1/actions`: the catalog as a caller may see it. Names, runners, descriptions and
//! rules; never a runner's settings (URLs, token files), which are the operator's business.

use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use super::ApiTags;
use super::auth::require;
use super::auth::{Caller, Need};
use super::model::{ActionListOut, ActionOut};
use super::problem::RETRY_AFTER_SECS;
use super::request_id::ReqId;
use super::responses::problem_responses;
use crate::auth::Identity;
use crate::executor::ActionCatalog;

/// The `/v1/actions` operation, over the catalog.
pub struct ActionsApi {
    pub(super) catalog: ActionCatalog,
}

problem_responses! {
    /// Errors of `GET /v1/actions`.
    ActionsError {
        401 Unauthorized ["WWW-Authenticate": String = super::jobs::BEARER.into()] => "No bearer token, or an unknown one (authentication is on).",
        403 Forbidden => "The token may not read.",
        429 TooMany ["Retry-After": u32 = RETRY_AFTER_SECS] => "This identity's rate limit is reached: retry after `Retry-After` seconds.",
        500 Internal => "An unexpected error (details in the service log).",
    }
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Jobs")]
impl ActionsApi {
    /// List the actions
    ///
    /// Every action in the caller's scope: its name, runner, description, the JSON Schema of
    /// its parameters, the targets it allows, its per-target limit and its policy.
    #[oai(path = "/actions", method = "get", operation_id = "actions.list")]
    async fn list(
        &self,
        _caller: Caller,
        identity: Data<&Identity>,
        request_id: ReqId,
    ) -> Result<Json<ActionListOut>, ActionsError> {
        require(identity.0, Need::Read, "actions.list", &request_id.to_string()).map_err(ActionsError::from)?;
        let actions =
            self.catalog.entries().iter().filter(|e| identity.0.in_scope(e.action)).map(ActionOut::from).collect();
        Ok(Json(ActionListOut { actions }))
    }
}
