//! The idempotency index holds only the jobs that have a key. Most jobs have none, and every
//! row version of such a job still cost an entry in the full index: three per job (created,
//! claimed, finished), since status changes are not updated in place on PostgreSQL. Uniqueness
//! is unchanged: NULL keys never collided, and inserts name the index's predicate in their
//! `ON CONFLICT` clause so both backends infer the partial index.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // The new index first: while it is built the old one still guards the keys.
        db.execute_unprepared(
            "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key_partial_idx ON jobs (idempotency_key) \
             WHERE idempotency_key IS NOT NULL",
        )
        .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS jobs_idempotency_key_idx").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key_idx ON jobs (idempotency_key)")
            .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS jobs_idempotency_key_partial_idx").await?;
        Ok(())
    }
}
