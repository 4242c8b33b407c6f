//! AWX and Ansible Automation Platform's controller: launch a job template, record the job,
//! follow it to its end; cancel it on request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::remote::{self, call, follow};
use super::template::{JsonTemplate, Template};
use super::{BoxFuture, Built, Needs, Recorder, RunError, RunFuture, RunRequest, Runner, settings};
use crate::jobs::External;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    token_file: PathBuf,
    job_template_id: u64,
    #[serde(default)]
    extra_vars: Option<Value>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default = "default_poll")]
    poll_interval_ms: u64,
    /// `/api/v2`; AAP 2.5 and later, through its platform gateway: `/api/controller/v2`.
    #[serde(default = "default_prefix")]
    api_prefix: String,
}

fn default_poll() -> u64 {
    2000
}

fn default_prefix() -> String {
    "/api/v2".into()
}

struct Awx {
    base: String,
    prefix: String,
    token_file: PathBuf,
    template_id: u64,
    extra_vars: Option<JsonTemplate>,
    limit: Option<Template>,
    poll: Duration,
    http: reqwest::Client,
}

pub(super) fn build(value: Value) -> Result<Built, String> {
    let s: Settings = settings("awx", value)?;
    let mut needs = Needs::default();
    let extra_vars = match &s.extra_vars {
        Some(v @ Value::Object(_)) => Some(needs.json(v, "awx.extra_vars")?),
        Some(_) => return Err("awx.extra_vars: must be a mapping".into()),
        None => None,
    };
    let limit = s.limit.as_deref().map(|l| needs.template(l, "awx.limit")).transpose()?;
    let prefix = format!("/{}", s.api_prefix.trim_matches('/'));
    let runner = Awx {
        base: remote::base(&s.url).map_err(|e| format!("awx.{e}"))?,
        prefix,
        token_file: s.token_file.clone(),
        template_id: s.job_template_id,
        extra_vars,
        limit,
        poll: remote::interval(s.poll_interval_ms).map_err(|e| format!("awx.{e}"))?,
        http: remote::client(None)?,
    };
    Ok(Built { runner: Arc::new(runner), needs: needs.into_inner(), secret_files: vec![s.token_file] })
}

const TERMINAL: [&str; 4] = ["successful", "failed", "error", "canceled"];

impl Awx {
    fn api(&self, path: &str) -> String {
        format!("{}{}{}", self.base, self.prefix, path)
    }

    async fn launch(&self, request: &RunRequest, token: &str) -> Result<External, RunError> {
        let id = request.job_id.to_string();
        let vars = request.vars(&id);
        let mut body = Map::new();
        if let Some(ev) = &self.extra_vars {
            body.insert("extra_vars".into(), ev.render(&vars).map_err(RunError::permanent)?);
        }
        if let Some(l) = &self.limit {
            body.insert(
                "limit".into(),
                Value::String(l.render(&vars, super::template::Escape::None).map_err(RunError::permanent)?),
            );
        }
        let url = self.api(&format!("/job_templates/{}/launch/", self.template_id));
        let req =
            self.http.post(&url).bearer_auth(token).header("Accept", "application/json").json(&Value::Object(body));
        let (_, _, answer) = call("awx launch", req, &[200, 201, 202]).await?;
        if let Some(ignored) = answer.get("ignored_fields").and_then(Value::as_object).filter(|m| !m.is_empty()) {
            let names: Vec<&str> = ignored.keys().map(String::as_str).collect();
            return Err(RunError::permanent(format!(
                "awx: job template {} ignored {} (enable 'Prompt on launch' for them in the template)",
                self.template_id,
                names.join(", ")
            )));
        }
        let job = answer
            .get("job")
            .or_else(|| answer.get("id"))
            .and_then(Value::as_u64)
            .ok_or_else(|| RunError::permanent("awx launch: the answer has no job id"))?;
        Ok(External { system: "awx".into(), id: job.to_string(), url: format!("{}/#/jobs/playbook/{job}", self.base) })
    }

    async fn status(&self, job: &str, token: &str) -> Result<Option<String>, RunError> {
        let req = self.http.get(self.api(&format!("/jobs/{job}/"))).bearer_auth(token);
        let (_, _, body) = call("awx job", req, &[200]).await?;
        let status = body.get("status").and_then(Value::as_str).unwrap_or("");
        Ok(TERMINAL.contains(&status).then(|| status.to_owned()))
    }

    async fn stdout_tail(&self, job: &str, token: &str) -> String {
        let req = self.http.get(self.api(&format!("/jobs/{job}/stdout/?format=txt"))).bearer_auth(token);
        match remote::traced(req).send().await {
            Ok(r) if r.status().is_success() => {
                r.text().await.map(|t: String| remote::tail(&t, 20, 2048)).unwrap_or_default()
            }
            _ => String::new(),
        }
    }
}

impl Runner for Awx {
    fn run<'a>(&'a self, request: &'a RunRequest, recorder: &'a dyn Recorder) -> RunFuture<'a> {
        Box::pin(async move {
            let token = remote::read_secret(&self.token_file).await?;
            let external = match &request.external {
                Some(e) => e.clone(),
                None => {
                    let e = self.launch(request, &token).await?;
                    recorder.record(e.clone()).await;
                    e
                }
            };
            let status = follow("awx", self.poll, || async {
                // Re-read each time: a rotated token takes effect mid-run.
                let token = remote::read_secret(&self.token_file).await?;
                self.status(&external.id, &token).await
            })
            .await?;
            if status == "successful" {
                return Ok(json!({"system": "awx", "id": external.id, "url": external.url, "status": status}));
            }
            let tail = self.stdout_tail(&external.id, &token).await;
            let mut message = format!("awx job {} ended {status}", external.id);
            if !tail.is_empty() {
                message.push_str(": ");
                message.push_str(&tail);
            }
            Err(RunError::retryable(message))
        })
    }

    fn cancel<'a>(&'a self, _request: &'a RunRequest, external: &'a External) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(async move {
            let token = remote::read_secret(&self.token_file).await?;
            let req = self.http.post(self.api(&format!("/jobs/{}/cancel/", external.id))).bearer_auth(&token);
            // 405: the job cannot be canceled any more (it ended meanwhile).
            call("awx cancel", req, &[200, 202, 204, 405]).await.map(|_| ())
        })
    }
}
