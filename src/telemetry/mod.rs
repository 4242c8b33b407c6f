//! Logs and metrics: the JSON log subscriber (stdout, plus Loki when `LOKI_URL` is set) and the
//! OpenTelemetry meter bridged to Prometheus. Other modules record through typed functions.

pub mod http;
pub mod metrics;
mod settings;
pub mod trace;

/// An error with its causes, outermost first (`a: b: c`): libraries such as reqwest put the
/// useful part (connection refused, certificate expired) in a source, not in their own message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use metrics::Metrics;
pub use settings::Settings;

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The `RUST_LOG` filter does not parse.
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(String),
    /// The Loki exporter refused its settings.
    #[error("invalid Loki settings: {0}")]
    Loki(String),
    /// The OTLP exporter refused its settings.
    #[error("invalid OTLP settings: {0}")]
    Otlp(String),
}

/// Owns the exporters that must be flushed before the process exits.
#[derive(Default)]
pub struct TelemetryGuard {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops the trace exporter (no-op when tracing is off).
    pub fn shutdown(self) {
        if let Some(t) = self.tracer {
            let _ = t.shutdown();
        }
    }
}

fn otlp_tracer(endpoint: &url::Url) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, LogError> {
    use opentelemetry_otlp::WithExportConfig;
    let traces = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .build()
        .map_err(|e| LogError::Otlp(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("automation-gateway").build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The filter, with kube-rs's request logger silenced unless the filter names kube itself: it
/// logs every error answer at ERROR, without a job id, including the ones the kubernetes runner
/// retries and reports in its own lines.
fn log_directives(filter: &str) -> String {
    if filter.contains("kube") {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        "kube_client::client::builder=off".to_owned()
    } else {
        format!("{filter},kube_client::client::builder=off")
    }
}

/// Installs the global subscriber: JSON lines on stdout, and Loki when configured. Loki gets
/// only low-cardinality labels (app, env, level); job ids travel as fields.
pub fn init_logs(config: &Settings) -> Result<TelemetryGuard, LogError> {
    // The OTLP exporter builds its HTTP client below.
    crate::install_tls_provider();
    let directives = log_directives(&config.log);
    let filter = EnvFilter::try_new(&directives).map_err(|e| LogError::Filter(e.to_string()))?;
    let format = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        // `target` is the job's target in our lines; the module path would collide with it.
        .with_target(false);
    // With spans exported, lines written inside one carry its trace and span ids.
    let fmt = tracing_subscriber::fmt::layer()
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(trace::WithTraceIds { on: config.otlp_endpoint.is_some(), format });
    let loki = match &config.loki_url {
        Some(url) => {
            let builder = tracing_loki::builder()
                .label("app", "automation-gateway")
                .and_then(|b| b.label("env", config.env_name.as_str()))
                .map_err(|e| LogError::Loki(e.to_string()))?;
            let builder = match &config.loki_tenant {
                Some(tenant) => {
                    builder.http_header("X-Scope-OrgID", tenant).map_err(|e| LogError::Loki(e.to_string()))?
                }
                None => builder,
            };
            let (layer, task) = builder.build_url(url.clone()).map_err(|e| LogError::Loki(e.to_string()))?;
            tokio::spawn(task);
            Some(layer)
        }
        None => None,
    };
    let mut guard = TelemetryGuard::default();
    let otel = match &config.otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry::trace::TracerProvider as _;
            let provider = otlp_tracer(endpoint)?;
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("automation-gateway"));
            guard.tracer = Some(provider);
            Some(layer)
        }
        None => None,
    };
    // A second init (tests build several apps in one process) keeps the first subscriber.
    // Each sink has its own filter: the log lines follow RUST_LOG, while the trace exporter takes
    // this crate's spans (emitted at DEBUG, so without an exporter they cost nothing per request).
    let loki_filter = EnvFilter::try_new(&directives).map_err(|e| LogError::Filter(e.to_string()))?;
    let spans = Targets::new().with_target("automation_gateway", Level::DEBUG);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(loki.map(|l| l.with_filter(loki_filter)))
        .with(otel.map(|o| o.with_filter(spans)))
        .try_init();
    Ok(guard)
}
