//! Every query, and the differences between the backends. SQLite: one writer connection (all
//! writes queue on it, so `SQLITE_BUSY` cannot happen) plus a small read pool, WAL, FULL sync.
//! Point reads are batched (`reads`) on connections the readers keep.
//! PostgreSQL: one pool; claims use `FOR UPDATE SKIP LOCKED` so replicas share the queue, and
//! wake-ups travel by LISTEN/NOTIFY. Policy (retries, timeouts) belongs to the executor.

mod error;
mod jobs;
mod queue;
mod reads;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement, Value};
use tokio::sync::{Notify, mpsc};

pub use error::Error;
pub use jobs::{Enqueued, JobFilter, JobPage};
pub use queue::{ClaimedJob, Completion, LostJob, Outcome, QueueStats};

use crate::config::Config;

/// Channel PostgreSQL replicas are woken on when jobs are enqueued.
pub const JOBS_CHANNEL: &str = "automation_gateway_jobs";
/// Channel carrying the id of a job whose cancel was requested.
pub const CANCEL_CHANNEL: &str = "automation_gateway_cancel";

/// Tasks running batched point reads, each holding one connection.
const READERS: usize = 4;

/// Which database engine is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file, one process.
    Sqlite,
    /// PostgreSQL, shared by any number of replicas.
    Postgres,
}

/// The job store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Writes (and, on PostgreSQL, everything).
    write: DatabaseConnection,
    /// Reads: a separate pool on SQLite so readers never wait behind the writer.
    read: DatabaseConnection,
    enqueue_tx: mpsc::Sender<jobs::EnqueueRequest>,
    /// Point reads, batched by `reads`.
    readers: reads::Readers,
    /// Signalled after every committed enqueue batch: the in-process wake-up of the dispatcher.
    enqueued: Arc<Notify>,
    /// Estimate of PENDING jobs, refreshed from the database by `queue_stats` and kept current
    /// by this process's enqueues and claims; used only for the `max_pending` check.
    pending_estimate: AtomicI64,
    max_pending: u64,
    closed: AtomicBool,
    /// Every migration this binary knows has been seen applied.
    migrated: AtomicBool,
}

impl Store {
    /// Connects, creating a SQLite file if missing. Does not migrate.
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let url = config.database_url.expose();
        let (backend, write, read) = if config.database_url.is_postgres() {
            let opts = sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(|e| Error::Other(sea_orm::DbErr::Custom(format!("invalid DATABASE_URL: {e}"))))?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(config.db_max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(opts);
            let db = sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool);
            (Backend::Postgres, db.clone(), db)
        } else {
            use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| Error::Other(sea_orm::DbErr::Custom(format!("invalid DATABASE_URL: {e}"))))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // A job is on disk before its 202: FULL syncs the WAL at every commit.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30));
            // One writer: writes queue in the pool instead of failing with SQLITE_BUSY.
            let write_pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts.clone())
                .await
                .map_err(|e| Error::Unavailable(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(Arc::new(e)))))?;
            let read_pool = SqlitePoolOptions::new()
                .max_connections(READERS as u32 + 2)
                // A local file cannot have gone away: skip sqlx's ping on every checkout.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts.read_only(true))
                .await
                .map_err(|e| Error::Unavailable(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(Arc::new(e)))))?;
            (
                Backend::Sqlite,
                sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(write_pool),
                sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(read_pool),
            )
        };
        let (enqueue_tx, enqueue_rx) = mpsc::channel(8192);
        let readers = match backend {
            Backend::Sqlite => {
                reads::Readers::spawn(reads::ReadPool::Sqlite(read.get_sqlite_connection_pool().clone()), READERS)
            }
            // Readers hold their connections, so they take at most a quarter of the pool.
            Backend::Postgres => reads::Readers::spawn(
                reads::ReadPool::Postgres(read.get_postgres_connection_pool().clone()),
                READERS.min(config.db_max_connections as usize / 4).max(1),
            ),
        };
        let store = Store {
            inner: Arc::new(Inner {
                backend,
                write,
                read,
                enqueue_tx,
                readers,
                enqueued: Arc::new(Notify::new()),
                pending_estimate: AtomicI64::new(0),
                max_pending: config.max_pending,
                closed: AtomicBool::new(false),
                migrated: AtomicBool::new(false),
            }),
        };
        tokio::spawn(jobs::run_enqueue_writer(store.clone(), enqueue_rx));
        Ok(store)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), Error> {
        Migrator::up(&self.inner.write, None).await?;
        self.inner.migrated.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// True when the database answers and every migration is applied. Migrations only move
    /// forward, so once all of them have been seen applied, a readiness probe is just a ping
    /// (one cheap query instead of the migrator's table check and listing).
    pub async fn ready(&self) -> Result<bool, Error> {
        if self.inner.migrated.load(Ordering::Relaxed) {
            self.ping().await?;
            return Ok(true);
        }
        let done = Migrator::get_pending_migrations(&self.inner.read).await?.is_empty();
        self.inner.migrated.store(done, Ordering::Relaxed);
        Ok(done)
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Notified after each committed batch of new jobs (in-process wake-up).
    pub fn enqueued_signal(&self) -> Arc<Notify> {
        self.inner.enqueued.clone()
    }

    /// The PostgreSQL pool, for LISTEN; `None` on SQLite.
    pub fn pg_pool(&self) -> Option<sqlx::PgPool> {
        match self.inner.backend {
            Backend::Postgres => Some(self.inner.write.get_postgres_connection_pool().clone()),
            Backend::Sqlite => None,
        }
    }

    /// Stops accepting new jobs (graceful shutdown).
    pub fn close_for_writes(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }

    /// Closes the pools.
    pub async fn close(&self) {
        self.inner.readers.stop().await;
        let _ = self.inner.write.clone().close().await;
        if self.inner.backend == Backend::Sqlite {
            let _ = self.inner.read.clone().close().await;
        }
    }

    fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        stmt(self.inner.backend, sql, values)
    }

    pub(crate) fn add_pending_estimate(&self, delta: i64) {
        self.inner.pending_estimate.fetch_add(delta, Ordering::Relaxed);
    }
}

/// Builds a statement from SQL written with `$N` placeholders, which SQLite spells `?N`.
fn stmt(backend: Backend, sql: &str, values: Vec<Value>) -> Statement {
    match backend {
        Backend::Postgres => Statement::from_sql_and_values(DbBackend::Postgres, sql, values),
        Backend::Sqlite => Statement::from_sql_and_values(DbBackend::Sqlite, sql.replace('$', "?"), values),
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

async fn exec(db: &impl ConnectionTrait, st: Statement) -> Result<u64, Error> {
    Ok(db.execute_raw(st).await?.rows_affected())
}

/// Runs `{prefix} VALUES (row),(row)... {suffix}` over `rows`, where `row` marks each
/// placeholder with `#`. Rows go in chunks whose sizes are powers of two, so each connection's
/// prepared-statement cache holds at most nine shapes of the statement instead of one per batch
/// size (which grew memory by tens of megabytes under load).
async fn values_in_chunks(
    db: &impl ConnectionTrait,
    backend: Backend,
    prefix: &str,
    row: &str,
    suffix: &str,
    mut rows: Vec<Vec<Value>>,
) -> Result<Vec<QueryResult>, Error> {
    let mut out = Vec::new();
    while !rows.is_empty() {
        let take = 1usize << (usize::BITS - 1 - rows.len().min(256).leading_zeros());
        let rest = rows.split_off(take);
        let mut sql = String::with_capacity(prefix.len() + suffix.len() + take * (row.len() + 16));
        sql.push_str(prefix);
        sql.push_str(" VALUES ");
        let mut n = 0;
        for i in 0..take {
            if i > 0 {
                sql.push(',');
            }
            for part in row.split_inclusive('#') {
                match part.strip_suffix('#') {
                    Some(text) => {
                        n += 1;
                        sql.push_str(text);
                        sql.push_str(&format!("${n}"));
                    }
                    None => sql.push_str(part),
                }
            }
        }
        sql.push(' ');
        sql.push_str(suffix);
        let values: Vec<Value> = rows.into_iter().flatten().collect();
        out.extend(db.query_all_raw(stmt(backend, &sql, values)).await?);
        rows = rest;
    }
    Ok(out)
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, col: &str) -> Result<T, Error> {
    row.try_get::<T>("", col).map_err(Error::Other)
}
