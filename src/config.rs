//! The one validated `Config`, from command-line flags with environment fallbacks (exact names
//! from the contract). Nothing else in the crate reads the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::jobs::Action;

/// automation-gateway: a durable job API for automation actions, with business metrics.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings (each also read from its environment variable).
    #[command(flatten)]
    pub config: Config,
}

/// Subcommands.
#[derive(Debug, Clone, Copy, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Apply database migrations, then serve the API and run jobs (the default).
    Serve,
    /// Apply pending database migrations and exit (for a Kubernetes init step).
    Migrate,
    /// Print the OpenAPI document and exit.
    Openapi,
    /// Print a new random API token and the SHA-256 hash to put in the tokens file.
    Token,
}

/// Every setting of the service.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Database: `sqlite://PATH?mode=rwc` (one process) or `postgres://USER@HOST/DB` (many replicas).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://automation-gateway.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// Address and port to serve HTTP on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// Jobs executed at once by this process. `0` makes an API-only replica: it accepts and
    /// serves jobs but runs none (other replicas on the same PostgreSQL database run them).
    #[arg(long, env = "GATEWAY_WORKERS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub workers: u32,

    /// Pending jobs accepted before new ones are refused with 429 and Retry-After.
    #[arg(long, env = "GATEWAY_MAX_PENDING", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_pending: u64,

    /// Simulated run time of a job in milliseconds: `N` or `MIN-MAX` (uniformly random).
    #[arg(long, env = "GATEWAY_SIM_DURATION_MS", default_value = "200-2000")]
    pub sim_duration_ms: SimDuration,

    /// Probability that a simulated run fails, from 0 to 1.
    #[arg(long, env = "GATEWAY_SIM_FAILURE_RATE", default_value_t = 0.05, value_parser = parse_rate)]
    pub sim_failure_rate: f64,

    /// Per-action policy overrides, comma-separated `ACTION.KEY=VALUE`; keys: `timeout_ms`,
    /// `max_attempts`, `backoff_ms` (first retry delay, doubled each attempt, with jitter) and
    /// `on_lost` (`fail` or `retry`: what happens to a job whose worker died).
    /// Example: `restart_service.timeout_ms=60000,health_check.max_attempts=5`.
    #[arg(long, env = "GATEWAY_ACTION_POLICY", default_value = "")]
    pub action_policy: ActionPolicies,

    /// Seconds a worker's claim on a job lasts without a heartbeat; a job whose lease expires is
    /// recovered by any process according to its action's `on_lost` policy.
    #[arg(long, env = "GATEWAY_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_secs: u64,

    /// Seconds running jobs get to finish after SIGTERM/SIGINT before they are interrupted and
    /// left for recovery.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,

    /// Milliseconds between SIGTERM and closing the listener: readiness fails at once, but
    /// requests are still served meanwhile, so a load balancer can take the replica out of
    /// rotation before connections are refused (like a preStop delay).
    #[arg(long, env = "GATEWAY_SHUTDOWN_DELAY_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_delay_ms: u64,

    /// Fallback poll interval of the dispatcher in milliseconds (wake-ups normally come by
    /// notification).
    #[arg(long, env = "GATEWAY_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_interval_ms: u64,

    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub max_body_bytes: u64,

    /// Largest size of the SQLite database file in MiB (SQLite's `max_page_count`); 0 means no
    /// cap. Reaching it behaves exactly as a full disk: new jobs get 503 `storage-full`, nothing
    /// accepted is lost, and writes resume once room is made (retention, a larger cap).
    #[arg(long, env = "GATEWAY_SQLITE_MAX_SIZE_MB", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16_777_216))]
    pub sqlite_max_size_mb: u64,

    /// Days a finished job (SUCCESS, FAILED, CANCELED) and its events are kept; older ones are
    /// deleted in small batches. 0 keeps everything. Fractions are allowed (0.5 = 12 hours).
    #[arg(long, env = "GATEWAY_RETENTION_DAYS", default_value_t = 30.0, value_parser = parse_days)]
    pub retention_days: f64,

    /// Seconds between two retention passes (the first runs at start-up).
    #[arg(long, env = "GATEWAY_RETENTION_INTERVAL_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub retention_interval_secs: u64,

    /// Connections in the database pool (PostgreSQL; SQLite uses one writer and a few readers).
    #[arg(long, env = "GATEWAY_DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub db_max_connections: u32,

    /// API tokens file (YAML: name, sha256, actions, can_read, can_cancel per token). When set,
    /// every `/v1` request needs `Authorization: Bearer <token>`; the file is re-read when it
    /// changes, so tokens rotate without a restart. Unset: the API is open (logged loudly).
    #[arg(long, env = "GATEWAY_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<std::path::PathBuf>,

    /// Require a valid token for `/metrics` too (when a tokens file is set).
    #[arg(long, env = "GATEWAY_METRICS_REQUIRE_TOKEN", default_value_t = false, action = clap::ArgAction::Set)]
    pub metrics_require_token: bool,

    /// Requests per second each identity may make to `/v1` (a token bucket); 0 turns the limit
    /// off. Over the limit: 429 with Retry-After.
    #[arg(long, env = "GATEWAY_RATE_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub rate_limit: u32,

    /// Burst size of the per-identity rate limit.
    #[arg(long, env = "GATEWAY_RATE_LIMIT_BURST", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate_limit_burst: u32,

    /// Seconds a request may take, from its headers to the end of its answer (a slow body
    /// counts); past it the client gets 408 (while reading the body) or 503.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,

    /// Seconds a client may take to start and send a request's headers; slower connections are
    /// closed (slowloris protection), and so are connections idle this long between requests.
    #[arg(long, env = "GATEWAY_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_timeout_secs: u64,

    /// Open HTTP connections this process serves at once; past it, new connections are closed at
    /// once (logged, and counted in `automation_http_connections_refused_total`). At start the
    /// process raises its soft open-files limit to the hard limit.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Push logs to this Loki base URL (for example `http://loki:3100`); off when unset.
    #[arg(long, env = "LOKI_URL")]
    pub loki_url: Option<url::Url>,

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

/// Every environment variable the service reads. Anything else named `GATEWAY_*` is a typo.
pub const KNOWN_ENV: &[&str] = &[
    "DATABASE_URL",
    "GATEWAY_LISTEN",
    "GATEWAY_WORKERS",
    "GATEWAY_MAX_PENDING",
    "GATEWAY_SIM_DURATION_MS",
    "GATEWAY_SIM_FAILURE_RATE",
    "GATEWAY_ACTION_POLICY",
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
    "LOKI_URL",
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

    /// Lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// How long finished jobs are kept; `None` keeps them for ever.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0.0).then(|| Duration::from_secs_f64(self.retention_days * 86_400.0))
    }

    /// The effective settings as `key=value` pairs, secrets redacted, for the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "database_url={} listen={} max_connections={} workers={} max_pending={} sim_duration_ms={} sim_failure_rate={} lease_secs={} shutdown_grace_secs={} shutdown_delay_ms={} poll_interval_ms={} max_body_bytes={} sqlite_max_size_mb={} retention_days={} auth={} rate_limit={}/s burst {} request_timeout_secs={} header_timeout_secs={} loki={} otlp={} env={}",
            self.database_url,
            self.listen,
            self.max_connections,
            self.workers,
            self.max_pending,
            self.sim_duration_ms,
            self.sim_failure_rate,
            self.lease_secs,
            self.shutdown_grace_secs,
            self.shutdown_delay_ms,
            self.poll_interval_ms,
            self.max_body_bytes,
            self.sqlite_max_size_mb,
            self.retention_days,
            self.auth_tokens_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "OFF (open API)".into()),
            self.rate_limit,
            self.rate_limit_burst,
            self.request_timeout_secs,
            self.header_timeout_secs,
            self.loki_url.as_ref().map(|u| u.as_str()).unwrap_or("off"),
            self.otlp_endpoint.as_ref().map(|u| u.as_str()).unwrap_or("off"),
            self.env_name,
        )
    }
}

fn parse_days(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of days"))?;
    if v.is_finite() && (0.0..=36_500.0).contains(&v) { Ok(v) } else { Err(format!("{v} is outside 0..36500")) }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is outside 0..1")) }
}

/// A database URL whose password is never printed.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The full URL, with its secret: pass it to the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for a PostgreSQL URL.
    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }
}

/// Query parameters that carry a secret in a PostgreSQL URL (libpq and sqlx spellings).
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "passfile"];

impl DatabaseUrl {
    /// Checks the URL's form. Done here rather than in `FromStr`, because clap prints a rejected
    /// value in its error message, password included.
    pub fn check(&self) -> Result<(), String> {
        if !["sqlite:", "postgres://", "postgresql://"].iter().any(|p| self.0.starts_with(p)) {
            return Err(format!("DATABASE_URL {self} must start with sqlite:, postgres:// or postgresql://"));
        }
        if self.is_postgres() {
            url::Url::parse(&self.0).map_err(|e| format!("DATABASE_URL {self} is not a valid URL: {e}"))?;
        }
        Ok(())
    }

    /// The URL to hand to the PostgreSQL driver: without the query parameters it does not
    /// support and would log, value included, as "unrecognized" (`sslpassword` protects a client
    /// key, which the driver cannot decrypt anyway). Returns the URL and the names dropped.
    pub fn for_driver(&self) -> (String, Vec<String>) {
        const UNSUPPORTED: &[&str] = &["sslpassword", "passfile"];
        let Ok(mut u) = url::Url::parse(&self.0) else { return (self.0.clone(), Vec::new()) };
        if u.query().is_none() {
            return (self.0.clone(), Vec::new());
        }
        let mut dropped = Vec::new();
        let kept: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| {
                let unsupported = UNSUPPORTED.contains(&k.to_ascii_lowercase().as_str());
                if unsupported {
                    dropped.push(k.to_string());
                }
                !unsupported
            })
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if dropped.is_empty() {
            return (self.0.clone(), dropped);
        }
        if kept.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(kept);
        }
        (u.to_string(), dropped)
    }

    /// `text` (say, a driver's error message) with every secret of this URL replaced.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.0, &self.to_string());
        for secret in self.secrets() {
            if secret.len() >= 2 {
                out = out.replace(&secret, "REDACTED");
            }
        }
        out
    }

    /// The secrets in the URL, raw and decoded.
    fn secrets(&self) -> Vec<String> {
        let Ok(u) = url::Url::parse(&self.0) else {
            // Unparseable: take what sits where a password would, `scheme://user:PASSWORD@`.
            let userinfo = self.0.split_once("://").and_then(|(_, rest)| rest.rsplit_once('@')).map(|(ui, _)| ui);
            return userinfo.and_then(|ui| ui.split_once(':')).map(|(_, p)| vec![p.to_owned()]).unwrap_or_default();
        };
        let mut out = Vec::new();
        if let Some(p) = u.password() {
            out.push(p.to_owned());
            if let Ok(decoded) = percent_decode(p) {
                out.push(decoded);
            }
        }
        for (k, v) in u.query_pairs() {
            if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                out.push(v.into_owned());
            }
        }
        out
    }
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

impl FromStr for DatabaseUrl {
    type Err = String;

    /// Accepts any text: `check` validates it without echoing secrets.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for DatabaseUrl {
    /// The URL with its password and secret query parameters replaced by `REDACTED`; a URL that
    /// does not parse shows only its scheme.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.starts_with("sqlite:") && !self.0.contains('@') {
            // A file path: nothing secret in it.
            return f.write_str(&self.0);
        }
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("REDACTED"));
                }
                if u.query().is_some() {
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let secret = SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str());
                            (k.into_owned(), if secret { "REDACTED".to_owned() } else { v.into_owned() })
                        })
                        .collect();
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                f.write_str(u.as_str())
            }
            Err(_) => {
                let scheme = self
                    .0
                    .split_once(':')
                    .map(|(s, _)| s)
                    .filter(|s| {
                        !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
                    })
                    .unwrap_or("?");
                write!(f, "{scheme}:<unparseable URL, redacted>")
            }
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Simulated run time: a fixed number of milliseconds or a uniform range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimDuration {
    /// Shortest, in milliseconds.
    pub min_ms: u64,
    /// Longest, in milliseconds.
    pub max_ms: u64,
}

impl FromStr for SimDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |p: &str| p.trim().parse::<u64>().map_err(|_| format!("'{p}' is not a whole number of milliseconds"));
        let (min_ms, max_ms) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if min_ms > max_ms {
            return Err(format!("minimum {min_ms} is above maximum {max_ms}"));
        }
        if max_ms > 86_400_000 {
            return Err("longer than a day".into());
        }
        Ok(Self { min_ms, max_ms })
    }
}

impl fmt::Display for SimDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min_ms == self.max_ms {
            write!(f, "{}", self.min_ms)
        } else {
            write!(f, "{}-{}", self.min_ms, self.max_ms)
        }
    }
}

/// What to do with a job whose worker died (its lease expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLost {
    /// Mark it FAILED ("worker lost"): for actions that must not run twice.
    Fail,
    /// Put it back to PENDING if attempts remain: for actions that are safe to repeat.
    Retry,
}

/// How one action is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionPolicy {
    /// Longest a single attempt may run.
    pub timeout: Duration,
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one, with jitter, capped at 5 min.
    pub backoff: Duration,
    /// Lost-job policy.
    pub on_lost: OnLost,
}

impl ActionPolicy {
    /// The built-in default for an action.
    pub fn default_for(action: Action) -> Self {
        match action {
            Action::RestartService => Self {
                timeout: Duration::from_secs(300),
                max_attempts: 3,
                backoff: Duration::from_secs(2),
                on_lost: OnLost::Fail,
            },
            Action::RotateConfig => Self {
                timeout: Duration::from_secs(300),
                max_attempts: 3,
                backoff: Duration::from_secs(2),
                on_lost: OnLost::Fail,
            },
            Action::HealthCheck => Self {
                timeout: Duration::from_secs(30),
                max_attempts: 3,
                backoff: Duration::from_secs(1),
                on_lost: OnLost::Retry,
            },
        }
    }
}

/// The policy of every action: defaults plus overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionPolicies(BTreeMap<Action, ActionPolicy>);

impl ActionPolicies {
    /// The policy for an action.
    pub fn get(&self, action: Action) -> ActionPolicy {
        self.0.get(&action).copied().unwrap_or_else(|| ActionPolicy::default_for(action))
    }
}

impl FromStr for ActionPolicies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map: BTreeMap<Action, ActionPolicy> =
            Action::ALL.iter().map(|a| (*a, ActionPolicy::default_for(*a))).collect();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("'{item}': expected ACTION.KEY=VALUE"))?;
            let (action, field) = key.split_once('.').ok_or_else(|| format!("'{key}': expected ACTION.KEY"))?;
            let action: Action = action.parse().map_err(|e: crate::jobs::Error| e.to_string())?;
            let p = map.get_mut(&action).ok_or("unreachable")?;
            let int = |v: &str| v.parse::<u64>().map_err(|_| format!("'{item}': '{v}' is not a whole number"));
            match field {
                "timeout_ms" => {
                    let ms = int(value)?;
                    if ms == 0 {
                        return Err(format!("'{item}': timeout must be above 0"));
                    }
                    p.timeout = Duration::from_millis(ms);
                }
                "max_attempts" => {
                    let n = int(value)?;
                    if !(1..=100).contains(&n) {
                        return Err(format!("'{item}': max_attempts must be 1 to 100"));
                    }
                    p.max_attempts = n as u32;
                }
                "backoff_ms" => p.backoff = Duration::from_millis(int(value)?),
                "on_lost" => {
                    p.on_lost = match value {
                        "fail" => OnLost::Fail,
                        "retry" => OnLost::Retry,
                        other => {
                            return Err(format!("'{item}': on_lost must be fail or retry, not '{other}'"));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "'{item}': unknown key '{other}' (timeout_ms, max_attempts, backoff_ms, on_lost)"
                    ));
                }
            }
        }
        Ok(Self(map))
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
    fn password_is_redacted() {
        for raw in [
            "postgres://app:hunter2@db:5432/gw",
            "postgres://app@db/gw?sslmode=require&password=hunter2",
            "postgresql://app@db/gw?sslpassword=hunter2&application_name=x",
            "postgres://app:hunter2@[bad/db",
            "postgresx://app:hunter2@db/gw",
        ] {
            let u: DatabaseUrl = raw.parse().unwrap();
            assert!(!u.to_string().contains("hunter2"), "{u}");
            assert!(!format!("{u:?}").contains("hunter2"));
            if let Err(e) = u.check() {
                assert!(!e.contains("hunter2"), "{e}");
            }
            assert!(!u.scrub(&format!("failed: {raw} / hunter2")).contains("hunter2"));
        }
        let kept: DatabaseUrl = "postgres://app@db/gw?sslmode=require&password=x1".parse().unwrap();
        assert!(kept.to_string().contains("sslmode=require"), "{kept}");
        assert!(kept.check().is_ok());
        assert!("postgresx://db/gw".parse::<DatabaseUrl>().unwrap().check().is_err());
    }

    #[test]
    fn sim_duration_accepts_ranges_and_refuses_reversed_ones() {
        assert_eq!("5-20".parse::<SimDuration>().unwrap(), SimDuration { min_ms: 5, max_ms: 20 });
        assert!("20-5".parse::<SimDuration>().is_err());
        assert!("abc".parse::<SimDuration>().is_err());
    }

    #[test]
    fn policies_override_one_field() {
        let p: ActionPolicies = "health_check.max_attempts=5,restart_service.on_lost=retry".parse().unwrap();
        assert_eq!(p.get(Action::HealthCheck).max_attempts, 5);
        assert_eq!(p.get(Action::RestartService).on_lost, OnLost::Retry);
        assert!("health_check.bogus=1".parse::<ActionPolicies>().is_err());
    }
}
