//! Storage errors, classified once from `DbErr` so callers can tell "the database is down"
//! (retryable, 503) from "the request conflicts" (409) and from a bug (500).

use sea_orm::{DbErr, RuntimeErr};

/// What went wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No job with that id.
    #[error("job not found")]
    NotFound,
    /// The request conflicts with stored state (for example an idempotency key reused with
    /// another body, or a transition out of a terminal status).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The pending queue is at its configured maximum.
    #[error("queue full: {pending} jobs pending (maximum {max})")]
    QueueFull {
        /// Pending jobs counted.
        pending: u64,
        /// Configured maximum.
        max: u64,
    },
    /// The database cannot be reached or is shutting down: retry later.
    #[error("database unavailable")]
    Unavailable(#[source] DbErr),
    /// The service is shutting down and no longer accepts writes.
    #[error("shutting down")]
    ShuttingDown,
    /// Anything else: a bug or corrupt data.
    #[error("database error")]
    Other(#[source] DbErr),
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) { Error::Unavailable(err) } else { Error::Other(err) }
    }
}

fn is_unavailable(err: &DbErr) -> bool {
    let runtime = match err {
        DbErr::ConnectionAcquire(_) => return true,
        DbErr::Conn(e) | DbErr::Exec(e) | DbErr::Query(e) => e,
        _ => return false,
    };
    let RuntimeErr::SqlxError(e) = runtime else {
        return false;
    };
    match e.as_ref() {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL: class 08 connection exceptions, 57P0x shutdown/crash, 53 out of
            // resources. SQLite: 5/6 busy/locked (the busy timeout ran out).
            code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") || code == "5" || code == "6"
        }
        _ => false,
    }
}
