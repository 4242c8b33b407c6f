//! The `jobs` table: the durable record of every job and, through its PENDING rows, the queue.
//! Times are microseconds since the Unix epoch, so lease and schedule comparisons are plain
//! integer comparisons that behave the same on both backends.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Action,
    Target,
    RequestedBy,
    Parameters,
    Status,
    Attempts,
    Error,
    Result,
    CreatedAt,
    RunAt,
    StartedAt,
    FinishedAt,
    LeaseOwner,
    LeaseUntil,
    CancelRequested,
    IdempotencyKey,
    RequestFingerprint,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Jobs::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Jobs::Action).string_len(32).not_null())
                    .col(ColumnDef::new(Jobs::Target).string_len(253).not_null())
                    .col(ColumnDef::new(Jobs::RequestedBy).string_len(320).not_null())
                    .col(ColumnDef::new(Jobs::Parameters).text().not_null())
                    .col(ColumnDef::new(Jobs::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Jobs::Attempts).integer().not_null().default(0))
                    .col(ColumnDef::new(Jobs::Error).text().null())
                    .col(ColumnDef::new(Jobs::Result).text().null())
                    .col(ColumnDef::new(Jobs::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::RunAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::StartedAt).big_integer().null())
                    .col(ColumnDef::new(Jobs::FinishedAt).big_integer().null())
                    .col(ColumnDef::new(Jobs::LeaseOwner).uuid().null())
                    .col(ColumnDef::new(Jobs::LeaseUntil).big_integer().null())
                    .col(ColumnDef::new(Jobs::CancelRequested).boolean().not_null().default(false))
                    .col(ColumnDef::new(Jobs::IdempotencyKey).string_len(255).null())
                    .col(ColumnDef::new(Jobs::RequestFingerprint).string_len(64).null())
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        // The queue: only PENDING rows, in run order. Small, so claims stay cheap however large
        // the history grows.
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS jobs_pending_idx ON jobs (run_at, id) WHERE status = 'PENDING'",
        )
        .await?;
        // Running jobs by lease holder, for heartbeats and lease recovery. `lease_until` is left out
        // on purpose: heartbeats change only it, so PostgreSQL can update those rows in place (HOT).
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS jobs_running_idx ON jobs (lease_owner) WHERE status = 'RUNNING'",
        )
        .await?;
        // Race-safe idempotency: concurrent duplicates collide here. NULL keys never collide.
        db.execute_unprepared("CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key_idx ON jobs (idempotency_key)")
            .await?;
        db.execute_unprepared("CREATE INDEX IF NOT EXISTS jobs_status_id_idx ON jobs (status, id)").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Jobs::Table).to_owned()).await
    }
}
