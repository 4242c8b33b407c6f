//! Remote runs: the backend's identity of a job's launched run (`{system, id, url}` as JSON),
//! written as soon as the backend returns it, so a process that recovers the job resumes that
//! run instead of launching another.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    External,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(Jobs::Table).add_column(ColumnDef::new(Jobs::External).text().null()).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Jobs::Table).drop_column(Jobs::External).to_owned()).await
    }
}
