//! The job event log: writing events inside the transactions that make the transitions, and
//! reading them back in log order for the API and the streams.
//!
//! Positions must never be passed over. An event id comes from a sequence when the row is
//! inserted, but transactions commit in their own order, so on PostgreSQL a reader could see id
//! 11 committed while id 10 is still in flight, move its position past 10, and lose it. Hence the
//! horizon: every transaction that writes events holds a shared advisory lock from before its
//! insert's first id until its commit; `event_horizon` takes the same lock exclusively for an instant, so when
//! it reads the largest id, every id below it is committed or rolled back for good. Readers only
//! read up to a horizon. SQLite has one writer, so ids are handed out in commit order already.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, TransactionTrait, Value};
use serde_json::Value as Json;
use tokio::sync::Notify;
use uuid::Uuid;

use super::rows::get;
use super::{Backend, Error, Store, values_in_chunks};
use crate::jobs::{Action, EventKind, GATEWAY, JobEvent, JobId, NewEvent};

/// Shared reads of the event log's horizon. Every stream opened without a resume position reads
/// it; a thousand clients connecting at once made a thousand queries (a thousand write-pool
/// transactions on PostgreSQL), and the requests waiting on them, alive together, left the heap
/// fragmented: 14.5-20.7 MB of resident memory for 1 000 idle streams, against about 9 when
/// they opened without a read. Reads run one at a time and are numbered as they start; a caller
/// takes the value of a read that started after it called, or makes one. On SQLite, where this
/// process writes every event and counts the commits that do (`note_events_written`), a read
/// also serves later callers while no such commit has been counted since it started: nothing
/// committed and counted before their call can be above it (an event committed but not yet
/// counted may also reach a new stream: an extra delivery, never a missed one).
#[derive(Default)]
pub(super) struct Horizon {
    /// Reads started so far.
    pub(super) started: AtomicU64,
    /// The last read's number and value; held while a read runs.
    pub(super) last: tokio::sync::Mutex<Option<(u64, i64)>>,
    /// Commits that wrote events, as `note_events_written` counts them.
    pub(super) writes: AtomicU64,
    /// SQLite: the last read's value, the count of `writes` before it started, and when it
    /// started.
    pub(super) settled: std::sync::Mutex<Option<(u64, i64, Instant)>>,
}

/// How long a SQLite horizon read serves callers while no event commit is counted: a bound
/// in case some write path failed to count its commit (a caller would then at worst receive
/// events committed up to this long before it subscribed, never miss one).
const SETTLED_FOR: Duration = Duration::from_secs(1);

/// The advisory lock that orders event writers against horizon readers ("agevents").
const EVENT_LOCK_KEY: i64 = 0x6167_6576_656e_7473;

/// Columns of an event row, with its job's action and target.
const EVENT_COLUMNS: &str = "e.id AS id, e.job_id AS job_id, e.at AS at, e.event AS event, e.actor AS actor, e.request_id AS request_id, \
     e.detail AS detail, j.action AS action, j.target AS target";

/// Which events a reader wants. All optional; combined with AND.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this job's.
    pub job: Option<JobId>,
    /// Only jobs of these actions (a token's scope); `None` for all.
    pub actions: Option<Vec<Action>>,
    /// Only this action's.
    pub action: Option<Action>,
    /// Only this exact target's.
    pub target: Option<String>,
}

/// Writes `events` (all at time `at`, µs) in `txn`. Call it as the last statement before the
/// commit: on PostgreSQL the shared lock it takes is held until then.
pub(super) async fn insert(
    txn: &impl ConnectionTrait,
    backend: Backend,
    at: i64,
    events: Vec<NewEvent>,
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<Value>> = events
        .into_iter()
        .map(|e| {
            let detail = match &e.detail {
                Json::Object(m) if m.is_empty() => None,
                Json::Null => None,
                d => Some(d.to_string()),
            };
            vec![
                e.job_id.0.into(),
                at.into(),
                e.kind.as_str().into(),
                e.actor.into(),
                e.request_id.into(),
                detail.into(),
            ]
        })
        .collect();
    match backend {
        // The shared lock is taken by the statement itself, in a materialized CTE joined to the
        // rows: every row the insert projects (and so every nextval of the id) comes after the
        // lock is held, whatever the join order, and the transaction saves a round trip.
        Backend::Postgres => {
            values_in_chunks(
                txn,
                backend,
                &format!(
                    "WITH horizon AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared({EVENT_LOCK_KEY})) \
                     INSERT INTO job_events (job_id, at, event, actor, request_id, detail) SELECT v.* FROM ("
                ),
                "(#::uuid,#::int8,#::text,#::text,#::text,#::text)",
                ") AS v CROSS JOIN horizon",
                rows,
            )
            .await?;
        }
        Backend::Sqlite => {
            values_in_chunks(
                txn,
                backend,
                "INSERT INTO job_events (job_id, at, event, actor, request_id, detail)",
                "(#,#,#,#,#,#)",
                "",
                rows,
            )
            .await?;
        }
    }
    Ok(())
}

/// PostgreSQL: the CTEs that write one `kind` event per row of the CTE `source` (which has an
/// `id` column), with `at` and `detail` SQL expressions over that row (`s.`), inside the
/// statement that makes the transition. One statement instead of a transaction of three saves
/// two round trips per claim or finish; the shared horizon lock is taken before any event id
/// exists, as in `insert`, and held to the statement's commit.
pub(super) fn pg_events_from(source: &str, kind: EventKind, at: &str, detail: &str) -> String {
    format!(
        "horizon AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared({EVENT_LOCK_KEY})), \
         events AS (INSERT INTO job_events (job_id, at, event, actor, request_id, detail) \
         SELECT s.id, {at}, '{kind}', '{GATEWAY}', NULL, ({detail})::text FROM {source} s CROSS JOIN horizon)",
        kind = kind.as_str()
    )
}

/// PostgreSQL: the CTE `horizon`, which takes the shared lock of `insert` once every row of the
/// CTE `rows` exists, and only when there is one (`also`: further select items evaluated with
/// it, once). Events inserted from `rows` cross joined with it get their ids after the lock is
/// held. Taken after `rows` rather than first: `rows` may wait on another transaction's row (an
/// idempotency key in flight), and a writer waiting while it holds the shared lock queues a
/// horizon reader's exclusive request, behind which that other transaction's own shared
/// request would wait in turn: a deadlock PostgreSQL breaks by aborting one of them.
pub(super) fn pg_horizon_after(rows: &str, also: &str) -> String {
    format!(
        "horizon AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared({EVENT_LOCK_KEY}){also} \
         FROM (SELECT count(*) AS n FROM {rows}) c WHERE c.n > 0)"
    )
}

impl Store {
    /// Signalled after every commit that wrote events (this process's): the event hub's wake-up.
    pub fn events_written(&self) -> Arc<Notify> {
        self.inner.events_written.clone()
    }

    pub(super) fn note_events_written(&self) {
        // Counted before the wake-up: a horizon read after the count sees this commit's events.
        self.inner.horizon.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.events_written.notify_one();
    }

    /// Every event of a job after position `after` (0: all), oldest first.
    pub async fn events(&self, id: JobId, after: i64) -> Result<Vec<JobEvent>, Error> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM job_events e JOIN jobs j ON j.id = e.job_id \
             WHERE e.job_id = $1 AND e.id > $2 ORDER BY e.id"
        );
        let rows = self.inner.read.query_all_raw(self.stmt(&sql, vec![id.0.into(), after.into()])).await?;
        rows.iter().map(event).collect()
    }

    /// The largest event id below which every event is committed (or never will be): readers
    /// that stop there never skip an event that commits later. Callers that wait at the same
    /// time share one read begun after their calls (see [`Horizon`]).
    pub async fn event_horizon(&self) -> Result<i64, Error> {
        let h = &self.inner.horizon;
        let sqlite = self.inner.backend == Backend::Sqlite;
        if sqlite {
            let writes = h.writes.load(Ordering::SeqCst);
            let settled = *h.settled.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((counted, value, at)) = settled
                && counted == writes
                && at.elapsed() < SETTLED_FOR
            {
                return Ok(value);
            }
        }
        let called_at = h.started.load(Ordering::SeqCst);
        let mut last = h.last.lock().await;
        // A read numbered above `called_at` began after this call did: its value serves it.
        if let Some((read, value)) = *last
            && read > called_at
        {
            return Ok(value);
        }
        let read = h.started.fetch_add(1, Ordering::SeqCst) + 1;
        let (writes, at) = (h.writes.load(Ordering::SeqCst), Instant::now());
        let value = self.read_event_horizon().await?;
        *last = Some((read, value));
        if sqlite {
            *h.settled.lock().unwrap_or_else(|e| e.into_inner()) = Some((writes, value, at));
        }
        Ok(value)
    }

    async fn read_event_horizon(&self) -> Result<i64, Error> {
        const MAX: &str = "SELECT COALESCE(MAX(id), 0) AS n FROM job_events";
        let row = match self.inner.backend {
            Backend::Sqlite => self.inner.read.query_one_raw(self.stmt(MAX, vec![])).await?,
            Backend::Postgres => {
                let txn = self.inner.write.begin().await?;
                // Writers hold the lock only from their events' insert to their commit; a wait
                // longer than this is a stuck writer, and the reader tries again instead of
                // holding its connection.
                txn.execute_unprepared("SET LOCAL lock_timeout = '5s'").await?;
                txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({EVENT_LOCK_KEY})")).await?;
                let row = txn.query_one_raw(self.stmt(MAX, vec![])).await?;
                txn.commit().await?;
                row
            }
        };
        Ok(row.map(|r| get::<i64>(&r, "n")).transpose()?.unwrap_or(0))
    }

    /// Events with `after < id <= upto` matching `filter`, oldest first, at most `limit`.
    pub async fn events_between(
        &self,
        after: i64,
        upto: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<JobEvent>, Error> {
        let mut sql = format!(
            "SELECT {EVENT_COLUMNS} FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE e.id > $1 AND e.id <= $2"
        );
        let mut values: Vec<Value> = vec![after.into(), upto.into()];
        if let Some(job) = filter.job {
            values.push(job.0.into());
            sql.push_str(&format!(" AND e.job_id = ${}", values.len()));
        }
        if let Some(action) = filter.action {
            values.push(action.as_str().into());
            sql.push_str(&format!(" AND j.action = ${}", values.len()));
        }
        if let Some(actions) = &filter.actions {
            if actions.is_empty() {
                return Ok(Vec::new());
            }
            let mut list = Vec::with_capacity(actions.len());
            for a in actions {
                values.push(a.as_str().into());
                list.push(format!("${}", values.len()));
            }
            sql.push_str(&format!(" AND j.action IN ({})", list.join(", ")));
        }
        if let Some(target) = &filter.target {
            values.push(target.clone().into());
            sql.push_str(&format!(" AND j.target = ${}", values.len()));
        }
        values.push((limit as i64).into());
        sql.push_str(&format!(" ORDER BY e.id LIMIT ${}", values.len()));
        let rows = self.inner.read.query_all_raw(self.stmt(&sql, values)).await?;
        rows.iter().map(event).collect()
    }
}

/// A row of `job_events` joined with its job.
fn event(row: &sea_orm::QueryResult) -> Result<JobEvent, Error> {
    let kind: String = get(row, "event")?;
    let kind = crate::jobs::EventKind::parse(&kind)
        .ok_or_else(|| Error::Corrupt(format!("unknown event kind '{kind}' in the database")))?;
    let detail = match get::<Option<String>>(row, "detail")? {
        None => Json::Object(Default::default()),
        Some(s) => serde_json::from_str(&s).map_err(|e| Error::Corrupt(format!("event detail is not JSON: {e}")))?,
    };
    let action: String = get(row, "action")?;
    Ok(JobEvent {
        id: get(row, "id")?,
        job_id: JobId(get::<Uuid>(row, "job_id")?),
        at: get(row, "at")?,
        kind,
        actor: get(row, "actor")?,
        request_id: get(row, "request_id")?,
        detail,
        action: Action::new(&action).map_err(|_| Error::Corrupt(format!("malformed action name '{action}'")))?,
        target: get(row, "target")?,
    })
}
