//! The telemetry settings (flags with environment fallbacks): log filter, Loki, OTLP.

/// Where logs and traces go.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "telemetry")]
pub struct Settings {
    /// Push logs to this Loki base URL (for example `http://loki:3100`); off when unset.
    #[arg(long, env = "LOKI_URL")]
    pub loki_url: Option<url::Url>,

    /// Loki tenant, sent as `X-Scope-OrgID` with every push. Loki in multi-tenant mode (the
    /// Loki Helm chart's default) answers 401 without it.
    #[arg(long, env = "GATEWAY_LOKI_TENANT")]
    pub loki_tenant: Option<String>,

    /// Export traces (HTTP requests and job attempts) over OTLP/HTTP to this collector base URL,
    /// e.g. `http://tempo:4318` (spans go to `/v1/traces`); off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<url::Url>,

    /// Environment name, sent to Loki as the `env` label.
    #[arg(long = "env-name", env = "GATEWAY_ENV", default_value = "dev")]
    pub env_name: String,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `automation_gateway=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}
