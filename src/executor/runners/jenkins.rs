//! Jenkins: trigger a parameterized build, follow its queue item to the build, follow the build
//! to its result; cancel the queue item or stop the build on request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::remote::{self, call, follow};
use super::template::{Escape, Template};
use super::{BoxFuture, Built, Needs, Recorder, RunError, RunFuture, RunRequest, Runner, settings};
use crate::jobs::External;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    url: String,
    /// `name`, or `folder/name` for a job in a folder.
    job: String,
    user: String,
    token_file: PathBuf,
    #[serde(default)]
    parameters: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_poll")]
    poll_interval_ms: u64,
}

fn default_poll() -> u64 {
    2000
}

struct Jenkins {
    base: String,
    job: String,
    job_path: String,
    user: String,
    token_file: PathBuf,
    parameters: Vec<(String, Template)>,
    poll: Duration,
    http: reqwest::Client,
}

pub(super) fn build(value: Value) -> Result<Built, String> {
    let s: Settings = settings("jenkins", value)?;
    let mut needs = Needs::default();
    let parameters = s
        .parameters
        .iter()
        .map(|(k, v)| Ok((k.clone(), needs.template(v, &format!("jenkins.parameters.{k}"))?)))
        .collect::<Result<Vec<_>, String>>()?;
    let segments: Vec<&str> = s.job.split('/').filter(|p| !p.is_empty()).collect();
    if segments.is_empty() {
        return Err("jenkins.job: empty".into());
    }
    let mut job_path = String::new();
    for seg in &segments {
        job_path.push_str("/job/");
        job_path
            .push_str(&url::form_urlencoded::byte_serialize(seg.as_bytes()).collect::<String>().replace('+', "%20"));
    }
    let runner = Jenkins {
        base: remote::base(&s.url).map_err(|e| format!("jenkins.{e}"))?,
        job: segments.join("/"),
        job_path,
        user: s.user,
        token_file: s.token_file.clone(),
        parameters,
        poll: remote::interval(s.poll_interval_ms).map_err(|e| format!("jenkins.{e}"))?,
        http: remote::client(None)?,
    };
    Ok(Built { runner: Arc::new(runner), needs: needs.into_inner(), secret_files: vec![s.token_file] })
}

/// Where a build is: still a queue item, or a build.
enum Stage {
    Queued { item: u64, url: String },
    Building { url: String },
}

impl Jenkins {
    async fn token(&self) -> Result<String, RunError> {
        remote::read_secret(&self.token_file).await
    }

    /// A URL Jenkins gave, resolved against the request it answered (RFC 3986): `/jenkins/queue/...`
    /// under a context path stays `/jenkins/queue/...`.
    fn absolute(&self, location: &str) -> String {
        match url::Url::parse(&format!("{}/", self.base)).and_then(|b| b.join(location)) {
            Ok(u) => u.to_string(),
            Err(_) => location.to_owned(),
        }
    }

    async fn trigger(&self, request: &RunRequest, token: &str) -> Result<External, RunError> {
        let id = request.job_id.to_string();
        let vars = request.vars(&id);
        let mut form = Vec::with_capacity(self.parameters.len());
        for (k, t) in &self.parameters {
            form.push((k.clone(), t.render(&vars, Escape::None).map_err(RunError::permanent)?));
        }
        let url = format!("{}{}/buildWithParameters", self.base, self.job_path);
        let req = self.http.post(&url).basic_auth(&self.user, Some(token)).form(&form);
        let resp = remote::traced(req).send().await.map_err(|e| remote::unreachable("jenkins trigger", e))?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        if !matches!(status.as_u16(), 201 | 303) {
            let body = resp.text().await.unwrap_or_default();
            return Err(remote::unexpected("jenkins trigger", status, &headers, &body));
        }
        let location = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RunError::permanent("jenkins trigger: the answer has no Location of a queue item"))?;
        let mut queue_url = self.absolute(location);
        if !queue_url.ends_with('/') {
            queue_url.push('/');
        }
        let item = queue_item_number(&queue_url)
            .ok_or_else(|| RunError::permanent(format!("jenkins trigger: '{queue_url}' is not a queue item")))?;
        Ok(External { system: "jenkins".into(), id: format!("queue/{item}"), url: queue_url })
    }

    fn stage(external: &External) -> Stage {
        match external.id.strip_prefix("queue/").and_then(|n| n.parse().ok()) {
            Some(item) => Stage::Queued { item, url: external.url.clone() },
            None => Stage::Building { url: external.url.clone() },
        }
    }

    /// Follows the queue item until it becomes a build (`Some(build url, number)`).
    async fn await_build(&self, item: u64, url: &str) -> Result<(String, u64), RunError> {
        // A cancelled item ends the attempt (an ordinary failure), not the polling's retries.
        follow("jenkins", self.poll, || async {
            let token = self.token().await?;
            let req = self.http.get(format!("{url}api/json")).basic_auth(&self.user, Some(&token));
            let (_, _, body) = call("jenkins queue item", req, &[200]).await?;
            if body.get("cancelled").and_then(Value::as_bool) == Some(true) {
                return Ok(Some(Err(RunError::retryable(format!("jenkins queue item {item} was cancelled")))));
            }
            let exe = body.get("executable").filter(|e| !e.is_null());
            Ok(exe.and_then(|e| {
                let build_url = e.get("url").and_then(Value::as_str)?;
                let number = e.get("number").and_then(Value::as_u64)?;
                let mut u = self.absolute(build_url);
                if !u.ends_with('/') {
                    u.push('/');
                }
                Some(Ok((u, number)))
            }))
        })
        .await?
    }

    async fn await_result(&self, url: &str) -> Result<String, RunError> {
        follow("jenkins", self.poll, || async {
            let token = self.token().await?;
            let req = self
                .http
                .get(format!("{url}api/json"))
                .query(&[("tree", "building,result,number,url")])
                .basic_auth(&self.user, Some(&token));
            let (_, _, body) = call("jenkins build", req, &[200]).await?;
            Ok(body.get("result").and_then(Value::as_str).map(str::to_owned))
        })
        .await
    }
}

fn queue_item_number(url: &str) -> Option<u64> {
    let rest = url.split("/queue/item/").nth(1)?;
    rest.trim_end_matches('/').parse().ok()
}

impl Runner for Jenkins {
    fn run<'a>(&'a self, request: &'a RunRequest, recorder: &'a dyn Recorder) -> RunFuture<'a> {
        Box::pin(async move {
            let external = match &request.external {
                Some(e) => e.clone(),
                None => {
                    let token = self.token().await?;
                    let e = self.trigger(request, &token).await?;
                    recorder.record(e.clone()).await;
                    e
                }
            };
            let (build_url, build_id) = match Self::stage(&external) {
                Stage::Queued { item, url } => {
                    let (build_url, number) = self.await_build(item, &url).await?;
                    let build = External {
                        system: "jenkins".into(),
                        id: format!("{}#{number}", self.job),
                        url: build_url.clone(),
                    };
                    recorder.record(build.clone()).await;
                    (build_url, build.id)
                }
                Stage::Building { url } => (url, external.id.clone()),
            };
            let result = self.await_result(&build_url).await?;
            let number = build_id.rsplit('#').next().unwrap_or("?").to_owned();
            if result == "SUCCESS" {
                Ok(json!({"system": "jenkins", "id": build_id, "url": build_url, "result": result}))
            } else {
                Err(RunError::retryable(format!("jenkins build #{number} ended {result}")))
            }
        })
    }

    fn cancel<'a>(&'a self, _request: &'a RunRequest, external: &'a External) -> BoxFuture<'a, Result<(), RunError>> {
        Box::pin(async move {
            let token = self.token().await?;
            let req = match Self::stage(external) {
                Stage::Queued { item, .. } => {
                    self.http.post(format!("{}/queue/cancelItem", self.base)).query(&[("id", item.to_string())])
                }
                Stage::Building { url } => self.http.post(format!("{url}stop")),
            };
            let resp = remote::traced(req.basic_auth(&self.user, Some(&token)))
                .send()
                .await
                .map_err(|e| remote::unreachable("jenkins cancel", e))?;
            // Jenkins answers a cancel with 204, 200 or a redirect (302/303); 404/422 when there is
            // nothing left to cancel.
            let s = resp.status().as_u16();
            if matches!(s, 200..=399 | 404 | 422) {
                Ok(())
            } else {
                Err(remote::unexpected("jenkins cancel", resp.status(), &resp.headers().clone(), ""))
            }
        })
    }
}

#[cfg(test)]
#[test]
fn queue_items_are_read_from_their_url() {
    assert_eq!(queue_item_number("https://j/queue/item/42/"), Some(42));
    assert_eq!(queue_item_number("https://j/job/x/"), None);
}
