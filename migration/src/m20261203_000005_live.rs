//! Live jobs: the completion webhook a job may carry (`jobs.callback_url`), its trace context
//! (`jobs.traceparent`), the webhook's durable outbox
//! (one row per job with a callback, written in the transaction that ends the job) and the log of
//! every delivery try.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    CallbackUrl,
    Traceparent,
}

#[derive(DeriveIden)]
enum WebhookOutbox {
    Table,
    JobId,
    Url,
    State,
    Attempts,
    NextAt,
    LeaseOwner,
    LeaseUntil,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WebhookAttempts {
    Table,
    Id,
    JobId,
    Attempt,
    At,
    StatusCode,
    LatencyMs,
    Error,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(ColumnDef::new(Jobs::CallbackUrl).text().null())
                    .to_owned(),
            )
            .await?;
        // The W3C trace context of the request that created the job: its attempts continue it.
        manager
            .alter_table(
                Table::alter()
                    .table(Jobs::Table)
                    .add_column(ColumnDef::new(Jobs::Traceparent).string_len(64).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookOutbox::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(WebhookOutbox::JobId).uuid().not_null().primary_key())
                    .col(ColumnDef::new(WebhookOutbox::Url).text().not_null())
                    .col(ColumnDef::new(WebhookOutbox::State).string_len(16).not_null())
                    .col(ColumnDef::new(WebhookOutbox::Attempts).integer().not_null())
                    .col(ColumnDef::new(WebhookOutbox::NextAt).big_integer().not_null())
                    .col(ColumnDef::new(WebhookOutbox::LeaseOwner).uuid().null())
                    .col(ColumnDef::new(WebhookOutbox::LeaseUntil).big_integer().null())
                    .col(ColumnDef::new(WebhookOutbox::CreatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        // Only pending deliveries are ever looked for by time.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS webhook_outbox_due_idx ON webhook_outbox (next_at) WHERE state = 'pending'",
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookAttempts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(WebhookAttempts::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(WebhookAttempts::JobId).uuid().not_null())
                    .col(ColumnDef::new(WebhookAttempts::Attempt).integer().not_null())
                    .col(ColumnDef::new(WebhookAttempts::At).big_integer().not_null())
                    .col(ColumnDef::new(WebhookAttempts::StatusCode).integer().null())
                    .col(ColumnDef::new(WebhookAttempts::LatencyMs).big_integer().not_null())
                    .col(ColumnDef::new(WebhookAttempts::Error).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("webhook_attempts_job_idx")
                    .table(WebhookAttempts::Table)
                    .col(WebhookAttempts::JobId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(WebhookAttempts::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(WebhookOutbox::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(Jobs::Table).drop_column(Jobs::Traceparent).to_owned()).await?;
        manager.alter_table(Table::alter().table(Jobs::Table).drop_column(Jobs::CallbackUrl).to_owned()).await
    }
}
