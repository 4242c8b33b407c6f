//! The wire types: requests, responses and their OpenAPI descriptions and examples.

use std::collections::BTreeMap;

use poem_openapi::{Enum, Object};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::jobs::{Job, JobStatus};

/// A job's status. `PENDING -> RUNNING -> SUCCESS | FAILED`; `CANCELED` from PENDING or RUNNING.
#[derive(Enum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "UPPERCASE")]
#[serde(rename_all = "UPPERCASE")]
pub enum JobStatusOut {
    /// Stored, waiting for a worker (or for its retry time).
    Pending,
    /// A worker is running it.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with an error after its last attempt.
    Failed,
    /// Canceled on request.
    Canceled,
}

impl From<JobStatus> for JobStatusOut {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Pending => Self::Pending,
            JobStatus::Running => Self::Running,
            JobStatus::Success => Self::Success,
            JobStatus::Failed => Self::Failed,
            JobStatus::Canceled => Self::Canceled,
        }
    }
}

impl From<JobStatusOut> for JobStatus {
    fn from(s: JobStatusOut) -> Self {
        match s {
            JobStatusOut::Pending => Self::Pending,
            JobStatusOut::Running => Self::Running,
            JobStatusOut::Success => Self::Success,
            JobStatusOut::Failed => Self::Failed,
            JobStatusOut::Canceled => Self::Canceled,
        }
    }
}

/// Stands, in descriptions of the OpenAPI document, for the list of the catalog's actions; the
/// served document has it replaced (`super::spec_for`).
pub const ACTION_NAMES: &str = "{action_names}";

/// A request to run an action.
#[derive(Object, Debug, Clone)]
#[oai(rename = "CreateJobRequest", example)]
pub struct CreateJobIn {
    /// The action: one of {action_names} (others get 422).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub action: String,
    /// What to run it against: 1 to 253 letters, digits and `-_.:/@`.
    #[oai(validator(min_length = 1, max_length = 253))]
    pub target: TargetIn,
    /// Who asks (free text, e.g. an e-mail address), 1 to 320 characters, no control or format
    /// characters (Unicode Cc, Cf, Zl, Zp: they could disguise a name in the audit trail).
    #[oai(validator(min_length = 1, max_length = 320))]
    pub requested_by: String,
    /// Parameters for the action (an object, default `{}`, at most 16 levels deep, no repeated
    /// keys, integers within 64 bits). The simulated runner honours
    /// `simulate: {"duration_ms": N, "fail": true|false}`.
    pub parameters: Option<BTreeMap<String, Value>>,
    /// Where to POST the job (signed, Standard Webhooks) when it ends: an http(s) URL on one of
    /// the gateway's allowed webhook hosts. Defaults to the action's `callback_url`, if any.
    #[oai(validator(max_length = 2048))]
    pub callback_url: Option<String>,
}

/// A job's target as a request carries it: letters, digits and `-_.:/@`, checked while parsing
/// and described by the document's `pattern`. Not poem-openapi's `pattern` validator: it compiles
/// its regular expression on every check, which took 5 % of the CPU under POST load.
#[derive(Debug, Clone)]
pub struct TargetIn(pub String);

impl TargetIn {
    const PATTERN: &'static str = r"^[A-Za-z0-9._:/@-]+$";
}

impl poem_openapi::types::Type for TargetIn {
    const IS_REQUIRED: bool = true;
    // The field's length validators check the string itself.
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> std::borrow::Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
        let schema = poem_openapi::registry::MetaSchema {
            pattern: Some(Self::PATTERN.to_owned()),
            ..poem_openapi::registry::MetaSchema::new("string")
        };
        poem_openapi::registry::MetaSchemaRef::Inline(Box::new(schema))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl poem_openapi::types::ParseFromJSON for TargetIn {
    fn parse_from_json(value: Option<Value>) -> poem_openapi::types::ParseResult<Self> {
        let s = String::parse_from_json(value).map_err(poem_openapi::types::ParseError::propagate)?;
        // `PATTERN` but for the empty string, which the field's `minLength` refuses.
        if !crate::jobs::target_chars_allowed(&s) {
            // The words poem-openapi's validator used.
            return Err(poem_openapi::types::ParseError::custom(format!(
                "field `target` verification failed. pattern(\"{}\")",
                Self::PATTERN
            )));
        }
        Ok(Self(s))
    }
}

impl poem_openapi::types::ToJSON for TargetIn {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

impl super::strict::Fields for CreateJobIn {
    const FIELDS: &'static [(&'static str, super::strict::Kind)] = &[
        ("action", super::strict::Kind::String),
        ("target", super::strict::Kind::String),
        ("requested_by", super::strict::Kind::String),
        ("parameters", super::strict::Kind::Object),
        ("callback_url", super::strict::Kind::String),
    ];
}

fn create_example() -> CreateJobIn {
    CreateJobIn {
        action: "restart_service".into(),
        target: TargetIn("demo-api".into()),
        requested_by: "student@example.com".into(),
        parameters: Some(BTreeMap::from([("service".to_owned(), json!("demo-api"))])),
        callback_url: None,
    }
}

/// The answer to an accepted job.
#[derive(Object, Debug, Clone)]
#[oai(rename = "JobAccepted", example)]
pub struct JobAcceptedOut {
    /// The job's id (a time-ordered UUID v7).
    pub job_id: Uuid,
    /// `PENDING` for a new job; the current status when an `Idempotency-Key` replays an earlier one.
    pub status: JobStatusOut,
}

fn accepted_example() -> JobAcceptedOut {
    JobAcceptedOut { job_id: example_id(), status: JobStatusOut::Pending }
}

fn example_id() -> Uuid {
    Uuid::from_u128(0x0192f0a0_7c5e_7a8e_9d1a_2b3c4d5e6f70)
}

// Also `Serialize`, for `JsonOut` answers: a unit test checks it writes what the schema says.
/// A job.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(example)]
pub struct JobOut {
    /// The job's id.
    pub job_id: Uuid,
    /// The action: one of {action_names}.
    pub action: String,
    /// The target.
    pub target: String,
    /// The status.
    pub status: JobStatusOut,
    /// When the first attempt started (RFC 3339, UTC), or null.
    #[oai(nullable)]
    pub started_at: Option<String>,
    /// When the job reached a terminal status (RFC 3339, UTC), or null.
    #[oai(nullable)]
    pub finished_at: Option<String>,
    /// Why the job failed (or why the last attempt failed, while a retry is pending), or null.
    #[oai(nullable)]
    pub error: Option<String>,
    /// Who asked, as the caller said.
    pub requested_by: String,
    /// The job's parameters.
    pub parameters: Value,
    /// When the job was accepted (RFC 3339, UTC).
    pub created_at: String,
    /// Attempts started so far.
    pub attempts: i32,
    /// The runner's output, for SUCCESS jobs; otherwise null.
    #[oai(nullable)]
    pub result: Option<Value>,
    /// True once a cancel was requested while the job was running.
    pub cancel_requested: bool,
    /// The authenticated identity that submitted the job (the API token's name, or
    /// `anonymous` while authentication is off).
    #[oai(nullable)]
    pub submitted_by: Option<String>,
    /// The run a remote runner launched for the job (an AWX job, a Jenkins build, a workflow
    /// run, a rollout), recorded as soon as the backend answered; null otherwise.
    #[oai(nullable)]
    pub external: Option<ExternalOut>,
    /// Where the job is POSTed when it ends; see `GET /v1/jobs/{job_id}/deliveries`.
    #[oai(nullable)]
    pub callback_url: Option<String>,
}

/// A run in another system.
#[derive(Object, Serialize, Debug, Clone, PartialEq)]
#[oai(rename = "External")]
pub struct ExternalOut {
    /// `awx`, `jenkins`, `github_actions` or `kubernetes`.
    pub system: String,
    /// The run's identity in that system.
    pub id: String,
    /// Where to see it.
    pub url: String,
}

/// One action of the catalog.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "Action")]
pub struct ActionOut {
    /// The name to send as `action`.
    pub name: String,
    /// What performs it: `simulated`, `http`, `awx`, `jenkins`, `github_actions`, `kubernetes`
    /// or `command`.
    pub runner: String,
    /// What it does.
    pub description: String,
    /// The JSON Schema its `parameters` must satisfy, or null.
    #[oai(nullable)]
    pub parameters_schema: Option<Value>,
    /// Globs a `target` must match (`*` any run of characters, `?` one), or null for any target.
    #[oai(nullable)]
    pub targets: Option<Vec<String>>,
    /// How many of its jobs may run at once per target, or null for no limit.
    #[oai(nullable)]
    pub concurrency: Option<ConcurrencyOut>,
    /// Timeout, attempts, backoff and what a lost worker means.
    pub policy: PolicyOut,
}

/// A per-target limit.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "Concurrency")]
pub struct ConcurrencyOut {
    /// RUNNING jobs allowed per target; others wait PENDING.
    pub per_target: u32,
}

/// How an action's jobs are run.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "Policy")]
pub struct PolicyOut {
    /// Longest one attempt may run, in milliseconds.
    pub timeout_ms: u64,
    /// Attempts in all.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds (doubled each time, with jitter).
    pub backoff_ms: u64,
    /// `fail` or `retry`: what a job whose worker died becomes (a recorded remote run is
    /// resumed instead).
    pub on_lost: String,
}

/// The catalog.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "ActionList")]
pub struct ActionListOut {
    /// Every action the caller may see, in catalog order.
    pub actions: Vec<ActionOut>,
}

impl From<&crate::executor::ActionEntry> for ActionOut {
    fn from(e: &crate::executor::ActionEntry) -> Self {
        let p = &e.policy;
        Self {
            name: e.action.as_str().to_owned(),
            runner: e.runner_kind.to_owned(),
            description: e.description.clone(),
            parameters_schema: e.schema.as_ref().map(|s| s.0.clone()),
            targets: e.targets.clone(),
            concurrency: e.per_target.map(|per_target| ConcurrencyOut { per_target }),
            policy: PolicyOut {
                timeout_ms: p.timeout.as_millis() as u64,
                max_attempts: p.max_attempts,
                backoff_ms: p.backoff.as_millis() as u64,
                on_lost: match p.on_lost {
                    crate::executor::policy::OnLost::Fail => "fail".into(),
                    crate::executor::policy::OnLost::Retry => "retry".into(),
                },
            },
        }
    }
}

/// One event of a job's log: a transition, who made it, and the job's status after it.
#[derive(Object, Serialize, Debug, Clone)]
pub struct JobEventOut {
    /// Its position in the event log: increases in the order events happened, across all jobs
    /// (not contiguous). Resume a stream after it with `Last-Event-ID`.
    pub id: i64,
    pub job_id: Uuid,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// `created`, `claimed`, `external_recorded`, `attempt_failed`, `retry_scheduled`,
    /// `lease_lost`, `lease_recovered`, `cancel_requested`, `canceled` (terminal) or `finished`
    /// (terminal).
    pub event: String,
    /// The job's status right after this event.
    pub status: JobStatusOut,
    pub action: String,
    pub target: String,
    /// The identity that made it, or `gateway` for the service's own transitions.
    pub actor: String,
    /// The `x-request-id` of the request that made it.
    #[oai(nullable)]
    pub request_id: Option<String>,
    /// The event's fields: `attempt`, `replica`, `error`, `run_at`, `status`, `duration_ms`,
    /// `system`/`id`/`url` of a remote run, as the kind has them.
    pub detail: Value,
}

impl From<&crate::jobs::JobEvent> for JobEventOut {
    fn from(e: &crate::jobs::JobEvent) -> Self {
        Self {
            id: e.id,
            job_id: e.job_id.0,
            at: rfc3339(e.at),
            event: e.kind.as_str().to_owned(),
            status: e.status().into(),
            action: e.action.as_str().to_owned(),
            target: e.target.clone(),
            actor: e.actor.clone(),
            request_id: e.request_id.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// A job's completion webhook: where it goes, how it stands, every try.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "Deliveries")]
pub struct DeliveriesOut {
    /// Where the job is POSTed when it ends; null without a callback.
    #[oai(nullable)]
    pub callback_url: Option<String>,
    /// `pending`, `delivered` or `failed` (given up); null until the job has ended (or without a
    /// callback).
    #[oai(nullable)]
    pub state: Option<String>,
    /// When the next try is due, while pending.
    #[oai(nullable)]
    pub next_attempt_at: Option<String>,
    /// Every try, oldest first.
    pub attempts: Vec<DeliveryTryOut>,
}

/// One delivery try.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "DeliveryTry")]
pub struct DeliveryTryOut {
    pub attempt: i32,
    /// When it was made (RFC 3339, UTC).
    pub at: String,
    /// The receiver's HTTP status; null when it did not answer.
    #[oai(nullable)]
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    /// Why it failed; null on success.
    #[oai(nullable)]
    pub error: Option<String>,
}

impl From<crate::store::WebhookLog> for DeliveriesOut {
    fn from(l: crate::store::WebhookLog) -> Self {
        Self {
            callback_url: l.url,
            state: l.state,
            next_attempt_at: l.next_at.map(rfc3339),
            attempts: l
                .tries
                .into_iter()
                .map(|t| DeliveryTryOut {
                    attempt: t.attempt,
                    at: rfc3339(t.at),
                    status_code: t.status_code,
                    latency_ms: t.latency_ms,
                    error: t.error,
                })
                .collect(),
        }
    }
}

/// Job counts for people: the queue and each action's jobs by status.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "Stats")]
pub struct StatsOut {
    /// Jobs in PENDING (of the actions the token may read).
    pub queue_depth: i64,
    /// For each action the token may read: its jobs by status (every status present).
    pub by_action: BTreeMap<String, BTreeMap<String, i64>>,
}

fn job_example() -> JobOut {
    JobOut {
        job_id: example_id(),
        action: "restart_service".into(),
        target: "demo-api".into(),
        status: JobStatusOut::Success,
        started_at: Some("2026-11-23T12:00:00.120000Z".into()),
        finished_at: Some("2026-11-23T12:00:01.480000Z".into()),
        error: None,
        requested_by: "student@example.com".into(),
        parameters: json!({"service": "demo-api"}),
        created_at: "2026-11-23T12:00:00.100000Z".into(),
        attempts: 1,
        result: Some(
            json!({"message": "restart_service completed on demo-api", "simulated": true, "duration_ms": 1360}),
        ),
        cancel_requested: false,
        submitted_by: Some("ci-bot".into()),
        external: None,
        callback_url: None,
    }
}

pub use crate::jobs::rfc3339;

impl From<Job> for JobOut {
    fn from(j: Job) -> Self {
        Self {
            job_id: j.id.0,
            action: j.action.as_str().to_owned(),
            target: j.target,
            status: j.status.into(),
            started_at: j.started_at.map(rfc3339),
            finished_at: j.finished_at.map(rfc3339),
            error: j.error,
            requested_by: j.requested_by,
            parameters: j.parameters,
            created_at: rfc3339(j.created_at),
            attempts: j.attempts,
            result: j.result,
            cancel_requested: j.cancel_requested,
            submitted_by: j.submitted_by,
            external: j.external.map(|e| ExternalOut { system: e.system, id: e.id, url: e.url }),
            callback_url: j.callback_url,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Object, Serialize, Debug, Clone)]
#[oai(rename = "JobPage")]
pub struct JobPageOut {
    /// The jobs.
    pub items: Vec<JobOut>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// Liveness.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Health")]
pub struct HealthOut {
    /// Always `ok`.
    pub status: String,
}

/// Readiness.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Readiness")]
pub struct ReadinessOut {
    /// `ready`, or `not_ready`.
    pub status: String,
    /// Why the service is not ready, when it is not.
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
    /// `enabled`, or a warning that the API is open to anyone who can reach it.
    pub auth: String,
}

impl poem_openapi::types::Example for CreateJobIn {
    fn example() -> Self {
        create_example()
    }
}

impl poem_openapi::types::Example for JobAcceptedOut {
    fn example() -> Self {
        accepted_example()
    }
}

impl poem_openapi::types::Example for JobOut {
    fn example() -> Self {
        job_example()
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;

    /// `JsonOut` writes these with serde; the schema comes from poem-openapi. They must agree.
    #[test]
    fn serde_writes_what_the_schema_describes() {
        let done = job_example();
        let pending = JobOut {
            status: JobStatusOut::Pending,
            action: "health_check".into(),
            started_at: None,
            finished_at: None,
            error: Some("attempt 1: \"quoted\" \u{1F600}".into()),
            result: None,
            submitted_by: None,
            external: Some(ExternalOut {
                system: "awx".into(),
                id: "17".into(),
                url: "https://awx/#/jobs/playbook/17".into(),
            }),
            parameters: json!({"nested": {"list": [1, 2.5, null, true]}}),
            ..job_example()
        };
        let page = JobPageOut { items: vec![done.clone(), pending.clone()], next_cursor: Some("abc".into()) };
        let last = JobPageOut { items: vec![], next_cursor: None };

        for job in [&done, &pending] {
            assert_eq!(serde_json::to_value(job).unwrap(), job.to_json().unwrap());
        }
        for p in [&page, &last] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.to_json().unwrap());
        }
        assert_eq!(serde_json::to_value(&pending).unwrap()["started_at"], Value::Null);
        assert_eq!(serde_json::to_value(&pending).unwrap()["status"], "PENDING");
    }
}
