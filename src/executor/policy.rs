//! How each action is run, and the decisions that follow from it: the per-action policy
//! (timeout, attempts, backoff, what a lost worker means), the delay before a retry, and the
//! outcome of a failed or lost attempt. Pure: no I/O, no clock but the one passed in.

use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

use crate::jobs::Action;
use crate::store::{Outcome, now_us};

/// What to do with a job whose worker died (its lease expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLost {
    /// Mark it FAILED ("worker lost"): for actions that must not run twice.
    Fail,
    /// Put it back to PENDING if attempts remain: for actions that are safe to repeat.
    Retry,
}

/// How one action is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionPolicy {
    /// Longest a single attempt may run.
    pub timeout: Duration,
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one, with jitter, capped at 5 min.
    pub backoff: Duration,
    /// Lost-job policy.
    pub on_lost: OnLost,
}

/// One override of a policy field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Override {
    Timeout(Duration),
    MaxAttempts(u32),
    Backoff(Duration),
    OnLost(OnLost),
}

/// Overrides of the catalog's policies, `ACTION.KEY=VALUE,...` (`GATEWAY_ACTION_POLICY`). Their
/// form is checked when parsed; their action names when the catalog is built, since only the
/// catalog knows which actions exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyOverrides(Vec<(String, Override)>);

impl PolicyOverrides {
    /// `base` with every override for `action` applied, in order.
    pub fn apply(&self, action: Action, mut base: ActionPolicy) -> ActionPolicy {
        for (name, o) in &self.0 {
            if name == action.as_str() {
                match *o {
                    Override::Timeout(d) => base.timeout = d,
                    Override::MaxAttempts(n) => base.max_attempts = n,
                    Override::Backoff(d) => base.backoff = d,
                    Override::OnLost(l) => base.on_lost = l,
                }
            }
        }
        base
    }

    /// The action names the overrides mention.
    pub fn actions(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(a, _)| a.as_str())
    }
}

impl FromStr for PolicyOverrides {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("'{item}': expected ACTION.KEY=VALUE"))?;
            let (action, field) = key.split_once('.').ok_or_else(|| format!("'{key}': expected ACTION.KEY"))?;
            let action = Action::new(action).map_err(|e| format!("'{item}': {e}"))?;
            let int = |v: &str| v.parse::<u64>().map_err(|_| format!("'{item}': '{v}' is not a whole number"));
            let o = match field {
                "timeout_ms" => {
                    let ms = int(value)?;
                    if ms == 0 {
                        return Err(format!("'{item}': timeout must be above 0"));
                    }
                    Override::Timeout(Duration::from_millis(ms))
                }
                "max_attempts" => {
                    let n = int(value)?;
                    if !(1..=100).contains(&n) {
                        return Err(format!("'{item}': max_attempts must be 1 to 100"));
                    }
                    Override::MaxAttempts(n as u32)
                }
                "backoff_ms" => Override::Backoff(Duration::from_millis(int(value)?)),
                "on_lost" => Override::OnLost(match value {
                    "fail" => OnLost::Fail,
                    "retry" => OnLost::Retry,
                    other => return Err(format!("'{item}': on_lost must be fail or retry, not '{other}'")),
                }),
                other => {
                    return Err(format!(
                        "'{item}': unknown key '{other}' (timeout_ms, max_attempts, backoff_ms, on_lost)"
                    ));
                }
            };
            out.push((action.as_str().to_owned(), o));
        }
        Ok(Self(out))
    }
}

/// The outcome of an attempt whose worker was lost (lease expired, shutdown cut it short): `fail`
/// ends the job, `retry` runs it again while attempts remain.
pub fn lost_outcome(on_lost: OnLost, max_attempts: u32, attempt: i32, why: String, now: i64) -> Outcome {
    match on_lost {
        OnLost::Retry if (attempt as u32) < max_attempts => Outcome::Retry { error: why, run_at: now },
        _ => Outcome::Failed(why),
    }
}

/// The outcome of an attempt that failed: another attempt after the backoff (and not before
/// `at_least`, a backend's `Retry-After`) while attempts remain, otherwise FAILED.
pub fn attempt_failed(policy: &ActionPolicy, attempt: i32, error: String, at_least: Option<Duration>) -> Outcome {
    if (attempt as u32) < policy.max_attempts {
        let delay = retry_delay(policy.backoff, attempt).max(at_least.unwrap_or_default());
        Outcome::Retry { error, run_at: now_us() + delay.as_micros() as i64 }
    } else {
        Outcome::Failed(error)
    }
}

/// Delay before the next attempt: `backoff * 2^(attempt-1)`, capped at 5 minutes, with "equal
/// jitter" (half fixed, half random) so retries of many jobs do not arrive in lockstep.
pub fn retry_delay(backoff: Duration, attempt: i32) -> Duration {
    let exp = backoff.saturating_mul(1u32 << (attempt.clamp(1, 20) - 1) as u32).min(Duration::from_secs(300));
    let half = exp / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        for _ in 0..50 {
            let d1 = retry_delay(b, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= b);
            let d3 = retry_delay(b, 3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(retry_delay(b, 30) <= Duration::from_secs(300));
        }
    }

    #[test]
    fn lost_job_policy_is_honoured() {
        assert!(matches!(lost_outcome(OnLost::Fail, 3, 1, "x".into(), 0), Outcome::Failed(_)));
        assert!(matches!(lost_outcome(OnLost::Retry, 3, 1, "x".into(), 0), Outcome::Retry { .. }));
        assert!(matches!(lost_outcome(OnLost::Retry, 3, 3, "x".into(), 0), Outcome::Failed(_)));
    }

    #[test]
    fn overrides_change_one_field_of_one_action() {
        let base = ActionPolicy {
            timeout: Duration::from_secs(1),
            max_attempts: 3,
            backoff: Duration::from_secs(1),
            on_lost: OnLost::Fail,
        };
        let o: PolicyOverrides = "health_check.max_attempts=5,restart_service.on_lost=retry".parse().unwrap();
        let hc = o.apply(Action::new("health_check").unwrap(), base);
        assert_eq!((hc.max_attempts, hc.on_lost), (5, OnLost::Fail));
        assert_eq!(o.apply(Action::new("restart_service").unwrap(), base).on_lost, OnLost::Retry);
        assert!("health_check.bogus=1".parse::<PolicyOverrides>().is_err());
        assert!("Bad-Name.max_attempts=1".parse::<PolicyOverrides>().is_err());
    }
}
