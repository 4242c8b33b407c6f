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
use crate::server;
use crate::store::{self, Store};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::SetupError;

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
        let store = Store::connect(&config.store).await?;
        store.migrate().await?;
        let metrics = Arc::new(Metrics::new(&catalog.actions())?);
        let executor =
            Arc::new(Executor::start(store.clone(), metrics.clone(), catalog.clone(), &config.executor).await?);
        Ok(Self { config, store, metrics, executor, catalog, accepting: Arc::new(AtomicBool::new(true)), auth })
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
        let state = api::State {
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
        };
        let routes = api::routes(
            state,
            self.config.http.max_body_bytes as usize,
            Duration::from_secs(self.config.http.request_timeout_secs),
        );
        let reload = tokio::spawn(reload_tokens(self.auth.clone()));
        let accepting = self.accepting.clone();
        let store = self.store.clone();
        let delay = Duration::from_millis(self.config.http.shutdown_delay_ms);
        let signal = async move {
            shutdown.await;
            tracing::info!(delay_ms = delay.as_millis() as u64, "shutdown requested: readiness now fails");
            accepting.store(false, Ordering::SeqCst);
            // Keep serving while load balancers notice the failing readiness.
            tokio::time::sleep(delay).await;
            tracing::info!("no longer accepting connections or new jobs; draining");
            store.close_for_writes();
        };
        let limits = server::Limits {
            header_timeout: Duration::from_secs(self.config.http.header_timeout_secs),
            max_connections: self.config.http.max_connections as usize,
        };
        server::raise_open_files_limit();
        server::serve(listener, routes, limits, self.metrics.clone(), signal).await;
        reload.abort();
        self.executor.shutdown().await;
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
