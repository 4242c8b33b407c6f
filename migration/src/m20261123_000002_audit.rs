//! Audit: who submitted each job (the API token's name), and one `job_events` row per create
//! and cancel, written in the same transaction as the change it records.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    SubmittedBy,
}

#[derive(DeriveIden)]
enum JobEvents {
    Table,
    Id,
    JobId,
    At,
    Event,
    Actor,
    RequestId,
    Detail,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(ColumnDef::new(Jobs::SubmittedBy).string_len(128).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(JobEvents::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(JobEvents::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(JobEvents::JobId).uuid().not_null())
                    .col(ColumnDef::new(JobEvents::At).big_integer().not_null())
                    .col(ColumnDef::new(JobEvents::Event).string_len(32).not_null())
                    .col(ColumnDef::new(JobEvents::Actor).string_len(128).not_null())
                    .col(ColumnDef::new(JobEvents::RequestId).string_len(64).null())
                    .col(ColumnDef::new(JobEvents::Detail).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("job_events_job_idx")
                    .table(JobEvents::Table)
                    .col(JobEvents::JobId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(JobEvents::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(Jobs::Table).drop_column(Jobs::SubmittedBy).to_owned()).await
    }
}
