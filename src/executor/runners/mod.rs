//! One `Runner` per kind of backend, behind one small trait. Runners perform an action and
//! report its result; they never touch the database or metrics: a remote runner hands the
//! backend's run identity to a `Recorder` (the worker stores it), and the worker records results.
//!
//! Remote runners (awx, jenkins, github_actions, kubernetes) launch a run, record its identity at
//! once, then follow it; given a recorded identity (`RunRequest::external`) they follow that run
//! and launch nothing. That is what lets a job survive the crash of the process running it.

mod awx;
mod command;
mod github;
mod http;
mod jenkins;
mod kubernetes;
mod remote;
mod simulated;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use simulated::{SimDuration, SimulatedRunner};

use super::template::{self, Template, Vars};
use crate::jobs::{Action, External, JobId};

/// What a runner gets to work with.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub job_id: JobId,
    pub action: Action,
    pub target: String,
    pub requested_by: String,
    /// The job's parameters (a JSON object).
    pub parameters: Value,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// The remote run an earlier attempt launched: follow it, launch nothing.
    pub external: Option<External>,
}

impl RunRequest {
    /// The values templates are rendered with; `job_id` is the job's id as text.
    pub fn vars<'a>(&'a self, job_id: &'a str) -> Vars<'a> {
        Vars {
            target: &self.target,
            action: self.action.as_str(),
            job_id,
            requested_by: &self.requested_by,
            parameters: &self.parameters,
        }
    }
}

/// Whether a failed run is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retried by the action's policy: a failed run, a connect error, a 5xx, a 429.
    Retryable,
    /// Fails the job at once whatever attempts remain: bad configuration, a 4xx from the
    /// backend, a paused Deployment. Another attempt would fail the same way.
    Permanent,
}

/// Why a run failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    pub kind: ErrorKind,
    pub message: String,
    /// The backend asked to wait at least this long (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl RunError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Retryable, message: message.into(), retry_after: None }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Permanent, message: message.into(), retry_after: None }
    }
}

/// A boxed future, so runners can be stored as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// What a run ends with: the `Ok` value is stored as the job's `result`.
pub type RunFuture<'a> = BoxFuture<'a, Result<Value, RunError>>;

/// Where a remote runner reports the run it launched, before it follows it. The worker's
/// implementation stores it in the job row; the runner goes on only once it is stored (or the
/// store has kept failing: the run is followed anyway, only its crash-safety is lost).
pub trait Recorder: Send + Sync {
    fn record(&self, external: External) -> BoxFuture<'_, ()>;
}

/// Performs automation actions. Dropping the future `run` returns interrupts the run (timeouts,
/// cancels and a lost lease rely on that); `cancel` then stops a remote run that goes on
/// without us.
pub trait Runner: Send + Sync {
    /// Runs one attempt, or resumes following `request.external`.
    fn run<'a>(&'a self, request: &'a RunRequest, recorder: &'a dyn Recorder) -> RunFuture<'a>;

    /// Asks the backend to stop the run `external` (a cancel request, a timeout). Best effort:
    /// failures are logged by the caller.
    fn cancel<'a>(&'a self, _request: &'a RunRequest, _external: &'a External) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The runner kinds a catalog may name.
pub const KINDS: [&str; 7] = ["simulated", "http", "awx", "jenkins", "github_actions", "kubernetes", "command"];

/// A runner built from a catalog entry, with the parameters its templates need.
pub struct Built {
    pub runner: Arc<dyn Runner>,
    /// Each parameter path a template names, with where (`awx.extra_vars`), for the POST check.
    pub needs: Vec<(Vec<String>, String)>,
    /// Token files it reads (checked readable at start-up).
    pub secret_files: Vec<std::path::PathBuf>,
}

/// Builds the runner `kind` from its settings block (`None` when the entry has none).
pub fn build(kind: &str, settings: Option<&Value>, sim: &SimulatedRunner) -> Result<Built, String> {
    let block = |kind: &str| settings.cloned().ok_or_else(|| format!("{kind}: missing (the runner's settings block)"));
    match kind {
        "simulated" => {
            if settings.is_some() {
                return Err("simulated: the simulated runner takes no settings".into());
            }
            Ok(Built { runner: Arc::new(sim.clone()), needs: Vec::new(), secret_files: Vec::new() })
        }
        "http" => http::build(block(kind)?),
        "awx" => awx::build(block(kind)?),
        "jenkins" => jenkins::build(block(kind)?),
        "github_actions" => github::build(block(kind)?),
        "kubernetes" => kubernetes::build(settings.cloned().unwrap_or(Value::Object(Default::default()))),
        "command" => command::build(block(kind)?),
        other => Err(format!("runner: unknown runner '{other}' (one of {})", KINDS.join(", "))),
    }
}

/// Collects the parameter paths of templates as a runner's settings are parsed.
#[derive(Default)]
pub(crate) struct Needs(Vec<(Vec<String>, String)>);

impl Needs {
    /// Parses a template found at `at`, noting the parameters it names.
    pub fn template(&mut self, text: &str, at: &str) -> Result<Template, String> {
        let t = Template::parse(text).map_err(|e| format!("{at}: {e}"))?;
        for p in t.parameters() {
            self.0.push((p.to_vec(), at.to_owned()));
        }
        Ok(t)
    }

    /// Parses a JSON document of templates found at `at`.
    pub fn json(&mut self, value: &Value, at: &str) -> Result<super::template::JsonTemplate, String> {
        let t = super::template::JsonTemplate::parse(value).map_err(|e| format!("{at}: {e}"))?;
        for p in t.parameters() {
            self.0.push((p.to_vec(), at.to_owned()));
        }
        Ok(t)
    }

    pub fn into_inner(self) -> Vec<(Vec<String>, String)> {
        self.0
    }
}

/// Deserializes a runner's settings block, naming the runner in errors.
pub(crate) fn settings<T: serde::de::DeserializeOwned>(kind: &str, value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("{kind}: {e}"))
}
