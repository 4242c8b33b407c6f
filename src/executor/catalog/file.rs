//! The actions file: a YAML catalog (`GATEWAY_ACTIONS_FILE`), checked whole at start-up (and by
//! `automation-gateway check-actions`), every problem reported with its action and key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::ActionEntry;
use crate::executor::policy::{ActionPolicy, OnLost, PolicyOverrides};
use crate::executor::runners::{self, SimulatedRunner};
use crate::jobs::Action;

/// Most actions a file may define: each becomes a metric label value.
pub const MAX_ACTIONS: usize = 100;
/// Largest actions file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The keys of an action besides its runner's block.
const KEYS: [&str; 7] =
    ["runner", "description", "targets", "parameters_schema", "policy", "concurrency", "callback_url"];

/// A file that passed: its entries, and what would only fail later (token files not readable
/// here, which `check-actions` on another machine may expect).
pub struct Checked {
    pub entries: Vec<ActionEntry>,
    pub warnings: Vec<String>,
}

/// Checks a file without starting anything: the action names, or every problem.
pub fn check_file(path: &Path) -> Result<Checked, Vec<String>> {
    let sim = SimulatedRunner::new(runners::SimDuration { min_ms: 0, max_ms: 0 }, 0.0);
    load(path, &sim, &PolicyOverrides::default(), false)
}

/// Reads and checks a file. With `strict`, an unreadable token file is an error; otherwise a
/// warning.
pub(super) fn load(
    path: &Path,
    simulated: &SimulatedRunner,
    overrides: &PolicyOverrides,
    strict: bool,
) -> Result<Checked, Vec<String>> {
    let text = read(path).map_err(|e| vec![e])?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|e| vec![format!("not valid YAML: {e}")])?;
    let Some(top) = doc.as_object() else {
        return Err(vec!["the file must be a mapping with the key 'actions'".into()]);
    };
    let mut problems: Vec<String> =
        top.keys().filter(|k| *k != "actions").map(|k| format!("unknown key '{k}'")).collect();
    let Some(actions) = top.get("actions").and_then(Value::as_object) else {
        problems.push("'actions' must be a mapping of action names to actions".into());
        return Err(problems);
    };
    if actions.is_empty() {
        problems.push("'actions' is empty".into());
    }
    if actions.len() > MAX_ACTIONS {
        problems.push(format!("{} actions: at most {MAX_ACTIONS} (each is a metric label value)", actions.len()));
    }
    let (mut entries, mut warnings) = (Vec::new(), Vec::new());
    for (name, spec) in actions {
        match entry(name, spec, simulated, overrides) {
            Ok((e, files)) => {
                for f in files {
                    if let Err(why) = std::fs::File::open(&f) {
                        let msg = format!("action '{name}': token_file {}: cannot read ({})", f.display(), why.kind());
                        if strict { problems.push(msg) } else { warnings.push(msg) }
                    }
                }
                entries.push(e);
            }
            Err(e) => problems.push(format!("action '{name}': {e}")),
        }
    }
    if problems.is_empty() { Ok(Checked { entries, warnings }) } else { Err(problems) }
}

fn read(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {}", e.kind()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {}", e.kind()))
}

fn entry(
    name: &str,
    spec: &Value,
    simulated: &SimulatedRunner,
    overrides: &PolicyOverrides,
) -> Result<(ActionEntry, Vec<std::path::PathBuf>), String> {
    let action = Action::new(name).map_err(|_| "the name must match [a-z][a-z0-9_]{0,62}".to_owned())?;
    let spec = spec.as_object().ok_or("must be a mapping")?;
    let kind = spec
        .get("runner")
        .and_then(Value::as_str)
        .ok_or("runner: missing (one of simulated, http, awx, jenkins, github_actions, kubernetes, command)")?;
    let kind = runners::KINDS
        .iter()
        .find(|k| **k == kind)
        .ok_or_else(|| format!("runner: unknown runner '{kind}' (one of {})", runners::KINDS.join(", ")))?;
    for key in spec.keys() {
        if !KEYS.contains(&key.as_str()) && key != kind {
            let hint = if runners::KINDS.contains(&key.as_str()) {
                format!(" (the runner is '{kind}')")
            } else {
                String::new()
            };
            return Err(format!("{key}: unknown key{hint}"));
        }
    }
    let description = match spec.get("description") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("description: must be text".into()),
    };
    let targets = match spec.get("targets") {
        None => None,
        Some(Value::Array(a)) if !a.is_empty() => Some(
            a.iter()
                .map(|g| {
                    g.as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .ok_or("targets: each must be a non-empty text glob")
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("targets: must be a non-empty list of globs".into()),
    };
    let schema = match spec.get("parameters_schema") {
        None => None,
        Some(s @ Value::Object(_)) => {
            let v =
                jsonschema::validator_for(s).map_err(|e| format!("parameters_schema: not a valid JSON Schema: {e}"))?;
            Some(Arc::new((s.clone(), v)))
        }
        Some(_) => return Err("parameters_schema: must be a mapping (a JSON Schema)".into()),
    };
    let base = default_policy(kind);
    let policy = overrides.apply(action, policy(spec.get("policy"), base)?);
    let per_target = match spec.get("concurrency") {
        None => None,
        Some(Value::Object(c)) => {
            if let Some(k) = c.keys().find(|k| *k != "per_target") {
                return Err(format!("concurrency.{k}: unknown key (per_target)"));
            }
            match c.get("per_target").and_then(Value::as_u64) {
                Some(n @ 1..=10_000) => Some(n as u32),
                _ => return Err("concurrency.per_target: a whole number from 1 to 10000".into()),
            }
        }
        Some(_) => return Err("concurrency: must be a mapping".into()),
    };
    // Checked against the webhook settings when the service starts (they are not known here).
    let callback_url = match spec.get("callback_url") {
        None => None,
        Some(Value::String(u)) if url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) => {
            Some(u.clone())
        }
        Some(_) => return Err("callback_url: must be an http or https URL".into()),
    };
    let built = runners::build(kind, spec.get(*kind), simulated)?;
    let entry = ActionEntry {
        action,
        description,
        policy,
        runner: built.runner,
        runner_kind: kind,
        targets,
        schema,
        per_target,
        needs: built.needs,
        callback_url,
    };
    Ok((entry, built.secret_files))
}

/// Simulated actions retry; a remote run is not repeated unless the catalog says so.
fn default_policy(kind: &str) -> ActionPolicy {
    ActionPolicy {
        timeout: Duration::from_secs(300),
        max_attempts: if kind == "simulated" { 3 } else { 1 },
        backoff: Duration::from_secs(2),
        on_lost: OnLost::Fail,
    }
}

fn policy(spec: Option<&Value>, mut p: ActionPolicy) -> Result<ActionPolicy, String> {
    let Some(spec) = spec else { return Ok(p) };
    let spec: &Map<String, Value> = spec.as_object().ok_or("policy: must be a mapping")?;
    for (k, v) in spec {
        let ms = || v.as_u64().ok_or(format!("policy.{k}: a whole number of milliseconds"));
        match k.as_str() {
            "timeout_ms" => {
                let t = ms()?;
                if t == 0 {
                    return Err("policy.timeout_ms: must be above 0".into());
                }
                p.timeout = Duration::from_millis(t);
            }
            "backoff_ms" => p.backoff = Duration::from_millis(ms()?),
            "max_attempts" => match v.as_u64() {
                Some(n @ 1..=100) => p.max_attempts = n as u32,
                _ => return Err("policy.max_attempts: 1 to 100".into()),
            },
            "on_lost" => {
                p.on_lost = match v.as_str() {
                    Some("fail") => OnLost::Fail,
                    Some("retry") => OnLost::Retry,
                    _ => return Err("policy.on_lost: fail or retry".into()),
                }
            }
            other => {
                return Err(format!("policy.{other}: unknown key (timeout_ms, max_attempts, backoff_ms, on_lost)"));
            }
        }
    }
    Ok(p)
}

/// Whether `text` matches `glob`: `*` is any run of characters (`/` included), `?` one
/// character, anything else itself; the whole text must match.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    // Greedy with one backtrack point: linear in practice, never exponential.
    let (mut gi, mut ti, mut star, mut mark) = (0, 0, None::<usize>, 0);
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ti;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_targets() {
        assert!(glob_match("payments-*", "payments-api"));
        assert!(glob_match("web/*", "web/a/b"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("payments-*", "x-payments-api"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*-db-*", "x-db-1"));
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn problems_name_the_action_and_the_key() {
        let f = write(
            "actions:\n  good:\n    runner: simulated\n  Bad-Name:\n    runner: simulated\n  nope:\n    runner: teleport\n  \
             x:\n    runner: awx\n    awx: {url: 'https://a', token_file: /x}\n  y:\n    runner: http\n    http: {url: 'https://{{ bogus }}/'}\n",
        );
        let problems = check_file(f.path()).err().unwrap().join("\n");
        assert!(problems.contains("action 'Bad-Name'"), "{problems}");
        assert!(problems.contains("action 'nope': runner: unknown runner 'teleport'"), "{problems}");
        assert!(problems.contains("action 'x': awx: missing field `job_template_id`"), "{problems}");
        assert!(problems.contains("action 'y': http.url"), "{problems}");
        assert!(!problems.contains("action 'good'"), "{problems}");
    }

    #[test]
    fn a_valid_file_gives_entries_and_warns_about_missing_tokens() {
        let f = write(
            "actions:\n  rotate:\n    runner: awx\n    targets: ['web-*']\n    concurrency: {per_target: 1}\n    \
             parameters_schema: {type: object, properties: {reason: {type: string}}}\n    \
             awx: {url: 'https://awx', token_file: /nonexistent/token, job_template_id: 4, extra_vars: {r: '{{ parameters.reason }}'}}\n",
        );
        let c = check_file(f.path()).ok().unwrap();
        assert_eq!(c.warnings.len(), 1);
        let e = &c.entries[0];
        assert_eq!((e.runner_kind, e.per_target, e.policy.max_attempts), ("awx", Some(1), 1));
        assert!(e.admit("web-1", &serde_json::json!({"reason": "x"})).is_ok());
        let no = |t: &str, p: Value| e.admit(t, &p).unwrap_err().to_string();
        assert!(no("db-1", serde_json::json!({"reason": "x"})).starts_with("target:"));
        assert!(no("web-1", serde_json::json!({"reason": 5})).contains("/reason"));
        assert!(no("web-1", serde_json::json!({})).contains("'reason' is required"));
    }
}
