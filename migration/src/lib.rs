//! Database migrations for automation-gateway, applied at start-up by the server and alone by
//! `automation-gateway migrate`. DDL is written with the portable schema builder; only the
//! partial indexes are spelled out in SQL, which SQLite and PostgreSQL share.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_jobs;
mod m20261123_000002_audit;
mod m20261203_000003_maintenance;
mod m20261203_000004_external;
mod m20261203_000005_live;
mod m20261206_000006_partial_idempotency;

/// The ordered list of migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_jobs::Migration),
            Box::new(m20261123_000002_audit::Migration),
            Box::new(m20261203_000003_maintenance::Migration),
            Box::new(m20261203_000004_external::Migration),
            Box::new(m20261203_000005_live::Migration),
            Box::new(m20261206_000006_partial_idempotency::Migration),
        ]
    }
}
