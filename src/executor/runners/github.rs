//! GitHub Actions: dispatch a workflow asking for the run's id, follow the run until it
//! completes; cancel it on request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::remote::{self, call, follow};
use super::template::JsonTemplate;
use super::{BoxFuture, Built, Needs, Recorder, RunError, RunFuture, RunRequest, Runner, settings};
use crate::jobs::External;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// `owner/repo`.
    repository: String,
    /// The workflow's file name (`deploy.yml`) or id.
    workflow: String,
    #[serde(rename = "ref")]
    git_ref: String,
    token_file: PathBuf,
    #[serde(default)]
    inputs: Option<Value>,
    #[serde(default = "default_api")]
    api_url: String,
    #[serde(default = "default_poll")]
    poll_interval_ms: u64,
    #[serde(default = "default_version")]
    api_version: String,
}

fn default_api() -> String {
    "https://api.github.com".into()
}

fn default_poll() -> u64 {
    5000
}

fn default_version() -> String {
    "2022-11-28".into()
}

struct GitHub {
    api: String,
    repository: String,
    workflow: String,
    git_ref: String,
    token_file: PathBuf,
    inputs: Option<JsonTemplate>,
    poll: Duration,
    version: String,
    http: reqwest::Client,
}

pub(super) fn build(value: Value) -> Result<Built, String> {
    let s: Settings = settings("github_actions", value)?;
    let mut needs = Needs::default();
    let inputs = match &s.inputs {
        Some(v @ Value::Object(_)) => Some(needs.json(v, "github_actions.inputs")?),
        Some(_) => return Err("github_actions.inputs: must be a mapping".into()),
        None => None,
    };
    let mut parts = s.repository.split('/');
    let well_formed = matches!((parts.next(), parts.next(), parts.next()), (Some(o), Some(r), None) if !o.is_empty() && !r.is_empty());
    if !well_formed {
        return Err(format!("github_actions.repository: '{}' is not owner/repo", s.repository));
    }
    let segment = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let runner = GitHub {
        api: remote::base(&s.api_url).map_err(|e| format!("github_actions.api_{e}"))?,
        repository: s.repository.split('/').map(segment).collect::<Vec<_>>().join("/"),
        workflow: segment(&s.workflow),
        git_ref: s.git_ref,
        token_file: s.token_file.clone(),
        inputs,
        poll: remote::interval(s.poll_interval_ms).map_err(|e| format!("github_actions.{e}"))?,
        version: s.api_version,
        http: remote::client(None)?,
    };
    Ok(Built { runner: Arc::new(runner), needs: needs.into_inner(), secret_files: vec![s.token_file] })
}

impl GitHub {
    fn request(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/repos/{}{path}", self.api, self.repository))
            .bearer_auth(token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", &self.version)
    }

    async fn dispatch(&self, request: &RunRequest, token: &str) -> Result<External, RunError> {
        let id = request.job_id.to_string();
        let inputs = match &self.inputs {
            Some(t) => t.render(&request.vars(&id)).map_err(RunError::permanent)?,
            None => json!({}),
        };
        let body = json!({"ref": self.git_ref, "inputs": inputs, "return_run_details": true});
        let path = format!("/actions/workflows/{}/dispatches", self.workflow);
        let req = self.request(reqwest::Method::POST, &path, token).json(&body);
        let (status, _, answer) = call("github dispatch", req, &[200, 204]).await?;
        let run = answer.get("workflow_run_id").and_then(Value::as_u64);
        let (200, Some(run)) = (status.as_u16(), run) else {
            // Older GitHub Enterprise Server: the run cannot be identified, so it could be neither
            // followed nor resumed.
            return Err(RunError::permanent(
                "github dispatch: the server returned no run id (return_run_details is not supported); the run cannot be followed",
            ));
        };
        let url = answer.get("html_url").and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(External { system: "github_actions".into(), id: run.to_string(), url })
    }
}

impl Runner for GitHub {
    fn run<'a>(&'a self, request: &'a RunRequest, recorder: &'a dyn Recorder) -> RunFuture<'a> {
        Box::pin(async move {
            let external = match &request.external {
                Some(e) => e.clone(),
                None => {
                    let token = remote::read_secret(&self.token_file).await?;
                    let e = self.dispatch(request, &token).await?;
                    recorder.record(e.clone()).await;
                    e
                }
            };
            let conclusion = follow("github_actions", self.poll, || async {
                let token = remote::read_secret(&self.token_file).await?;
                let req = self.request(reqwest::Method::GET, &format!("/actions/runs/{}", external.id), &token);
                let (_, _, run) = call("github run", req, &[200]).await?;
                if run.get("status").and_then(Value::as_str) != Some("completed") {
                    return Ok(None);
                }
                Ok(Some(run.get("conclusion").and_then(Value::as_str).unwrap_or("unknown").to_owned()))
            })
            .await?;
            if conclusion == "success" {
                Ok(
                    json!({"system": "github_actions", "id": external.id, "url": external.url, "conclusion": conclusion}),
                )
            } else {
                Err(RunError::retryable(format!("workflow run {} concluded {conclusion}", external.id)))
            }
        })
    }

    fn cancel<'a>(&'a self, _request: &'a RunRequest, external: &'a External) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(async move {
            let token = remote::read_secret(&self.token_file).await?;
            let req = self.request(reqwest::Method::POST, &format!("/actions/runs/{}/cancel", external.id), &token);
            // 409: the run is already completed.
            call("github cancel", req, &[202, 204, 409]).await.map(|_| ())
        })
    }
}
