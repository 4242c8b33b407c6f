//! The OpenTelemetry instruments, bridged to a Prometheus registry, and the typed functions the
//! rest of the service records through. Labels can only be `Action` / `JobStatus` values (or an
//! HTTP method, route template and status), so cardinality stays fixed.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, MeterProvider as _, UpDownCounter};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::jobs::{Action, JobStatus};

/// Job counter; the exporter appends `_total`, exposing `automation_jobs_total`.
pub const JOBS: &str = "automation_jobs";
/// Job run time histogram.
pub const JOB_DURATION: &str = "automation_job_duration_seconds";
/// PENDING jobs gauge.
pub const QUEUE_DEPTH: &str = "automation_job_queue_depth";
/// This process's running jobs.
pub const RUNNING: &str = "automation_jobs_running";
/// Created-to-first-start histogram.
pub const QUEUE_WAIT: &str = "automation_job_queue_wait_seconds";
/// Age of the oldest runnable PENDING job.
pub const OLDEST_PENDING: &str = "automation_job_oldest_pending_age_seconds";
/// Accepted jobs (exposed with `_total`).
pub const CREATED: &str = "automation_jobs_created";
/// Attempts that failed and were scheduled again (exposed with `_total`).
pub const RETRIES: &str = "automation_job_retries";
/// Jobs recovered from a dead or hung worker (exposed with `_total`).
pub const LEASES_LOST: &str = "automation_job_leases_lost";
/// Finished jobs deleted by retention (exposed with `_total`).
pub const DELETED: &str = "automation_jobs_deleted";
/// Size of the job tables (PostgreSQL) or of the database file (SQLite).
pub const DB_SIZE: &str = "automation_database_size_bytes";
/// Failed authentications, by reason (exposed with `_total`).
pub const AUTH_FAILURES: &str = "automation_auth_failures";
/// Connections closed at once because `GATEWAY_MAX_CONNECTIONS` were open (exposed with `_total`).
pub const CONNECTIONS_REFUSED: &str = "automation_http_connections_refused";
/// Completion webhook tries (exported with `_total`).
pub const WEBHOOK_DELIVERIES: &str = "automation_webhook_deliveries";
/// HTTP server request duration.
pub const HTTP_DURATION: &str = "http_server_request_duration_seconds";

/// Job duration buckets, in seconds: 5 ms to 10 min.
const JOB_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// HTTP latency buckets, in seconds: 0.5 ms to 10 s.
const HTTP_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Every instrument, created once.
pub struct Metrics {
    registry: Registry,
    provider: SdkMeterProvider,
    jobs: Counter<u64>,
    duration: Histogram<f64>,
    queue_depth: Gauge<i64>,
    running: UpDownCounter<i64>,
    queue_wait: Histogram<f64>,
    oldest_pending: Gauge<f64>,
    created: Counter<u64>,
    retries: Counter<u64>,
    leases_lost: Counter<u64>,
    deleted: Counter<u64>,
    db_size: Gauge<i64>,
    auth_failures: Counter<u64>,
    connections_refused: Counter<u64>,
    webhook_deliveries: Counter<u64>,
    http_duration: Histogram<f64>,
}

/// Why an authentication failed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No usable `Authorization: Bearer` header.
    Missing,
    /// A token that matches no entry.
    Unknown,
    /// Refused without checking: this address failed too often.
    RateLimited,
}

impl AuthFailure {
    const ALL: [AuthFailure; 3] = [AuthFailure::Missing, AuthFailure::Unknown, AuthFailure::RateLimited];

    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Unknown => "unknown",
            AuthFailure::RateLimited => "rate_limited",
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("metrics setup failed: {0}")]
pub struct SetupError(String);

impl Metrics {
    /// Creates the registry, the meter and every instrument, and seeds every action x status
    /// series at 0 (the catalog's actions) so dashboards and `rate()` see them from the first scrape.
    pub fn new(actions: &[Action]) -> Result<Self, SetupError> {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // The business series carry exactly their own labels: no otel_scope_*, no target_info.
            .scope_info_enabled(false)
            .without_target_info()
            .build()
            .map_err(|e| SetupError(e.to_string()))?;
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .map_err(|e| SetupError(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("automation-gateway");
        let m = Metrics {
            jobs: meter
                .u64_counter(JOBS)
                .with_description("Jobs that reached a terminal status, by action and status.")
                .build(),
            duration: meter
                .f64_histogram(JOB_DURATION)
                .with_description("Job run time from started_at to finished_at, in seconds.")
                .with_boundaries(JOB_BUCKETS.to_vec())
                .build(),
            queue_depth: meter
                .i64_gauge(QUEUE_DEPTH)
                .with_description("Jobs in PENDING, read from the database (the same global value on every replica).")
                .build(),
            running: meter.i64_up_down_counter(RUNNING).with_description("Jobs running in this process now.").build(),
            queue_wait: meter
                .f64_histogram(QUEUE_WAIT)
                .with_description("Time from created_at to the first start of a job, in seconds.")
                .with_boundaries(JOB_BUCKETS.to_vec())
                .build(),
            oldest_pending: meter
                .f64_gauge(OLDEST_PENDING)
                .with_description("Seconds the oldest runnable PENDING job has been waiting (0 when none).")
                .build(),
            created: meter.u64_counter(CREATED).with_description("Jobs accepted (202), by action.").build(),
            retries: meter
                .u64_counter(RETRIES)
                .with_description("Failed attempts scheduled to run again, by action.")
                .build(),
            leases_lost: meter
                .u64_counter(LEASES_LOST)
                .with_description("Jobs whose worker died or hung (lease expired) and were recovered, by action.")
                .build(),
            deleted: meter
                .u64_counter(DELETED)
                .with_description("Finished jobs deleted by retention (GATEWAY_RETENTION_DAYS), with their events.")
                .build(),
            db_size: meter
                .i64_gauge(DB_SIZE)
                .with_description("Bytes used by the database: the SQLite file, or the job tables with their indexes on PostgreSQL.")
                .build(),
            auth_failures: meter
                .u64_counter(AUTH_FAILURES)
                .with_description("Requests refused for a missing or unknown token, or refused unchecked after too many failures from one address.")
                .build(),
            connections_refused: meter
                .u64_counter(CONNECTIONS_REFUSED)
                .with_description("Connections closed on arrival because GATEWAY_MAX_CONNECTIONS were open.")
                .build(),
            webhook_deliveries: meter
                .u64_counter(WEBHOOK_DELIVERIES)
                .with_description("Completion webhook tries, by outcome: success (2xx), error (retried later), gave_up (last try failed).")
                .build(),
            http_duration: meter
                .f64_histogram(HTTP_DURATION)
                .with_description("HTTP request duration by method, route template and status, in seconds.")
                .with_boundaries(HTTP_BUCKETS.to_vec())
                .build(),
            registry,
            provider,
        };
        for &action in actions {
            for status in JobStatus::TERMINAL {
                m.jobs.add(0, &job_labels(action, status));
            }
            m.created.add(0, &[action_label(action)]);
            m.retries.add(0, &[action_label(action)]);
            m.leases_lost.add(0, &[action_label(action)]);
        }
        for reason in AuthFailure::ALL {
            m.auth_failures.add(0, &[KeyValue::new("reason", reason.as_str())]);
        }
        m.deleted.add(0, &[]);
        m.connections_refused.add(0, &[]);
        for outcome in ["success", "error", "gave_up"] {
            m.webhook_deliveries.add(0, &[KeyValue::new("outcome", outcome)]);
        }
        m.running.add(0, &[]);
        m.queue_depth.record(0, &[]);
        m.oldest_pending.record(0.0, &[]);
        Ok(m)
    }

    /// A job was accepted.
    pub fn job_created(&self, action: Action) {
        self.created.add(1, &[action_label(action)]);
    }

    /// An attempt started; `queue_wait` is set on the first attempt only.
    pub fn job_started(&self, action: Action, queue_wait: Option<Duration>) {
        self.running.add(1, &[]);
        if let Some(w) = queue_wait {
            self.queue_wait.record(w.as_secs_f64(), &[action_label(action)]);
        }
    }

    /// An attempt in this process ended (whatever the outcome).
    pub fn attempt_ended(&self) {
        self.running.add(-1, &[]);
    }

    /// A job reached a terminal status; `duration` is started_at to finished_at when it ran.
    pub fn job_finished(&self, action: Action, status: JobStatus, duration: Option<Duration>) {
        self.jobs.add(1, &job_labels(action, status));
        if let Some(d) = duration {
            self.duration.record(d.as_secs_f64(), &[action_label(action)]);
        }
    }

    /// A failed attempt was scheduled again.
    pub fn job_retried(&self, action: Action) {
        self.retries.add(1, &[action_label(action)]);
    }

    /// A job's lease expired and it was recovered.
    pub fn lease_lost(&self, action: Action) {
        self.leases_lost.add(1, &[action_label(action)]);
    }

    /// The queue figures read from the database.
    pub fn queue_sampled(&self, pending: i64, oldest_age: Duration) {
        self.queue_depth.record(pending, &[]);
        self.oldest_pending.record(oldest_age.as_secs_f64(), &[]);
    }

    /// Retention deleted `n` finished jobs.
    pub fn jobs_deleted(&self, n: u64) {
        self.deleted.add(n, &[]);
    }

    /// The database's size in bytes.
    pub fn database_size(&self, bytes: i64) {
        self.db_size.record(bytes, &[]);
    }

    /// A request failed authentication.
    pub fn auth_failed(&self, reason: AuthFailure) {
        self.auth_failures.add(1, &[KeyValue::new("reason", reason.as_str())]);
    }

    /// A webhook try ended: `success`, `error` (retried later) or `gave_up`.
    pub fn webhook_delivery(&self, outcome: &'static str) {
        self.webhook_deliveries.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    /// A connection was closed on arrival (connection cap).
    pub fn connection_refused(&self) {
        self.connections_refused.add(1, &[]);
    }

    /// One HTTP request served.
    pub fn http_request(&self, method: &'static str, route: &'static str, status: u16, elapsed: Duration) {
        self.http_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("method", method),
                KeyValue::new("route", route),
                KeyValue::new("status", i64::from(status)),
            ],
        );
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Flushes and stops the meter provider.
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

fn action_label(action: Action) -> KeyValue {
    KeyValue::new("action", action.as_str())
}

fn job_labels(action: Action, status: JobStatus) -> [KeyValue; 2] {
    [action_label(action), KeyValue::new("status", status.as_str())]
}
