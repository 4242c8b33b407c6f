//! The domain: job identifiers, actions, statuses and their legal transitions, and validation of a
//! new job request. Knows nothing about HTTP, SQL, tokio or telemetry.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};
use uuid::Uuid;

mod event;
pub use event::{EventKind, GATEWAY, JobEvent, NewEvent};

/// Longest accepted `target`, in characters.
pub const MAX_TARGET_LEN: usize = 253;
/// Longest accepted `requested_by`, in characters.
pub const MAX_REQUESTED_BY_LEN: usize = 320;
/// Deepest accepted nesting of `parameters` (an object inside an object counts two).
pub const MAX_PARAMETERS_DEPTH: usize = 16;

/// A job's identifier: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The name of an automation action: `[a-z][a-z0-9_]{0,62}`. Which actions exist is the
/// catalog's business (`executor::ActionCatalog`, built at start-up); the domain knows only the
/// form. Names are interned: each distinct name is stored once for the life of the process, so an
/// `Action` is a copyable pointer and a metric label costs no allocation. The set stays small:
/// the catalog's names and the names of stored jobs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Action(&'static str);

/// Longest action name.
pub const MAX_ACTION_LEN: usize = 63;

impl Action {
    /// A name of the right form, interned.
    pub fn new(name: &str) -> Result<Self, Error> {
        let mut chars = name.chars();
        let well_formed = name.len() <= MAX_ACTION_LEN
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !well_formed {
            return Err(Error::Validation {
                field: "action",
                reason: format!(
                    "'{}' is not an action name ([a-z][a-z0-9_]{{0,62}})",
                    name.chars().take(64).collect::<String>()
                ),
            });
        }
        Ok(Self(intern(name)))
    }

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// The one copy of each action name.
fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| Mutex::new(HashSet::new()));
    let mut names = names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Where a job is in its life. `PENDING -> RUNNING -> SUCCESS | FAILED`, plus `CANCELED`
/// from `PENDING` or `RUNNING`. A running job whose attempt failed but may retry goes back to
/// `PENDING` with a later run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Accepted and stored, waiting for a worker (or for its retry time).
    Pending,
    /// Claimed by a worker that holds a lease on it.
    Running,
    /// Finished successfully. Terminal.
    Success,
    /// Finished with an error, after its last attempt. Terminal.
    Failed,
    /// Canceled by a caller before it finished. Terminal.
    Canceled,
}

impl JobStatus {
    /// The terminal statuses, in a stable order.
    pub const TERMINAL: [JobStatus; 3] = [JobStatus::Success, JobStatus::Failed, JobStatus::Canceled];
    /// All statuses.
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Pending, JobStatus::Running, JobStatus::Success, JobStatus::Failed, JobStatus::Canceled];

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::Running => "RUNNING",
            JobStatus::Success => "SUCCESS",
            JobStatus::Failed => "FAILED",
            JobStatus::Canceled => "CANCELED",
        }
    }

    /// True when a job never leaves this status.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Failed | JobStatus::Canceled)
    }

    /// Whether the state machine allows going from `self` to `to`.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Pending, Canceled)
                | (Running, Success)
                | (Running, Failed)
                | (Running, Canceled)
                // a failed attempt that will be retried, or a lost lease under the retry policy
                | (Running, Pending)
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| Error::Validation {
            field: "status",
            reason: format!("unknown status '{}'", s.chars().take(32).collect::<String>()),
        })
    }
}

/// A job as stored. Times are microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub action: Action,
    /// What to run it against.
    pub target: String,
    /// Who asked, as the caller says.
    pub requested_by: String,
    /// Free-form parameters for the runner.
    pub parameters: Value,
    pub status: JobStatus,
    /// Attempts started so far.
    pub attempts: i32,
    /// The last error, for FAILED jobs (and for retried attempts while PENDING).
    pub error: Option<String>,
    /// The runner's output for SUCCESS jobs.
    pub result: Option<Value>,
    /// When the job was accepted.
    pub created_at: i64,
    /// When the first attempt started.
    pub started_at: Option<i64>,
    /// When the job reached a terminal status.
    pub finished_at: Option<i64>,
    /// A cancel was requested while the job was running.
    pub cancel_requested: bool,
    /// The identity that submitted it (null for jobs from before authentication existed).
    pub submitted_by: Option<String>,
    /// The remote run a runner launched for it, once the backend answered the launch.
    pub external: Option<External>,
    /// Where the job is POSTed when it ends.
    pub callback_url: Option<String>,
    /// The W3C trace context of the request that created it.
    pub traceparent: Option<String>,
}

/// A run launched in another system (an AWX job, a Jenkins build, a workflow run, a rollout):
/// enough to find it again after a crash, and a link for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct External {
    /// Which system: `awx`, `jenkins`, `github_actions`, `kubernetes`.
    pub system: String,
    /// The run's identity there.
    pub id: String,
    /// Where a person (or the runner, polling) finds it.
    pub url: String,
}

/// A time in µs since the epoch as RFC 3339 in UTC with microseconds (how the API writes times).
pub fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// A validated request for a new job.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub action: Action,
    /// What to run it against.
    pub target: String,
    pub requested_by: String,
    /// Parameters, always a JSON object.
    pub parameters: Value,
    /// The authenticated identity that submits it (the API token's name, or `anonymous`).
    pub submitted_by: String,
    /// Where to POST the job when it ends (checked against the allowed hosts by the caller).
    pub callback_url: Option<String>,
    /// The W3C trace context its attempts continue.
    pub traceparent: Option<String>,
}

/// Whether every character of a target is a letter, a digit or one of `-_.:/@` (the length is
/// checked apart).
pub fn target_chars_allowed(target: &str) -> bool {
    target.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
}

impl NewJob {
    /// Validates raw input into a job request for an action the catalog knows. `target` is a
    /// name such as a service or host:
    /// letters, digits and `-_.:/@`, 1 to 253 characters.
    pub fn parse(
        action: Action,
        target: &str,
        requested_by: &str,
        parameters: Option<Map<String, Value>>,
    ) -> Result<Self, Error> {
        if target.is_empty() || target.chars().count() > MAX_TARGET_LEN {
            return Err(Error::Validation {
                field: "target",
                reason: format!("must be 1 to {MAX_TARGET_LEN} characters"),
            });
        }
        if !target_chars_allowed(target) {
            return Err(Error::Validation {
                field: "target",
                reason: "may contain only letters, digits and - _ . : / @".into(),
            });
        }
        let requested_by = requested_by.trim();
        if requested_by.is_empty() || requested_by.chars().count() > MAX_REQUESTED_BY_LEN {
            return Err(Error::Validation {
                field: "requested_by",
                reason: format!("must be 1 to {MAX_REQUESTED_BY_LEN} characters"),
            });
        }
        if requested_by.chars().any(is_invisible) {
            return Err(Error::Validation {
                field: "requested_by",
                reason: "must not contain control or format characters (such as bidirectional overrides, zero-width characters or line separators)".into(),
            });
        }
        let parameters = Value::Object(parameters.unwrap_or_default());
        if depth(&parameters) > MAX_PARAMETERS_DEPTH {
            return Err(Error::Validation {
                field: "parameters",
                reason: format!("nested deeper than {MAX_PARAMETERS_DEPTH} levels"),
            });
        }
        Ok(Self {
            action,
            target: target.to_owned(),
            requested_by: requested_by.to_owned(),
            parameters,
            submitted_by: "anonymous".to_owned(),
            callback_url: None,
            traceparent: None,
        })
    }

    /// The same request, submitted by `identity`.
    pub fn submitted_by(mut self, identity: &str) -> Self {
        self.submitted_by = identity.to_owned();
        self
    }

    /// A stable fingerprint of the request, to compare bodies sent with one idempotency key.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // The submitter is part of it: another identity reusing a key never gets this job.
        for part in [self.action.as_str(), &self.target, &self.requested_by, &self.submitted_by] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        // serde_json's Map is a BTreeMap here, so the encoding is canonical.
        h.update(self.parameters.to_string().as_bytes());
        if let Some(url) = &self.callback_url {
            h.update([0u8]);
            h.update(url.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Characters of the Unicode general categories Cc (controls), Cf (format: bidirectional
/// overrides, zero-width joiners, the byte order mark, tags), Zl and Zp (line and paragraph
/// separators). None is visible, and each can make a name in the audit trail read as another.
/// The Cf ranges are those of Unicode 15.1.
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}' | '\u{070F}' | '\u{0890}'..='\u{0891}'
            | '\u{08E2}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}')
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Domain errors.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// The action is not in the catalog.
    #[error("unknown action '{given}'; supported actions: {}", supported.join(", "))]
    UnknownAction {
        /// What the caller sent (truncated).
        given: String,
        /// The catalog's actions.
        supported: Vec<&'static str>,
    },
    /// A field failed validation.
    #[error("{field}: {reason}")]
    Validation {
        /// The field's name on the wire.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc() -> Action {
        Action::new("health_check").unwrap()
    }

    #[test]
    fn action_names_are_checked_and_interned() {
        assert_eq!(Action::new("health_check").unwrap(), hc());
        assert!(std::ptr::eq(Action::new("health_check").unwrap().as_str(), hc().as_str()));
        for bad in ["", "Health", "9x", "a-b", "a b", &"a".repeat(64)] {
            assert!(Action::new(bad).is_err(), "{bad:?}");
        }
        assert!(Action::new(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn terminal_statuses_never_move() {
        for from in JobStatus::TERMINAL {
            for to in JobStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn invisible_characters_are_refused_in_requested_by() {
        for bad in ["a\u{202E}b", "a\u{200B}b", "a\u{2028}b", "a\u{2029}b", "\u{FEFF}a", "a\u{7}", "a\u{0}"] {
            assert!(NewJob::parse(hc(), "x", bad, None).is_err(), "{bad:?}");
        }
        assert!(NewJob::parse(hc(), "x", "Zoë Müller 山田", None).is_ok());
    }

    #[test]
    fn target_with_spaces_is_refused() {
        assert!(NewJob::parse(hc(), "a b", "me", None).is_err());
    }

    #[test]
    fn fingerprint_depends_on_parameters() {
        let a = NewJob::parse(hc(), "x", "me", None).unwrap();
        let mut m = Map::new();
        m.insert("k".into(), Value::from(1));
        let b = NewJob::parse(hc(), "x", "me", Some(m)).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn deep_parameters_are_refused() {
        let mut v = Value::from(1);
        for _ in 0..40 {
            let mut m = Map::new();
            m.insert("a".into(), v);
            v = Value::Object(m);
        }
        let Value::Object(m) = v else { unreachable!() };
        assert!(NewJob::parse(hc(), "x", "me", Some(m)).is_err());
    }
}
