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
use crate::executor::runners::{Runners, SimulatedRunner};
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
}

/// A built application, ready to serve.
pub struct App {
    config: Config,
    store: Store,
    metrics: Arc<Metrics>,
    executor: Arc<Executor>,
    accepting: Arc<AtomicBool>,
    auth: Authenticator,
}

impl App {
    /// Connects to the database, applies migrations, and starts the executor.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let auth = match &config.auth_tokens_file {
            Some(path) => {
                let auth = Authenticator::from_file(path)?;
                tracing::info!(tokens = auth.token_count(), file = %path.display(), "authentication enabled");
                auth
            }
            None => {
                tracing::warn!(
                    "AUTHENTICATION IS OFF: GATEWAY_AUTH_TOKENS_FILE is not set, so anyone who can reach this API can trigger actions"
                );
                Authenticator::open()
            }
        };
        let store = Store::connect(&config).await?;
        store.migrate().await?;
        let metrics = Arc::new(Metrics::new()?);
        let runners = Runners::all(Arc::new(SimulatedRunner::new(config.sim_duration_ms, config.sim_failure_rate)));
        let executor = Arc::new(Executor::start(store.clone(), metrics.clone(), runners, &config).await?);
        Ok(Self { config, store, metrics, executor, accepting: Arc::new(AtomicBool::new(true)), auth })
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
            metrics: self.metrics.clone(),
            accepting: self.accepting.clone(),
            auth: self.auth.clone(),
            limiter: Arc::new(RateLimiter::new(self.config.rate_limit, self.config.rate_limit_burst)),
            metrics_require_token: self.config.metrics_require_token,
        };
        let routes = api::routes(
            state,
            self.config.max_body_bytes as usize,
            Duration::from_secs(self.config.request_timeout_secs),
        );
        let reload = tokio::spawn(reload_tokens(self.auth.clone()));
        let accepting = self.accepting.clone();
        let store = self.store.clone();
        let delay = Duration::from_millis(self.config.shutdown_delay_ms);
        let signal = async move {
            shutdown.await;
            tracing::info!(delay_ms = delay.as_millis() as u64, "shutdown requested: readiness now fails");
            accepting.store(false, Ordering::SeqCst);
            // Keep serving while load balancers notice the failing readiness.
            tokio::time::sleep(delay).await;
            tracing::info!("no longer accepting connections or new jobs; draining");
            store.close_for_writes();
        };
        serve(listener, routes, Duration::from_secs(self.config.header_timeout_secs), signal).await;
        reload.abort();
        self.executor.shutdown().await;
        self.store.close().await;
        self.metrics.shutdown();
        tracing::info!("stopped");
        Ok(())
    }
}

/// The HTTP server: hyper with a header-read deadline (slow clients cannot pin connections),
/// the poem endpoint as the service, and a graceful drain of in-flight requests on shutdown.
/// poem's own server has no header timeout, hence this small loop.
async fn serve(
    listener: tokio::net::TcpListener,
    routes: impl poem::Endpoint + 'static,
    header_timeout: Duration,
    signal: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use poem::{Endpoint, EndpointExt};

    let endpoint = Arc::new(routes.map_to_response().boxed());
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(128 * 1024)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(header_timeout * 3));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let local = listener.local_addr().ok();
    let mut signal = std::pin::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let endpoint = endpoint.clone();
        let local_addr =
            poem::web::LocalAddr(local.map(poem::Addr::SocketAddr).unwrap_or(poem::Addr::Custom("tcp", "".into())));
        let remote_addr = poem::web::RemoteAddr(poem::Addr::SocketAddr(peer));
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let endpoint = endpoint.clone();
            let req =
                poem::Request::from((req, local_addr.clone(), remote_addr.clone(), poem::http::uri::Scheme::HTTP));
            async move { Ok::<_, std::convert::Infallible>(hyper::Response::from(endpoint.get_response(req).await)) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // hyper's header deadline starts with a request's first byte, so a connection that
            // never sends one would stay open for ever: it gets the same deadline to start.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                // Silent past the deadline, closed, or broken: drop it.
                _ => return,
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            // Errors here are clients going away or timing out; nothing to report.
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests still open after 10 s; closing them");
    }
}

/// Re-reads the tokens file every few seconds, so rotated tokens take effect without a restart.
async fn reload_tokens(auth: Authenticator) {
    if !auth.enabled() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        match auth.reload() {
            Ok(true) => tracing::info!(tokens = auth.token_count(), "tokens file reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "tokens file not reloaded; the previous tokens stay in force"),
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
