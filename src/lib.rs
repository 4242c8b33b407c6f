//! automation-gateway: a durable job-control plane. One REST API turns requests for automation
//! actions into jobs stored in a database that doubles as the queue; an executor runs them
//! asynchronously; business metrics go to Prometheus through an OpenTelemetry meter.
//!
//! `App::build(config)` then `App::run(listener, shutdown)` is the one way to start it, used by
//! `main` and by the tests alike.

pub mod api;
pub mod app;
pub mod auth;
pub mod batch;
pub mod cli;
pub mod config;
pub mod executor;
pub mod jobs;
pub mod live;
pub mod memory;
#[cfg(target_os = "linux")]
pub mod pool;
pub mod server;
pub mod store;
pub mod telemetry;

pub use app::{App, AppError, shutdown_signal};

/// Makes ring the process's rustls crypto provider; later calls do nothing. The binary carries
/// one provider (sqlx and the Loki exporter pin ring), and the other HTTP clients are built
/// without one of their own, so whatever builds a client (the binary, an embedding, a test)
/// calls this first.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
pub use config::Config;

/// The OpenAPI document as JSON.
pub fn openapi_spec() -> String {
    api::spec_json()
}

/// A new API token and its SHA-256 hash (hex) for the tokens file.
pub fn new_token() -> (String, String) {
    use rand::Rng;
    use sha2::{Digest, Sha256};
    let bytes: [u8; 32] = rand::rng().random();
    let token = format!("agw_{}", hex::encode(bytes));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    (token, hash)
}
