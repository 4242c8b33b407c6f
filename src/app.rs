//! The composition root: builds the store, metrics, executor and routes from a `Config`, and
//! owns the shutdown order. Holds no business rules and no SQL.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::api;
use crate::auth::{Authenticator, RateLimiter};
use crate::config::Config;
use crate::executor::Executor;
use crate::executor::runners::SimulatedRunner;
use crate::executor::{ActionCatalog, CatalogError};
use crate::live::EventHub;
use crate::live::webhooks::Webhooks;
use crate::server;
use crate::store::{self, Store};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::SetupError;
use tokio_util::sync::CancellationToken;

/// Start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] store::Error),
    /// Metrics could not be set up.
    #[error(transparent)]
    Metrics(#[from] SetupError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The tokens file is unusable.
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
    /// The actions catalog is inconsistent.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The webhook settings are unusable.
    #[error(transparent)]
    Webhooks(#[from] crate::live::webhooks::SetupError),
    /// An action's default `callback_url` is not allowed by the webhook settings.
    #[error("action '{action}': callback_url: {reason}")]
    Callback { action: String, reason: String },
}

/// A built application, ready to serve.
pub struct App {
    config: Config,
    store: Store,
    metrics: Arc<Metrics>,
    executor: Arc<Executor>,
    catalog: ActionCatalog,
    accepting: Arc<AtomicBool>,
    auth: Authenticator,
    hub: EventHub,
    webhooks: Webhooks,
}

impl App {
    /// The built-in actions catalog, on the simulated runner, with the configured policy
    /// overrides.
    pub fn built_in_catalog(config: &Config) -> Result<ActionCatalog, AppError> {
        let e = &config.executor;
        let runner = Arc::new(SimulatedRunner::new(e.sim_duration_ms, e.sim_failure_rate));
        Ok(ActionCatalog::built_in(runner, &e.action_policy)?)
    }

    /// The actions of the configured actions file, or the built-in ones without one.
    pub fn catalog(config: &Config) -> Result<ActionCatalog, AppError> {
        let e = &config.executor;
        match &e.actions_file {
            Some(path) => {
                let sim = SimulatedRunner::new(e.sim_duration_ms, e.sim_failure_rate);
                Ok(ActionCatalog::from_file(path, &sim, &e.action_policy)?)
            }
            None => Self::built_in_catalog(config),
        }
    }

    /// Connects to the database, applies migrations, and starts the executor, with the
    /// configured actions.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let catalog = Self::catalog(&config)?;
        Self::build_with(config, catalog).await
    }

    /// `build`, with these actions.
    pub async fn build_with(config: Config, catalog: ActionCatalog) -> Result<Self, AppError> {
        crate::install_tls_provider();
        let auth = match &config.http.auth_tokens_file {
            Some(path) => {
                let auth = Authenticator::from_file(path, &catalog.actions())?;
                tracing::info!(tokens = auth.token_count(), file = %path.display(), "authentication enabled");
                if auth.token_count() == 0 {
                    tracing::warn!(file = %path.display(), "the tokens file lists no token: every request is refused");
                }
                auth
            }
            None => {
                tracing::warn!(
                    "AUTHENTICATION IS OFF: GATEWAY_AUTH_TOKENS_FILE is not set, so anyone who can reach this API can trigger actions"
                );
                Authenticator::open()
            }
        };
        let webhooks = Webhooks::from_settings(&config.live)?;
        for entry in catalog.entries() {
            if let Some(url) = &entry.callback_url {
                webhooks
                    .check_url(url)
                    .map_err(|reason| AppError::Callback { action: entry.action.to_string(), reason })?;
            }
        }
        let store = Store::connect(&config.store).await?;
        store.migrate().await?;
        let metrics = Arc::new(Metrics::new(&catalog.actions())?);
        let executor =
            Arc::new(Executor::start(store.clone(), metrics.clone(), catalog.clone(), &config.executor).await?);
        // Other replicas' events are found by polling the log (PostgreSQL); on SQLite this
        // process writes every event and wakes the hub itself.
        let poll = config.store.database_url.is_postgres().then(|| Duration::from_millis(config.live.event_poll_ms));
        let hub = EventHub::start(store.clone(), config.live.sse_buffer as usize, poll).await?;
        Ok(Self {
            config,
            store,
            metrics,
            executor,
            catalog,
            accepting: Arc::new(AtomicBool::new(true)),
            auth,
            hub,
            webhooks,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then shuts down in order: readiness
    /// fails, HTTP stops accepting and drains, the executor stops claiming and gives running
    /// jobs the grace period, results are flushed, the pools close.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "serving HTTP");
        let parts = api::Parts {
            store: self.store.clone(),
            executor: self.executor.clone(),
            catalog: self.catalog.clone(),
            metrics: self.metrics.clone(),
            accepting: self.accepting.clone(),
            auth: self.auth.clone(),
            limiter: Arc::new(RateLimiter::new(self.config.http.rate_limit, self.config.http.rate_limit_burst)),
            failures: Arc::new(RateLimiter::new(api::auth::FAILURES_PER_SEC, api::auth::FAILURES_BURST)),
            failure_log: Arc::new(crate::auth::LogBudget::new(10)),
            metrics_require_token: self.config.http.metrics_require_token,
            hub: self.hub.clone(),
            webhooks: self.webhooks.clone(),
            heartbeat: self.config.live.heartbeat(),
            max_wait: Duration::from_secs(self.config.http.request_timeout_secs)
                .saturating_sub(Duration::from_secs(1))
                .clamp(Duration::from_secs(1), Duration::from_secs(60)),
        };
        let deliveries = CancellationToken::new();
        let deliverer = self.webhooks.enabled().then(|| {
            let render: crate::live::webhooks::Render = Arc::new(|job: &crate::jobs::Job| {
                serde_json::to_value(api::model::JobOut::from(job.clone())).unwrap_or_default()
            });
            tokio::spawn(crate::live::webhooks::deliver_loop(
                self.webhooks.clone(),
                self.store.clone(),
                self.metrics.clone(),
                render,
                uuid::Uuid::now_v7(),
                deliveries.clone(),
            ))
        });
        let routes = api::routes(
            parts,
            self.config.http.max_body_bytes as usize,
            Duration::from_secs(self.config.http.request_timeout_secs),
        );
        let reload = tokio::spawn(reload_tokens(self.auth.clone()));
        let trim = CancellationToken::new();
        tokio::spawn(crate::memory::trim_loop(trim.clone()));
        let accepting = self.accepting.clone();
        let store = self.store.clone();
        let delay = Duration::from_millis(self.config.http.shutdown_delay_ms);
        let hub = self.hub.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!(delay_ms = delay.as_millis() as u64, "shutdown requested: readiness now fails");
            accepting.store(false, Ordering::SeqCst);
            // Keep serving while load balancers notice the failing readiness.
            tokio::time::sleep(delay).await;
            tracing::info!("no longer accepting connections or new jobs; draining");
            // Open event streams end here (clients resume elsewhere with Last-Event-ID).
            hub.stop();
            store.close_for_writes();
        };
        let limits = server::Limits {
            header_timeout: Duration::from_secs(self.config.http.header_timeout_secs),
            max_connections: self.config.http.max_connections as usize,
        };
        server::raise_open_files_limit();
        server::serve(listener, routes, limits, self.metrics.clone(), signal).await;
        reload.abort();
        trim.cancel();
        self.executor.shutdown().await;
        // Tries in flight finish; what is left stays in the outbox for any replica.
        deliveries.cancel();
        if let Some(d) = deliverer {
            match d.await {
                Ok(Err(e)) => tracing::error!(error = %e, "webhook deliveries stopped"),
                Err(e) => tracing::error!(error = %e, "webhook deliverer failed"),
                Ok(Ok(())) => {}
            }
        }
        self.store.close().await;
        self.metrics.shutdown();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Looks at the tokens file every few seconds, so rotated tokens take effect without a restart.
/// Reading and parsing run on the blocking pool, never on a runtime thread serving requests.
async fn reload_tokens(auth: Authenticator) {
    use crate::auth::Reload;
    if !auth.enabled() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let auth = auth.clone();
        let Ok(outcome) = tokio::task::spawn_blocking(move || auth.reload()).await else { continue };
        match outcome {
            Reload::Unchanged => {}
            Reload::Loaded(tokens) => tracing::info!(tokens, "tokens file reloaded"),
            Reload::Revoked => tracing::error!(
                "tokens file deleted: every token is revoked and every request is refused until the file is back"
            ),
            Reload::Refused(e @ crate::auth::Error::TooLarge { .. }) => {
                tracing::error!(error = %e, "tokens file too large, not read; the previous tokens stay in force")
            }
            Reload::Refused(e) => {
                tracing::error!(error = %e, "tokens file not reloaded; the previous tokens stay in force")
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
