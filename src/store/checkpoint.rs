//! SQLite: WAL checkpoints off the writer's path.
//!
//! By default SQLite checkpoints inside the commit that takes the WAL past 1 000 pages: the
//! writer copies those pages into the database file and syncs it (`synchronous=FULL`) while
//! every enqueue, claim and completion waits behind it. Here a connection of its own
//! checkpoints shortly after writes, in PASSIVE mode (it never waits for, nor blocks, the writer
//! or the readers); the writer's own automatic checkpoint stays as a backstop, at a higher
//! threshold, for a WAL this task could not keep short. Durability is unchanged: a commit is on
//! disk when its WAL frames are synced, whoever copies them into the database file later.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::Notify;

/// WAL pages at which the writer checkpoints by itself (SQLite's default is 1 000, 4 MB).
pub(super) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 4_000;

/// Writes gathered before a checkpoint: one checkpoint copies each page once, however many
/// commits rewrote it meanwhile.
const GATHER: Duration = Duration::from_millis(100);

/// Starts the checkpointer. `wrote` is signalled after each use of the writer connection; with
/// no writes the task sleeps (no timer while idle).
pub(super) fn spawn(opts: SqliteConnectOptions, wrote: Arc<Notify>) {
    tokio::spawn(async move {
        let mut conn: Option<SqliteConnection> = None;
        // Warn once per failing streak: a full disk fails every checkpoint until it has room.
        let mut failing = false;
        loop {
            wrote.notified().await;
            tokio::time::sleep(GATHER).await;
            let result = async {
                if conn.is_none() {
                    conn = Some(SqliteConnection::connect_with(&opts).await?);
                }
                match conn.as_mut() {
                    Some(c) => sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(c).await.map(drop),
                    None => Ok(()),
                }
            }
            .await;
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("WAL checkpoints work again");
                }
                Ok(()) => {}
                Err(e) => {
                    // A fresh connection next time: this one may be in any state.
                    conn = None;
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, "WAL checkpoint failed; the writer checkpoints by itself meanwhile");
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{Connection, SqliteConnection};

    use super::super::{Settings, Store};
    use crate::jobs::{Action, NewJob};

    /// Jobs reach the database file itself (not only the WAL) shortly after writes stop, with
    /// no further commit: the checkpointer copied them. Without it, a WAL far below SQLite's
    /// threshold is copied only when the last connection closes.
    #[tokio::test]
    async fn written_jobs_reach_the_database_file_without_another_commit() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let settings = Settings {
            database_url: format!("sqlite://{}/ckpt.db?mode=rwc", dir.path().display()).parse()?,
            db_max_connections: 4,
            max_pending: 1000,
            sqlite_max_size_mb: 0,
        };
        let store = Store::connect(&settings).await?;
        store.migrate().await?;
        for i in 0..10 {
            let job = NewJob::parse(Action::new("health_check")?, &format!("t{i}"), "test", None)?;
            store.enqueue(job, None, None).await?;
        }
        // The file alone, as a copy without its WAL, read as it is.
        let copy = dir.path().join("copy.db");
        let mut in_file = -1;
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            std::fs::copy(dir.path().join("ckpt.db"), &copy)?;
            let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", copy.display()))?.immutable(true);
            let mut conn = SqliteConnection::connect_with(&opts).await?;
            // A copy taken mid-checkpoint may not have the table yet, or be torn: try again.
            in_file =
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs").fetch_one(&mut conn).await.unwrap_or(-1);
            conn.close().await?;
            if in_file == 10 {
                break;
            }
        }
        assert_eq!(in_file, 10, "jobs in the database file 2 s after the last write");
        drop(store);
        Ok(())
    }
}
