//! HTTP: the poem-openapi service (jobs and health), `/metrics`, `/openapi.json`, Swagger UI
//! at `/docs`, problem+json for every error, and request metrics. Talks to the store and the
//! executor only through their public functions; never SQL.

pub mod actions;
pub mod auth;
mod commands;
pub mod health;
pub mod jobs;
pub mod json;
pub mod live;
pub mod model;
pub mod problem;
pub mod request_id;
mod responses;
mod settings;
pub mod strict;
mod ui;
pub use settings::Settings;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use poem::middleware::CatchPanic;
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler, web::Data};
use poem_openapi::{OpenApi, OpenApiService, Tags};

use crate::executor::Executor;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::telemetry::http::{HttpMetrics, RouteTemplates};

#[derive(Tags)]
pub enum ApiTags {
    /// Trigger automation actions and follow their jobs.
    Jobs,
    /// Liveness and readiness probes.
    Health,
}

/// What the composition root hands to `routes`. Nothing reads it per request: `routes` gives
/// each API struct and middleware the parts it uses, as its own fields.
pub struct Parts {
    pub store: Store,
    /// The executor (for cancels).
    pub executor: Arc<Executor>,
    /// The actions that exist.
    pub catalog: crate::executor::ActionCatalog,
    pub metrics: Arc<Metrics>,
    /// False once shutdown begins: readiness fails first.
    pub accepting: Arc<AtomicBool>,
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
    /// The event fan-out that streams and long-polls follow.
    pub hub: crate::live::EventHub,
    /// Callback URL checks.
    pub webhooks: crate::live::webhooks::Webhooks,
    /// Heartbeat period of event streams.
    pub heartbeat: std::time::Duration,
    /// Longest long-poll (below the request timeout, which would cut it).
    pub max_wait: std::time::Duration,
}

/// The operations, in the order the document lists them.
type Apis = (jobs::JobsApi, live::LiveApi, actions::ActionsApi, health::HealthApi);

fn service<T: OpenApi>(apis: T) -> OpenApiService<T, ()> {
    OpenApiService::new(apis, "automation-gateway", env!("CARGO_PKG_VERSION"))
        .description(
            "One REST API to trigger automation actions as durable, asynchronous jobs, with business \
             metrics for Prometheus. Every error is `application/problem+json` (RFC 9457).",
        )
        .license("Apache-2.0")
}

/// The OpenAPI document as served with the built-in actions (what `automation-gateway openapi`
/// prints and `openapi.json` holds).
pub fn spec_json() -> String {
    spec_for(&crate::executor::ActionCatalog::built_in_names())
}

/// The OpenAPI document for a catalog: the action fields' descriptions list its names.
pub fn spec_for(actions: &[&str]) -> String {
    let list: Vec<String> = actions.iter().map(|a| format!("`{a}`")).collect();
    service(Described::<Apis>(PhantomData)).spec().replace(model::ACTION_NAMES, &list.join(", "))
}

/// The API types without their dependencies: the document is built from the types alone
/// (`OpenApi::meta` and `register` take no `self`), so `automation-gateway openapi` and Swagger
/// UI need no database. It routes nothing.
struct Described<T>(PhantomData<T>);

impl<T: OpenApi> OpenApi for Described<T> {
    fn meta() -> Vec<poem_openapi::registry::MetaApi> {
        T::meta()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        T::register(registry);
    }

    fn add_routes(self, _: &mut HashMap<String, HashMap<poem::http::Method, poem::endpoint::BoxEndpoint<'static>>>) {}
}

/// Every route, with middleware, ready to serve.
pub fn routes(parts: Parts, max_body_bytes: usize, request_timeout: std::time::Duration) -> impl Endpoint {
    let Parts {
        store,
        executor,
        catalog,
        metrics,
        accepting,
        auth,
        limiter,
        failures,
        failure_log,
        metrics_require_token,
        hub,
        webhooks,
        heartbeat,
        max_wait,
    } = parts;
    let spec = spec_for(&catalog.names());
    let auth_enabled = auth.enabled();
    let gate = auth::Gate { auth, limiter, failures, failure_log, metrics_require_token, metrics: metrics.clone() };
    let commands = commands::Commands {
        store: store.clone(),
        executor,
        catalog: catalog.clone(),
        metrics: metrics.clone(),
        webhooks,
    };
    let apis: Apis = (
        jobs::JobsApi { commands, store: store.clone(), catalog: catalog.clone(), hub: hub.clone(), max_wait },
        live::LiveApi { store: store.clone(), catalog: catalog.clone(), hub, heartbeat },
        actions::ActionsApi { catalog },
        health::HealthApi { store, accepting, auth_enabled },
    );
    let svc = service(apis);
    let spec_value: serde_json::Value = serde_json::from_str(&spec).unwrap_or_default();
    Route::new()
        .nest("/", svc)
        .nest("/docs", LazyDocs(OnceLock::new()))
        .nest("/ui", ui::Console)
        .at("/openapi.json", get(openapi_json).data(Arc::new(spec)))
        .at("/metrics", get(metrics_text).data(metrics.clone()))
        .with(problem::Problems { max_body_bytes, request_timeout })
        // Outside `Problems`, which reads the body: a caller is authenticated before any byte
        // of its body is read or buffered.
        .with(gate)
        .with(request_id::RequestIds)
        .with(CatchPanic::new().with_handler(|_| problem::response(&problem::Problem::internal())))
        .with(HttpMetrics { metrics, routes: Arc::new(route_templates(&spec_value)) })
}

/// The metric labels: every path of the OpenAPI document, and the routes outside it.
fn route_templates(spec: &serde_json::Value) -> RouteTemplates {
    let documented = spec["paths"].as_object().map(|p| p.keys().map(String::as_str).collect::<Vec<_>>());
    let mut templates = documented.unwrap_or_default();
    templates.extend(["/metrics", "/openapi.json"]);
    RouteTemplates::new(templates, &["/docs", "/ui"])
}

/// Swagger UI, built on its first request: its page embeds about 1.5 MB of JavaScript that
/// would otherwise sit in memory from start-up on every replica.
struct LazyDocs(OnceLock<poem::endpoint::BoxEndpoint<'static>>);

impl Endpoint for LazyDocs {
    type Output = Response;

    async fn call(&self, req: poem::Request) -> poem::Result<Response> {
        self.0
            .get_or_init(|| service(Described::<Apis>(PhantomData)).swagger_ui().map_to_response().boxed())
            .call(req)
            .await
    }
}

#[handler]
fn openapi_json(spec: Data<&Arc<String>>) -> Response {
    Response::builder().content_type("application/json").body(spec.0.as_str().to_owned())
}

/// `/metrics`. When it needs a token, `auth::Gate` has checked it already.
#[handler]
fn metrics_text(metrics: Data<&Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => Response::builder().content_type("text/plain; version=0.0.4; charset=utf-8").body(text),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            problem::response(&problem::Problem::internal()).into_response()
        }
    }
}
