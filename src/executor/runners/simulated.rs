//! The simulated runner: sleeps for a while, then succeeds or fails at random, as configured by
//! `GATEWAY_SIM_DURATION_MS` / `GATEWAY_SIM_FAILURE_RATE`, or exactly as a job's
//! `parameters.simulate = {"duration_ms": N, "fail": bool}` says (deterministic tests).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use super::{Recorder, RunError, RunFuture, RunRequest, Runner};

/// Simulated run time: a fixed number of milliseconds or a uniform range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimDuration {
    /// Shortest, in milliseconds.
    pub min_ms: u64,
    /// Longest, in milliseconds.
    pub max_ms: u64,
}

impl FromStr for SimDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |p: &str| p.trim().parse::<u64>().map_err(|_| format!("'{p}' is not a whole number of milliseconds"));
        let (min_ms, max_ms) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if min_ms > max_ms {
            return Err(format!("minimum {min_ms} is above maximum {max_ms}"));
        }
        if max_ms > 86_400_000 {
            return Err("longer than a day".into());
        }
        Ok(Self { min_ms, max_ms })
    }
}

impl fmt::Display for SimDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min_ms == self.max_ms {
            write!(f, "{}", self.min_ms)
        } else {
            write!(f, "{}-{}", self.min_ms, self.max_ms)
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimulatedRunner {
    duration: SimDuration,
    failure_rate: f64,
}

impl SimulatedRunner {
    /// A runner with the given defaults.
    pub fn new(duration: SimDuration, failure_rate: f64) -> Self {
        Self { duration, failure_rate }
    }

    fn plan(&self, request: &RunRequest) -> (Duration, bool) {
        let sim = request.parameters.get("simulate");
        let mut rng = rand::rng();
        let ms = sim
            .and_then(|s| s.get("duration_ms"))
            .and_then(|v| v.as_u64())
            .map(|v| v.min(86_400_000))
            .unwrap_or_else(|| rng.random_range(self.duration.min_ms..=self.duration.max_ms));
        let fail = sim
            .and_then(|s| s.get("fail"))
            .and_then(|v| v.as_bool())
            .unwrap_or_else(|| rng.random::<f64>() < self.failure_rate);
        (Duration::from_millis(ms), fail)
    }
}

impl Runner for SimulatedRunner {
    fn run<'a>(&'a self, request: &'a RunRequest, _recorder: &'a dyn Recorder) -> RunFuture<'a> {
        let (duration, fail) = self.plan(request);
        Box::pin(async move {
            if !duration.is_zero() {
                tokio::time::sleep(duration).await;
            }
            if fail {
                Err(RunError::retryable(format!("simulated failure of {} on {}", request.action, request.target)))
            } else {
                Ok(json!({
                    "message": format!("{} completed on {}", request.action, request.target),
                    "simulated": true,
                    "duration_ms": duration.as_millis() as u64,
                }))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_duration_accepts_ranges_and_refuses_reversed_ones() {
        assert_eq!("5-20".parse::<SimDuration>().unwrap(), SimDuration { min_ms: 5, max_ms: 20 });
        assert!("20-5".parse::<SimDuration>().is_err());
        assert!("abc".parse::<SimDuration>().is_err());
    }

    use crate::jobs::Action;

    fn req(params: serde_json::Value) -> RunRequest {
        RunRequest {
            job_id: crate::jobs::JobId::new(),
            action: Action::new("health_check").unwrap(),
            target: "t".into(),
            requested_by: "me".into(),
            parameters: params,
            attempt: 1,
            external: None,
        }
    }

    struct NoRecorder;

    impl Recorder for NoRecorder {
        fn record(&self, _: crate::jobs::External) -> super::super::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn parameters_override_the_defaults() {
        let r = SimulatedRunner::new(SimDuration { min_ms: 10_000, max_ms: 10_000 }, 0.0);
        let out = r.run(&req(json!({"simulate": {"duration_ms": 0, "fail": true}})), &NoRecorder).await;
        assert!(out.is_err());
        let out = r.run(&req(json!({"simulate": {"duration_ms": 1, "fail": false}})), &NoRecorder).await;
        assert_eq!(out.unwrap()["duration_ms"], 1);
    }
}
