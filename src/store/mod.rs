//! Every query, and the differences between the backends. SQLite: one writer connection (all
//! writes queue on it, so `SQLITE_BUSY` cannot happen) plus a small read pool, WAL, FULL sync.
//! Point reads are batched (`reads`) on connections the readers keep.
//! PostgreSQL: one pool; claims use `FOR UPDATE SKIP LOCKED` so replicas share the queue, and
//! wake-ups travel by LISTEN/NOTIFY. Policy (retries, timeouts) belongs to the executor.

mod error;
mod events;
mod jobs;
mod queue;
mod reads;
mod rows;
mod settings;
mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Statement, TransactionTrait, Value};
use tokio::sync::{Notify, mpsc};

pub use error::Error;
pub use events::EventFilter;
pub use jobs::{Enqueued, JobFilter, Page};
pub use queue::{ClaimedBatch, ClaimedJob, Claimer, Completion, Held, LostJob, Outcome, QueueStats};
pub use settings::{DatabaseUrl, Settings};
pub use webhooks::{DueWebhook, NextTry, WebhookLog, WebhookTry};

/// Channel PostgreSQL replicas are woken on when jobs are enqueued.
pub const JOBS_CHANNEL: &str = "automation_gateway_jobs";
/// Channel carrying the id of a job whose cancel was requested.
pub const CANCEL_CHANNEL: &str = "automation_gateway_cancel";
/// Channel a replica notifies itself on once per LISTEN connection, to learn whether
/// notifications reach it at all (they do not through a transaction-mode pooler).
pub const PROBE_CHANNEL: &str = "automation_gateway_probe";

/// The advisory lock migrations run under on PostgreSQL ("agmigrat").
const MIGRATION_LOCK_KEY: i64 = 0x6167_6d69_6772_6174;

/// SQLite page cache of each read connection, KiB.
const READER_CACHE_KIB: u32 = 256;

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
    /// The writer task (`jobs::run_writer`): enqueues, and on SQLite completions too.
    write_tx: mpsc::Sender<jobs::WriteRequest>,
    /// This process's dispatcher, when it lets the writer claim for it.
    claimer: std::sync::OnceLock<Claimer>,
    /// Point reads, batched by `reads`.
    readers: reads::Readers,
    /// Signalled after every committed enqueue batch: the in-process wake-up of the dispatcher.
    enqueued: Arc<Notify>,
    /// Signalled after every commit that wrote events: the event hub's wake-up.
    events_written: Arc<Notify>,
    /// Signalled after a commit that added a due webhook delivery: the deliverer's wake-up.
    webhooks_due: Arc<Notify>,
    /// Reads of the event log's horizon, shared by the callers that wait together (see
    /// `events::Horizon`).
    horizon: events::Horizon,
    /// Estimate of PENDING jobs, refreshed from the database by `queue_stats` and kept current
    /// by this process's enqueues and claims; used only for the `max_pending` check.
    pending_estimate: AtomicI64,
    max_pending: u64,
    closed: AtomicBool,
    /// Every migration this binary knows has been seen applied.
    migrated: AtomicBool,
    /// Set when a write failed for want of room or of a database, cleared by the next write
    /// that commits; readiness reports it (see `ready`).
    write_health: std::sync::Mutex<WriteHealth>,
}

/// Whether writes currently work, as the last write attempt found.
#[derive(Debug, Default)]
struct WriteHealth {
    /// Why the last write failed, while it did.
    failing: Option<String>,
    /// When readiness last tried a probe write.
    last_probe: Option<std::time::Instant>,
}

/// What readiness found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Reads and writes work; every migration is applied.
    Ready,
    /// Migrations this binary needs are not applied yet.
    MigrationsPending,
    /// Writes fail (disk full, size cap, failed commits): new jobs would be refused.
    WritesFailing(String),
}

impl Store {
    /// Connects, creating a SQLite file if missing. Does not migrate.
    pub async fn connect(config: &Settings) -> Result<Self, Error> {
        let db_url = &config.database_url;
        db_url.check().map_err(Error::Settings)?;
        let url = db_url.expose();
        let invalid = |e: sqlx::Error| Error::Settings(db_url.scrub(&format!("invalid DATABASE_URL {db_url}: {e}")));
        let (backend, write, read) = if config.database_url.is_postgres() {
            let (url, dropped) = db_url.for_driver();
            for name in dropped {
                tracing::warn!(parameter = %name, "DATABASE_URL parameter not supported by the PostgreSQL driver; ignored");
            }
            let opts = sqlx::postgres::PgConnectOptions::from_str(&url).map_err(invalid)?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(config.db_max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .after_connect(|conn, _| Box::pin(async move { tune_session(conn).await }))
                .after_release(|conn, _| Box::pin(async move { Ok(healthy_after_use(conn)) }))
                .connect_lazy_with(opts);
            let db = sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool);
            (Backend::Postgres, db.clone(), db)
        } else {
            use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(invalid)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // A job is on disk before its 202: FULL syncs the WAL at every commit.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30));
            let mut write_opts = opts.clone();
            if config.sqlite_max_size_mb > 0 {
                // In pages of the default 4 KiB; SQLite answers SQLITE_FULL past it, as on a full disk.
                write_opts = write_opts.pragma("max_page_count", (config.sqlite_max_size_mb * 256).to_string());
            }
            // One writer: writes queue in the pool instead of failing with SQLITE_BUSY.
            let write_pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(|conn, _| Box::pin(async move { stable_plans(conn).await }))
                .after_release(|conn, _| Box::pin(async move { Ok(healthy_after_use(conn)) }))
                .connect_with(write_opts)
                .await
                .map_err(|e| Error::Unavailable(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(Arc::new(e)))))?;
            let read_pool = SqlitePoolOptions::new()
                .max_connections(READERS as u32 + 2)
                // A local file cannot have gone away: skip sqlx's ping on every checkout.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(|conn, _| Box::pin(async move { stable_plans(conn).await }))
                // SQLite's page cache is 2 MB per connection by default, filled as the file
                // grows: six readers' caches were most of what the resident set gained with queue
                // depth. Point reads measured as fast with a small one (the OS caches the file).
                .connect_with(opts.read_only(true).pragma("cache_size", format!("-{READER_CACHE_KIB}")))
                .await
                .map_err(|e| Error::Unavailable(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(Arc::new(e)))))?;
            (
                Backend::Sqlite,
                sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(write_pool),
                sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(read_pool),
            )
        };
        let (write_tx, write_rx) = mpsc::channel(8192);
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
                write_tx,
                claimer: std::sync::OnceLock::new(),
                readers,
                enqueued: Arc::new(Notify::new()),
                events_written: Arc::new(Notify::new()),
                webhooks_due: Arc::new(Notify::new()),
                horizon: events::Horizon::default(),
                pending_estimate: AtomicI64::new(0),
                max_pending: config.max_pending,
                closed: AtomicBool::new(false),
                migrated: AtomicBool::new(false),
                write_health: std::sync::Mutex::new(WriteHealth::default()),
            }),
        };
        tokio::spawn(jobs::run_writer(store.clone(), write_rx));
        Ok(store)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), Error> {
        // Replicas started together on an empty PostgreSQL database would run the same DDL at
        // once (and fail on PostgreSQL's catalog): a session lock, held on a connection of its
        // own, lets one migrate while the others wait and then find nothing to do.
        let lock = match self.pg_pool() {
            Some(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| Error::from(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()))))?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(MIGRATION_LOCK_KEY)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| Error::from(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()))))?;
                Some(conn)
            }
            None => None,
        };
        let result = match self.inner.backend {
            // sea-orm-migration runs SQLite migrations without a transaction: every DDL statement
            // its own commit, each one fsync under synchronous=FULL (most of a cold start on an
            // empty file). One transaction makes it one commit, and all-or-nothing on a crash.
            Backend::Sqlite => {
                async {
                    let txn = self.inner.write.begin().await?;
                    Migrator::up(&txn, None).await?;
                    txn.commit().await
                }
                .await
            }
            Backend::Postgres => Migrator::up(&self.inner.write, None).await,
        };
        if let Some(mut conn) = lock {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut *conn).await;
        }
        result?;
        self.inner.migrated.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the store can take new jobs: the database answers, every migration is applied,
    /// and writes work. Migrations only move forward, so once all of them have been seen
    /// applied, a probe is just a ping. While writes fail, at most once a second the probe tries
    /// a small write of its own, so readiness comes back by itself once there is room again
    /// even when no client is sending jobs (a load balancer sends none to an unready replica).
    pub async fn ready(&self) -> Result<Health, Error> {
        if !self.inner.migrated.load(Ordering::Relaxed) {
            let done = Migrator::get_pending_migrations(&self.inner.read).await?.is_empty();
            self.inner.migrated.store(done, Ordering::Relaxed);
            if !done {
                return Ok(Health::MigrationsPending);
            }
        }
        self.ping().await?;
        let probe = {
            let Ok(mut h) = self.inner.write_health.lock() else { return Ok(Health::Ready) };
            match &h.failing {
                None => return Ok(Health::Ready),
                Some(why) if h.last_probe.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) => {
                    return Ok(Health::WritesFailing(why.clone()));
                }
                Some(_) => {
                    h.last_probe = Some(std::time::Instant::now());
                    true
                }
            }
        };
        if probe {
            let result = self.probe_write().await;
            self.note_write(&result);
            if let Err(e) = result {
                return Ok(Health::WritesFailing(write_failure(&e)));
            }
        }
        Ok(Health::Ready)
    }

    /// Writes (and commits) one small row of its own: does a write work now? The row is about
    /// as large as a job with sizeable parameters, so "works" means "a job would fit".
    async fn probe_write(&self) -> Result<(), Error> {
        let txn = self.inner.write.begin().await?;
        exec(
            &txn,
            self.stmt(
                "INSERT INTO write_probe (id, at, pad) VALUES (1, $1, $2) ON CONFLICT (id) DO UPDATE SET at = excluded.at, pad = excluded.pad",
                vec![now_us().into(), "x".repeat(8192).into()],
            ),
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Records the outcome of a job-sized write for readiness (an enqueue, the probe): a write
    /// refused for want of room or of a database marks writes as failing; a committed one clears
    /// that. The executor's smaller writes report only their failures (`note_write_failure`): a
    /// claim that fits on a full disk says nothing about whether a new job would.
    pub(crate) fn note_write<T>(&self, result: &Result<T, Error>) {
        let failing = match result {
            Ok(_) => None,
            Err(e @ (Error::StorageFull(_) | Error::Unavailable(_))) => Some(write_failure(e)),
            Err(_) => return,
        };
        if let Ok(mut h) = self.inner.write_health.lock() {
            match (&h.failing, &failing) {
                (None, Some(why)) => {
                    tracing::error!(reason = %why, "database writes are failing; new jobs are refused with 503 until they work again")
                }
                (Some(_), None) => tracing::info!("database writes work again"),
                _ => {}
            }
            if failing.is_some() {
                // The probe waits a second after the latest failure: a small write that fits
                // right after a big one failed says little.
                h.last_probe = Some(std::time::Instant::now());
            }
            h.failing = failing;
        }
    }

    /// `note_write` for a write whose success proves nothing about room for new jobs.
    pub(crate) fn note_write_failure<T>(&self, result: &Result<T, Error>) {
        if result.is_err() {
            self.note_write(result);
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Lets the writer claim jobs for this dispatcher in the transaction that makes them
    /// runnable (at most one claimer per store; a second is refused).
    pub fn attach_claimer(&self, claimer: Claimer) -> Result<(), Claimer> {
        self.inner.claimer.set(claimer)
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

    /// Closes the pools. Bounded: a pool waits for every connection to come back, and one held
    /// by a statement that never answers would otherwise keep the process from exiting.
    pub async fn close(&self) {
        let close = async {
            self.inner.readers.stop().await;
            let _ = self.inner.write.clone().close().await;
            if self.inner.backend == Backend::Sqlite {
                let _ = self.inner.read.clone().close().await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), close).await.is_err() {
            tracing::warn!("database connections still busy 10 s after shutdown; exiting without them");
        }
    }

    fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        stmt(self.inner.backend, sql, values)
    }

    pub(crate) fn add_pending_estimate(&self, delta: i64) {
        self.inner.pending_estimate.fetch_add(delta, Ordering::Relaxed);
    }
}

/// Plans through the indexes in this process's PostgreSQL sessions: no bitmap scans, and a
/// sequential scan only where no index serves.
///
/// Bitmap scans: the queue's partial indexes (`jobs_pending_idx`, `jobs_running_idx`) keep an
/// entry for every job that ever passed through their status until VACUUM runs. A plain index
/// scan marks the entries of dead rows as it meets them and skips them cheaply afterwards; a
/// bitmap scan never does, so each claim, heartbeat or count would visit the whole history again.
///
/// Sequential scans: the claim and the finish are prepared once per connection, and after five
/// runs PostgreSQL may keep a generic plan, made without the parameters' values and with the
/// statistics of that moment. Made on a new or never-analyzed table (nearly empty to the
/// planner), that plan read the whole table for every batch, and kept doing so as the table
/// grew to tens of thousands of jobs. Every statement the gateway runs has an index for its
/// lookups, so forbidding the scan only removes that trap; before the first ANALYZE the planner
/// also sorted every PENDING row for a claim of 256 (43 ms against 8.5 ms with 50 000 queued).
async fn tune_session(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute("SET enable_bitmapscan = off").await?;
    conn.execute("SET enable_seqscan = off").await?;
    Ok(())
}

/// SQLite: query plans that never depend on the values bound to a statement (the query planner
/// stability guarantee). Without it SQLite (3.51) reads a `LIMIT ?` value while planning and
/// marks the statement to be prepared again whenever that parameter is bound, that is at every
/// run: the claim, the event log's pages and the job list were parsed and planned anew each time
/// (7 % of the CPU in a profile of end-to-end load). No statement here relies on a plan made for
/// its values.
async fn stable_plans(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
    use std::ffi::c_int;
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: the locked handle gives this thread the connection alone for the call, and the
    // variadic arguments are those SQLITE_DBCONFIG_ENABLE_QPSG takes: an int (1: on) and an
    // optional int* for the new setting (none).
    let rc = unsafe {
        libsqlite3_sys::sqlite3_db_config(
            db,
            libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as c_int,
            std::ptr::null_mut::<c_int>(),
        )
    };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(sqlx::Error::Configuration(
            format!("enabling SQLite's stable query plans failed (code {rc})").into(),
        ));
    }
    Ok(())
}

/// Decides, as a connection goes back to the pool, whether it may be used again. A connection
/// whose transaction neither committed nor rolled back cleanly (a COMMIT that failed with a full
/// disk, then a ROLLBACK that found no transaction) is closed: kept, its next BEGIN would become a
/// SAVEPOINT inside a transaction that never commits, and every later write would be lost while
/// looking committed. The pool opens a fresh connection instead.
fn healthy_after_use<C: sqlx::Connection>(conn: &mut C) -> bool {
    if conn.is_in_transaction() {
        tracing::warn!("closing a database connection left inside a transaction");
        return false;
    }
    true
}

#[cfg(test)]
#[test]
fn only_placeholders_are_rewritten_for_sqlite() {
    assert_eq!(
        sqlite_placeholders("SELECT '$1', \"a$2\" FROM t WHERE x = $1 AND y = $12 AND z = '$'"),
        "SELECT '$1', \"a$2\" FROM t WHERE x = ?1 AND y = ?12 AND z = '$'"
    );
    // In order, each once: anonymous, which SQLite binds by position.
    assert_eq!(
        sqlite_placeholders("INSERT INTO t (a, b) VALUES ($1, '$3?'), ($2, $3) RETURNING \"?1\""),
        "INSERT INTO t (a, b) VALUES (?, '$3?'), (?, ?) RETURNING \"?1\""
    );
    // A repeated number keeps the numbers.
    assert_eq!(sqlite_placeholders("SELECT $1, $2, $1"), "SELECT ?1, ?2, ?1");
    assert_eq!(sqlite_placeholders("SELECT $2, $1"), "SELECT ?2, ?1");
}

fn write_failure(e: &Error) -> String {
    match e {
        Error::StorageFull(_) => "database storage is full (disk full or GATEWAY_SQLITE_MAX_SIZE_MB reached)".into(),
        Error::Unavailable(_) => "database unavailable for writes".into(),
        other => other.to_string(),
    }
}

/// Builds a statement from SQL written with `$N` placeholders, which SQLite spells `?N`.
fn stmt(backend: Backend, sql: &str, values: Vec<Value>) -> Statement {
    match backend {
        Backend::Postgres => Statement::from_sql_and_values(DbBackend::Postgres, sql, values),
        Backend::Sqlite => Statement::from_sql_and_values(DbBackend::Sqlite, sqlite_placeholders(sql), values),
    }
}

/// `$N` placeholders in SQLite's spelling: only a `$` followed by digits, outside quoted literals
/// and identifiers, is a placeholder. When they appear as `$1`, `$2`, ... in order, each used once
/// (every multi-row insert), they become anonymous `?`: SQLite finds a numbered parameter's name by
/// a linear scan, and sqlx asks for every parameter's name when it binds, so a batch of a few
/// thousand `?N` parameters cost a quadratic scan on each execution (about 2 % of the CPU of a
/// whole benchmark run). Any other use (a number repeated or out of order) keeps `?N`.
fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut in_order = true;
    let mut next = 1u32;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '$') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('?');
                let mut n = 0u32;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    out.push(chars.next().unwrap_or('0'));
                    n = n.saturating_mul(10).saturating_add(d);
                }
                in_order &= n == next;
                next = next.saturating_add(1);
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    if in_order { anonymous_placeholders(&out) } else { out }
}

/// `?N` as `?`, outside quoted literals and identifiers.
fn anonymous_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '?') => while chars.next_if(char::is_ascii_digit).is_some() {},
            _ => {}
        }
        out.push(c);
    }
    out
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
/// The most rows `values_in_chunks` puts in one statement.
pub(super) const MAX_CHUNK: usize = 256;

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
        let take = 1usize << (usize::BITS - 1 - rows.len().min(MAX_CHUNK).leading_zeros());
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

/// A statement with a bound `LIMIT` runs again and again without SQLite preparing it again: on
/// the writer (the claim) and on a reader (the event log's pages, the job list).
#[cfg(test)]
#[tokio::test]
async fn sqlite_statements_with_a_bound_limit_are_not_prepared_at_every_run() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        database_url: format!("sqlite://{}/reprepare.db?mode=rwc", dir.path().display()).parse()?,
        db_max_connections: 4,
        max_pending: 1000,
        sqlite_max_size_mb: 0,
    };
    let store = Store::connect(&settings).await?;
    store.migrate().await?;
    const SQL: &str = "SELECT id FROM jobs ORDER BY id LIMIT ?1";
    for (name, db) in [("writer", &store.inner.write), ("reader", &store.inner.read)] {
        let pool = db.get_sqlite_connection_pool();
        let mut conn = pool.acquire().await?;
        for n in 1..=20_i64 {
            sqlx::query(SQL).bind(n).fetch_all(&mut *conn).await?;
        }
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        let mut runs = None;
        // SAFETY: the locked handle gives this thread the connection alone; the statements
        // listed belong to it and stay alive while it is locked.
        unsafe {
            let mut stmt = libsqlite3_sys::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                let sql = std::ffi::CStr::from_ptr(libsqlite3_sys::sqlite3_sql(stmt)).to_string_lossy();
                if sql.contains("LIMIT") {
                    let reprepared =
                        libsqlite3_sys::sqlite3_stmt_status(stmt, libsqlite3_sys::SQLITE_STMTSTATUS_REPREPARE, 0);
                    let ran = libsqlite3_sys::sqlite3_stmt_status(stmt, libsqlite3_sys::SQLITE_STMTSTATUS_RUN, 0);
                    runs = Some((ran, reprepared));
                }
                stmt = libsqlite3_sys::sqlite3_next_stmt(db, stmt);
            }
        }
        let (ran, reprepared) = runs.ok_or(format!("{name}: the statement was not kept prepared"))?;
        assert_eq!(ran, 20, "{name}: runs of the cached statement");
        assert_eq!(reprepared, 0, "{name}: SQLite prepared the statement again {reprepared} times in {ran} runs");
    }
    Ok(())
}
