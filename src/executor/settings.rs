//! The executor's settings (flags with environment fallbacks).

use std::time::Duration;

use super::policy::PolicyOverrides;
use super::runners::SimDuration;

/// How jobs are run: workers, leases, runner defaults, policies, retention.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "executor")]
pub struct Settings {
    /// Jobs executed at once by this process. `0` makes an API-only replica: it accepts and
    /// serves jobs but runs none (other replicas on the same PostgreSQL database run them).
    #[arg(long, env = "GATEWAY_WORKERS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub workers: u32,

    /// Simulated run time of a job in milliseconds: `N` or `MIN-MAX` (uniformly random).
    #[arg(long, env = "GATEWAY_SIM_DURATION_MS", default_value = "200-2000")]
    pub sim_duration_ms: SimDuration,

    /// Probability that a simulated run fails, from 0 to 1.
    #[arg(long, env = "GATEWAY_SIM_FAILURE_RATE", default_value_t = 0.05, value_parser = parse_rate)]
    pub sim_failure_rate: f64,

    /// A YAML actions catalog: which actions exist and the runner of each (http, awx, jenkins,
    /// github_actions, kubernetes, command, simulated). Without it: the three built-in actions
    /// on the simulated runner.
    #[arg(long, env = "GATEWAY_ACTIONS_FILE")]
    pub actions_file: Option<std::path::PathBuf>,

    /// Per-action policy overrides, comma-separated `ACTION.KEY=VALUE`; keys: `timeout_ms`,
    /// `max_attempts`, `backoff_ms` (first retry delay, doubled each attempt, with jitter) and
    /// `on_lost` (`fail` or `retry`: what happens to a job whose worker died).
    /// Example: `restart_service.timeout_ms=60000,health_check.max_attempts=5`.
    #[arg(long, env = "GATEWAY_ACTION_POLICY", default_value = "")]
    pub action_policy: PolicyOverrides,

    /// Seconds a worker's claim on a job lasts without a heartbeat; a job whose lease expires is
    /// recovered by any process according to its action's `on_lost` policy.
    #[arg(long, env = "GATEWAY_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_secs: u64,

    /// Seconds running jobs get to finish after SIGTERM/SIGINT before they are interrupted and
    /// left for recovery.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,

    /// Fallback poll interval of the dispatcher in milliseconds (wake-ups normally come by
    /// notification).
    #[arg(long, env = "GATEWAY_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_interval_ms: u64,

    /// Days a finished job (SUCCESS, FAILED, CANCELED) and its events are kept; older ones are
    /// deleted in small batches. 0 keeps everything. Fractions are allowed (0.5 = 12 hours).
    #[arg(long, env = "GATEWAY_RETENTION_DAYS", default_value_t = 30.0, value_parser = parse_days)]
    pub retention_days: f64,

    /// Seconds between two retention passes (the first runs at start-up).
    #[arg(long, env = "GATEWAY_RETENTION_INTERVAL_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub retention_interval_secs: u64,
}

impl Settings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// How long finished jobs are kept; `None` keeps them for ever.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0.0).then(|| Duration::from_secs_f64(self.retention_days * 86_400.0))
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
