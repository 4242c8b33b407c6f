//! The actions catalog: which actions exist, and for each its description, policy and runner.
//! Built once at start-up; everything that needs the set of actions (the API's validation and
//! OpenAPI document, tokens files, metric label seeding, the executor) asks it, so adding an
//! action is one entry here or in an actions file (`file`), not an edit in several places.

mod file;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::policy::{ActionPolicy, OnLost, PolicyOverrides};
use super::runners::Runner;
use super::template;
use crate::jobs::{self, Action};

pub use file::{Checked, check_file, glob_match};

/// One action: what it is called, what it does, how it is run.
#[derive(Clone)]
pub struct ActionEntry {
    pub action: Action,
    /// What it does, for people (`/docs`, `GET /v1/actions` later).
    pub description: String,
    /// Timeouts, attempts, backoff, lost-worker policy.
    pub policy: ActionPolicy,
    /// What performs it.
    pub runner: Arc<dyn Runner>,
    /// The runner's kind (`simulated`, `awx`, ...), for people.
    pub runner_kind: &'static str,
    /// Globs a target must match (`None`: any valid target).
    pub targets: Option<Vec<String>>,
    /// The JSON Schema parameters must satisfy, as written and compiled.
    pub schema: Option<Arc<(Value, jsonschema::Validator)>>,
    /// At most this many RUNNING jobs per target.
    pub per_target: Option<u32>,
    /// Parameters the runner's templates name, with where, so a job without them is refused
    /// at POST instead of failing later.
    pub needs: Vec<(Vec<String>, String)>,
    /// Where its jobs are POSTed when they end, unless a job names its own.
    pub callback_url: Option<String>,
}

impl ActionEntry {
    /// A built-in action on `runner`, with no restrictions.
    fn plain(action: Action, description: &str, policy: ActionPolicy, runner: Arc<dyn Runner>) -> Self {
        Self {
            action,
            description: description.to_owned(),
            policy,
            runner,
            runner_kind: "simulated",
            targets: None,
            schema: None,
            per_target: None,
            needs: Vec::new(),
            callback_url: None,
        }
    }

    /// Whether a job for `target` with `parameters` may be accepted: the target allowlist, the
    /// parameters' schema, and every parameter a template names. Errors name the rule.
    pub fn admit(&self, target: &str, parameters: &Value) -> Result<(), jobs::Error> {
        if let Some(globs) = &self.targets
            && !globs.iter().any(|g| file::glob_match(g, target))
        {
            return Err(jobs::Error::Validation {
                field: "target",
                reason: format!(
                    "'{target}' is not allowed for action '{}' (allowed: {})",
                    self.action,
                    globs.join(", ")
                ),
            });
        }
        if let Some(schema) = &self.schema
            && let Some(e) = schema.1.iter_errors(parameters).next()
        {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            return Err(jobs::Error::Validation {
                field: "parameters",
                reason: format!("{at}: {e} (the action's parameters_schema)"),
            });
        }
        for (path, at) in &self.needs {
            if !template::has_parameter(parameters, path) {
                return Err(jobs::Error::Validation {
                    field: "parameters",
                    reason: format!("'{}' is required by the action's template ({at})", path.join(".")),
                });
            }
        }
        Ok(())
    }
}

/// Every action this process knows, in a stable order.
#[derive(Clone)]
pub struct ActionCatalog {
    entries: Arc<[ActionEntry]>,
}

/// The built-in actions: name, description, default policy.
const BUILT_IN: [(&str, &str, ActionPolicy); 3] = [
    (
        "restart_service",
        "Restart a service. Not safe to run twice blindly: a lost run fails.",
        ActionPolicy {
            timeout: Duration::from_secs(300),
            max_attempts: 3,
            backoff: Duration::from_secs(2),
            on_lost: OnLost::Fail,
        },
    ),
    (
        "rotate_config",
        "Roll out a new configuration.",
        ActionPolicy {
            timeout: Duration::from_secs(300),
            max_attempts: 3,
            backoff: Duration::from_secs(2),
            on_lost: OnLost::Fail,
        },
    ),
    (
        "health_check",
        "Probe a target. Safe to repeat: a lost run is retried.",
        ActionPolicy {
            timeout: Duration::from_secs(30),
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            on_lost: OnLost::Retry,
        },
    ),
];

/// The catalog could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// An override names an action the catalog does not have.
    #[error("GATEWAY_ACTION_POLICY names unknown action '{given}'; actions: {}", known.join(", "))]
    UnknownAction {
        given: String,
        /// The catalog's actions.
        known: Vec<&'static str>,
    },
    /// Two entries with one name.
    #[error("action '{0}' is defined twice")]
    Duplicate(Action),
    /// The actions file is unreadable or wrong; every problem, one per line.
    #[error("actions file {path}: {}", problems.join("; "))]
    File { path: String, problems: Vec<String> },
}

impl ActionCatalog {
    /// A catalog of these entries.
    pub fn new(entries: Vec<ActionEntry>) -> Result<Self, CatalogError> {
        for (i, e) in entries.iter().enumerate() {
            if entries[..i].iter().any(|o| o.action == e.action) {
                return Err(CatalogError::Duplicate(e.action));
            }
        }
        Ok(Self { entries: entries.into() })
    }

    /// The built-in actions, each on `runner`, with `overrides` applied to their policies.
    pub fn built_in(runner: Arc<dyn Runner>, overrides: &PolicyOverrides) -> Result<Self, CatalogError> {
        let mut entries = Vec::with_capacity(BUILT_IN.len());
        for (name, description, policy) in BUILT_IN {
            // The built-in names are well formed: a test checks every one.
            let Ok(action) = Action::new(name) else { continue };
            entries.push(ActionEntry::plain(action, description, overrides.apply(action, policy), runner.clone()));
        }
        let catalog = Self::new(entries)?;
        catalog.check_overrides(overrides)?;
        Ok(catalog)
    }

    /// The actions of a catalog file (`GATEWAY_ACTIONS_FILE`), with `overrides` applied.
    pub fn from_file(
        path: &std::path::Path,
        simulated: &super::runners::SimulatedRunner,
        overrides: &PolicyOverrides,
    ) -> Result<Self, CatalogError> {
        let checked = file::load(path, simulated, overrides, true)
            .map_err(|problems| CatalogError::File { path: path.display().to_string(), problems })?;
        let catalog = Self::new(checked.entries)?;
        catalog.check_overrides(overrides)?;
        Ok(catalog)
    }

    /// The per-target limits, for the claim.
    pub fn per_target_limits(&self) -> Vec<(Action, u32)> {
        self.entries.iter().filter_map(|e| e.per_target.map(|n| (e.action, n))).collect()
    }

    fn check_overrides(&self, overrides: &PolicyOverrides) -> Result<(), CatalogError> {
        match overrides.actions().find(|a| self.resolve(a).is_err()) {
            Some(given) => Err(CatalogError::UnknownAction { given: given.to_owned(), known: self.names() }),
            None => Ok(()),
        }
    }

    /// The names of the built-in actions, in order.
    pub fn built_in_names() -> Vec<&'static str> {
        BUILT_IN.iter().map(|(name, _, _)| *name).collect()
    }

    /// The action called `name`, or `UnknownAction` listing the catalog's names.
    pub fn resolve(&self, name: &str) -> Result<Action, jobs::Error> {
        self.entries.iter().find(|e| e.action.as_str() == name).map(|e| e.action).ok_or_else(|| {
            jobs::Error::UnknownAction { given: name.chars().take(64).collect(), supported: self.names() }
        })
    }

    /// The entry of an action, if the catalog has it (a stored job may name an action that has
    /// since left the catalog).
    pub fn get(&self, action: Action) -> Option<&ActionEntry> {
        self.entries.iter().find(|e| e.action == action)
    }

    /// The policy of an action; an action no longer in the catalog gets the strictest one (one
    /// attempt, never re-run after a lost worker).
    pub fn policy(&self, action: Action) -> ActionPolicy {
        self.get(action).map(|e| e.policy).unwrap_or(ActionPolicy {
            timeout: Duration::from_secs(300),
            max_attempts: 1,
            backoff: Duration::from_secs(1),
            on_lost: OnLost::Fail,
        })
    }

    /// Every action, in catalog order.
    pub fn actions(&self) -> Vec<Action> {
        self.entries.iter().map(|e| e.action).collect()
    }

    /// Every action's name, in catalog order.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.action.as_str()).collect()
    }

    pub fn entries(&self) -> &[ActionEntry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::runners::{SimDuration, SimulatedRunner};

    fn sim() -> Arc<dyn Runner> {
        Arc::new(SimulatedRunner::new(SimDuration { min_ms: 0, max_ms: 0 }, 0.0))
    }

    #[test]
    fn the_built_ins_are_the_three_actions_of_the_contract() {
        let c = ActionCatalog::built_in(sim(), &PolicyOverrides::default()).unwrap();
        assert_eq!(c.names(), ["restart_service", "rotate_config", "health_check"]);
        assert_eq!(ActionCatalog::built_in_names(), c.names());
        assert_eq!(c.policy(c.resolve("health_check").unwrap()).on_lost, OnLost::Retry);
        let err = c.resolve("reboot_world").unwrap_err().to_string();
        assert!(err.contains("restart_service, rotate_config, health_check"), "{err}");
    }

    #[test]
    fn overrides_must_name_catalog_actions() {
        let bad: PolicyOverrides = "reboot_world.max_attempts=1".parse().unwrap();
        assert!(ActionCatalog::built_in(sim(), &bad).is_err());
        let ok: PolicyOverrides = "health_check.max_attempts=7".parse().unwrap();
        let c = ActionCatalog::built_in(sim(), &ok).unwrap();
        assert_eq!(c.policy(c.resolve("health_check").unwrap()).max_attempts, 7);
    }

    #[test]
    fn a_duplicate_name_is_refused() {
        let c = ActionCatalog::built_in(sim(), &PolicyOverrides::default()).unwrap();
        let mut entries = c.entries().to_vec();
        entries.push(entries[0].clone());
        assert!(ActionCatalog::new(entries).is_err());
    }
}
