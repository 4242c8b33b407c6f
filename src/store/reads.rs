//! Batched point reads. Concurrent `get`s are gathered by a few reader tasks and answered by
//! one `SELECT ... WHERE id IN (...)` per batch: the read-side twin of the enqueue group commit.
//! Each query costs a pool checkout, a hop to the SQLite worker thread or a PostgreSQL round
//! trip, and statement setup; under load a batch shares those among every waiting request,
//! while a lone request still goes straight through (a reader never waits to fill a batch).

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{DbErr, QueryResult, RuntimeErr};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Sqlite, SqlitePool};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::Error;
use super::rows::{self, JOB_COLUMNS};
use crate::jobs::{Job, JobId};

/// Most ids in one query. Batches are padded to a power of two (repeating an id), so each
/// connection caches at most eight shapes of the statement.
const MAX_BATCH: usize = 128;

pub(super) struct ReadRequest {
    pub id: JobId,
    pub reply: oneshot::Sender<Result<Option<Job>, Error>>,
}

/// Where readers take their connections from.
#[derive(Clone)]
pub(super) enum ReadPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A reader's own connection. Readers keep theirs between batches because sqlx pings a pooled
/// connection on every return to the pool (and on checkout unless told not to): a round trip
/// to the SQLite worker thread or the PostgreSQL server that would cost as much as the query.
enum Conn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl ReadPool {
    async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        Ok(match self {
            ReadPool::Sqlite(p) => Conn::Sqlite(p.acquire().await?),
            ReadPool::Postgres(p) => Conn::Postgres(p.acquire().await?),
        })
    }
}

/// The reader tasks, and how to stop them.
pub(super) struct Readers {
    pub tx: mpsc::Sender<ReadRequest>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Readers {
    /// Starts `readers` tasks serving `tx`.
    pub fn spawn(pool: ReadPool, readers: usize) -> Readers {
        let (tx, rx) = mpsc::channel(8192);
        let rx = Arc::new(Mutex::new(rx));
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        for _ in 0..readers.max(1) {
            tasks.spawn(run_reader(pool.clone(), rx.clone(), stop.clone()));
        }
        tasks.close();
        Readers { tx, stop, tasks }
    }

    /// Stops the readers and waits until they have given back their connections (a pool only
    /// finishes closing once every connection is back). Later reads fail with `ShuttingDown`.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

async fn run_reader(pool: ReadPool, rx: Arc<Mutex<mpsc::Receiver<ReadRequest>>>, stop: CancellationToken) {
    let mut batch: Vec<ReadRequest> = Vec::with_capacity(MAX_BATCH);
    let mut conn: Option<Conn> = None;
    loop {
        {
            // One reader at a time gathers; the others are querying meanwhile.
            let mut rx = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                rx = rx.lock() => rx,
            };
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                r = rx.recv() => r,
            };
            match first {
                Some(first) => crate::batch::gather(first, &mut *rx, MAX_BATCH, &mut batch),
                None => {
                    // Stopping: refuse new reads and answer the queued ones.
                    rx.close();
                    while let Ok(r) = rx.try_recv() {
                        let _ = r.reply.send(Err(Error::ShuttingDown));
                    }
                    return;
                }
            }
        }
        // Requests whose caller already gave up (timeout, disconnect) need no query.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let result = match &mut conn {
            Some(c) => fetch(c, &batch).await,
            None => match pool.acquire().await {
                Ok(c) => fetch(conn.insert(c), &batch).await,
                Err(e) => Err(sqlx_error(e)),
            },
        };
        match result {
            Ok(mut found) => {
                for r in batch.drain(..) {
                    let job = found.get_mut(&r.id.0).and_then(|jobs| jobs.pop());
                    let _ = r.reply.send(Ok(job));
                }
            }
            Err(e) => {
                if matches!(e, Error::Unavailable(_)) {
                    // Back to the pool, which closes it if it is broken; the next batch takes
                    // a fresh one.
                    conn = None;
                }
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

pub(super) fn sqlx_error(e: sqlx::Error) -> Error {
    Error::from(DbErr::Query(RuntimeErr::SqlxError(Arc::new(e))))
}

/// The jobs of `batch`, by id. The same id asked twice in one batch gets its own copy each time.
async fn fetch(conn: &mut Conn, batch: &[ReadRequest]) -> Result<HashMap<Uuid, Vec<Job>>, Error> {
    let n = batch.len().next_power_of_two();
    let mark = if matches!(conn, Conn::Sqlite(_)) { '?' } else { '$' };
    let mut sql = String::with_capacity(96 + JOB_COLUMNS.len() + n * 5);
    sql.push_str("SELECT ");
    sql.push_str(JOB_COLUMNS);
    sql.push_str(" FROM jobs WHERE id ");
    if n == 1 {
        sql.push_str("= ");
        sql.push(mark);
        sql.push('1');
    } else {
        sql.push_str("IN (");
        for i in 1..=n {
            if i > 1 {
                sql.push(',');
            }
            sql.push(mark);
            sql.push_str(&i.to_string());
        }
        sql.push(')');
    }
    let last = batch[batch.len() - 1].id.0;
    // Built from constants and placeholder numbers only: no input reaches the SQL text.
    let ids = batch.iter().map(|r| r.id.0).chain(std::iter::repeat(last)).take(n);
    let rows: Vec<QueryResult> = match conn {
        Conn::Sqlite(c) => {
            let q = ids.fold(sqlx::query(AssertSqlSafe(sql)), |q, id| q.bind(id));
            q.fetch_all(&mut **c).await.map_err(sqlx_error)?.into_iter().map(QueryResult::from).collect()
        }
        Conn::Postgres(c) => {
            let q = ids.fold(sqlx::query(AssertSqlSafe(sql)), |q, id| q.bind(id));
            q.fetch_all(&mut **c).await.map_err(sqlx_error)?.into_iter().map(QueryResult::from).collect()
        }
    };
    let mut counts: HashMap<Uuid, usize> = HashMap::with_capacity(batch.len());
    for r in batch {
        *counts.entry(r.id.0).or_default() += 1;
    }
    let mut found: HashMap<Uuid, Vec<Job>> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id = rows::id(row)?.0;
        let copies = counts.get(&id).copied().unwrap_or(0);
        if copies == 0 {
            continue;
        }
        let job = rows::job(row)?;
        let slot = found.entry(id).or_default();
        for _ in 1..copies {
            slot.push(job.clone());
        }
        slot.push(job);
    }
    Ok(found)
}
