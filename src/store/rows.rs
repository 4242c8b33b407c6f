//! Decoding rows: every column read by name, and every stored text turned back into a domain
//! value, in one place. A value the service cannot read is `Error::Corrupt`, never a silent
//! default.

use sea_orm::QueryResult;
use serde_json::Value as Json;
use uuid::Uuid;

use super::Error;
use super::queue::{ClaimedJob, Held, LostJob};
use crate::jobs::{Action, External, Job, JobId, JobStatus};

/// Columns read back into a `Job`.
pub(super) const JOB_COLUMNS: &str = "id, action, target, requested_by, parameters, status, attempts, error, result, created_at, started_at, finished_at, cancel_requested, submitted_by, external, callback_url, traceparent";

/// A status as an SQL literal, for statements (the one place statuses are spelled in SQL; a test
/// checks each against the domain's name). Literals, not parameters: the partial indexes
/// (`WHERE status = 'PENDING'`) are used only for a literal the planner can see.
pub(super) fn sql(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Pending => "'PENDING'",
        JobStatus::Running => "'RUNNING'",
        JobStatus::Success => "'SUCCESS'",
        JobStatus::Failed => "'FAILED'",
        JobStatus::Canceled => "'CANCELED'",
    }
}

/// One column of a row.
pub(super) fn get<T: sea_orm::TryGetable>(row: &QueryResult, col: &str) -> Result<T, Error> {
    row.try_get::<T>("", col).map_err(Error::Other)
}

/// The `id` column.
pub(super) fn id(row: &QueryResult) -> Result<JobId, Error> {
    Ok(JobId(get::<Uuid>(row, "id")?))
}

/// The `status` column.
pub(super) fn status(row: &QueryResult) -> Result<JobStatus, Error> {
    let s = get::<String>(row, "status")?;
    s.parse().map_err(|_| Error::Corrupt(format!("unknown status '{s}' in the database")))
}

fn action(row: &QueryResult) -> Result<Action, Error> {
    let s = get::<String>(row, "action")?;
    Action::new(&s).map_err(|_| Error::Corrupt(format!("malformed action name '{s}' in the database")))
}

fn json(row: &QueryResult, col: &str) -> Result<Option<Json>, Error> {
    get::<Option<String>>(row, col)?
        .map(|s| serde_json::from_str(&s).map_err(|e| Error::Corrupt(format!("column {col} is not JSON: {e}"))))
        .transpose()
}

/// The `external` column: the remote run, as JSON.
fn external(row: &QueryResult) -> Result<Option<External>, Error> {
    json(row, "external")?
        .map(|v| serde_json::from_value(v).map_err(|e| Error::Corrupt(format!("column external: {e}"))))
        .transpose()
}

/// A row of `JOB_COLUMNS`.
pub(super) fn job(row: &QueryResult) -> Result<Job, Error> {
    Ok(Job {
        id: id(row)?,
        action: action(row)?,
        target: get(row, "target")?,
        requested_by: get(row, "requested_by")?,
        parameters: json(row, "parameters")?.unwrap_or_default(),
        status: status(row)?,
        attempts: get(row, "attempts")?,
        error: get(row, "error")?,
        result: json(row, "result")?,
        created_at: get(row, "created_at")?,
        started_at: get(row, "started_at")?,
        finished_at: get(row, "finished_at")?,
        cancel_requested: get(row, "cancel_requested")?,
        submitted_by: get(row, "submitted_by")?,
        external: external(row)?,
        callback_url: get(row, "callback_url")?,
        traceparent: get(row, "traceparent")?,
    })
}

/// A row returned by a claim; `now` stands in for a missing `started_at`.
pub(super) fn claimed(row: &QueryResult, now: i64) -> Result<ClaimedJob, Error> {
    let attempt: i32 = get(row, "attempts")?;
    Ok(ClaimedJob {
        id: id(row)?,
        action: action(row)?,
        target: get(row, "target")?,
        parameters: json(row, "parameters")?.unwrap_or_default(),
        attempt,
        created_at: get(row, "created_at")?,
        started_at: get::<Option<i64>>(row, "started_at")?.unwrap_or(now),
        first_attempt: attempt == 1,
        requested_by: get(row, "requested_by")?,
        external: external(row)?,
        cancel_requested: get(row, "cancel_requested")?,
        traceparent: get(row, "traceparent")?,
    })
}

/// A row returned by a heartbeat.
pub(super) fn held(row: &QueryResult) -> Result<Held, Error> {
    Ok(Held { id: id(row)?, attempt: get(row, "attempts")?, cancel_requested: get(row, "cancel_requested")? })
}

/// A row of an expired lease.
pub(super) fn lost(row: &QueryResult) -> Result<LostJob, Error> {
    Ok(LostJob {
        id: id(row)?,
        action: action(row)?,
        target: get(row, "target")?,
        attempt: get(row, "attempts")?,
        started_at: get(row, "started_at")?,
        cancel_requested: get(row, "cancel_requested")?,
        resumable: get::<Option<String>>(row, "external")?.is_some(),
    })
}

#[cfg(test)]
#[test]
fn sql_literals_spell_the_domain_names() {
    for s in JobStatus::ALL {
        assert_eq!(sql(s), format!("'{}'", s.as_str()));
    }
}
