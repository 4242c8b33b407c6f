//! Housekeeping: retention of finished jobs, and the gauges read from the database.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Ctx, Ticker};
use crate::store;

/// Most jobs deleted in one retention transaction: short enough that writers queued behind it
/// (one writer connection on SQLite) wait milliseconds, not seconds.
const PURGE_BATCH: usize = 500;

/// Deletes finished jobs older than `keep`, with their events, in small batches with a pause
/// between them. Runs at start-up, then every `every`.
pub(super) async fn retention_loop(ctx: Arc<Ctx>, keep: Duration, every: Duration, stop: CancellationToken) {
    let mut ticker = Ticker::new(every, stop.clone());
    while ticker.next().await {
        let cutoff = store::now_us().saturating_sub(keep.as_micros() as i64);
        let mut total = 0u64;
        loop {
            match ctx.store.purge_finished(cutoff, PURGE_BATCH).await {
                Ok(n) => {
                    ctx.metrics.jobs_deleted(n);
                    total += n;
                    if (n as usize) < PURGE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; retrying at the next one");
                    break;
                }
            }
            // Let queued writers in between batches.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop.cancelled() => return,
            }
        }
        if total > 0 {
            tracing::info!(
                deleted = total,
                older_than_days = keep.as_secs_f64() / 86_400.0,
                "retention: finished jobs deleted"
            );
        }
    }
}

/// Reads the global queue figures into the gauges every second, and the database size every
/// tenth second.
pub(super) async fn sample_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut ticker = Ticker::new(Duration::from_secs(1), stop);
    let mut n = 0u64;
    while ticker.next().await {
        if n.is_multiple_of(10) {
            match ctx.store.database_size().await {
                Ok(bytes) => ctx.metrics.database_size(bytes),
                Err(e) => tracing::debug!(error = %e, "database size sampling failed"),
            }
        }
        n += 1;
        match ctx.store.queue_stats().await {
            Ok(s) => {
                let age_us = s.oldest_run_at.map(|t| store::now_us().saturating_sub(t).max(0)).unwrap_or(0);
                ctx.metrics.queue_sampled(s.pending, Duration::from_micros(age_us as u64));
            }
            Err(e) => tracing::debug!(error = %e, "queue sampling failed"),
        }
    }
}
