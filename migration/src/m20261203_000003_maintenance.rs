//! Maintenance: an index that lets retention find old finished jobs without scanning the table,
//! and a one-row table the store writes to when it must find out whether writes work again
//! (after a full disk or a failed commit), without touching any job.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WriteProbe {
    Table,
    Id,
    At,
    Pad,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WriteProbe::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(WriteProbe::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(WriteProbe::At).big_integer().not_null())
                    .col(ColumnDef::new(WriteProbe::Pad).text().not_null())
                    .to_owned(),
            )
            .await?;
        // Only finished jobs have `finished_at` (a retry clears it), so the index holds exactly
        // what retention may delete, oldest first.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX IF EXISTS jobs_finished_idx").await?;
        manager.drop_table(Table::drop().table(WriteProbe::Table).to_owned()).await
    }
}
