//! Logs and metrics: the JSON log subscriber (stdout, plus Loki when `LOKI_URL` is set) and the
//! OpenTelemetry meter bridged to Prometheus. Other modules record through typed functions.

pub mod http;
pub mod metrics;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use metrics::Metrics;

use crate::config::Config;

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The `RUST_LOG` filter does not parse.
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(String),
    /// The Loki exporter refused its settings.
    #[error("invalid Loki settings: {0}")]
    Loki(String),
}

/// Installs the global subscriber: JSON lines on stdout, and Loki when configured. Loki gets
/// only low-cardinality labels (app, env, level); job ids travel as fields.
pub fn init_logs(config: &Config) -> Result<(), LogError> {
    let filter = EnvFilter::try_new(&config.log).map_err(|e| LogError::Filter(e.to_string()))?;
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        // `target` is the job's target in our lines; the module path would collide with it.
        .with_target(false);
    let loki = match &config.loki_url {
        Some(url) => {
            let (layer, task) = tracing_loki::builder()
                .label("app", "automation-gateway")
                .and_then(|b| b.label("env", config.env_name.as_str()))
                .map_err(|e| LogError::Loki(e.to_string()))?
                .build_url(url.clone())
                .map_err(|e| LogError::Loki(e.to_string()))?;
            tokio::spawn(task);
            Some(layer)
        }
        None => None,
    };
    // A second init (tests build several apps in one process) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(loki).try_init();
    Ok(())
}
