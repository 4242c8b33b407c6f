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
    /// The database has no room for the write (disk full, SQLite size cap): retry later.
    #[error("database storage is full")]
    StorageFull(#[source] DbErr),
    /// The service is shutting down and no longer accepts writes.
    #[error("shutting down")]
    ShuttingDown,
    /// Anything else from the database: a bug or corrupt data.
    #[error("database error: {0}")]
    Other(#[source] DbErr),
    /// A stored value the service cannot read (a status it does not know, a malformed name).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The store's settings are unusable (an invalid database URL).
    #[error("{0}")]
    Settings(String),
    /// A broken invariant of the store itself (not the database's).
    #[error("internal store error: {0}")]
    Internal(String),
}

impl Error {
    /// True for the errors a client should retry later (503): the write did not happen, and
    /// nothing about the request itself is wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::StorageFull(_) | Error::ShuttingDown)
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            Kind::Full => Error::StorageFull(err),
            Kind::Unavailable => Error::Unavailable(err),
            Kind::Other => Error::Other(err),
        }
    }
}

enum Kind {
    Full,
    Unavailable,
    Other,
}

fn classify(err: &DbErr) -> Kind {
    let runtime = match err {
        DbErr::ConnectionAcquire(_) => return Kind::Unavailable,
        DbErr::Conn(e) | DbErr::Exec(e) | DbErr::Query(e) => e,
        _ => return Kind::Other,
    };
    let RuntimeErr::SqlxError(e) = runtime else {
        return Kind::Other;
    };
    match e.as_ref() {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Kind::Unavailable,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // SQLite reports extended result codes; the primary code is the low byte.
            let sqlite_primary = code.parse::<u32>().ok().map(|c| c & 0xff);
            if code == "53100" || sqlite_primary == Some(13) {
                // PostgreSQL disk_full; SQLITE_FULL (disk full or max_page_count reached).
                Kind::Full
            } else if code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || matches!(sqlite_primary, Some(5 | 6 | 10))
            {
                // PostgreSQL: class 08 connection exceptions, 57P0x shutdown/crash, 53 out of
                // resources. SQLite: busy/locked (the busy timeout ran out), I/O errors.
                Kind::Unavailable
            } else {
                Kind::Other
            }
        }
        _ => Kind::Other,
    }
}
