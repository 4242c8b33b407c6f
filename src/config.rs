//! The one validated `Config`, from command-line flags with environment fallbacks (exact names
//! from the contract), made of each area's own settings: the store, the HTTP side, the executor
//! and telemetry each define theirs and see nothing else. Nothing else in the crate reads the
//! environment.

use clap::{Parser, Subcommand};

use crate::{api, executor, store, telemetry};

/// `--version`: the release and the commit it was built from (see build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("GATEWAY_GIT_COMMIT"), ")");

/// automation-gateway: a durable job API for automation actions, with business metrics.
#[derive(Debug, Parser)]
#[command(version = VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings (each also read from its environment variable).
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Apply database migrations, then serve the API and run jobs (the default).
    Serve,
    /// Apply pending database migrations and exit (for a Kubernetes init step).
    Migrate,
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Print a new random API token and the SHA-256 hash to put in the tokens file.
    Token,
    /// Check an actions file (names, runners, keys, templates, schemas) without starting; exit
    /// 0 when it is valid, 1 when not, 2 when it cannot be read.
    CheckActions {
        /// The YAML actions file.
        file: std::path::PathBuf,
    },
    /// A client of a running gateway: submit, wait for, list, cancel and follow jobs. Exit
    /// codes: 0 SUCCESS, 1 FAILED, 2 CANCELED, 3 timeout, 4 usage, 5 HTTP or auth error.
    Jobs {
        #[command(flatten)]
        client: crate::cli::ClientArgs,
        #[command(subcommand)]
        command: crate::cli::JobsCommand,
    },
}

/// Every setting of the service, by area.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The database.
    #[command(flatten, next_help_heading = "Database")]
    pub store: store::Settings,
    /// Serving and protecting the API.
    #[command(flatten, next_help_heading = "HTTP and authentication")]
    pub http: api::Settings,
    /// Running jobs.
    #[command(flatten, next_help_heading = "Jobs")]
    pub executor: executor::Settings,
    /// Event streams and completion webhooks.
    #[command(flatten, next_help_heading = "Event streams and webhooks")]
    pub live: crate::live::Settings,
    /// Logs and traces.
    #[command(flatten, next_help_heading = "Telemetry")]
    pub telemetry: telemetry::Settings,
}

/// Every environment variable the service reads. Anything else named `GATEWAY_*` is a typo.
pub const KNOWN_ENV: &[&str] = &[
    "DATABASE_URL",
    "GATEWAY_LISTEN",
    "GATEWAY_WORKERS",
    "GATEWAY_MAX_PENDING",
    "GATEWAY_SIM_DURATION_MS",
    "GATEWAY_SIM_FAILURE_RATE",
    "GATEWAY_ACTION_POLICY",
    "GATEWAY_ACTIONS_FILE",
    "GATEWAY_LEASE_SECS",
    "GATEWAY_SHUTDOWN_GRACE_SECS",
    "GATEWAY_SHUTDOWN_DELAY_MS",
    "GATEWAY_POLL_INTERVAL_MS",
    "GATEWAY_MAX_BODY_BYTES",
    "GATEWAY_DB_MAX_CONNECTIONS",
    "GATEWAY_SQLITE_MAX_SIZE_MB",
    "GATEWAY_RETENTION_DAYS",
    "GATEWAY_RETENTION_INTERVAL_SECS",
    "GATEWAY_MAX_CONNECTIONS",
    "GATEWAY_AUTH_TOKENS_FILE",
    "GATEWAY_METRICS_REQUIRE_TOKEN",
    "GATEWAY_RATE_LIMIT",
    "GATEWAY_RATE_LIMIT_BURST",
    "GATEWAY_REQUEST_TIMEOUT_SECS",
    "GATEWAY_HEADER_TIMEOUT_SECS",
    "GATEWAY_SSE_HEARTBEAT_MS",
    "GATEWAY_SSE_BUFFER",
    "GATEWAY_EVENT_POLL_MS",
    "GATEWAY_WEBHOOK_SECRET_FILE",
    "GATEWAY_WEBHOOK_ALLOWED_HOSTS",
    "GATEWAY_WEBHOOK_ALLOW_PRIVATE",
    "GATEWAY_WEBHOOK_RETRY_BASE_MS",
    "GATEWAY_WEBHOOK_GIVE_UP_AFTER_S",
    "GATEWAY_WEBHOOK_TIMEOUT_MS",
    // Read by the `jobs` client subcommands, not by the server.
    "GATEWAY_URL",
    "GATEWAY_TOKEN",
    "GATEWAY_TOKEN_FILE",
    "LOKI_URL",
    "GATEWAY_LOKI_TENANT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "GATEWAY_ENV",
    "RUST_LOG",
];

impl Config {
    /// `GATEWAY_*` variables set in the environment that no setting reads.
    pub fn unknown_env_vars() -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with("GATEWAY_") && !KNOWN_ENV.contains(&k.as_str()))
            .collect()
    }

    /// A config for tests and embedding: every default, the given database.
    pub fn for_database(url: &str) -> Result<Self, String> {
        let cli = Cli::try_parse_from(["automation-gateway", "--database-url", url]).map_err(|e| e.to_string())?;
        Ok(cli.config)
    }

    /// The effective settings as `key=value` pairs, secrets redacted, for the start-up log.
    pub fn summary(&self) -> String {
        let (s, h, e, t) = (&self.store, &self.http, &self.executor, &self.telemetry);
        format!(
            "database_url={} listen={} max_connections={} workers={} max_pending={} sim_duration_ms={} sim_failure_rate={} lease_secs={} shutdown_grace_secs={} shutdown_delay_ms={} poll_interval_ms={} max_body_bytes={} sqlite_max_size_mb={} retention_days={} auth={} rate_limit={}/s burst {} request_timeout_secs={} header_timeout_secs={} loki={} otlp={} env={}",
            s.database_url,
            h.listen,
            h.max_connections,
            e.workers,
            s.max_pending,
            e.sim_duration_ms,
            e.sim_failure_rate,
            e.lease_secs,
            e.shutdown_grace_secs,
            h.shutdown_delay_ms,
            e.poll_interval_ms,
            h.max_body_bytes,
            s.sqlite_max_size_mb,
            e.retention_days,
            h.auth_tokens_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "OFF (open API)".into()),
            h.rate_limit,
            h.rate_limit_burst,
            h.request_timeout_secs,
            h.header_timeout_secs,
            t.loki_url.as_ref().map(|u| u.as_str()).unwrap_or("off"),
            t.otlp_endpoint.as_ref().map(|u| u.as_str()).unwrap_or("off"),
            t.env_name,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_setting_reads_a_known_variable() {
        let cmd = Cli::command();
        let mut envs: Vec<String> = cmd
            .get_arguments()
            .chain(cmd.get_subcommands().flat_map(|c| c.get_arguments()))
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        // GATEWAY_TOKEN is read by the client directly (never a flag: it would show in `ps`).
        envs.push("GATEWAY_TOKEN".into());
        envs.sort();
        envs.dedup();
        for env in &envs {
            assert!(KNOWN_ENV.contains(&env.as_str()), "{env} is read but not in KNOWN_ENV");
        }
        assert_eq!(envs.len(), KNOWN_ENV.len(), "KNOWN_ENV lists a variable no setting reads");
    }
}
