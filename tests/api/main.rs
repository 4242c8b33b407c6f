//! Integration tests: the real app over real HTTP, each on SQLite and on PostgreSQL.

mod auth;
mod cli;
mod contract;
mod errors;
mod helpers;
mod jobs;
mod process;
mod replicas;

/// Runs one async test body on both backends, as `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    };
}
