//! The completion-webhook outbox: a row per job with a callback, written in the transaction that
//! ends the job, claimed with a lease by one replica at a time, and a log row per delivery try.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use super::rows::get;
use super::{Backend, Error, Store, now_us, values_in_chunks};
use crate::jobs::JobId;

/// A delivery whose time has come, leased to this process.
#[derive(Debug, Clone)]
pub struct DueWebhook {
    pub job_id: JobId,
    pub url: String,
    /// Tries made so far.
    pub attempts: i32,
    /// When the job ended (µs): retries stop some time after it.
    pub created_at: i64,
}

/// One delivery try, as the log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookTry {
    /// 1 for the first try.
    pub attempt: i32,
    /// When it was made (µs).
    pub at: i64,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// What comes after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextTry {
    /// It succeeded: done.
    Delivered,
    /// Try again at this time (µs).
    At(i64),
    /// Retries are exhausted: done, failed.
    GiveUp,
}

/// A job's webhook: where, its state, and every try.
#[derive(Debug, Clone, Default)]
pub struct WebhookLog {
    pub url: Option<String>,
    /// `pending`, `delivered` or `failed`; `None` while there is nothing to deliver.
    pub state: Option<String>,
    /// When the next try is due (µs), while pending.
    pub next_at: Option<i64>,
    pub tries: Vec<WebhookTry>,
}

/// Adds the deliveries of jobs that just ended, in their ending transaction.
pub(super) async fn enqueue(
    txn: &impl ConnectionTrait,
    backend: Backend,
    now: i64,
    jobs: Vec<(JobId, String)>,
) -> Result<(), Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let rows = jobs.into_iter().map(|(id, url)| vec![id.0.into(), url.into(), now.into(), now.into()]).collect();
    let row = match backend {
        Backend::Postgres => "(#::uuid,#::text,'pending',0,#::int8,#::int8)",
        Backend::Sqlite => "(#,#,'pending',0,#,#)",
    };
    values_in_chunks(
        txn,
        backend,
        "INSERT INTO webhook_outbox (job_id, url, state, attempts, next_at, created_at)",
        row,
        "ON CONFLICT (job_id) DO NOTHING",
        rows,
    )
    .await?;
    Ok(())
}

impl Store {
    /// Signalled when this process wrote a delivery that is due now: the deliverer's wake-up.
    pub fn webhooks_due(&self) -> Arc<Notify> {
        self.inner.webhooks_due.clone()
    }

    pub(super) fn note_webhooks_due(&self) {
        self.inner.webhooks_due.notify_one();
    }

    /// Leases up to `limit` due deliveries to `owner` for `lease_us`. Replicas skip each other's
    /// rows (PostgreSQL), and a lease that ran out (its replica died mid-try) is taken over.
    pub async fn claim_webhooks(&self, owner: Uuid, limit: usize, lease_us: i64) -> Result<Vec<DueWebhook>, Error> {
        let now = now_us();
        let lock = match self.inner.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE webhook_outbox SET lease_owner = $1, lease_until = $2 WHERE job_id IN \
             (SELECT job_id FROM webhook_outbox WHERE state = 'pending' AND next_at <= $3 \
              AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_at LIMIT $4 {lock}) \
             RETURNING job_id, url, attempts, created_at"
        );
        let values = vec![owner.into(), (now + lease_us).into(), now.into(), (limit as i64).into()];
        let rows = self.inner.write.query_all_raw(self.stmt(&sql, values)).await?;
        rows.iter()
            .map(|r| {
                Ok(DueWebhook {
                    job_id: JobId(get::<Uuid>(r, "job_id")?),
                    url: get(r, "url")?,
                    attempts: get(r, "attempts")?,
                    created_at: get(r, "created_at")?,
                })
            })
            .collect()
    }

    /// At start-up on SQLite (one process owns the file), frees the leases of tries a dead
    /// process left in flight, so they are made again now instead of after their lease.
    pub async fn release_stale_webhook_leases(&self) -> Result<(), Error> {
        if self.inner.backend == Backend::Sqlite {
            self.inner
                .write
                .execute_unprepared(
                    "UPDATE webhook_outbox SET lease_owner = NULL, lease_until = NULL WHERE state = 'pending' AND lease_owner IS NOT NULL",
                )
                .await?;
        }
        Ok(())
    }

    /// Logs a try and schedules what follows, if `owner` still holds the lease for that try.
    /// False when it does not (its lease ran out and another replica took the delivery over).
    pub async fn record_webhook_try(
        &self,
        owner: Uuid,
        job: JobId,
        tried: &WebhookTry,
        next: NextTry,
    ) -> Result<bool, Error> {
        let (state, next_at) = match next {
            NextTry::Delivered => ("delivered", tried.at),
            NextTry::At(t) => ("pending", t),
            NextTry::GiveUp => ("failed", tried.at),
        };
        let txn = self.inner.write.begin().await?;
        let n = txn
            .execute_raw(self.stmt(
                "UPDATE webhook_outbox SET attempts = $1, state = $2, next_at = $3, lease_owner = NULL, lease_until = NULL \
                 WHERE job_id = $4 AND lease_owner = $5 AND attempts = $6",
                vec![
                    tried.attempt.into(),
                    state.into(),
                    next_at.into(),
                    job.0.into(),
                    owner.into(),
                    (tried.attempt - 1).into(),
                ],
            ))
            .await?
            .rows_affected();
        if n != 1 {
            txn.rollback().await?;
            return Ok(false);
        }
        let values: Vec<Value> = vec![
            job.0.into(),
            tried.attempt.into(),
            tried.at.into(),
            tried.status_code.into(),
            tried.latency_ms.into(),
            tried.error.clone().into(),
        ];
        txn.execute_raw(self.stmt(
            "INSERT INTO webhook_attempts (job_id, attempt, at, status_code, latency_ms, error) VALUES ($1, $2, $3, $4, $5, $6)",
            values,
        ))
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// A job's webhook state and tries, oldest first.
    pub async fn webhook_log(&self, job: JobId) -> Result<WebhookLog, Error> {
        let read = &self.inner.read;
        let head = read
            .query_one_raw(self.stmt(
                "SELECT j.callback_url AS url, o.state AS state, o.next_at AS next_at \
                 FROM jobs j LEFT JOIN webhook_outbox o ON o.job_id = j.id WHERE j.id = $1",
                vec![job.0.into()],
            ))
            .await?
            .ok_or(Error::NotFound)?;
        let state: Option<String> = get(&head, "state")?;
        let next_at = if state.as_deref() == Some("pending") { get(&head, "next_at")? } else { None };
        let rows = read
            .query_all_raw(self.stmt(
                "SELECT attempt, at, status_code, latency_ms, error FROM webhook_attempts WHERE job_id = $1 ORDER BY id",
                vec![job.0.into()],
            ))
            .await?;
        let tries = rows
            .iter()
            .map(|r| {
                Ok(WebhookTry {
                    attempt: get(r, "attempt")?,
                    at: get(r, "at")?,
                    status_code: get(r, "status_code")?,
                    latency_ms: get(r, "latency_ms")?,
                    error: get(r, "error")?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(WebhookLog { url: get(&head, "url")?, state, next_at, tries })
    }
}
