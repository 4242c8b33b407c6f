//! One `Runner` per kind of backend, behind one small trait. Runners perform an action and
//! report its result; they never touch the database or metrics (the worker records results).

mod simulated;

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

pub use simulated::{SimDuration, SimulatedRunner};

use crate::jobs::Action;

/// What a runner gets to work with.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub action: Action,
    pub target: String,
    /// The job's parameters (a JSON object).
    pub parameters: Value,
    /// Attempt number, from 1.
    pub attempt: i32,
}

/// Why a run failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// A boxed future, so runners can be stored as trait objects.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, RunError>> + Send + 'a>>;

/// Performs automation actions. Dropping the returned future interrupts the run (timeouts and
/// cancellation rely on that), so a runner must leave nothing half-done that a drop would
/// corrupt.
pub trait Runner: Send + Sync {
    /// Runs one attempt; the `Ok` value is stored as the job's `result`.
    fn run<'a>(&'a self, request: &'a RunRequest) -> RunFuture<'a>;
}
