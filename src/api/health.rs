//! `HealthApi`: liveness (touches nothing) and readiness (database and migrations, and not
//! shutting down).

use std::sync::atomic::Ordering;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::model::{HealthOut, ReadinessOut};
use super::{ApiTags, State};
use crate::store::Health as StoreHealth;

/// Health endpoints.
pub struct HealthApi;

/// Answers of `GET /readyz`.
#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers, migrations are applied, writes work, the service is not shutting
    /// down.
    #[oai(status = 200)]
    Ready(Json<ReadinessOut>),
    /// Not ready; `reason` says why.
    #[oai(status = 503)]
    NotReady(Json<ReadinessOut>),
}

fn not_ready(state: &State, reason: &str) -> ReadyResponse {
    ReadyResponse::NotReady(Json(ReadinessOut {
        status: "not_ready".into(),
        reason: Some(reason.into()),
        auth: auth_detail(state),
    }))
}

fn auth_detail(state: &State) -> String {
    if state.auth.enabled() {
        "enabled".into()
    } else {
        "DISABLED: no GATEWAY_AUTH_TOKENS_FILE, the API is open to anyone who can reach it".into()
    }
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness
    ///
    /// 200 while the process serves HTTP. Touches no database.
    #[oai(path = "/healthz", method = "get", operation_id = "health.live")]
    async fn healthz(&self) -> Json<HealthOut> {
        Json(HealthOut { status: "ok".into() })
    }

    /// Readiness
    ///
    /// 200 when the database answers, every migration is applied and writes work; 503
    /// otherwise (with the reason: for example a full disk) and while shutting down.
    #[oai(path = "/readyz", method = "get", operation_id = "health.ready")]
    async fn readyz(&self, state: Data<&State>) -> ReadyResponse {
        if !state.accepting.load(Ordering::SeqCst) {
            return not_ready(&state, "shutting down");
        }
        match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ready()).await {
            Ok(Ok(StoreHealth::Ready)) => ReadyResponse::Ready(Json(ReadinessOut {
                status: "ready".into(),
                reason: None,
                auth: auth_detail(&state),
            })),
            Ok(Ok(StoreHealth::MigrationsPending)) => not_ready(&state, "database migrations are pending"),
            Ok(Ok(StoreHealth::WritesFailing(why))) => {
                not_ready(&state, &format!("database writes are failing: {why}; new jobs are refused"))
            }
            Ok(Err(_)) => not_ready(&state, "database unavailable"),
            Err(_) => not_ready(&state, "database did not answer within 2 s"),
        }
    }
}
