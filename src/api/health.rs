//! `HealthApi`: liveness (touches nothing) and readiness (database and migrations, and not
//! shutting down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::model::{HealthOut, ReadinessOut};
use crate::store::Health as StoreHealth;
use crate::store::Store;

/// Health endpoints, with what readiness reads.
pub struct HealthApi {
    pub(super) store: Store,
    /// False once shutdown begins: readiness fails first.
    pub(super) accepting: Arc<AtomicBool>,
    /// Whether authentication is on (readiness says so).
    pub(super) auth_enabled: bool,
}

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

fn not_ready(auth_enabled: bool, reason: &str) -> ReadyResponse {
    ReadyResponse::NotReady(Json(ReadinessOut {
        status: "not_ready".into(),
        reason: Some(reason.into()),
        auth: auth_detail(auth_enabled),
    }))
}

fn auth_detail(auth_enabled: bool) -> String {
    if auth_enabled {
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
    async fn readyz(&self) -> ReadyResponse {
        if !self.accepting.load(Ordering::SeqCst) {
            return not_ready(self.auth_enabled, "shutting down");
        }
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.store.ready()).await {
            Ok(Ok(StoreHealth::Ready)) => ReadyResponse::Ready(Json(ReadinessOut {
                status: "ready".into(),
                reason: None,
                auth: auth_detail(self.auth_enabled),
            })),
            Ok(Ok(StoreHealth::MigrationsPending)) => not_ready(self.auth_enabled, "database migrations are pending"),
            Ok(Ok(StoreHealth::WritesFailing(why))) => {
                not_ready(self.auth_enabled, &format!("database writes are failing: {why}; new jobs are refused"))
            }
            Ok(Err(_)) => not_ready(self.auth_enabled, "database unavailable"),
            Err(_) => not_ready(self.auth_enabled, "database did not answer within 2 s"),
        }
    }
}
