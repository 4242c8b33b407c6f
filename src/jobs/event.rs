//! The job event log's vocabulary: every transition of a job is one typed event, written in the
//! same transaction as the change it records, with the job's status right after it.

use std::fmt;

use serde_json::Value;

use super::{Action, JobId, JobStatus};

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Accepted (PENDING).
    Created,
    /// An attempt started on a replica.
    Claimed,
    /// The runner's backend named the remote run it launched.
    ExternalRecorded,
    /// An attempt failed; a `RetryScheduled` or a `Canceled` follows.
    AttemptFailed,
    /// Back to PENDING until the next attempt's time.
    RetryScheduled,
    /// The replica running the attempt stopped renewing its lease.
    LeaseLost,
    /// Another replica took over the lost attempt's recorded remote run.
    LeaseRecovered,
    /// Someone asked a RUNNING job to stop.
    CancelRequested,
    /// Terminal: CANCELED.
    Canceled,
    /// Terminal: SUCCESS or FAILED.
    Finished,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Created,
        EventKind::Claimed,
        EventKind::ExternalRecorded,
        EventKind::AttemptFailed,
        EventKind::RetryScheduled,
        EventKind::LeaseLost,
        EventKind::LeaseRecovered,
        EventKind::CancelRequested,
        EventKind::Canceled,
        EventKind::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Claimed => "claimed",
            EventKind::ExternalRecorded => "external_recorded",
            EventKind::AttemptFailed => "attempt_failed",
            EventKind::RetryScheduled => "retry_scheduled",
            EventKind::LeaseLost => "lease_lost",
            EventKind::LeaseRecovered => "lease_recovered",
            EventKind::CancelRequested => "cancel_requested",
            EventKind::Canceled => "canceled",
            EventKind::Finished => "finished",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The last event of every job is one of these, and only one.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Canceled | EventKind::Finished)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event about to be written.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub job_id: JobId,
    pub kind: EventKind,
    /// Who: an identity's name, or `gateway` for the service's own transitions.
    pub actor: String,
    pub request_id: Option<String>,
    /// The kind's fields (attempt, error, replica...), a JSON object.
    pub detail: Value,
}

impl NewEvent {
    /// A transition made by the service itself.
    pub fn by_gateway(job_id: JobId, kind: EventKind, detail: Value) -> Self {
        Self { job_id, kind, actor: GATEWAY.to_owned(), request_id: None, detail }
    }
}

/// The actor of the service's own transitions.
pub const GATEWAY: &str = "gateway";

/// One stored event of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// Its position in the log: increases in the order events happened, across all jobs.
    pub id: i64,
    pub job_id: JobId,
    /// When (µs since the epoch).
    pub at: i64,
    pub kind: EventKind,
    /// Who: an identity's name, or `gateway`.
    pub actor: String,
    /// The HTTP request it came from.
    pub request_id: Option<String>,
    /// The kind's fields, a JSON object.
    pub detail: Value,
    /// The job's action and target (they never change).
    pub action: Action,
    pub target: String,
}

impl JobEvent {
    /// The job's status right after this event.
    pub fn status(&self) -> JobStatus {
        match self.kind {
            EventKind::Created | EventKind::RetryScheduled => JobStatus::Pending,
            EventKind::Canceled => JobStatus::Canceled,
            EventKind::Finished => match self.detail.get("status").and_then(Value::as_str) {
                Some("SUCCESS") => JobStatus::Success,
                _ => JobStatus::Failed,
            },
            _ => JobStatus::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_two_are_terminal() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        let terminal: Vec<_> = EventKind::ALL.into_iter().filter(|k| k.is_terminal()).collect();
        assert_eq!(terminal, [EventKind::Canceled, EventKind::Finished]);
        assert_eq!(EventKind::parse("nope"), None);
    }
}
